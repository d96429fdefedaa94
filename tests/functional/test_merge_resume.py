"""The merge at sizes that outlast an invocation, in-process on moto: it stops in time, saves a
checkpoint and continues in a new invocation where it stopped (never from zero), survives a
crash, never runs twice at once, lets S3 copy the large parts, and cleans up after itself; the
result is byte for byte the parts in index order and its receipt verifies."""

from __future__ import annotations

import base64
import dataclasses
import json
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from chalice.local import LambdaContext

from chalicelib import merge
from chalicelib.context import Context, get_context
from chalicelib.events import MergeRequest
from chalicelib.layout import MERGING_PREFIX, part_key, result_key
from chalicelib.results import continue_merge, merge_parts
from chalicelib.states import MissionStatus
from local.client import verify_receipt
from local.inprocess import InProcessCluster
from local.pump import Queue
from local.staged_merge import stage_mission

MIB = 1024**2


class Clock:
    """Seconds left in a make-believe invocation: `step` fewer at every look."""

    def __init__(self, start: float = 60.0, step: float = 1.0) -> None:
        self.left, self.step = start, step

    def __call__(self) -> float:
        self.left -= self.step
        return self.left


class Calls:
    """The S3 calls made through the context's client: (operation, params)."""

    def __init__(self, ctx: Context) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        ctx.aws.s3.meta.events.register("provide-client-params.s3.*", self._record)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.seen.append((model.name, dict(params)))

    def named(self, operation: str) -> list[dict[str, Any]]:
        return [p for name, p in self.seen if name == operation]

    def clear(self) -> None:
        self.seen.clear()


def body(i: int) -> bytes:
    """Parts of 1-60 KB: 400 of them make a multipart part of 8 MiB and a tail."""
    size = random.Random(i).randrange(1_000, 60_000)
    return (f"part {i:05d} ".encode() * (size // 11 + 1))[:size]


@pytest.fixture
def cluster(tmp_path) -> Iterator[InProcessCluster]:
    with InProcessCluster.running(workdir=tmp_path) as running:
        yield running


def bucket(cluster: InProcessCluster) -> str:
    return cluster.stack.outputs["ResultBucketName"]


def expected(mission_id: str, n: int, failed: set[int], make=body) -> bytes:
    return b"".join(make(i) for i in range(n) if i not in failed)


def result_of(cluster: InProcessCluster, mission_id: str) -> bytes:
    return cluster.s3.get_object(Bucket=bucket(cluster), Key=result_key(mission_id))["Body"].read()


def scratch(cluster: InProcessCluster, mission_id: str) -> list[str]:
    listed = cluster.s3.list_objects_v2(
        Bucket=bucket(cluster), Prefix=f"{MERGING_PREFIX}{mission_id}/"
    )
    return [o["Key"] for o in listed.get("Contents", [])]


def uploads(cluster: InProcessCluster, mission_id: str) -> list[str]:
    listed = cluster.s3.list_multipart_uploads(
        Bucket=bucket(cluster), Prefix=f"results/{mission_id}"
    )
    return [u["UploadId"] for u in listed.get("Uploads", [])]


def merge_in_slices(ctx: Context, mission_id: str, clock: Any) -> tuple[str | None, list]:
    """merge_parts again and again, each call a new make-believe invocation, until it ends;
    the result key and the checkpoint after each suspension."""
    checkpoints = []
    for _ in range(500):
        sliced = dataclasses.replace(ctx, time_left=clock())
        try:
            return merge_parts(sliced, ctx.store.missions.get(mission_id)), checkpoints
        except merge.MergeSuspended:
            checkpoints.append(merge.checkpoint_of(ctx, mission_id))
    raise AssertionError("the merge never ended")


def assert_verified(
    cluster: InProcessCluster, mission_id: str, content: bytes, parts: bool = True
) -> dict:
    assert result_of(cluster, mission_id) == content
    verification = verify_receipt(cluster.s3, bucket(cluster), mission_id, check_parts=parts)
    assert verification.problems == []
    assert scratch(cluster, mission_id) == [] and uploads(cluster, mission_id) == []
    return json.loads(
        cluster.s3.get_object(Bucket=bucket(cluster), Key=f"results/{mission_id}/manifest.json")[
            "Body"
        ]
        .read()
        .splitlines()[-1]
    )


def test_a_merge_out_of_time_continues_where_it_stopped(cluster: InProcessCluster):
    ctx = get_context()
    failed = {3, 150, 151, 399}
    mission_id = stage_mission(ctx, 400, body, failed)
    calls = Calls(ctx)
    cluster.sqs.purge_queue(QueueUrl=cluster.stack.result_queue_url)

    # Each invocation has 40 make-believe seconds, 0.2 s more gone at every look at the clock:
    # some 80 transactions, with a checkpoint every 15 s (~35 transactions) on the way.
    key, checkpoints = merge_in_slices(ctx, mission_id, lambda: Clock(40, 0.2))
    assert key == result_key(mission_id)
    assert len(checkpoints) >= 4
    # Each continued from the last one's checkpoint: strictly further on every time.
    indexes = [c.next_index for c in checkpoints]
    assert indexes == sorted(set(indexes)) and indexes[0] > 0 and indexes[-1] <= 400
    assert all(c.phase == merge.MERGING for c in checkpoints[:-1])
    # No part was read more than twice: once more at most, read ahead when the time ran out.
    reads = Counter(p["Key"] for p in calls.named("GetObject") if p["Key"].startswith("parts/"))
    assert set(reads) == {part_key(mission_id, i, 1) for i in range(400) if i not in failed}
    assert max(reads.values()) <= 2
    assert sum(reads.values()) <= 396 + len(checkpoints) * merge.READ_AHEAD
    assert sum(c.checkpoints for c in checkpoints[-1:]) > len(checkpoints)  # periodic ones too
    # Every suspension asked for its continuation on result_processor's queue.
    asked = cluster.sqs.receive_message(
        QueueUrl=cluster.stack.result_queue_url, MaxNumberOfMessages=10
    ).get("Messages", [])
    assert asked and {json.loads(m["Body"])["type"] for m in asked} == {"lighthpc:merge"}

    footer = assert_verified(cluster, mission_id, expected(mission_id, 400, failed))
    assert footer["transactions"] == 400 and footer["parts"] == 396
    done = merge.checkpoint_of(ctx, mission_id)
    assert done.phase == merge.DONE and done.invocations == len(checkpoints) + 1
    assert done.part_number == len(calls.named("UploadPart")) >= 2  # each part uploaded once
    # Parts of 8 MiB, but the last.
    sizes = [len(p["Body"]) for p in calls.named("UploadPart")]
    assert set(sizes[:-1]) == {8 * MIB} and 0 < sizes[-1] <= 8 * MIB


def test_a_crashed_merge_continues_from_its_last_checkpoint(cluster: InProcessCluster):
    ctx = get_context()
    mission_id = stage_mission(ctx, 300, body)
    with pytest.raises(merge.MergeSuspended):  # the first invocation runs out of time
        merge_parts(
            dataclasses.replace(ctx, time_left=Clock(40, 1.0)), ctx.store.missions.get(mission_id)
        )
    saved = merge.checkpoint_of(ctx, mission_id)
    assert 0 < saved.next_index < 300

    # The second dies (its process killed, an S3 error) 100 parts later, before any checkpoint.
    calls = Calls(ctx)
    reads = 0

    def crash(params: dict[str, Any], **_: Any) -> None:
        nonlocal reads
        if params["Key"].startswith("parts/"):
            reads += 1
            if reads == 100:
                raise ConnectionError("the invocation died")

    ctx.aws.s3.meta.events.register("provide-client-params.s3.GetObject", crash)
    with pytest.raises(ConnectionError):
        merge_parts(ctx, ctx.store.missions.get(mission_id))
    ctx.aws.s3.meta.events.unregister("provide-client-params.s3.GetObject", crash)
    assert merge.checkpoint_of(ctx, mission_id) == saved  # nothing of its work was kept
    calls.clear()

    # The third (the redelivered event) starts at once (the crash freed the lease), from there.
    assert merge_parts(ctx, ctx.store.missions.get(mission_id)) == result_key(mission_id)
    read = sorted(p["Key"] for p in calls.named("GetObject") if p["Key"].startswith("parts/"))
    assert read == [part_key(mission_id, i, 1) for i in range(saved.next_index, 300)]
    assert_verified(cluster, mission_id, expected(mission_id, 300, set()))


def test_one_merge_at_a_time(cluster: InProcessCluster):
    ctx = get_context()
    mission_id = stage_mission(ctx, 20, body)
    missions = ctx.store.missions
    now = ctx.clock()
    held = missions.claim_merge(mission_id, "another", now, now + 60)
    assert held is not None and held.checkpoint is None
    calls = Calls(ctx)
    with pytest.raises(merge.MergeSuspended, match="another invocation holds"):
        merge_parts(ctx, missions.get(mission_id))
    assert calls.seen == []  # it wrote nothing, read nothing
    # A holder that lost its lease is refused when it saves: it stops.
    assert not missions.save_merge(mission_id, "stale", "{}", now + 60)
    assert missions.end_merge(mission_id, "another", None)
    assert merge_parts(ctx, missions.get(mission_id)) == result_key(mission_id)
    assert_verified(cluster, mission_id, expected(mission_id, 20, set()))
    # Merged once: a later call changes nothing (and reads no part).
    calls.clear()
    assert merge_parts(ctx, missions.get(mission_id)) == result_key(mission_id)
    assert not calls.named("GetObject")


def large(i: int) -> bytes:
    """Small parts around large ones: single-PUT (S3 holds their sha256) and multipart (S3 holds
    a checksum of checksums: their bytes must be read) ones."""
    sizes = {2: 6 * MIB, 3: 5 * MIB + 3, 5: 9 * MIB, 6: 7 * MIB, 9: 12 * MIB}
    if i in sizes:
        return random.Random(i).randbytes(sizes[i])
    return body(i)


def test_large_parts_are_copied_by_s3_not_through_the_function(cluster: InProcessCluster):
    ctx = get_context()
    mission_id = stage_mission(ctx, 12, large)
    calls = Calls(ctx)
    assert merge_parts(ctx, ctx.store.missions.get(mission_id)) == result_key(mission_id)
    content = expected(mission_id, 12, set(), large)
    assert_verified(cluster, mission_id, content)

    # A large part goes up as S3's copy of it, but for what tops up the small parts' bytes
    # before it to S3's 5 MiB: #2 and #3 (6 and 5 MiB) after small ones are read whole (their
    # rest is too small to be a part); #5 and #9 copy what is left after their head; #6, right
    # after a copy, is copied whole.
    copies = calls.named("UploadPartCopy")
    copied = {p["CopySource"]["Key"]: p["CopySourceRange"] for p in copies}
    assert set(copied) == {part_key(mission_id, i, 1) for i in (5, 6, 9)}
    assert copied[part_key(mission_id, 6, 1)] == f"bytes=0-{7 * MIB - 1}"
    assert all(p["CopySourceIfMatch"] for p in copies)  # pinned to the object checked
    uploaded = sum(len(p["Body"]) for p in calls.named("UploadPart"))
    copied_bytes = sum(
        int(r.split("-")[1]) - int(r.removeprefix("bytes=").split("-")[0]) + 1
        for r in copied.values()
    )
    assert uploaded + copied_bytes == len(content) and copied_bytes > 19 * MIB
    # Single-PUT parts are checked by S3's checksum, never read for it: the ranged reads are
    # what goes through the buffer. Multipart ones (#5, #9) are read to be hashed.
    ranged = {p["Key"] for p in calls.named("GetObject") if "Range" in p}
    assert ranged == {part_key(mission_id, i, 1) for i in (2, 3)}
    sizes = [len(p["Body"]) for p in calls.named("UploadPart")]
    assert all(size >= 5 * MIB for size in sizes[:-1])


def test_a_large_part_whose_checksum_is_not_its_stamp_is_never_merged(cluster: InProcessCluster):
    ctx = get_context()
    mission_id = stage_mission(ctx, 12, large)
    key = part_key(mission_id, 6, 1)
    head = cluster.s3.head_object(Bucket=bucket(cluster), Key=key)
    forged = random.Random(99).randbytes(7 * MIB)
    cluster.s3.put_object(
        Bucket=bucket(cluster),
        Key=key,
        Body=forged,
        Metadata=head["Metadata"],
        ChecksumAlgorithm="SHA256",
    )
    assert merge_parts(ctx, ctx.store.missions.get(mission_id)) is None
    mission = ctx.store.missions.get(mission_id)
    assert mission.status is MissionStatus.FAILED
    assert f"transaction 6: its part {key} is not what its worker uploaded" in (mission.error or "")
    # Judged by the sha256 S3 holds for its bytes, without reading them.
    checksum = cluster.s3.head_object(Bucket=bucket(cluster), Key=key, ChecksumMode="ENABLED")
    sha256 = base64.b64decode(checksum["ChecksumSHA256"]).hex()
    assert f"its bytes have sha256 {sha256}, its worker uploaded" in (mission.error or "")
    assert uploads(cluster, mission_id) == [] and scratch(cluster, mission_id) == []
    listed = cluster.s3.list_objects_v2(Bucket=bucket(cluster), Prefix=f"results/{mission_id}/")
    assert listed.get("KeyCount", 0) == 0


def test_a_merge_whose_mission_ended_is_cleaned_up(cluster: InProcessCluster):
    ctx = get_context()
    mission_id = stage_mission(ctx, 600, body)
    with pytest.raises(merge.MergeSuspended):  # out of time some 300 parts (9 MB) in
        merge_parts(
            dataclasses.replace(ctx, time_left=Clock(40, 0.05)), ctx.store.missions.get(mission_id)
        )
    assert scratch(cluster, mission_id) and uploads(cluster, mission_id)
    ctx.store.missions.cancel(ctx.store.missions.get(mission_id), ctx.clock(), by="ana")
    continue_merge(ctx, mission_id)  # the continuation it asked for finds it ended
    assert scratch(cluster, mission_id) == [] and uploads(cluster, mission_id) == []
    assert merge.checkpoint_of(ctx, mission_id) == merge.Checkpoint()
    assert isinstance(MergeRequest(mission_id), MergeRequest)


FIDELITY_S3_ONLY = (
    "aws,latency.dynamodb=0:0,hot_item_writes_per_second=0,conflict_window_seconds=0,"
    "gsi_lag_seconds=0,insufficient_capacity_rate=0,fleet_shortfall_rate=0"
)


@pytest.fixture
def slow_s3(tmp_path) -> Iterator[InProcessCluster]:
    with InProcessCluster.running(
        workdir=tmp_path, env={"LIGHTHPC_FIDELITY": FIDELITY_S3_ONLY}
    ) as c:
        yield c


def test_result_processor_resumes_its_own_merge_through_its_queue(slow_s3: InProcessCluster):
    """At S3's latency a merge of 1,500 parts outlasts an invocation of 3 s: result_processor
    (app.py's handler, fed by Lambda's poller) stops in time, asks for its continuation on its
    own queue, and the next invocations finish it; the mission is settled and mailed."""
    import app

    cluster = slow_s3
    ctx = get_context()
    mission_id = stage_mission(ctx, 1500, lambda i: f"{i}\n".encode(), direct=True)
    queue = Queue.at(cluster.sqs, cluster.stack.result_queue_url, cluster.stack.region)
    cluster.sqs.send_message(
        QueueUrl=queue.url,
        MessageBody=json.dumps({"type": "lighthpc:merge", "mission_id": mission_id}),
    )
    invocations = []

    def result_processor(event: dict) -> None:
        invocations.append(event)
        context = LambdaContext("result_processor", memory_size=256, max_runtime_ms=3000)
        app.result_processor(event, context)

    queue.drain(result_processor, visibility_timeout=0)
    mission = ctx.store.missions.get(mission_id)
    assert mission.status is MissionStatus.SUCCEEDED, mission
    done = merge.checkpoint_of(ctx, mission_id)
    # Each continuation a message of its own (and maybe one more to settle: `merge.merge`).
    assert len(invocations) - 1 <= done.invocations <= len(invocations)
    assert done.invocations >= 2
    content = b"".join(f"{i}\n".encode() for i in range(1500))
    assert_verified(cluster, mission_id, content, parts=False)
    (email,) = cluster.emails()
    assert "1500 in all, 1500 succeeded" in email.body
