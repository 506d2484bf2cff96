"""The HTTP plumbing the fake DNS providers share: a threaded server on 127.0.0.1, a request log,
an outage switch that really stops listening, injected failures and latency."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class Response:
    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int, body: bytes | str = b"", headers: dict[str, str] | None = None):
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.headers = dict(headers or {})


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so `down = True` really cuts a client off (no kept-alive
    # socket that would still be served by a handler thread).
    protocol_version = "HTTP/1.0"
    server_version = "fake"
    sys_version = ""
    fake: "FakeHttpServer"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        split = urlsplit(self.path)
        resp = self.fake._handle(self.command, split.path, split.query, dict(self.headers.items()), body)
        if resp is None:  # the outage switch flipped while this request was on its way
            self.close_connection = True
            return
        self.send_response(resp.status)
        for key, value in resp.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if self.command != "HEAD" and resp.body:
            self.wfile.write(resp.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def log_message(self, format, *args):  # noqa: A002 - keep test output clean
        pass


class FakeHttpServer:
    """Base of the fakes: subclasses implement `dispatch(method, path, query, headers, body) -> Response`
    and `failure_response(spec, method, path, query, headers, body) -> Response`."""

    def __init__(self, port: int = 0):
        if not hasattr(self, "_lock"):  # a subclass may need it while seeding state before this runs
            self._lock = threading.RLock()
        self.latency = 0.0          # seconds every answer waits (for timeout tests)
        self.calls: list[dict] = []  # every request in full: method, path, query, headers, body
        self._failures: list[dict] = []
        self._down = False
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._listen()

    # ------------------------------------------------------------------ listening

    def _listen(self) -> None:
        handler = type("Handler", (_Handler,), {"fake": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        httpd.daemon_threads = True
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{type(self).__name__}:{self._port}", daemon=True)
        self._thread.start()

    def _unlisten(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def down(self) -> bool:
        """True: nothing listens on the port any more (connections are refused). False: back up, same port."""
        return self._down

    @down.setter
    def down(self, value: bool) -> None:
        with self._lock:
            if value and not self._down:
                self._down = True
                self._unlisten()
            elif not value and self._down:
                self._listen()
                self._down = False

    def close(self) -> None:
        with self._lock:
            self._down = True
            self._unlisten()

    stop = close

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ faults

    def _queue_failure(self, n: int, spec: dict) -> None:
        with self._lock:
            for _ in range(n):
                self._failures.append(dict(spec))

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    # ------------------------------------------------------------------ request path

    def _handle(self, method, path, query, headers, body) -> Response | None:
        if self._down:
            return None
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            self.calls.append({"method": method, "path": path, "query": query,
                               "headers": headers, "body": body})
            self._log_request(method, path, query, headers, body)
            spec = None
            for i, failure in enumerate(self._failures):
                if failure.get("method") in (None, method):
                    spec = self._failures.pop(i)
                    break
            if spec is not None:
                return self.failure_response(spec, method, path, query, headers, body)
            try:
                return self.dispatch(method, path, query, headers, body)
            except Exception as exc:  # noqa: BLE001 - a bug in the fake must show, not hang the client
                return Response(500, f"fake server error: {type(exc).__name__}: {exc}",
                                {"Content-Type": "text/plain"})

    def _log_request(self, method, path, query, headers, body) -> None:
        """Subclasses append to their own `requests` log here."""

    def dispatch(self, method, path, query, headers, body) -> Response:  # pragma: no cover
        raise NotImplementedError

    def failure_response(self, spec, method, path, query, headers, body) -> Response:  # pragma: no cover
        raise NotImplementedError
