"""A small IMDSv2 endpoint per local worker: instance id, instance tags, the instance identity
document, Spot notices, and the instance role's credentials.

It speaks the subset of the EC2 instance metadata service that `worker_ami.metadata` and
botocore's credential chain use, with IMDSv2's rules: a session token from
`PUT /latest/api/token` must accompany every GET (401 without it), and `spot/instance-action` is
404 until a notice is set. The credentials are fake (the embedded AWS takes any), but they are
there, as on EC2, so a test can show who may read them.

Who may: on the worker AMI a firewall rule (`meta skuid` in nftables, what iptables calls
`-m owner --uid-owner`) rejects every packet of the app users to 169.254.169.254. This server
does the same by the same test: it refuses a connection whose client socket is owned by an app
user's uid, as the kernel tells (the socket's owner, which the kernel's owner match uses too).
"""

from __future__ import annotations

import errno
import json
import secrets
import socket
import struct
import threading
import time
from collections.abc import Container
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from worker_ami.runner import APP_UIDS

TOKEN_PATH = "/latest/api/token"  # noqa: S105 - a URL path, not a secret
META_PREFIX = "/latest/meta-data/"
IDENTITY_DOCUMENT_PATH = "/latest/dynamic/instance-identity/document"
CREDENTIALS_PATH = "iam/security-credentials/"
ROLE_NAME = "lighthpc-local-worker"
PROC_NET_TCP = Path("/proc/net/tcp")


class MetadataServer:
    def __init__(
        self,
        instance_id: str,
        tags: dict[str, str],
        instance_type: str = "c5.large",
        lifecycle: str = "on-demand",
        refused_uids: Container[int] = APP_UIDS,
        launched_at: float | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.instance_type = instance_type
        self.lifecycle = lifecycle
        # EC2's LaunchTime, epoch seconds: the document's `pendingTime` (now, if not given).
        self.launched_at = time.time() if launched_at is None else launched_at
        self.tags = dict(tags)
        self.spot_action: dict[str, str] | None = None
        self.rebalance_at: str | None = None  # set to a time to recommend a rebalance
        self._tokens: set[str] = set()
        self.refused_uids = refused_uids
        self.refused = 0  # connections refused by the owner match
        self._server = _OwnerMatchServer(("127.0.0.1", 0), _handler_for(self), self)
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
        if path == CREDENTIALS_PATH:
            return ROLE_NAME
        if path == CREDENTIALS_PATH + ROLE_NAME:
            return json.dumps(_role_credentials(self.instance_id))
        return None

    def identity_document(self) -> str:
        """The fields of EC2's instance identity document that a worker reads (EC2's document
        has more: region, image, account, ...). `pendingTime` is when the instance entered
        pending, to the second, as EC2 gives it."""
        pending = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.launched_at))
        return json.dumps(
            {
                "instanceId": self.instance_id,
                "instanceType": self.instance_type,
                "pendingTime": pending,
                "version": "2017-09-30",
            }
        )

    def admits(self, client: tuple[str, int]) -> bool:
        """The firewall's owner match: no app user's socket gets through."""
        if not PROC_NET_TCP.exists():  # not Linux: nothing to match on, as without the rule
            return True
        host, port = self._server.server_address[:2]
        owner = socket_owner(client, (str(host), int(port)))
        admitted = owner is not None and owner not in self.refused_uids
        if not admitted:
            self.refused += 1
        return admitted


class _OwnerMatchServer(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], handler: type, metadata: MetadataServer) -> None:
        self._metadata = metadata
        super().__init__(address, handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        # False closes the connection before a byte is read: the client sees a reset.
        return self._metadata.admits(client_address)


def socket_owner(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The uid owning the IPv4 TCP socket `local` -> `remote` (None if no such socket: refused,
    as the firewall would for a socket it cannot attribute). The kernel is asked for that one
    socket (sock_diag, what `ss` uses); /proc/net/tcp, which lists every socket of the machine
    (6 ms for the 3,600 a local run leaves in TIME-WAIT), only where netlink cannot answer."""
    try:
        return _sock_diag_owner(local, remote)
    except OSError:
        pass
    want = (_hex_address(*local), _hex_address(*remote))
    with open(PROC_NET_TCP) as table:
        next(table)  # the header
        for line in table:
            fields = line.split()
            if (fields[1], fields[2]) == want:
                return int(fields[7])
    return None


# linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h
_NETLINK_SOCK_DIAG, _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, _NLMSG_ERROR = 4, 20, 1, 2
_NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_NO_COOKIE = 0xFFFFFFFF  # INET_DIAG_NOCOOKIE: match whatever socket has this address
_UID_AT = _NLMSG_HEADER.size + 64  # inet_diag_msg: 4 bytes, the socket id (48), 3 x u32, uid


def _sock_diag_owner(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """One inet_diag request for the exact socket (not a dump): its owner's uid, None if there
    is no such socket. OSError where the kernel does not answer so (no netlink, or a reply not
    understood)."""
    family = getattr(socket, "AF_NETLINK", None)
    if family is None:
        raise OSError("no netlink on this system")
    request = (
        struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)  # any state
        + struct.pack("!HH", local[1], remote[1])
        + socket.inet_aton(local[0]).ljust(16, b"\0")
        + socket.inet_aton(remote[0]).ljust(16, b"\0")
        + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)  # any interface
    )
    header = _NLMSG_HEADER.pack(
        _NLMSG_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0
    )
    with socket.socket(family, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as diag:
        diag.settimeout(1.0)
        diag.send(header + request)
        reply = diag.recv(8192)
    if len(reply) < _NLMSG_HEADER.size + 4:
        raise OSError("sock_diag: a reply too short")
    _, kind, _, _, _ = _NLMSG_HEADER.unpack_from(reply)
    if kind == _NLMSG_ERROR:
        (error,) = struct.unpack_from("=i", reply, _NLMSG_HEADER.size)
        if -error == errno.ENOENT:
            return None
        raise OSError(-error, "sock_diag refused the lookup")
    if kind != _SOCK_DIAG_BY_FAMILY or len(reply) < _UID_AT + 4:
        raise OSError("sock_diag: a reply not understood")
    (uid,) = struct.unpack_from("=I", reply, _UID_AT)
    return uid


def _hex_address(host: str, port: int) -> str:
    # The kernel prints the address as a native-endian 32-bit number and the port in host order.
    (number,) = struct.unpack("=I", socket.inet_aton(host))
    return f"{number:08X}:{port:04X}"


def _role_credentials(instance_id: str) -> dict[str, str]:
    """What EC2 serves for the instance role: fake, but shaped for botocore's fetcher."""
    now = time.time()
    return {
        "Code": "Success",
        "LastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "Type": "AWS-HMAC",
        "AccessKeyId": "ASIALOCALWORKERROLE0",
        "SecretAccessKey": f"local-worker-secret-{instance_id}",
        "Token": f"local-worker-session-{instance_id}",
        "Expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 6 * 3600)),
    }


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
            if self.path == IDENTITY_DOCUMENT_PATH:
                return self._send(200, server.identity_document())
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
