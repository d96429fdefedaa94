"""The dashboard (issue 14): a small HTTP server for the page in `local/dashboard_static/`, which
forwards the page's `/api/...` calls to lighthpc's API.

`lighthpc up` starts one next to the local stack's API (calls unsigned, as the CLI's own calls to
the local stage); `lighthpc dashboard --api URL` starts one for a deployed stage, and signs every
forwarded call with SigV4 from the user's own AWS credentials (`local.client.api`, the CLI's
client), so no credential ever reaches the browser. The deployed API never serves the page.

Only reads and a mission's cancel are forwarded (GET, and DELETE of /missions/{id}); a request
whose Host is not this server's own address is refused, so another site cannot use the user's
credentials through it (a DNS-rebinding page names its own host), and a cross-site DELETE is
stopped by the browser's preflight, which this server never grants.
"""

from __future__ import annotations

import json
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from local.client import CliError, Target, api

STATIC = Path(__file__).resolve().parent / "dashboard_static"
ASSETS = {  # every file the page is made of, with its type: nothing else is served
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
API_PREFIX = "/api"
# What the page may ask of the API: GETs of the routes it reads, and a mission's cancel.
_READS = re.compile(r"^/(overview|me|missions(/[A-Za-z0-9-]+(/(map|timeline|outcome))?)?)$")
_CANCEL = re.compile(r"^/missions/[A-Za-z0-9-]+$")
# A page whose API no longer answers says so; the rest of the code is the API's own answer.
BAD_GATEWAY = HTTPStatus.BAD_GATEWAY


class DashboardServer:
    """The page and its API forwarder on host:port (0: any free port), in a thread."""

    def __init__(self, target: Target, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        handler = type("BoundHandler", (DashboardHandler,), {"target": target})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> DashboardServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="dashboard", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class DashboardHandler(BaseHTTPRequestHandler):
    target: Target  # set on the subclass DashboardServer makes
    server_version = "lighthpc-dashboard"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the console is for missions, as for the API's own server

    def do_GET(self) -> None:
        if not self._host_is_ours():
            return
        path = urlsplit(self.path).path
        if path.startswith(API_PREFIX + "/"):
            self._forward("GET", _READS)
        elif path in ("/", "/index.html"):
            self._asset("index.html")
        elif path.startswith("/static/") and path.removeprefix("/static/") in ASSETS:
            self._asset(path.removeprefix("/static/"))
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no page {path!r}"})

    def do_DELETE(self) -> None:
        if self._host_is_ours():
            self._forward("DELETE", _CANCEL)

    def _host_is_ours(self) -> bool:
        host, port = self.server.server_address[:2]
        allowed = {f"{host}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"}
        if self.headers.get("Host") in allowed:
            return True
        self._send_json(HTTPStatus.FORBIDDEN, {"error": "wrong Host for this dashboard"})
        return False

    def _forward(self, method: str, allowed: re.Pattern[str]) -> None:
        parts = urlsplit(self.path)
        path = parts.path.removeprefix(API_PREFIX)
        if not allowed.match(path):
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"not forwarded: {method} {path}"})
            return
        query = f"?{parts.query}" if parts.query else ""
        try:
            status, body = api(self.target, method, path + query)
        except (OSError, CliError) as e:  # URLError included: the API does not answer
            self._send_json(
                BAD_GATEWAY, {"error": f"the API at {self.target.api_url} does not answer: {e}"}
            )
            return
        self._send_json(status, body)

    def _asset(self, name: str) -> None:
        body = (STATIC / name).read_bytes()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ASSETS[name])
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        # No external asset, ever: the page works on machines without internet.
        self.send_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        )
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)
