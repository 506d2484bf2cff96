"""A fake Cloudflare API v4 (the DNS part) over real HTTP on 127.0.0.1, stateful, for tests.

    cf = FakeCloudflare({"0123456789abcdef0123456789abcdef": "example.com"})
    requests.get(f"{cf.base_url}/zones/{zone_id}/dns_records", headers=cf.headers, params={"name": ...})
    cf.records(zone_id)            # what the fake holds (copies)
    cf.requests                    # [(method, path), ...] e.g. ("POST", "/client/v4/zones/<id>/dns_records")
    cf.down = True                 # connection refused until set back to False (same port)
    cf.fail_next(2, 500, 10000, "...")   # the next 2 requests answer that error envelope
    cf.close()

What it answers (every body is the v4 envelope {success, errors:[{code, message}], messages, result}
plus result_info on lists):
- auth: `Authorization: Bearer <token>`. Missing -> 401 [10000 "Authentication error"]; a well-formed
  (40 characters [A-Za-z0-9_-]) but wrong token -> 403 [10000 "Authentication error"]; a malformed one
  -> 400 [6003 "Invalid request headers", error_chain [6111 "Invalid format for Authorization header"]].
- GET /user/tokens/verify -> {id, status: "active"} with message 10000 "This API Token is valid and active".
- GET /zones (filters name, status, page, per_page), GET /zones/{zone_id}.
- GET/POST /zones/{zone_id}/dns_records; GET/PATCH/PUT/DELETE /zones/{zone_id}/dns_records/{id}.
  List filters: name (FQDN, case-insensitive; also name.exact), type, content (also content.exact),
  proxied, match=all|any, order=type|name|content|ttl|proxied, direction=asc|desc, page (from 1),
  per_page (default 100, at most 5,000,000); result_info {page, per_page, count, total_count, total_pages};
  a page past the end is an empty list.
- names: "@" is the apex, a name not ending in the zone gets the zone appended (Cloudflare's relative
  names), lower-cased, trailing dot dropped; PTR/CNAME/NS/MX content is stored without trailing dot;
  AAAA content is stored compressed.
- validation (400): A content 9005 "Content for A record must be a valid IPv4 address.", AAAA 9006
  "Content for AAAA record must be a valid IPv6 address.", TTL 9021 "Invalid TTL. Must be between 30 and
  86400 seconds, or 1 for automatic.", proxied on a type that cannot be 9041 "Invalid proxied mode.
  Record cannot be proxied.", an identical record (type, name, content) 81057 "Record already exists.",
  CNAME next to A/AAAA/CNAME (or the reverse) 81053 "An A, AAAA, or CNAME record with that host already
  exists.", an unknown type 1004 "DNS Validation Error" (error_chain 9020), no name 9000 "DNS name is
  invalid.", no content 9008 (approximation), a body that is not a JSON object 9207 "Request body is
  invalid." (approximation).
- unknown zone id -> 400 [7003 "Could not route to /client/v4/zones/<id>/dns_records, perhaps your
  object identifier is invalid?", 7000 "No route for that URI"]; unknown record id of the right shape
  (32 hex digits) -> 404 [81044 "Record does not exist."]; of another shape -> 400 7003/7000.
Recent Cloudflare answers an identical POST with 81058 "An identical record already exists.": set
`cf.duplicate_error = (81058, "An identical record already exists.")` to test a client against that.
"""
from __future__ import annotations

import ipaddress
import json
import re
import secrets
import uuid
from datetime import datetime, timezone
from urllib.parse import parse_qs

from ._server import FakeHttpServer, Response

PREFIX = "/client/v4"
SUPPORTED_TYPES = ("A", "AAAA", "CNAME", "PTR", "TXT", "MX", "NS", "SRV", "CAA")
PROXIABLE_TYPES = ("A", "AAAA", "CNAME")
HOSTNAME_CONTENT_TYPES = ("CNAME", "PTR", "NS", "MX")
MAX_PER_PAGE = 5_000_000
TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{40}$")
ID_SHAPE = re.compile(r"^[0-9a-f]{32}$")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def envelope(result=None, *, success: bool = True, errors=None, messages=None, result_info=None) -> dict:
    body = {"success": success, "errors": errors or [], "messages": messages or [], "result": result}
    if result_info is not None:
        body["result_info"] = result_info
    return body


class FakeCloudflare(FakeHttpServer):
    """Stateful fake of the Cloudflare v4 DNS API. `zones` maps zone id -> zone name."""

    def __init__(self, zones: dict[str, str] | None = None, token: str | None = None, *,
                 port: int = 0, min_ttl: int = 30, max_ttl: int = 86400):
        self.token = token or secrets.token_urlsafe(30)  # 40 characters, the shape Cloudflare issues
        self.zones: dict[str, str] = {zid: name.rstrip(".").lower() for zid, name in (zones or {}).items()}
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.duplicate_error = (81057, "Record already exists.")
        self._records: dict[str, list[dict]] = {zid: [] for zid in self.zones}
        self.requests: list[tuple[str, str]] = []
        super().__init__(port)

    # ------------------------------------------------------------------ for tests

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def add_zone(self, name: str, zone_id: str | None = None) -> str:
        zone_id = zone_id or uuid.uuid4().hex
        with self._lock:
            self.zones[zone_id] = name.rstrip(".").lower()
            self._records.setdefault(zone_id, [])
        return zone_id

    def zone_id(self, name: str) -> str:
        for zid, zname in self.zones.items():
            if zname == name.rstrip(".").lower():
                return zid
        raise KeyError(name)

    def records(self, zone_id: str) -> list[dict]:
        """Copies of the zone's records, in creation order."""
        with self._lock:
            return [dict(r) for r in self._records[zone_id]]

    def add_record(self, zone_id: str, type: str, name: str, content: str, ttl: int = 1,  # noqa: A002
                   proxied: bool = False, **extra) -> dict:
        """Seed a record without HTTP (validated like a POST); returns it."""
        with self._lock:
            status, result = self._create(zone_id, {"type": type, "name": name, "content": content,
                                                    "ttl": ttl, "proxied": proxied, **extra})
        if status != 200:
            raise ValueError(result)
        return dict(result)

    def fail_next(self, n: int = 1, status: int = 500, code: int = 10001,
                  message: str = "Internal server error (injected)", *, method: str | None = None,
                  headers: dict[str, str] | None = None) -> None:
        """The next `n` requests (of `method`, when given) answer `status` with that error envelope and
        change nothing. `headers` are added to those answers (e.g. {"Retry-After": "1"} with 429)."""
        self._queue_failure(n, {"status": status, "code": code, "message": message,
                                "method": method, "headers": headers or {}})

    def count(self, method: str, path_suffix: str = "") -> int:
        """How many requests of `method` hit a path ending with `path_suffix`."""
        return sum(1 for m, p in self.requests if m == method and p.endswith(path_suffix))

    # ------------------------------------------------------------------ HTTP

    def _log_request(self, method, path, query, headers, body) -> None:
        self.requests.append((method, path))

    @staticmethod
    def _json(status: int, body: dict, headers: dict[str, str] | None = None) -> Response:
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        return Response(status, json.dumps(body), hdrs)

    def _error(self, status: int, *errors: tuple[int, str] | dict) -> Response:
        errs = [e if isinstance(e, dict) else {"code": e[0], "message": e[1]} for e in errors]
        return self._json(status, envelope(None, success=False, errors=errs))

    def failure_response(self, spec, method, path, query, headers, body) -> Response:
        return self._json(spec["status"], envelope(None, success=False,
                                                   errors=[{"code": spec["code"], "message": spec["message"]}]),
                          spec["headers"])

    def _auth(self, headers: dict[str, str]) -> Response | None:
        value = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
        if value is None:
            return self._error(401, (10000, "Authentication error"))
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token == self.token:
            return None
        if scheme.lower() != "bearer" or not TOKEN_SHAPE.match(token):
            return self._error(400, {"code": 6003, "message": "Invalid request headers",
                                     "error_chain": [{"code": 6111,
                                                      "message": "Invalid format for Authorization header"}]})
        return self._error(403, (10000, "Authentication error"))

    def _no_route(self, path: str) -> Response:
        return self._error(400, (7003, f"Could not route to {path}, perhaps your object identifier is invalid?"),
                           (7000, "No route for that URI"))

    def dispatch(self, method, path, query, headers, body) -> Response:
        if not path.startswith(PREFIX + "/"):
            return self._error(404, (7000, "No route for that URI"))
        denied = self._auth(headers)
        if denied is not None:
            return denied
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        parts = [p for p in path[len(PREFIX):].split("/") if p]

        if parts == ["user", "tokens", "verify"] and method == "GET":
            return self._json(200, envelope({"id": uuid.uuid5(uuid.NAMESPACE_OID, self.token).hex,
                                             "status": "active"},
                                            messages=[{"code": 10000, "message": "This API Token is valid and active",
                                                       "type": None}]))
        if parts == ["zones"]:
            if method != "GET":
                return self._error(405, (7001, "Method not allowed for this endpoint"))
            return self._list_zones(params)
        if len(parts) >= 2 and parts[0] == "zones":
            zone_id = parts[1]
            if zone_id not in self.zones:
                return self._no_route(path)
            if len(parts) == 2:
                if method != "GET":
                    return self._error(405, (7001, "Method not allowed for this endpoint"))
                return self._json(200, envelope(self._zone_json(zone_id)))
            if parts[2] == "dns_records" and len(parts) == 3:
                if method == "GET":
                    return self._list_records(zone_id, params)
                if method == "POST":
                    data, bad = self._body(body)
                    if bad:
                        return bad
                    status, result = self._create(zone_id, data)
                    return self._result(status, result)
                return self._error(405, (7001, "Method not allowed for this endpoint"))
            if parts[2] == "dns_records" and len(parts) == 4:
                record_id = parts[3]
                record = next((r for r in self._records[zone_id] if r["id"] == record_id), None)
                if record is None:
                    if ID_SHAPE.match(record_id):
                        return self._error(404, (81044, "Record does not exist."))
                    return self._no_route(path)
                if method == "GET":
                    return self._json(200, envelope(dict(record)))
                if method == "DELETE":
                    self._records[zone_id].remove(record)
                    return self._json(200, envelope({"id": record_id}))
                if method in ("PATCH", "PUT"):
                    data, bad = self._body(body)
                    if bad:
                        return bad
                    if method == "PATCH":
                        merged = {k: record[k] for k in ("type", "name", "content", "ttl", "proxied",
                                                         "comment", "tags", "priority") if k in record}
                        merged.update(data)
                        data = merged
                    status, result = self._validate(zone_id, data, replacing=record)
                    if status != 200:
                        return self._result(status, result)
                    record.update(result)
                    record["modified_on"] = _now()
                    return self._json(200, envelope(dict(record)))
                return self._error(405, (7001, "Method not allowed for this endpoint"))
        return self._no_route(path)

    def _result(self, status: int, result) -> Response:
        if status == 200:
            return self._json(200, envelope(dict(result)))
        return self._error(status, *result)

    def _body(self, body: bytes):
        try:
            data = json.loads(body or b"null")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return None, self._error(400, (9207, "Request body is invalid."))
        return data, None

    # ------------------------------------------------------------------ zones

    def _zone_json(self, zone_id: str) -> dict:
        return {"id": zone_id, "name": self.zones[zone_id], "status": "active", "paused": False,
                "type": "full", "development_mode": 0,
                "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"]}

    def _list_zones(self, params: dict) -> Response:
        zones = [self._zone_json(zid) for zid in self.zones]
        if params.get("name"):
            zones = [z for z in zones if z["name"] == params["name"].rstrip(".").lower()]
        if params.get("status"):
            zones = [z for z in zones if z["status"] == params["status"]]
        return self._paged(zones, params, default_per_page=20, max_per_page=50)

    # ------------------------------------------------------------------ records

    def _paged(self, items: list, params: dict, default_per_page: int = 100,
               max_per_page: int = MAX_PER_PAGE) -> Response:
        def as_int(key, default):
            try:
                return int(params.get(key, default))
            except (TypeError, ValueError):
                return default
        page = max(1, as_int("page", 1))
        per_page = min(max(1, as_int("per_page", default_per_page)), max_per_page)
        total = len(items)
        chunk = items[(page - 1) * per_page: page * per_page]
        info = {"page": page, "per_page": per_page, "count": len(chunk), "total_count": total,
                "total_pages": (total + per_page - 1) // per_page}
        return self._json(200, envelope(chunk, result_info=info))

    def _list_records(self, zone_id: str, params: dict) -> Response:
        zone = self.zones[zone_id]
        tests = []
        name = params.get("name.exact", params.get("name"))
        if name:
            wanted = self._fqdn(name, zone)
            tests.append(lambda r: r["name"] == wanted)
        if params.get("type"):
            tests.append(lambda r: r["type"] == params["type"].upper())
        content = params.get("content.exact", params.get("content"))
        if content:
            tests.append(lambda r: r["content"] == content)
        if params.get("proxied") in ("true", "false"):
            tests.append(lambda r: r["proxied"] == (params["proxied"] == "true"))
        combine = any if params.get("match") == "any" else all
        items = [dict(r) for r in self._records[zone_id] if combine(t(r) for t in tests)] if tests \
            else [dict(r) for r in self._records[zone_id]]
        order = params.get("order")
        if order in ("type", "name", "content", "ttl", "proxied"):
            items.sort(key=lambda r: r[order], reverse=params.get("direction") == "desc")
        return self._paged(items, params)

    @staticmethod
    def _fqdn(name: str, zone: str) -> str:
        name = name.strip().lower().rstrip(".")
        if name in ("@", ""):
            return zone
        if name == zone or name.endswith("." + zone):
            return name
        return f"{name}.{zone}"

    def _validate(self, zone_id: str, data: dict, replacing: dict | None = None):
        """(200, normalized fields) or (400, [(code, message), ...])."""
        zone = self.zones[zone_id]
        rtype = str(data.get("type") or "").upper()
        if rtype not in SUPPORTED_TYPES:
            return 400, [{"code": 1004, "message": "DNS Validation Error",
                          "error_chain": [{"code": 9020, "message": "Invalid DNS record type"}]}]
        raw_name = data.get("name")
        if not isinstance(raw_name, str) or not raw_name.strip():
            return 400, [(9000, "DNS name is invalid.")]
        name = self._fqdn(raw_name, zone)
        content = data.get("content")
        if not isinstance(content, str) or not content.strip():
            return 400, [(9008, f"Content for {rtype} record is invalid.")]
        content = content.strip()
        if rtype == "A":
            try:
                content = str(ipaddress.IPv4Address(content))
            except ValueError:
                return 400, [(9005, "Content for A record must be a valid IPv4 address.")]
        elif rtype == "AAAA":
            try:
                content = ipaddress.IPv6Address(content).compressed
            except ValueError:
                return 400, [(9006, "Content for AAAA record must be a valid IPv6 address.")]
        elif rtype in HOSTNAME_CONTENT_TYPES:
            content = content.lower().rstrip(".")
        proxied = data.get("proxied", False)
        if proxied is None:
            proxied = False
        if not isinstance(proxied, bool):
            return 400, [(9003, "Invalid 'proxied' value, must be a boolean")]
        if proxied and rtype not in PROXIABLE_TYPES:
            return 400, [(9041, "Invalid proxied mode. Record cannot be proxied.")]
        ttl = data.get("ttl", 1)
        if ttl is None:
            ttl = 1
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not (
                ttl == 1 or self.min_ttl <= ttl <= self.max_ttl):
            return 400, [(9021, f"Invalid TTL. Must be between {self.min_ttl} and {self.max_ttl} seconds, "
                                "or 1 for automatic.")]
        if proxied:
            ttl = 1
        for other in self._records[zone_id]:
            if other is replacing or other["name"] != name:
                continue
            if other["type"] == rtype and other["content"] == content:
                return 400, [self.duplicate_error]
            if (rtype == "CNAME" and other["type"] in PROXIABLE_TYPES) or (
                    other["type"] == "CNAME" and rtype in PROXIABLE_TYPES):
                return 400, [(81053, "An A, AAAA, or CNAME record with that host already exists.")]
        fields = {"type": rtype, "name": name, "content": content, "proxied": proxied,
                  "proxiable": rtype in PROXIABLE_TYPES, "ttl": ttl,
                  "comment": data.get("comment"), "tags": list(data.get("tags") or [])}
        if "priority" in data and rtype in ("MX", "SRV", "URI"):
            fields["priority"] = data["priority"]
        return 200, fields

    def _create(self, zone_id: str, data: dict):
        status, fields = self._validate(zone_id, data)
        if status != 200:
            return status, fields
        now = _now()
        record = {"id": uuid.uuid4().hex, "zone_id": zone_id, "zone_name": self.zones[zone_id],
                  **fields, "locked": False,
                  "meta": {"auto_added": False, "managed_by_apps": False,
                           "managed_by_argo_tunnel": False, "source": "primary"},
                  "created_on": now, "modified_on": now}
        self._records[zone_id].append(record)
        return 200, record
