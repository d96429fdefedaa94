"""A small IMDSv2 endpoint per local worker: instance id, instance tags, Spot notices.

It speaks the subset of the EC2 instance metadata service that `worker_ami.metadata` uses, with
IMDSv2's rules: a session token from `PUT /latest/api/token` must accompany every GET (401
without it), and `spot/instance-action` is 404 until a notice is set.
"""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN_PATH = "/latest/api/token"  # noqa: S105 - a URL path, not a secret
META_PREFIX = "/latest/meta-data/"


class MetadataServer:
    def __init__(
        self,
        instance_id: str,
        tags: dict[str, str],
        instance_type: str = "c5.large",
        lifecycle: str = "on-demand",
    ) -> None:
        self.instance_id = instance_id
        self.instance_type = instance_type
        self.lifecycle = lifecycle
        self.tags = dict(tags)
        self.spot_action: dict[str, str] | None = None
        self.rebalance_at: str | None = None  # set to a time to recommend a rebalance
        self._tokens: set[str] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"imds-{instance_id}", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> MetadataServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def new_token(self) -> str:
        token = secrets.token_urlsafe(24)
        self._tokens.add(token)
        return token

    def valid(self, token: str | None) -> bool:
        return token is not None and token in self._tokens

    def lookup(self, path: str) -> str | None:
        if path == "instance-id":
            return self.instance_id
        if path == "instance-type":
            return self.instance_type
        if path == "instance-life-cycle":
            return self.lifecycle
        if path == "tags/instance":
            return "\n".join(sorted(self.tags))
        if path.startswith("tags/instance/"):
            return self.tags.get(path.removeprefix("tags/instance/"))
        if path == "events/recommendations/rebalance":
            return (
                None if self.rebalance_at is None else json.dumps({"noticeTime": self.rebalance_at})
            )
        if path == "spot/instance-action":
            return None if self.spot_action is None else json.dumps(self.spot_action)
        return None


def _handler_for(server: MetadataServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            if self.path != TOKEN_PATH:
                return self._send(404, "not found")
            if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return self._send(400, "missing X-aws-ec2-metadata-token-ttl-seconds")
            return self._send(200, server.new_token())

        def do_GET(self) -> None:
            if not server.valid(self.headers.get("X-aws-ec2-metadata-token")):
                return self._send(401, "IMDSv2 token required")
            if not self.path.startswith(META_PREFIX):
                return self._send(404, "not found")
            value = server.lookup(self.path.removeprefix(META_PREFIX))
            if value is None:
                return self._send(404, "not found")
            return self._send(200, value)

        def _send(self, status: int, text: str) -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the workers poll it; keep the console for what matters

    return Handler
