"""A mission at the moment its last outcome is counted, staged directly (no workers, no events):
what the merge sees, for its tests and its benchmark.

`stage_mission` writes the mission item (RUNNING, every outcome counted), a transaction item per
index and each succeeded transaction's part with its worker's stamp, as the agent uploads it:
one PUT with S3's SHA-256 checksum below boto3's multipart threshold (8 MiB), a multipart upload
(a checksum of checksums) above it. `direct=True` puts the parts straight into moto's in-process
backend instead (same bytes, stamp and checksum; ~100 times faster, no S3 events): for the
benchmark's 100,000 parts.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from boto3.s3.transfer import TransferConfig

from chalicelib.config import parse_mission_config
from chalicelib.context import Context
from chalicelib.domain import Mission
from chalicelib.layout import PartStamp, part_key
from chalicelib.missions import new_mission_id
from chalicelib.states import MissionStatus, TransactionStatus
from chalicelib.store.models import MissionModel, TransactionModel

MOTO_ACCOUNT = "123456789012"
_WORKER_UPLOADS = TransferConfig()  # the agent's upload_file: multipart from 8 MiB


def stage_mission(
    ctx: Context,
    n: int,
    body: Callable[[int], bytes],
    failed: Iterable[int] = (),
    direct: bool = False,
    name: str = "staged merge",
) -> str:
    """A mission of `n` transactions, all counted, whose parts are `body(index)` (the indexes
    in `failed` failed and have none). Returns its id."""
    failed = set(failed)
    now = datetime.now(UTC)
    mission_id = new_mission_id(now.timestamp())
    config = {
        "name": name,
        "input": f"staged/{mission_id}.txt",
        "split": {"mode": "count", "count": n, "interval": {"start": 0, "end": n}},
        "app": {"builtin": "kmer-match"},
    }
    mission = Mission(
        mission_id=mission_id,
        name=name,
        status=MissionStatus.AWAITING_INPUT,
        config=parse_mission_config(json.dumps(config), ctx.settings),
        input_key=config["input"],
        created_at=now,
        submitted_by="local",
    )
    ctx.store.missions.create(mission)
    MissionModel(mission_id).update(
        actions=[
            MissionModel.status.set(MissionStatus.RUNNING.value),
            MissionModel.started_at.set(now),
            MissionModel.running_at.set(now),
            MissionModel.n_total.set(n),
            MissionModel.next_index.set(n),
            MissionModel.n_succeeded.set(n - len(failed)),
            MissionModel.n_failed.set(len(failed)),
        ]
    )
    with TransactionModel.batch_write() as batch:
        for i in range(n):
            ok = i not in failed
            batch.save(
                TransactionModel(
                    mission_id,
                    i,
                    status=(TransactionStatus.SUCCEEDED if ok else TransactionStatus.FAILED).value,
                    start=i,
                    end=i + 1,
                    attempts=1,
                    claims=1,
                    lease_owner=f"i-staged/{i % 4}",
                    exit_code=0 if ok else 1,
                    error=None if ok else "failed on purpose",
                    finished_at=now,
                    run_seconds=0.5,
                    part_key=part_key(mission_id, i, 1) if ok else None,
                    counted=True,
                )
            )
    indexes = [i for i in range(n) if i not in failed]
    put = _put_direct if direct else _put
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: put(ctx, part_key(mission_id, i, 1), body(i)), indexes))
    return mission_id


def _stamp(data: bytes) -> PartStamp:
    return PartStamp(hashlib.sha256(data).hexdigest(), 0, 0.5)


def _put(ctx: Context, key: str, data: bytes) -> None:
    args = _stamp(data).upload_args()
    bucket = ctx.settings.result_bucket
    if len(data) >= _WORKER_UPLOADS.multipart_threshold:
        ctx.aws.s3.upload_fileobj(
            io.BytesIO(data), bucket, key, ExtraArgs=args, Config=_WORKER_UPLOADS
        )
    else:
        ctx.aws.s3.put_object(Bucket=bucket, Key=key, Body=data, **args)


def _put_direct(ctx: Context, key: str, data: bytes) -> None:
    from moto.s3.models import s3_backends

    backend = s3_backends[MOTO_ACCOUNT]["global"]
    stored = backend.put_object(
        ctx.settings.result_bucket,
        key,
        data,
        checksum_value=base64.b64encode(hashlib.sha256(data).digest()).decode(),
        disable_notification=True,
    )
    stored.checksum_algorithm = "SHA256"
    metadata = _stamp(data).upload_args()["Metadata"]
    stored.set_metadata({f"x-amz-meta-{k}": v for k, v in metadata.items()})  # type: ignore[union-attr]
