"""The agent's view of its instance through IMDSv2, against the local metadata endpoint: the
identity document gives its id, type and launch time in one GET."""

from __future__ import annotations

import time

from local.imds import MetadataServer
from worker_ami.metadata import Imdsv2Metadata, _epoch


def test_the_identity_comes_from_the_document_with_the_launch_time() -> None:
    launched = time.time() - 42.7
    server = MetadataServer(
        "i-doc", {"lighthpc:mission": "m-1"}, "c5.xlarge", "spot", launched_at=launched
    ).start()
    try:
        identity = Imdsv2Metadata(server.url).identity()
    finally:
        server.stop()
    assert (identity.instance_id, identity.instance_type, identity.market) == (
        "i-doc",
        "c5.xlarge",
        "spot",
    )
    assert identity.tags == {"lighthpc:mission": "m-1"}
    # EC2 gives pendingTime to the second.
    assert identity.launched_at == float(int(launched))


def test_a_launch_time_that_is_not_a_time_is_none() -> None:
    assert _epoch("2026-12-02T11:30:25Z") == 1796211025.0
    assert _epoch(None) is None and _epoch("") is None and _epoch("yesterday") is None
