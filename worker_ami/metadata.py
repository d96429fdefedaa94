"""Instance metadata behind one small interface: IMDSv2 on EC2, a static value in tests.

The local runtime serves an IMDSv2-compatible endpoint per worker, so the agent there uses the
same `Imdsv2Metadata` as on EC2, only with another base URL.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

DEFAULT_IMDS_URL = "http://169.254.169.254"
TOKEN_TTL_SECONDS = 21600


@dataclass(frozen=True)
class InstanceIdentity:
    instance_id: str
    tags: dict[str, str] = field(default_factory=dict)
    instance_type: str | None = None
    market: str = "on-demand"  # IMDS `instance-life-cycle`: "spot" or "on-demand"
    # When EC2 launched it (the identity document's `pendingTime`), epoch seconds: the start
    # of what EC2 bills, boot included. None where metadata does not say.
    launched_at: float | None = None


class MetadataSource(Protocol):
    def identity(self) -> InstanceIdentity: ...

    def spot_action(self) -> dict[str, str] | None:
        """The pending Spot interruption (`{"action": ..., "time": ...}`), or None."""
        ...

    def rebalance_recommended(self) -> bool:
        """EC2's rebalance recommendation: this Spot instance is at elevated risk."""
        ...


@dataclass
class StaticMetadata:
    """Metadata given up front (tests, and one-off runs of the agent by hand)."""

    instance: InstanceIdentity
    interruption: dict[str, str] | None = None
    rebalance: bool = False

    def identity(self) -> InstanceIdentity:
        return self.instance

    def spot_action(self) -> dict[str, str] | None:
        return self.interruption

    def rebalance_recommended(self) -> bool:
        return self.rebalance


class Imdsv2Metadata:
    """IMDSv2: a session token from PUT /latest/api/token, then GETs carrying it.

    Tags are read from instance metadata (the launch template enables `InstanceMetadataTags`),
    so the worker needs no ec2:DescribeTags permission.
    """

    def __init__(self, base_url: str = DEFAULT_IMDS_URL, timeout: float = 2.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"instance metadata URL must be http(s): {base_url!r}")
        self._base = base_url.rstrip("/")
        self._timeout = timeout
        self._token: str | None = None

    def _fetch_token(self) -> str:
        request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            f"{self._base}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)},
        )
        with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
            return response.read().decode()

    def _get(self, path: str, root: str = "meta-data") -> str | None:
        if self._token is None:
            self._token = self._fetch_token()
        request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            f"{self._base}/latest/{root}/{path}",
            headers={"X-aws-ec2-metadata-token": self._token},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                return response.read().decode()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            if e.code == 401:  # token expired: fetch a new one next time
                self._token = None
            raise

    def identity(self) -> InstanceIdentity:
        """From the instance identity document (id, type, launch time: one GET for the three),
        the instance's tags and its lifecycle, which the document does not carry."""
        document = json.loads(self._get("instance-identity/document", root="dynamic") or "{}")
        instance_id = document.get("instanceId")
        if not instance_id:
            raise RuntimeError("the instance identity document has no instanceId")
        tags: dict[str, str] = {}
        for name in (self._get("tags/instance") or "").splitlines():
            if name:
                tags[name] = self._get(f"tags/instance/{name}") or ""
        return InstanceIdentity(
            instance_id,
            tags,
            instance_type=document.get("instanceType"),
            market=self._get("instance-life-cycle") or "on-demand",
            launched_at=_epoch(document.get("pendingTime")),
        )

    def spot_action(self) -> dict[str, str] | None:
        raw = self._get("spot/instance-action")
        return json.loads(raw) if raw else None

    def rebalance_recommended(self) -> bool:
        return self._get("events/recommendations/rebalance") is not None


def _epoch(timestamp: str | None) -> float | None:
    """EC2's `2026-12-02T11:30:25Z` as epoch seconds; None if absent or not a time."""
    if not timestamp:
        return None
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
