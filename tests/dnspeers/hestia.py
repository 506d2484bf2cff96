"""A fake HestiaCP API (`POST /api/`) over real HTTP on 127.0.0.1, stateful, for tests.

    hst = FakeHestia({"admin": ["example.com", "2.0.192.in-addr.arpa"]})
    requests.post(hst.url, data={"hash": hst.hash, "returncode": "no",
                                 "cmd": "v-list-dns-records", "arg1": "admin", "arg2": "example.com",
                                 "arg3": "json"})
    hst.records("admin", "example.com")   # [{"ID": "1", "RECORD": "@", "TYPE": "NS", ...}, ...]
    hst.requests                          # [("v-list-dns-records", ("admin", "example.com", "json")), ...]
    hst.down = True / hst.fail_next(...) / hst.close()

Modelled on HestiaCP's web/api/index.php and its v-* scripts:
- Login: `access_key` (20 alphanumerics) + `secret_key` (40 characters), or `hash=ACCESS:SECRET` (split
  only when the parts have exactly those lengths), or the legacy `user=admin` + `password`, or a legacy
  `hash` (an old API key). A form body or a JSON body. Nothing usable -> 405 "Error: data received is null
  or invalid, check https://hestiacp.com/docs/server-administration/rest-api.html".
- Access-key login: a failed command answers its exit code mapped to HTTP (1 -> 400, 2 -> 422, 3 -> 400,
  4 -> 400, 9/10 -> 401) with the script's `Error: ...` text; success answers 200 with the output
  (JSON content type when it is JSON) or 204 with an empty body. Header `Hestia-Exit-Code` always.
- Legacy login: every command answers 200; the body is the script's output, or `OK` when it printed
  nothing. Failed logins: user other than admin -> 10, wrong password -> 9 ("Error: authentication failed").
- `returncode=yes`: the body is only the exit code (`0` on success) and the HTTP status is 200, except
  for login failures, which keep their 401.
- Exit codes: 1 E_ARGS (prints "Usage: ..."), 2 E_INVALID, 3 E_NOTEXIST, 4 E_EXISTS, 9 E_PASSWORD,
  10 E_FORBIDDEN.
- Commands: v-list-dns-domains USER [FORMAT], v-list-dns-domain USER DOMAIN [FORMAT],
  v-list-dns-records USER DOMAIN [FORMAT], v-add-dns-record USER DOMAIN RECORD TYPE VALUE [PRIORITY]
  [ID] [RESTART] [TTL], v-change-dns-record USER DOMAIN ID RECORD TYPE VALUE [PRIORITY] [RESTART] [TTL],
  v-delete-dns-record USER DOMAIN ID [RESTART]; any other command exits 1 with no output (sudo finds
  no such script).
- v-add-dns-record as Hestia does it: RECORD lower-cased and relative to the domain (`@` is the apex; a
  RECORD ending in a dot is "invalid record format"), TYPE upper-cased, a trailing dot added to
  NS/CNAME/MX/PTR/SRV values, PRIORITY kept only for MX/SRV, double quotes dropped and values with
  spaces or `;` quoted, A values checked ("invalid ip format"), CNAME/MX/PTR values need two dots and
  NS/SRV three once the trailing dot is added ("... should be a fully qualified domain name (FQDN)"),
  IDs are the next free integer. It does NOT refuse a record identical to one that exists: it adds a
  second copy with a new ID.
- The add/change/delete scripts tidy DOMAIN (lower case, a leading `www.` and trailing dots dropped);
  the list scripts do not, so `example.com.` is "dns domain example.com. doesn't exist" there.
- v-delete-dns-record refuses to delete the last A or the last NS record of a domain: exit 2
  "Error: at least one A record should remain active".
"""
from __future__ import annotations

import ipaddress
import json
import re
import secrets
import string
import threading
from datetime import datetime
from urllib.parse import parse_qs

from ._server import FakeHttpServer, Response

E_ARGS, E_INVALID, E_NOTEXIST, E_EXISTS, E_SUSPENDED = 1, 2, 3, 4, 5
E_PASSWORD, E_FORBIDDEN, E_DISABLED, E_RESTART = 9, 10, 11, 20
KNOWN_TYPES = ("A", "AAAA", "NS", "CNAME", "MX", "TXT", "SRV", "DNSKEY", "KEY", "IPSECKEY", "PTR",
               "SPF", "TLSA", "CAA")
DOC_URL = "https://hestiacp.com/docs/server-administration/rest-api.html"
REVERSE_SUFFIXES = (".in-addr.arpa", ".ip6.arpa")


def exit_code_to_http(code: int) -> int:
    """HestiaCP's own mapping (web/inc/helpers.php)."""
    return {0: 200, E_ARGS: 400, E_INVALID: 422, E_PASSWORD: 401, E_SUSPENDED: 401, 6: 401,
            E_FORBIDDEN: 401, E_DISABLED: 400}.get(code, 400)


class CommandError(Exception):
    def __init__(self, code: int, output: str):
        super().__init__(output)
        self.code = code
        self.output = output


def _fail(code: int, message: str):
    raise CommandError(code, f"Error: {message}")


def _random_key(n: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(n))


class FakeHestia(FakeHttpServer):
    """Stateful fake of HestiaCP's API for DNS. `users` maps user -> list of domains, or user ->
    {domain: [records]} where a record is (RECORD, TYPE, VALUE) or (RECORD, TYPE, VALUE, TTL)."""

    def __init__(self, users: dict[str, list | dict] | None = None, *, access_key: str | None = None,
                 secret_key: str | None = None, password: str | None = None,
                 legacy_hash: str | None = None, port: int = 0,
                 nameservers: tuple[str, ...] = ("ns1.example.net", "ns2.example.net"),
                 domain_ip: str = "198.51.100.10", domain_ttl: int = 14400):
        self._lock = threading.RLock()
        self.access_key = access_key or _random_key(20)
        self.secret_key = secret_key or _random_key(40)
        self.password = password or secrets.token_urlsafe(12)
        self.legacy_hash = legacy_hash or _random_key(32)
        self.nameservers = tuple(nameservers)
        self.domain_ip = domain_ip
        self.domain_ttl = domain_ttl
        # access key -> (secret, user): the admin key, plus any made with add_key()
        self.keys: dict[str, tuple[str, str]] = {self.access_key: (self.secret_key, "admin")}
        self._users: dict[str, dict[str, dict]] = {"admin": {}}
        self.requests: list[tuple[str, tuple[str, ...]]] = []
        for user, domains in (users or {}).items():
            self._users.setdefault(user, {})
            if isinstance(domains, dict):
                for domain, records in domains.items():
                    self.add_domain(user, domain, records)
            else:
                for domain in domains:
                    self.add_domain(user, domain)
        super().__init__(port)

    # ------------------------------------------------------------------ for tests

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def hash(self) -> str:
        """`ACCESS:SECRET`, the form Hestia accepts in the `hash` field."""
        return f"{self.access_key}:{self.secret_key}"

    def auth(self, style: str = "keys") -> dict[str, str]:
        """Login fields: style "keys" (access_key+secret_key), "hash" (hash=ACCESS:SECRET),
        "password" (legacy user=admin + password) or "legacy_hash" (an old API key)."""
        return {"keys": {"access_key": self.access_key, "secret_key": self.secret_key},
                "hash": {"hash": self.hash},
                "password": {"user": "admin", "password": self.password},
                "legacy_hash": {"hash": self.legacy_hash}}[style]

    def add_key(self, user: str) -> tuple[str, str]:
        """A new access key owned by `user` (a non-admin key may only name its own user)."""
        access, secret = _random_key(20), _random_key(40)
        self.keys[access] = (secret, user)
        return access, secret

    def add_user(self, user: str) -> None:
        with self._lock:
            self._users.setdefault(user, {})

    def add_domain(self, user: str, domain: str, records: list | None = None) -> None:
        """A DNS domain like Hestia's default template leaves it: two NS records and, for a forward
        zone, an A record for the apex -- unless `records` lists what it holds instead."""
        domain = domain.rstrip(".").lower()
        with self._lock:
            self._users.setdefault(user, {})
            now = datetime.now()
            self._users[user][domain] = {
                "records": {}, "TTL": str(self.domain_ttl), "IP": self.domain_ip,
                "TIME": now.strftime("%H:%M:%S"), "DATE": now.strftime("%Y-%m-%d")}
            if records is None:
                records = [("@", "NS", ns) for ns in self.nameservers]
                if not domain.endswith(REVERSE_SUFFIXES):
                    records.append(("@", "A", self.domain_ip))
            for rec in records:
                record, rtype, value, *rest = rec
                self._add_record([user, domain, record, rtype, value, "", "", "", *(str(x) for x in rest)])

    def records(self, user: str, domain: str) -> list[dict]:
        """Copies of the domain's records as v-list-dns-records json shows them, in ID order."""
        with self._lock:
            recs = self._users[user][domain.rstrip(".").lower()]["records"]
            return [dict(recs[k]) for k in sorted(recs, key=int)]

    def find(self, user: str, domain: str, record: str | None = None, rtype: str | None = None) -> list[dict]:
        return [r for r in self.records(user, domain)
                if (record is None or r["RECORD"] == record) and (rtype is None or r["TYPE"] == rtype)]

    def fail_next(self, n: int = 1, status: int | None = None, code: int = E_RESTART,
                  message: str = "Error: dns failed to restart", *, cmd: str | None = None) -> None:
        """The next `n` API requests (running `cmd`, when given) fail with exit `code` and `message`,
        changing nothing; HTTP status `status`, or Hestia's mapping of `code` when None."""
        self._queue_failure(n, {"status": status, "code": code, "message": message, "cmd": cmd,
                                "method": None})

    def count(self, cmd: str) -> int:
        return sum(1 for c, _ in self.requests if c == cmd)

    # ------------------------------------------------------------------ HTTP

    @staticmethod
    def _form(headers: dict, body: bytes) -> dict | None:
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        if "application/x-www-form-urlencoded" in ctype:
            form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"),
                                                  keep_blank_values=True).items()}
            if any(k in form for k in ("access_key", "user", "hash")):
                return form
        try:
            data = json.loads(body or b"null")
        except ValueError:
            return None
        return data if isinstance(data, dict) and data else None

    def _log_request(self, method, path, query, headers, body) -> None:
        form = self._form(headers, body) or {}
        args = tuple(str(form[f"arg{i}"]) for i in range(1, 14) if f"arg{i}" in form)
        self.requests.append((str(form.get("cmd", "")), args))

    def failure_response(self, spec, method, path, query, headers, body) -> Response:
        form = self._form(headers, body) or {}
        if spec.get("cmd") not in (None, form.get("cmd")):
            # not the command this failure waits for: put it back and answer normally
            self._failures.insert(0, spec)
            return self.dispatch(method, path, query, headers, body)
        code = spec["code"]
        if form.get("returncode") == "yes":
            return Response(200, str(code), {"Hestia-Exit-Code": str(code), "Content-Type": "text/html"})
        status = spec["status"] or exit_code_to_http(code)
        return Response(status, spec["message"], {"Hestia-Exit-Code": str(code), "Content-Type": "text/html"})

    def dispatch(self, method, path, query, headers, body) -> Response:
        if path not in ("/api/", "/api/index.php", "/api"):
            return Response(404, "<html><body><h1>404 Not Found</h1></body></html>",
                            {"Content-Type": "text/html"})
        form = self._form(headers, body) if method == "POST" else None
        if form is None:
            return self._api_error(405, f"Error: data received is null or invalid, check {DOC_URL}", "")
        form = {k: (str(v) if not isinstance(v, str) else v) for k, v in form.items()}
        if "access_key" not in form and form.get("hash", "").count(":") == 1:
            access, secret = form["hash"].split(":")
            if len(access) == 20 and len(secret) == 40:
                form["access_key"], form["secret_key"] = access, secret
                del form["hash"]
        if "access_key" in form and "secret_key" in form:
            return self._api_keys(form)
        if "user" in form or "hash" in form:
            return self._api_legacy(form)
        return self._api_error(405, f"Error: data received is null or invalid, check {DOC_URL}", "")

    @staticmethod
    def _api_error(code: int, message: str, ret: str) -> Response:
        status = code if code >= 100 else exit_code_to_http(code)
        text = str(code) if ret == "code" else (message if message.startswith("Error:") else f"Error: {message}")
        return Response(status, text, {"Hestia-Exit-Code": str(code), "Content-Type": "text/html"})

    @staticmethod
    def _command(form: dict) -> tuple[str, list[str]]:
        cmd = form.get("cmd", "").strip()
        args = [form[f"arg{i}"].strip() for i in range(1, 14) if f"arg{i}" in form]
        return cmd, args

    def _api_keys(self, form: dict) -> Response:
        ret = "code" if form.get("returncode", "no") == "yes" else "data"
        access, secret = form.get("access_key", "").strip(), form.get("secret_key", "").strip()
        cmd, args = self._command(form)
        if not cmd:
            return self._api_error(E_INVALID, "Command not provided", ret)
        if not re.fullmatch(r"[a-zA-Z0-9_-]+", cmd):
            return self._api_error(E_INVALID, f"{cmd} command invalid", ret)
        if not access or not secret:
            return self._api_error(E_PASSWORD, "Authentication failed", ret)
        if not re.fullmatch(r"[A-Za-z0-9]{20}", access):
            return self._api_error(E_PASSWORD, f"Error: invalid access_key_id format :: {access}", ret)
        if access not in self.keys:
            return self._api_error(E_PASSWORD, f"Error: Access key {access} doesn't exist", ret)
        if self.keys[access][0] != secret:
            return self._api_error(E_PASSWORD, f"Error: Invalid secret key for key {access}", ret)
        key_user = self.keys[access][1]
        if key_user != "admin" and cmd.startswith("v-") and args[:1] != [key_user]:
            return self._api_error(
                E_FORBIDDEN, f"Key {access} - the \"user\" argument doesn't match the key's user", ret)
        code, output = self._run(cmd, args)
        headers = {"Hestia-Exit-Code": str(code)}
        if ret == "code":
            return Response(200, str(code), {**headers, "Content-Type": "text/html"})
        output = output.strip()
        if code > 0:
            return Response(exit_code_to_http(code), output, {**headers, "Content-Type": "text/html"})
        if not output:
            return Response(204, b"", headers)
        try:
            is_json = bool(json.loads(output))
        except ValueError:
            is_json = False
        ctype = "application/json; charset=utf-8" if is_json else "text/html"
        return Response(200, output, {**headers, "Content-Type": ctype})

    def _api_legacy(self, form: dict) -> Response:
        ret = "code" if form.get("returncode", "no") == "yes" else "data"
        if not form.get("hash"):
            if form.get("user") != "admin":
                return self._api_error(E_FORBIDDEN, "Error: authentication failed", ret)
            if "password" not in form:
                return self._api_error(E_PASSWORD, "Error: authentication failed", ret)
            if form["password"] != self.password:
                return self._api_error(E_PASSWORD, "Error: authentication failed", ret)
        elif form["hash"] != self.legacy_hash:
            return self._api_error(E_PASSWORD, "Error: authentication failed", ret)
        cmd, args = self._command(form)
        if not cmd:
            return self._api_error(E_INVALID, "Command not provided", ret)
        if not re.fullmatch(r"[a-zA-Z0-9_-]+", cmd):
            return self._api_error(E_INVALID, f"{cmd} command invalid", ret)
        code, output = self._run(cmd, args)
        if ret == "code":
            return Response(200, str(code), {"Content-Type": "text/html"})
        if code == 0 and not output:
            return Response(200, "OK", {"Content-Type": "text/html"})
        return Response(200, output.rstrip("\n") + "\n", {"Content-Type": "text/html"})

    # ------------------------------------------------------------------ the v-* scripts

    COMMANDS = {
        "v-list-dns-domains": ("_list_domains", 1, "USER [FORMAT]"),
        "v-list-dns-domain": ("_list_domain", 2, "USER DOMAIN [FORMAT]"),
        "v-list-dns-records": ("_list_records", 2, "USER DOMAIN [FORMAT]"),
        "v-add-dns-record": ("_add_record", 5, "USER DOMAIN RECORD TYPE VALUE [PRIORITY] [ID] [RESTART] [TTL]"),
        "v-change-dns-record": ("_change_record", 6,
                                "USER DOMAIN ID RECORD TYPE VALUE [PRIORITY] [RESTART] [TTL]"),
        "v-delete-dns-record": ("_delete_record", 3, "USER DOMAIN ID [RESTART]"),
    }

    def _run(self, cmd: str, args: list[str]) -> tuple[int, str]:
        """(exit code, output) of one script."""
        spec = self.COMMANDS.get(cmd)
        if spec is None:
            return E_ARGS, ""  # sudo: .../bin/v-whatever: command not found (on stderr)
        method, required, usage = spec
        if len(args) < required:
            return E_ARGS, f"Usage: {cmd} {usage}"
        try:
            return 0, getattr(self, method)(args) or ""
        except CommandError as err:
            return err.code, err.output

    # validators, with the texts HestiaCP's func/main.sh prints

    @staticmethod
    def _check_user_format(user: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9]|[A-Za-z0-9][-._A-Za-z0-9]{0,28}[A-Za-z0-9]", user):
            _fail(E_INVALID, f"invalid user format :: {user}")

    @staticmethod
    def _check_domain_format(domain: str) -> None:
        if (re.search(r"[!@#$^&*()+={}:,<>?_/\\\"';%` \t|]", domain) or re.fullmatch(r"[0-9]+", domain)
                or ".." in domain):
            _fail(E_INVALID, f"invalid domain format :: {domain}")

    def _user(self, user: str) -> dict:
        self._check_user_format(user)
        if user not in self._users:
            _fail(E_NOTEXIST, f"user {user} doesn't exist")
        return self._users[user]

    def _domain(self, user: str, domain: str) -> dict:
        self._check_domain_format(domain)
        domains = self._user(user)
        if domain not in domains:
            _fail(E_NOTEXIST, f"dns domain {domain} doesn't exist")
        return domains[domain]

    @staticmethod
    def _tidy_domain(domain: str) -> str:
        domain = domain.lower()
        if domain.startswith("www."):
            domain = domain[4:]
        return domain.rstrip(".").lstrip(".")

    @staticmethod
    def _check_record_format(record: str) -> None:
        bad = (re.search(r"[!#$^&()+={}:<>?/\\\"';%` |]", record) or len(record) >= 400
               or ("@" in record and len(record) > 1) or ".." in record or "--" in record or "__" in record
               or not re.fullmatch(r"[a-zA-Z0-9_*@]", record[-1:] or "!")
               or not re.fullmatch(r"[a-zA-Z0-9_*@]", record[:1] or "!")
               or ("*" in record and "*." not in record and record != "*"))
        if bad:
            _fail(E_INVALID, f"invalid record format :: {record}")

    @staticmethod
    def _check_ipv4(value: str) -> None:
        octet = r"([1-9]?[0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])"
        if not re.fullmatch(rf"{octet}\.{octet}\.{octet}\.{octet}", value.split("/")[0]):
            _fail(E_INVALID, f"invalid ip format :: {value}")

    @staticmethod
    def _check_ipv6(value: str) -> None:
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            _fail(E_INVALID, f"invalid ipv6 format :: {value}")

    def _prepare(self, record: str, rtype: str, value: str, priority: str, ttl: str) -> dict:
        """What v-add-dns-record / v-change-dns-record do to their arguments before storing them."""
        record = record.lower()
        rtype = rtype.upper()
        if not priority:
            priority = "10"
        if rtype not in ("MX", "SRV"):
            priority = ""
        if re.search("NS|CNAME|MX|PTR|SRV", rtype) and not value.endswith("."):
            value += "."
        if rtype != "CAA":
            value = value.replace('"', "")
            if rtype != "SRV" and re.search(r"[;\s]", value):
                value = f'"{value}"'
        self._check_record_format(record)
        if rtype not in KNOWN_TYPES:
            _fail(E_INVALID, f"invalid dns record type format :: {rtype}")
        if rtype == "A":
            self._check_ipv4(value)
        elif rtype == "AAAA":
            self._check_ipv6(value)
        return {"RECORD": record, "TYPE": rtype, "VALUE": value, "PRIORITY": priority, "TTL": ttl}

    @staticmethod
    def _check_fqdn(rtype: str, value: str) -> None:
        if re.search(r"^NS|CNAME|MX|PTR|SRV", rtype):
            needed = 2 if rtype in ("CNAME", "MX", "PTR") else 3
            if value.count(".") < needed:
                _fail(E_INVALID, f"{rtype} record {value.rstrip('.')} should be a fully qualified domain "
                                 "name (FQDN)")

    @staticmethod
    def _check_int(value: str, what: str) -> None:
        if value and not re.fullmatch(r"[0-9]+", value):
            _fail(E_INVALID, f"invalid {what} format :: {value}")

    def _add_record(self, args: list[str]) -> str:
        user, domain, record, rtype, value, *rest = args
        priority, rid, restart, ttl = (rest + ["", "", "", ""])[:4]
        domain = self._tidy_domain(domain)
        self._check_user_format(user)
        self._check_domain_format(domain)
        fields = self._prepare(record, rtype, value, priority, ttl)
        zone = self._domain(user, domain)
        recs = zone["records"]
        if not rid:
            rid = str(max((int(k) for k in recs), default=0) + 1)
        self._check_int(rid, "id")
        if rid in recs:
            _fail(E_EXISTS, f"ID={rid} already exists")
        self._check_fqdn(fields["TYPE"], fields["VALUE"])
        self._check_int(ttl, "ttl")
        if restart and restart not in ("yes", "no"):
            _fail(E_INVALID, f"invalid restart format :: {restart}")
        now = datetime.now()
        recs[rid] = {"RECORD": fields["RECORD"], "TYPE": fields["TYPE"], "PRIORITY": fields["PRIORITY"],
                     "VALUE": fields["VALUE"], "ID": rid, "SUSPENDED": "no",
                     "TIME": now.strftime("%H:%M:%S"), "DATE": now.strftime("%Y-%m-%d"),
                     "TTL": ttl or zone["TTL"]}
        return ""

    def _change_record(self, args: list[str]) -> str:
        user, domain, rid, record, rtype, value, *rest = args
        priority, restart, ttl = (rest + ["", "", ""])[:3]
        domain = self._tidy_domain(domain)
        self._check_int(rid, "id")
        fields = self._prepare(record, rtype, value, priority, ttl)
        zone = self._domain(user, domain)
        if rid not in zone["records"]:
            _fail(E_NOTEXIST, f"{domain} id {rid} doesn't exist")
        self._check_fqdn(fields["TYPE"], fields["VALUE"])
        self._check_int(ttl, "ttl")
        current = zone["records"][rid]
        current.update({k: v for k, v in fields.items() if k != "TTL"})
        if ttl:
            current["TTL"] = ttl
        return ""

    def _delete_record(self, args: list[str]) -> str:
        user, domain, rid, *_ = args
        domain = self._tidy_domain(domain)
        self._check_user_format(user)
        self._check_domain_format(domain)
        self._check_int(rid, "id")
        zone = self._domain(user, domain)
        recs = zone["records"]
        if rid not in recs:
            _fail(E_NOTEXIST, f"{domain} id {rid} doesn't exist")
        rtype = recs[rid]["TYPE"]
        if rtype in ("A", "NS") and sum(1 for r in recs.values() if r["TYPE"] == rtype) <= 1:
            _fail(E_INVALID, f"at least one {rtype} record should remain active")
        del recs[rid]
        return ""

    def _domain_json(self, domain: str, zone: dict) -> dict:
        return {"IP": zone["IP"], "TPL": "default", "TTL": zone["TTL"], "EXP": "", "SOA": self.nameservers[0],
                "SERIAL": zone["DATE"].replace("-", "") + "01", "SRC": "", "RECORDS": str(len(zone["records"])),
                "DNSSEC": "no", "KEY": "", "SLAVE": "no", "MASTER": "", "SUSPENDED": "no",
                "TIME": zone["TIME"], "DATE": zone["DATE"]}

    @staticmethod
    def _format(data: dict, fmt: str, columns: list[str]) -> str:
        if fmt == "json":
            return json.dumps(data, indent=4)
        lines = []
        for key, row in data.items():
            lines.append("\t".join([key] + [str(row.get(c, "")) for c in columns]))
        if fmt == "plain":
            return "\n".join(lines)
        return "\n".join(["\t".join(["ID"] + columns)] + lines)  # shell / csv: rough, nobody parses it

    def _list_domains(self, args: list[str]) -> str:
        user, fmt = args[0], (args[1] if len(args) > 1 else "shell")
        domains = self._user(user)
        data = {d: self._domain_json(d, z) for d, z in domains.items()}
        return self._format(data, fmt, ["IP", "TPL", "TTL", "RECORDS", "SUSPENDED", "DATE"])

    def _list_domain(self, args: list[str]) -> str:
        user, domain, fmt = args[0], args[1], (args[2] if len(args) > 2 else "shell")
        zone = self._domain(user, domain)
        return self._format({domain: self._domain_json(domain, zone)}, fmt,
                            ["IP", "TPL", "TTL", "RECORDS", "SUSPENDED", "DATE"])

    def _list_records(self, args: list[str]) -> str:
        user, domain, fmt = args[0], args[1], (args[2] if len(args) > 2 else "shell")
        zone = self._domain(user, domain)
        recs = zone["records"]
        data = {k: dict(recs[k]) for k in sorted(recs, key=int)}
        return self._format(data, fmt, ["RECORD", "TYPE", "VALUE", "DATE"])
