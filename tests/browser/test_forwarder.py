"""The dashboard's forwarder (local/dashboard.py) without a browser: a deployed stage's calls are
signed with the user's credentials on the way out and the browser never sees them; only the
page's reads and a mission's cancel pass; another Host is refused."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from local.client import DeployedApi
from local.dashboard import DashboardServer


class RecordingApi(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        RecordingApi.seen.append({"method": self.command, "path": self.path, **self.headers})
        body = json.dumps({"ok": True, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_DELETE = _answer


@pytest.fixture
def deployed(monkeypatch):
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    api = ThreadingHTTPServer(("127.0.0.1", 0), RecordingApi)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    RecordingApi.seen = []
    host, port = api.server_address[:2]
    target = DeployedApi(api_url=f"http://{host}:{port}/api", region="eu-west-1")
    with DashboardServer(target) as dashboard:
        yield dashboard
    api.shutdown()


def fetch(url: str, method: str = "GET", host: str | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, method=method)
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def test_a_deployed_stages_calls_are_signed_and_the_browser_sees_no_credential(deployed):
    path = "/missions/m-20260101000000-0badcafe/map?first=0&last=9"
    status, headers, body = fetch(f"{deployed.url}/api{path}")
    assert status == 200 and body == {"ok": True, "path": f"/api{path}"}
    (sent,) = RecordingApi.seen
    assert sent["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/execute-api/aws4_request" in sent["Authorization"]
    assert not {k.lower() for k in headers} & {"authorization", "x-amz-date"}
    assert "AKIDEXAMPLE" not in json.dumps(body)


def test_only_the_pages_calls_pass(deployed):
    assert fetch(f"{deployed.url}/api/missions/m-1", "DELETE")[0] == 200  # cancel
    assert fetch(f"{deployed.url}/api/missions/m-1/transactions", "DELETE")[0] == 404
    assert fetch(f"{deployed.url}/api/openapi.json")[0] == 404
    assert fetch(f"{deployed.url}/api/overview", host="evil.example:80")[0] == 403
    assert [s["method"] for s in RecordingApi.seen] == ["DELETE"]


def test_the_page_is_served_with_no_external_asset(deployed):
    request = urllib.request.Request(f"{deployed.url}/")
    with urllib.request.urlopen(request, timeout=10) as response:
        page = response.read().decode()
        policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy
    assert "http://" not in page and "https://" not in page
