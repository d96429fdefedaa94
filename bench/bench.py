"""lighthpc benchmarks: one table, side by side in one run, on the embedded AWS.

    python -m bench.bench            (make bench)  all phases, ~3 minutes
    python -m bench.bench --quick    smaller sizes, for a smoke run

Each phase runs in a fresh process (moto keeps all state in its process and never frees it),
prints its figures as JSON, and the parent prints the table and writes bench/results/bench.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


# ---- shared: an embedded AWS in this process ----------------------------------------------

BENCH_ENV = {
    "POWERTOOLS_LOG_LEVEL": "ERROR",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "MAX_TRANSACTIONS": "1000000",
}


# Each table's key attributes, so the hot-spot counter names items by their keys.
TABLE_KEYS = {
    "lighthpc-local-missions": ("mission_id",),
    "lighthpc-local-transactions": ("mission_id", "index"),
    "lighthpc-local-inputs": ("input_key",),
}


def drain(queue_url: str, handler: Any) -> int:
    """Lambda's poller, inline: every queued message to the handler (local.pump's delivery)."""
    from chalicelib.context import get_context
    from local.pump import Queue, lambda_context

    queue = Queue.at(get_context().aws.sqs, queue_url, "us-east-1")
    return queue.drain(lambda event: handler(event, lambda_context("bench")))


def config(n: int, key: str, argv: list[str] | None = None, max_instances: int = 50) -> dict:
    app = {"argv": argv} if argv else {"builtin": "kmer-match"}
    return {
        "name": f"bench {n}",
        "input": key,
        "split": {"mode": "count", "count": n, "interval": {"start": 0, "end": n}},
        "app": app,
        "instances": {
            "types": ["c5.large", "m5.large"],
            "max_instances": max_instances,
            "slots": 4,
        },
    }


# ---- phase: submission -----------------------------------------------------------------------


def phase_submission(sizes: list[int], baseline_n: int) -> dict:
    import app as lambda_app
    from chalicelib.context import get_context, reset_process_state
    from chalicelib.missions import submit
    from local.embedded import embedded_aws
    from local.inprocess import ApiCallCounter

    counter = ApiCallCounter()
    rows: dict[str, Any] = {"lighthpc": {}, "baseline": {}}
    with embedded_aws(env=BENCH_ENV) as embedded, counter.installed():
        stack = embedded.stack
        reset_process_state()  # clients made after the hook is installed are counted
        ctx = get_context()
        ctx.aws.sqs.purge_queue(QueueUrl=stack.source_queue_url)  # S3's s3:TestEvent
        for n in [10, *sizes]:  # the first is a warm-up (moto's first request per service)
            key = f"bench/{n}.fa"
            ctx.aws.s3.put_object(Bucket=stack.outputs["SourceBucketName"], Key=key, Body=b"ACGT\n")
            drain(stack.source_queue_url, lambda_app.light_scheduler)  # the upload's event
            counter.reset()
            trace = n >= 100_000  # tracemalloc slows Python down: only where memory is asked
            if trace:
                tracemalloc.start()
            began = time.perf_counter()
            created = submit(ctx, json.dumps(config(n, key)))
            drain(stack.source_queue_url, lambda_app.light_scheduler)
            seconds = time.perf_counter() - began
            peak = tracemalloc.get_traced_memory()[1] if trace else 0
            tracemalloc.stop()
            mission = ctx.store.missions.get(created["mission_id"])
            assert mission.status == "RUNNING" and mission.total == n, mission.status
            rows["lighthpc"][n] = {
                "seconds": seconds,
                "calls": len(counter.calls),
                "peak_mb": peak / 2**20,
                "instances": mission.instances,
            }
        rows["baseline"] = baseline_submission(baseline_n, counter)
    return rows


def baseline_submission(n: int, counter: Any) -> dict:
    """The published design: per transaction, one item, one price lookup, one instance."""
    from chalicelib.context import get_context

    ctx = get_context()
    settings, ddb, ec2 = ctx.settings, ctx.aws.dynamodb, ctx.aws.ec2
    counter.reset()
    began = time.perf_counter()
    for i in range(n):
        ddb.put_item(
            TableName=settings.transaction_table,
            Item={
                "mission_id": {"S": "baseline"},
                "index": {"N": str(i)},
                "status": {"S": "PENDING"},
                "start": {"N": str(i)},
                "end": {"N": str(i + 1)},
            },
        )
        ec2.describe_spot_price_history(InstanceTypes=["c5.large"], MaxResults=1)
        ec2.run_instances(
            ImageId="ami-1e749f67",
            MinCount=1,
            MaxCount=1,
            InstanceType="c5.large",
            InstanceMarketOptions={"MarketType": "spot"},
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": "mission", "Value": f"baseline-{i}"}]}
            ],
        )
    return {"n": n, "seconds": time.perf_counter() - began, "calls": len(counter.calls)}


# ---- phase: a mission's whole life, in calls ---------------------------------------------------


def phase_lifecycle(n: int) -> dict:
    import app as lambda_app
    from chalicelib.capacity import mission_instances
    from chalicelib.context import get_context, reset_process_state
    from chalicelib.missions import submit
    from local.embedded import embedded_aws
    from local.hotspots import HotspotCounter
    from local.inprocess import ApiCallCounter, agent_for

    counter = ApiCallCounter()
    hotspots = HotspotCounter(TABLE_KEYS)
    phases: dict[str, int] = {}
    with embedded_aws(env=BENCH_ENV) as embedded, counter.installed(), hotspots.installed():
        stack = embedded.stack
        reset_process_state()
        ctx = get_context()
        ctx.aws.sqs.purge_queue(QueueUrl=stack.source_queue_url)
        key = "bench/life.txt"
        argv = ["cp", "{input}", "{output}"]  # a no-op app that writes its part
        counter.reset()
        created = submit(ctx, json.dumps(config(n, key, argv, max_instances=4)))
        ctx.aws.s3.put_object(Bucket=stack.outputs["SourceBucketName"], Key=key, Body=b"x\n")
        drain(stack.source_queue_url, lambda_app.light_scheduler)
        phases["planning"] = len(counter.calls)
        mission_id = created["mission_id"]
        instances = mission_instances(ctx.aws.ec2, mission_id, ["running"])
        counter.reset()
        hotspots.reset()
        workdir = Path(tempfile.mkdtemp(prefix="bench-life-"))
        agents = [agent_for(i, workdir / i["InstanceId"]) for i in instances]
        threads = [threading.Thread(target=agent.run) for agent in agents]
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        worker_seconds = time.perf_counter() - began
        phases["workers"] = len(counter.calls)
        counter.reset()
        result_events = drain(stack.result_queue_url, lambda_app.result_processor)
        phases["results"] = len(counter.calls)
        mission = ctx.store.missions.get(mission_id)
        assert mission.status == "SUCCEEDED", mission.status
    item, writes = hotspots.hottest_item()
    prefix, requests = hotspots.hottest_prefix()
    return {
        "n": n,
        "calls": phases,
        "per_transaction": sum(phases.values()) / n,
        "worker_seconds": worker_seconds,
        "hottest_item": item,
        "hot_item_writes_per_transaction": writes / n,
        "hottest_prefix": prefix,
        "hot_prefix_requests_per_transaction": requests / n,
        "hot_item_wcu_per_transaction": hotspots.hottest(hotspots.item_wcu)[1] / n,
        "hot_prefix_writes_per_transaction": hotspots.hottest(hotspots.prefix_writes)[1] / n,
        "hot_prefix_reads_per_transaction": hotspots.hottest(hotspots.prefix_reads)[1] / n,
        "result_events_per_transaction": result_events / n,
        "result_calls_per_event": phases["results"] / max(result_events, 1),
    }


# ---- phase: a big mission end to end, in process ---------------------------------------------

END_TO_END_FIDELITY = "aws,insufficient_capacity_rate=0,fleet_shortfall_rate=0"


def phase_end_to_end(n: int, fidelity: bool = False, instances: int = 4) -> dict:
    """A whole `n`-transaction no-op mission on the embedded AWS, in this process: submit,
    upload, plan, `instances` worker agents (4 slots each) in threads, result_processor's own
    handler on every result event (each invocation with Lambda's 60 s context), until the
    email. Counts every AWS call and the writes on each DynamoDB item (a botocore hook), times
    the merge, and checks the result. With `fidelity`, the AWS-fidelity profile's S3 and
    DynamoDB latency (and its throttles and conflicts) are on from the upload to the email."""
    import app as lambda_app
    from chalicelib import merge
    from chalicelib.capacity import mission_instances
    from chalicelib.context import get_context, reset_process_state
    from chalicelib.layout import result_key
    from chalicelib.missions import submit
    from local import fidelity as fidelity_profile
    from local.embedded import embedded_aws
    from local.hotspots import HotspotCounter
    from local.inprocess import ApiCallCounter, agent_for
    from local.pump import Queue, lambda_context

    counter = ApiCallCounter()
    hotspots = HotspotCounter(TABLE_KEYS)
    durations: list[float] = []  # of each result_processor invocation
    merge_slices: list[float] = []
    merge_once = merge.merge

    def timed_merge(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return merge_once(*args, **kwargs)
        finally:
            merge_slices.append(time.perf_counter() - began)

    def result_processor(event: dict) -> Any:
        began = time.perf_counter()
        try:
            return lambda_app.result_processor(event, lambda_context("result_processor"))
        finally:
            durations.append(time.perf_counter() - began)

    options = fidelity_profile.FidelityOptions.parse(END_TO_END_FIDELITY) if fidelity else None
    phases: dict[str, int] = {}
    seconds: dict[str, float] = {}
    with embedded_aws(server=False, env=BENCH_ENV, fidelity=None) as embedded:
        stack = embedded.stack
        reset_process_state()
        ctx = get_context()
        ctx.aws.sqs.purge_queue(QueueUrl=stack.source_queue_url)
        key = "bench/end-to-end.txt"
        argv = ["cp", "{input}", "{output}"]  # a no-op app that writes its part
        merge.merge = timed_merge  # type: ignore[assignment]
        profile = fidelity_profile.installed(options) if options else contextlib.nullcontext()
        with profile, counter.installed(), hotspots.installed():
            began = time.perf_counter()
            created = submit(ctx, json.dumps(config(n, key, argv, max_instances=instances)))
            ctx.aws.s3.put_object(Bucket=stack.outputs["SourceBucketName"], Key=key, Body=b"x\n")
            drain(stack.source_queue_url, lambda_app.light_scheduler)
            phases["planning"], seconds["planning"] = (
                len(counter.calls),
                time.perf_counter() - began,
            )
            mission_id = created["mission_id"]
            launched = mission_instances(ctx.aws.ec2, mission_id, ["running"])
            workdir = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
            agents = [agent_for(i, workdir / i["InstanceId"]) for i in launched]
            threads = [threading.Thread(target=agent.run) for agent in agents]
            mark, calls_before = time.perf_counter(), len(counter.calls)
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds["workers"] = time.perf_counter() - mark
            phases["workers"] = len(counter.calls) - calls_before
            mark, calls_before = time.perf_counter(), len(counter.calls)
            queue = Queue.at(ctx.aws.sqs, stack.result_queue_url, stack.region)
            events = queue.drain(result_processor)
            seconds["results"] = time.perf_counter() - mark
            phases["results"] = len(counter.calls) - calls_before
            wall = time.perf_counter() - began
        merge.merge = merge_once  # type: ignore[assignment]
        mission = ctx.store.missions.get(mission_id)
        assert mission.status.value == "SUCCEEDED", mission.status
        blocks = list(ctx.store.transactions.of(mission_id))
        bucket = stack.outputs["ResultBucketName"]
        result = ctx.aws.s3.get_object(Bucket=bucket, Key=result_key(mission_id))["Body"].read()
        shutil.rmtree(workdir, ignore_errors=True)
    item, writes = hotspots.hottest_item()
    calls = sum(phases.values())
    return {
        "transactions": n,
        "instances": len(launched),
        "slots_per_instance": 4,
        "wall_seconds": wall,
        "seconds": seconds,
        "calls": phases,
        "calls_per_transaction": calls / n,
        "hottest_item": item,
        "hot_item_writes_per_transaction": writes / n,
        "hot_item_wcu_per_transaction": hotspots.hottest(hotspots.item_wcu)[1] / n,
        "hot_prefix_writes_per_transaction": hotspots.hottest(hotspots.prefix_writes)[1] / n,
        "hot_prefix_reads_per_transaction": hotspots.hottest(hotspots.prefix_reads)[1] / n,
        "blocks": len(blocks),
        "transactions_per_block": n / len(blocks),
        "largest_block": max(b.span for b in blocks),
        "result_events": events,
        "merge_seconds": sum(merge_slices),
        "merge_invocations": len(merge_slices),
        "longest_result_processor_invocation_s": max(durations),
        "result_processor_timeout_s": RESULT_PROCESSOR_TIMEOUT_S,
        "within_timeout": max(durations) < RESULT_PROCESSOR_TIMEOUT_S,
        "result_correct": result == b"x\n" * n,
        "emailed": mission.notified_at is not None,
        "fidelity": options.describe() if options else "off",
    }


def render_end_to_end(runs: list[dict]) -> str:
    rows = [
        "| mission, end to end (in process) | wall | AWS calls/txn | hottest item writes/txn"
        " (WCU) | blocks (txn/block) | merge | longest result_processor invocation | result,"
        " email |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        ok = "correct, sent" if r["result_correct"] and r["emailed"] else "NO"
        latency = "fidelity latency on" if r["fidelity"] != "off" else "no latency"
        rows.append(
            f"| {r['transactions']:,} no-op, {r['instances']} x 4 slots, {latency} |"
            f" {r['wall_seconds']:.0f} s | {r['calls_per_transaction']:.3f} |"
            f" {r['hot_item_writes_per_transaction']:.4f} ({r['hot_item_wcu_per_transaction']:.4f})"
            f" | {r['blocks']:,} ({r['transactions_per_block']:.0f}) |"
            f" {r['merge_seconds']:.1f} s in {r['merge_invocations']} |"
            f" {r['longest_result_processor_invocation_s']:.1f} s of"
            f" {r['result_processor_timeout_s']} s | {ok} |"
        )
    return "\n".join(rows)


# ---- phase: the local fleet (worker processes) -------------------------------------------------


@contextlib.contextmanager
def served_requests() -> Any:
    """Every request the embedded AWS's server answers (from this process or any worker),
    counted by operation while the block runs."""
    from collections import Counter

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    served: Counter[str] = Counter()
    lock = threading.Lock()
    original = DomainDispatcherApplication.__call__

    def counted(self: Any, environ: dict, start_response: Any) -> Any:
        target = environ.get("HTTP_X_AMZ_TARGET", "").rpartition(".")[2]
        query = environ.get("QUERY_STRING", "")
        action = query.partition("Action=")[2].partition("&")[0] if "Action=" in query else ""
        name = target or action or f"{environ.get('REQUEST_METHOD')} s3"
        with lock:
            served[name] += 1
        return original(self, environ, start_response)

    DomainDispatcherApplication.__call__ = counted  # type: ignore[method-assign]
    try:
        yield served
    finally:
        DomainDispatcherApplication.__call__ = original  # type: ignore[method-assign]


# The event pump's idle long polls: Lambda's pollers' cost, as many as there are pollers,
# whatever the mission; not calls a mission makes.
POLLING = {"ReceiveMessage"}


def phase_fleet(n: int, missions: int) -> dict:
    """Missions of `n` no-op transactions (`cp`) on the local fleet (4 worker processes of 4
    slots), one after another on one stack. Throughput from the first transaction's start to
    the last part (the fleet at work), and from RUNNING (the workers' boot included); moto's
    own rate of single calls and every request its server answered, for the moto-bound rate."""
    from chalicelib.context import get_context
    from local.client import api, s3_client, watch
    from local.runtime import LocalRuntime

    runtime = LocalRuntime(
        home=Path(tempfile.mkdtemp(prefix="bench-fleet-")),
        aws_port=0,
        api_port=0,
        max_workers=4,
        echo=lambda _: None,
    )
    info = runtime.start()
    try:
        s3 = s3_client(info)
        ddb = get_context().aws.dynamodb
        steady, with_boot, latencies, served_per_txn, parts = [], [], [], [], []
        single_rates: list[float] = []
        runtime_cpu, workers_cpu = [], []
        last_served: dict[str, int] = {}
        for m in range(missions):
            # moto's own rate, right before each mission: this machine's speed drifts (144 to
            # 245 calls/s between runs of one day), and the share is taken mission by mission.
            single_rates.append(_moto_single_rate(ddb, os.environ["INPUT_TABLE"]))
            key = f"bench/fleet-{m}.txt"
            status, body = api(
                info,
                "POST",
                "/missions",
                config(n, key, ["cp", "{input}", "{output}"], max_instances=4),
            )
            assert status == 201, body
            cpu_before = _cpu_seconds()
            with served_requests() as served:
                s3.put_object(Bucket=info.source_bucket, Key=key, Body=b"x\n")
                mission = watch(info, body["mission_id"], timeout=300, out=None)
            # A worker's CPU (its apps' included) is known once it has exited and been reaped.
            assert runtime.fleet is not None
            waited = time.monotonic()
            while runtime.fleet.running and time.monotonic() - waited < 30:
                time.sleep(0.1)
            cpu_after = _cpu_seconds()
            runtime_cpu.append((cpu_after[0] - cpu_before[0]) / n)
            workers_cpu.append((cpu_after[1] - cpu_before[1]) / n)
            blocks = _all_transactions(info, body["mission_id"])  # one row per transaction
            first_start = min(_ts(t["started_at"]) for t in blocks)
            last_part = max(_ts(t["finished_at"]) for t in blocks)
            steady.append(n / (last_part - first_start))
            with_boot.append(n / (last_part - _ts(mission["running_at"])))
            latencies.append(_ts(mission["notified_at"]) - last_part)
            made = sum(v for k, v in served.items() if k not in POLLING)
            served_per_txn.append(made / n)
            # A block's members share its claim: its owner, start and finish.
            parts.append(
                len({(t["lease_owner"], t["started_at"], t["finished_at"]) for t in blocks})
            )
            last_served = dict(served)
    finally:
        runtime.stop()
    # Each mission against the rate moto allows it: moto's calls/s then over its calls per
    # transaction.
    shares = [tps * c / r for tps, c, r in zip(steady, served_per_txn, single_rates, strict=True)]
    return {
        "n": n,
        "missions": missions,
        "transactions_per_second": statistics.median(steady),
        "transactions_per_second_with_boot": statistics.median(with_boot),
        "moto_single_calls_per_second": statistics.median(single_rates),
        "moto_single_calls_per_second_by_mission": single_rates,
        "calls_per_transaction": statistics.median(served_per_txn),
        "share_of_moto_bound_by_mission": shares,
        "share_of_moto_bound": statistics.median(shares),
        "blocks_per_mission_median": statistics.median(parts),
        "served_last_mission": last_served,
        "completion_latency_median_s": statistics.median(latencies),
        "completion_latencies_s": latencies,
        # Where the machine's CPU went, per transaction, submission to the workers' exit: this
        # process (moto, the handlers, the pump, the API) and the workers with their apps
        # (each worker's boot included).
        "cpu_ms_per_transaction": {
            "embedded_aws_and_handlers": 1000 * statistics.median(runtime_cpu),
            "workers_and_apps": 1000 * statistics.median(workers_cpu),
        },
    }


def _moto_single_rate(ddb: Any, table: str, seconds: float = 2.0) -> float:
    """moto's rate of single calls from this process: sequential PutItem for `seconds` (the
    items deleted after)."""
    began, calls = time.perf_counter(), 0
    while time.perf_counter() - began < seconds:
        ddb.put_item(
            TableName=table, Item={"input_key": {"S": f"probe-{calls}"}, "mission_id": {"S": "x"}}
        )
        calls += 1
    rate = calls / (time.perf_counter() - began)
    for i in range(calls):
        ddb.delete_item(TableName=table, Key={"input_key": {"S": f"probe-{i}"}})
    return rate


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user and system) of this process, and of its reaped descendants."""
    import resource

    own, reaped = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime, reaped.ru_utime + reaped.ru_stime


def _all_transactions(info: Any, mission_id: str) -> list[dict]:
    """Every row of the mission's transactions, page after page."""
    from local.client import api

    rows: list[dict] = []
    after = -1
    while after is not None:
        _, page = api(info, "GET", f"/missions/{mission_id}/transactions?after={after}")
        rows += page["transactions"]
        after = page["next_after"]
    return rows


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


# ---- phase: byte-range splitting -------------------------------------------------------------


def generate_text(path: Path, size: int, seed: int = 13) -> tuple[str, int]:
    """`size` bytes of text: a block of random lines (a few longer than the overlap) repeated,
    cut at `size` wherever that falls (so most likely without a final newline). Returns the
    sha256 and the line count: the single-process run of `cat` and of `wc -l` over it."""
    import hashlib
    import random

    rng = random.Random(seed)
    lines = []
    for n in range(40_000):
        length = 40 * 1024 if n % 9_999 == 0 else rng.randint(0, 200)
        lines.append("".join(rng.choices("ACGT acgt,.;:xyz", k=length)).encode() + b"\n")
    block = b"".join(lines)
    digest, newlines, written = hashlib.sha256(), 0, 0
    with path.open("wb") as f:
        while written < size:
            piece = block[: size - written]
            f.write(piece)
            digest.update(piece)
            newlines += piece.count(b"\n")
            written += len(piece)
    last_partial = piece[-1:] != b"\n"
    return digest.hexdigest(), newlines + (1 if last_partial else 0)


class _Window:
    """A stored object's bytes read only where sliced: moto serves a Range by reading the whole
    object and slicing it, which for 1,000 ranges of a 1 GiB object copies a terabyte."""

    def __init__(self, key: Any) -> None:
        self._key = key

    def __len__(self) -> int:
        return int(self._key.contentsize)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __getitem__(self, window: slice) -> bytes:
        start, stop, _ = window.indices(len(self))
        with self._key.lock:
            self._key._value_buffer.seek(start)
            return self._key._value_buffer.read(max(stop - start, 0))


def _moto_reads_ranges_in_place(threshold: int = 64 * 1024 * 1024) -> Any:
    """While active: a ranged GetObject of an object above `threshold` reads only its range
    (the same answer, the same bytes sent). Only ranged reads of such objects may happen."""
    from contextlib import contextmanager

    from moto.s3.models import FakeKey

    @contextmanager
    def patched() -> Any:
        original = FakeKey.value

        def value(self: Any) -> Any:
            return _Window(self) if self.contentsize > threshold else original.fget(self)

        FakeKey.value = property(value, original.fset)  # type: ignore[method-assign]
        try:
            yield
        finally:
            FakeKey.value = original  # type: ignore[method-assign]

    return patched()


def render_bytes(b: dict) -> str:
    mib, kib = 1024 * 1024, 1024
    goal = f"at most 1.01x + 64 KiB per chunk = {b['worker_goal_bytes'] / mib:,.1f} MiB"
    rows = [
        "| measure | measured | goal |",
        "|---|---|---|",
        f"| input: generated text, {b['lines']:,} lines, split into {b['chunks']:,} chunks |"
        f" {b['input_bytes'] / mib:,.0f} MiB | |",
        f"| bytes read by the scheduler (HeadObject, then {b['scheduler_reads']} ranged read) |"
        f" {b['scheduler_bytes_read'] / kib:,.1f} KiB | at most 64 KiB |",
        f"| bytes read by all workers ({b['worker_reads']:,} ranged reads, overlap"
        f" {b['overlap_bytes'] // kib} KiB) | {b['worker_bytes_read'] / mib:,.1f} MiB"
        f" ({b['worker_read_ratio']:.4f}x the input) | {goal} |",
        f"| merged output (cat, wc -l) equals the single-process run |"
        f" {'yes' if b['output_matches_single_process'] else 'NO'} | yes |",
    ]
    return "\n".join(rows)


def phase_bytes(size_mib: int = 1024, chunks: int = 1000) -> dict:
    """A generated text input split into `chunks` byte ranges: what the scheduler reads of it
    (HeadObject, then a 64 KiB sniff), what all workers read (each its chunk by a ranged read
    and a little past it), and the merged output of `cat` and `wc -l` against one run over the
    whole input. The workers' range fetch and alignment is the agent's own (`_fetch_chunk`), in
    this process; the apps are the merge of their outputs (cat: the slices in index order;
    wc -l: their line counts summed), so no 1,000 processes are started."""
    import hashlib

    import app as lambda_app
    from chalicelib.capacity import mission_instances
    from chalicelib.context import get_context, reset_process_state
    from chalicelib.domain import Transaction
    from chalicelib.missions import submit
    from chalicelib.splitting import OVERLAP_BYTES
    from local.embedded import embedded_aws
    from local.inprocess import agent_for
    from local.s3reads import S3ReadCounter

    size = size_mib * 1024 * 1024
    workdir = Path(tempfile.mkdtemp(prefix="bench-bytes-"))
    source_file = workdir / "input.txt"
    began = time.perf_counter()
    single_sha256, single_lines = generate_text(source_file, size)
    generate_seconds = time.perf_counter() - began
    reads = S3ReadCounter()
    key = "bench/big.txt"
    with (
        embedded_aws(server=False, env=BENCH_ENV) as embedded,
        reads.installed(),
        _moto_reads_ranges_in_place(),
    ):
        stack = embedded.stack
        reset_process_state()
        ctx = get_context()
        ctx.aws.sqs.purge_queue(QueueUrl=stack.source_queue_url)
        bucket = stack.outputs["SourceBucketName"]
        body = {
            "name": "bench bytes",
            "input": key,
            "split": {"mode": "bytes", "chunks": chunks, "align": "line"},
            "app": {"argv": ["cp", "{input}", "{output}"]},
            "instances": {"max_instances": 1, "slots": 4},
        }
        mission_id = submit(ctx, json.dumps(body))["mission_id"]
        began = time.perf_counter()
        ctx.aws.s3.upload_file(str(source_file), bucket, key)
        upload_seconds = time.perf_counter() - began
        source_file.unlink()  # moto holds its own copy
        reads.reset()
        drain(stack.source_queue_url, lambda_app.light_scheduler)
        scheduler = reads.of(bucket, key)
        mission = ctx.store.missions.get(mission_id)
        assert mission.status == "RUNNING", (mission.status, mission.error)
        (instance, *_) = mission_instances(ctx.aws.ec2, mission_id, ["running"])
        agent = agent_for(instance, workdir / "worker")
        reads.reset()
        merged, merged_lines, empty = hashlib.sha256(), 0, 0
        began = time.perf_counter()
        for s in mission.plan.slices():
            parts: list[bytes] = []
            agent._fetch_chunk(mission, Transaction.pending(mission_id, s), parts.append)
            data = b"".join(parts)
            merged.update(data)  # cat's part, merged in index order
            merged_lines += data.count(b"\n") + (1 if data[-1:] not in (b"", b"\n") else 0)
            empty += not data
        worker_seconds = time.perf_counter() - began
        workers = reads.of(bucket, key)
    worker_bytes = sum(r.bytes for r in workers)
    goal = 1.01 * size + 64 * 1024 * mission.plan.count
    matches = merged.hexdigest() == single_sha256 and merged_lines == single_lines
    return {
        "input_bytes": size,
        "chunks": mission.plan.count,
        "overlap_bytes": OVERLAP_BYTES,
        "scheduler_bytes_read": sum(r.bytes for r in scheduler),
        "scheduler_reads": len(scheduler),
        "scheduler_goal_bytes": 64 * 1024,
        "worker_bytes_read": worker_bytes,
        "worker_reads": len(workers),
        "worker_read_ratio": worker_bytes / size,
        "worker_goal_bytes": goal,
        "worker_within_goal": worker_bytes <= goal,
        "empty_chunks": empty,
        "lines": single_lines,
        "output_matches_single_process": matches,
        "generate_seconds": round(generate_seconds, 2),
        "upload_seconds": round(upload_seconds, 2),
        "worker_seconds": round(worker_seconds, 2),
    }


# ---- phases with no AWS ---------------------------------------------------------------------


def billed_instance_seconds(
    transactions: int, run: float, boot: float, slots: int, max_instances: int
) -> dict:
    """Billed instance-seconds of a simulated mission: packing versus one instance each.

    Packing: `instances_needed` instances, each boots once and runs its share of transactions
    `slots` at a time; one-per-transaction: every transaction boots its own instance.
    """
    from chalicelib.planning import instances_needed

    instances = instances_needed(transactions, slots, max_instances)
    per_instance = [
        transactions // instances + (1 if i < transactions % instances else 0)
        for i in range(instances)
    ]
    packed = sum(boot + -(-share // slots) * run for share in per_instance)
    single = transactions * (boot + run)
    return {"packed": packed, "one_per_transaction": single, "instances": instances}


def import_time(repeats: int = 5) -> float:
    code = "import time; t = time.perf_counter(); import app; print(time.perf_counter() - t)"
    times = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)},
            check=True,
        )
        times.append(float(out.stdout))
    return statistics.median(times)


def package_size() -> dict:
    """The deployable Lambda zip as `make package` builds it (local.package: chalice package,
    then what the Lambda runtime already has left out)."""
    from local.package import RUNTIME_PROVIDED, build

    out = Path(tempfile.mkdtemp(prefix="bench-pkg-")) / "prod"
    try:
        build("prod", out)
    except (OSError, subprocess.CalledProcessError) as e:
        return {"error": str(e)}
    zip_path = out / "deployment.zip"
    with zipfile.ZipFile(zip_path) as z:
        tops = {name.split("/", 1)[0] for name in z.namelist()}
    return {
        "zip_mb": zip_path.stat().st_size / 2**20,
        "includes_botocore": "botocore" in tops,
        "left_out": list(RUNTIME_PROVIDED),
    }


# ---- the capacity model: measured counts against AWS's documented limits -----------------

# AWS_LIMITS.md: one item's partition takes 1,000 WCU/s; S3 3,500 writes and 5,500 reads per
# second per partitioned prefix; Lambda 1,000 concurrent executions per Region by default.
ITEM_WCU_PER_SECOND = 1000
PREFIX_WRITES_PER_SECOND = 3500
PREFIX_READS_PER_SECOND = 5500
LAMBDA_CONCURRENCY = 1000
RESULT_BATCH = 10  # result_processor's SQS batch size (app.py)
AWS_CALL_SECONDS = 0.02  # a DynamoDB or small-object S3 call on AWS, for a handler's duration
TARGET_RATE = 10_000  # transactions/s per mission: HTC-Grid's stated figure


def capacity_model(e2e: dict, instances: int = 1000, slots: int = 4) -> list[dict]:
    """What one mission's hot spots take at a given transaction rate, from the counts measured
    per block in the end-to-end phase: 1,000 instances x 4 slots with transactions of 1, 10
    and 60 s, and the 10,000 transactions/s goal (of 1 s transactions). A block holds about
    BLOCK_SECONDS of transactions (one, for a transaction that long), and every per-claim cost
    (the cursor, the lease, the part, the count) is paid per block. Headroom is the limit over
    the load; the goal is every headroom at least 2 (below half the limit)."""
    from worker_ami.agent import BLOCK_SECONDS, MAX_SPAN

    per_block = e2e["transactions_per_block"]
    per = {
        name: e2e[f"{name}_per_transaction"] * per_block
        for name in (
            "hot_item_wcu",
            "hot_prefix_writes",
            "hot_prefix_reads",
        )
    }
    events_per_block = e2e["result_events"] / e2e["blocks"]
    result_calls_per_event = e2e["calls"]["results"] / max(e2e["result_events"], 1)
    handler_seconds = RESULT_BATCH * result_calls_per_event * AWS_CALL_SECONDS
    cases = [
        (f"{instances:,} x {slots} slots, {t} s transactions", instances * slots / t, t)
        for t in (1, 10, 60)
    ]
    cases.append((f"goal: {TARGET_RATE:,} transactions/s of 1 s", TARGET_RATE, 1))
    rows = []
    for label, rate, seconds in cases:
        block = max(1, min(MAX_SPAN, int(BLOCK_SECONDS / seconds)))
        blocks = rate / block
        loads = {
            "hot_item_wcu_per_s": (blocks * per["hot_item_wcu"], ITEM_WCU_PER_SECOND),
            "prefix_writes_per_s": (
                blocks * per["hot_prefix_writes"],
                PREFIX_WRITES_PER_SECOND,
            ),
            "prefix_reads_per_s": (blocks * per["hot_prefix_reads"], PREFIX_READS_PER_SECOND),
            "result_concurrency": (
                blocks * events_per_block / RESULT_BATCH * handler_seconds,
                LAMBDA_CONCURRENCY,
            ),
        }
        row: dict[str, Any] = {
            "case": label,
            "transactions_per_s": rate,
            "transactions_per_block": block,
        }
        for name, (load, limit) in loads.items():
            row[name] = load
            row[name.removesuffix("_per_s") + "_headroom"] = limit / load if load else None
        row["result_invocations_per_s"] = blocks * events_per_block / RESULT_BATCH
        row["within_half_of_every_limit"] = all(load <= limit / 2 for load, limit in loads.values())
        rows.append(row)
    return rows


def render_capacity(rows: list[dict]) -> str:
    def cell(load: float, headroom: float | None) -> str:
        return f"{load:,.0f} ({headroom:,.1f}x)" if headroom else f"{load:,.0f}"

    lines = [
        "| case | tx/s | tx/block | hottest item WCU/s (limit 1,000) | hottest prefix writes/s"
        " (3,500) | reads/s (5,500) | result_processor invocations/s, concurrency (1,000)"
        " | all below half |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['transactions_per_s']:,.0f} | {r['transactions_per_block']}"
            f" | {cell(r['hot_item_wcu_per_s'], r['hot_item_wcu_headroom'])}"
            f" | {cell(r['prefix_writes_per_s'], r['prefix_writes_headroom'])}"
            f" | {cell(r['prefix_reads_per_s'], r['prefix_reads_headroom'])}"
            f" | {r['result_invocations_per_s']:,.0f},"
            f" {cell(r['result_concurrency'], r['result_concurrency_headroom'])}"
            f" | {'yes' if r['within_half_of_every_limit'] else 'no'} |"
        )
    return "\n".join(lines)


# ---- phase: a merge of many parts, at S3's latency ---------------------------------------

MERGE_FIDELITY = "aws,insufficient_capacity_rate=0,fleet_shortfall_rate=0"  # latency on
RESULT_PROCESSOR_TIMEOUT_S = 60  # .chalice/config.json


def merge_part(i: int) -> bytes:
    """A small part, as a k-mer match writes: a few lines, ~200 bytes."""
    return "".join(f"ref {i * 7 + j}\tmatch {j}\t{i:08d}\n" for j in range(6)).encode()


def phase_merge(n: int) -> dict:
    """`n` parts, staged as a mission's end (every outcome counted), merged by result_processor
    itself (app.py's handler, each invocation with Lambda's 60 s context) with the
    AWS-fidelity profile's latency on (S3 15-50 ms, DynamoDB 2-8 ms per call): the first
    invocation is asked by a merge request, the rest by the continuations the merge asks for.
    Reports the merge's wall time, invocations (resumes), parts/s, the longest invocation against
    the function's timeout, and checks the result and its receipt."""
    import app as lambda_app
    from chalicelib import merge
    from chalicelib.context import get_context, reset_process_state
    from chalicelib.layout import result_key
    from local import fidelity
    from local.client import verify_receipt
    from local.embedded import embedded_aws
    from local.inprocess import ApiCallCounter
    from local.pump import Queue, lambda_context
    from local.staged_merge import stage_mission

    counter = ApiCallCounter()
    durations: list[float] = []  # of each invocation
    slices: list[float] = []  # of the merge's part of each (the rest: finishing, the email)
    merge_once = merge.merge

    def timed_merge(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return merge_once(*args, **kwargs)
        finally:
            slices.append(time.perf_counter() - began)

    def result_processor(event: dict, _context: Any) -> Any:
        began = time.perf_counter()
        try:  # a fresh context each time: each batch is an invocation of its own
            return lambda_app.result_processor(event, lambda_context("result_processor"))
        finally:
            durations.append(time.perf_counter() - began)

    with embedded_aws(server=False, env=BENCH_ENV, fidelity=None) as embedded:
        stack = embedded.stack
        reset_process_state()
        ctx = get_context()
        began = time.perf_counter()
        mission_id = stage_mission(ctx, n, merge_part, direct=True)
        staged_s = time.perf_counter() - began
        bucket = stack.outputs["ResultBucketName"]
        options = fidelity.FidelityOptions.parse(MERGE_FIDELITY)
        merge.merge = timed_merge  # type: ignore[assignment]
        with fidelity.installed(options), counter.installed():
            ctx.aws.sqs.send_message(
                QueueUrl=stack.result_queue_url,
                MessageBody=json.dumps({"type": "lighthpc:merge", "mission_id": mission_id}),
            )
            queue = Queue.at(ctx.aws.sqs, stack.result_queue_url, stack.region)
            began = time.perf_counter()
            queue.drain(lambda event: result_processor(event, None))
            merge_s = time.perf_counter() - began
            calls = list(counter.calls)
        merge.merge = merge_once  # type: ignore[assignment]
        mission = ctx.store.missions.get(mission_id)
        done = merge.checkpoint_of(ctx, mission_id)
        result = ctx.aws.s3.get_object(Bucket=bucket, Key=result_key(mission_id))["Body"].read()
        equal = result == b"".join(merge_part(i) for i in range(n))
        verification = verify_receipt(ctx.aws.s3, bucket, mission_id)
    return {
        "parts": n,
        "result_bytes": len(result),
        "status": mission.status.value,
        "seconds": merge_s,
        "invocations": len(durations),
        "checkpoint_invocations": done.invocations,
        "checkpoints": done.checkpoints,
        "parts_per_second": n / merge_s,
        "longest_invocation_s": max(durations),
        "longest_merge_slice_s": max(slices),
        "timeout_s": RESULT_PROCESSOR_TIMEOUT_S,
        "within_timeout": max(durations) < RESULT_PROCESSOR_TIMEOUT_S,
        "merge_slices_within_timeout": max(slices) < RESULT_PROCESSOR_TIMEOUT_S,
        "multipart_parts": done.part_number,
        "s3_calls": sum(c.startswith("s3.") for c in calls),
        "s3_calls_per_part": sum(c.startswith("s3.") for c in calls) / n,
        "result_equals_parts": equal,
        "receipt_verifies": verification.problems == [],
        "staging_seconds": staged_s,
        "fidelity": options.describe() if options else "off",
    }


def render_merge(runs: list[dict]) -> str:
    rows = [
        "| merge (fidelity latency on) | seconds | invocations | parts/s | longest invocation"
        " (its merge) | S3 calls/part | result, receipt |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in runs:
        ok = "equal, verified" if m["result_equals_parts"] and m["receipt_verifies"] else "NO"
        rows.append(
            f"| {m['parts']:,} parts ({m['result_bytes'] / 1024**2:.1f} MiB) | {m['seconds']:.1f}"
            f" | {m['invocations']} | {m['parts_per_second']:,.0f} |"
            f" {m['longest_invocation_s']:.1f} s ({m['longest_merge_slice_s']:.1f} s) of"
            f" {m['timeout_s']} s ({'within' if m['within_timeout'] else 'OVER'}) |"
            f" {m['s3_calls_per_part']:.2f} | {ok} |"
        )
    return "\n".join(rows)


# ---- orchestration -----------------------------------------------------------------------


def _kept(name: str, figures: dict) -> dict:
    """A phase's figures, also kept on disk as soon as they are in (a later phase that fails
    does not lose them): bench/results/phases/<name>.json."""
    folder = RESULTS / "phases"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return figures


def run_phase(name: str, label: str | None = None, **kwargs: Any) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench", "--phase", name, "--args", json.dumps(kwargs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"phase {name} failed:\n{out.stderr[-3000:]}")
    return _kept(label or name, json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase")
    parser.add_argument("--args", default="{}")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.phase:
        phase = {
            "submission": phase_submission,
            "lifecycle": phase_lifecycle,
            "fleet": phase_fleet,
            "bytes": phase_bytes,
            "merge": phase_merge,
            "end_to_end": phase_end_to_end,
        }[args.phase]
        print(json.dumps(phase(**json.loads(args.args))))
        return 0

    sizes = [1000, 10000] if args.quick else [1000, 10000, 50000]
    baseline_n = 100 if args.quick else 1000
    print("running: submission ...", file=sys.stderr, flush=True)
    submission = run_phase("submission", sizes=[*sizes, 100_000], baseline_n=baseline_n)
    print("running: lifecycle ...", file=sys.stderr, flush=True)
    lifecycle = run_phase("lifecycle", n=100 if args.quick else 200)
    print("running: fleet ...", file=sys.stderr, flush=True)
    fleet = run_phase("fleet", n=48 if args.quick else 480, missions=3)
    # One larger mission: the fleet's steady pace, where boot and per-mission costs weigh less.
    fleet_large = run_phase("fleet", "fleet_large", n=300 if args.quick else 3000, missions=1)
    print("running: bytes ...", file=sys.stderr, flush=True)
    split = run_phase("bytes", size_mib=256 if args.quick else 1024, chunks=1000)
    print("running: merge ...", file=sys.stderr, flush=True)
    merged = run_phase("merge", n=2000 if args.quick else 10_000)
    small, big = (2000, 10_000) if args.quick else (10_000, 100_000)
    print(f"running: end to end, {small:,} ...", file=sys.stderr, flush=True)
    e2e_small = run_phase("end_to_end", "end_to_end_small", n=small)
    print(f"running: end to end, {small:,}, fidelity latency on ...", file=sys.stderr, flush=True)
    e2e_fidelity = run_phase("end_to_end", "end_to_end_fidelity", n=small, fidelity=True)
    print(f"running: end to end, {big:,} ...", file=sys.stderr, flush=True)
    e2e_big = run_phase("end_to_end", "end_to_end", n=big)
    # The rate moto allows this very fleet: its calls/s over the calls each transaction of these
    # missions made (counted at moto's server, workers' and handlers' alike). The share is the
    # median of the missions' own, each against the rate measured right before it.
    moto_bound = fleet["moto_single_calls_per_second"] / fleet["calls_per_transaction"]
    results = {
        # The figures a reader looks for first, by plain names.
        "end_to_end": e2e_big,
        "end_to_end_small": e2e_small,
        "end_to_end_fidelity": e2e_fidelity,
        "calls_per_transaction": e2e_small["calls_per_transaction"],
        "hot_item_writes_per_transaction": e2e_small["hot_item_writes_per_transaction"],
        "completion_latency_median_s": fleet["completion_latency_median_s"],
        "fleet_transactions_per_second": fleet["transactions_per_second"],
        "fleet_moto_bound_transactions_per_second": moto_bound,
        "fleet_share_of_moto_bound": fleet["share_of_moto_bound"],
        "submission": submission,
        "lifecycle": lifecycle,
        "fleet": fleet,
        "fleet_large": fleet_large,
        "bytes": split,
        "merge": merged,
        "billed": billed_instance_seconds(1000, 60, 90, 4, max_instances=250),
        "billed_capped": billed_instance_seconds(1000, 60, 90, 4, max_instances=50),
        "import_app_seconds": import_time(),
        "package": package_size(),
        "quick": args.quick,
    }
    results["capacity_model"] = capacity_model(e2e_small)
    # Written before the tables are printed: a table that fails loses no figure.
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(render(results, sizes))
    print("\ncapacity model (measured per-transaction counts against AWS's limits; headroom):")
    print(render_capacity(results["capacity_model"]))
    print("\nbyte-range splitting (bytes mode, the agent's own range fetch and alignment):")
    print(render_bytes(results["bytes"]))
    print("\nthe merge, resumable (result_processor's own handler, Lambda's 60 s context each):")
    print(render_merge([results["merge"]]))
    print("\nwhole missions end to end (submit to email, in process; no-op app, count mode):")
    print(render_end_to_end([e2e_small, e2e_fidelity, e2e_big]))
    print(f"\nwritten: {RESULTS / 'bench.json'}")
    return 0


def render(r: dict, sizes: list[int]) -> str:
    sub, base = r["submission"]["lighthpc"], r["submission"]["baseline"]
    per_txn_s = base["seconds"] / base["n"]
    per_txn_calls = base["calls"] / base["n"]
    lines = [
        "| measure | lighthpc | baseline (one item, one price lookup, one instance per transaction) | ratio |",
        "|---|---|---|---|",
    ]
    for n in sizes:
        mine = sub[str(n)]
        measured = n <= base["n"]
        b_s = base["seconds"] if n == base["n"] else per_txn_s * n
        b_calls = base["calls"] if n == base["n"] else round(per_txn_calls * n)
        note = "measured" if measured else f"extrapolated from {base['n']}"
        lines.append(
            f"| submit {n:,} transactions: time | {mine['seconds']:.3f} s | {b_s:,.1f} s ({note}) |"
            f" {b_s / mine['seconds']:,.0f}x |"
        )
        lines.append(
            f"| submit {n:,} transactions: AWS calls | {mine['calls']} | {b_calls:,} ({note}) |"
            f" {b_calls / mine['calls']:,.0f}x |"
        )
    big = sub["100000"]
    life = r["lifecycle"]
    calls = ", ".join(f"{k} {v}" for k, v in life["calls"].items())
    fl = r["fleet"]
    cpu = fl["cpu_ms_per_transaction"]
    large = r["fleet_large"]
    large_cpu = large["cpu_ms_per_transaction"]
    rates = ", ".join(f"{x:.0f}" for x in fl["moto_single_calls_per_second_by_mission"])
    shares = ", ".join(f"{100 * x:.0f}%" for x in fl["share_of_moto_bound_by_mission"])
    billed, capped = r["billed"], r["billed_capped"]
    pkg = r["package"]
    pkg_text = (
        f"{pkg['zip_mb']:.1f} MB zipped (botocore {'in' if pkg['includes_botocore'] else 'not in'}"
        " it; target at most 10 MB)"
        if "zip_mb" in pkg
        else f"n/a: {pkg.get('error')}"
    )
    lines += [
        f"| AWS calls per transaction, whole life ({life['n']} no-op transactions: {calls}) |"
        f" {life['per_transaction']:.2f} | {per_txn_calls:.0f} for submission alone | |",
        f"| local fleet throughput, {fl['n']} no-op transactions x {fl['missions']} missions"
        f" (4 worker processes x 4 slots; first start -> last part; from RUNNING, boot included:"
        f" {fl['transactions_per_second_with_boot']:.1f} tx/s) |"
        f" {fl['transactions_per_second']:.1f} tx/s | moto-bound rate: moto's single PutItem"
        f" calls right before each mission ({rates} calls/s) over these"
        f" missions' own {fl['calls_per_transaction']:.3f} calls/transaction (counted at moto's"
        f" server) = {r['fleet_moto_bound_transactions_per_second']:,.0f} tx/s (medians) |"
        f" {100 * r['fleet_share_of_moto_bound']:.0f}% (target 70%; median of the missions'"
        f" {shares}) |",
        f"| local fleet, one mission of {large['n']:,} no-op transactions (same fleet) |"
        f" {large['transactions_per_second']:.1f} tx/s ({large['transactions_per_second_with_boot']:.1f}"
        f" from RUNNING) | {large['calls_per_transaction']:.3f} calls/transaction,"
        f" {large['blocks_per_mission_median']} blocks; CPU per transaction"
        f" {large_cpu['embedded_aws_and_handlers'] + large_cpu['workers_and_apps']:.1f} ms"
        f" ({large_cpu['embedded_aws_and_handlers']:.1f} + {large_cpu['workers_and_apps']:.1f}) |"
        f" {100 * large['share_of_moto_bound']:.0f}% of its moto-bound rate |",
        f"| local fleet CPU per transaction, submission to the workers' exit (2 cores) |"
        f" {cpu['embedded_aws_and_handlers'] + cpu['workers_and_apps']:.1f} ms |"
        f" embedded AWS, handlers, pump and API {cpu['embedded_aws_and_handlers']:.1f} ms;"
        f" workers and their apps {cpu['workers_and_apps']:.1f} ms (each worker's boot included) | |",
        f"| completion latency: last part stored -> email sent (median of {fl['missions']}) |"
        f" {fl['completion_latency_median_s']:.2f} s | target at most 1 s | |",
        f"| billed instance-seconds, 1,000 x 60 s, 90 s boot, 4 slots ({billed['instances']} instances) |"
        f" {billed['packed']:,.0f} | {billed['one_per_transaction']:,.0f} |"
        f" {billed['one_per_transaction'] / billed['packed']:.1f}x |",
        f"| same, capped at {capped['instances']} instances |"
        f" {capped['packed']:,.0f} | {capped['one_per_transaction']:,.0f} |"
        f" {capped['one_per_transaction'] / capped['packed']:.1f}x |",
        f"| plan 100,000 transactions: time, peak Python memory |"
        f" {big['seconds']:.3f} s, {big['peak_mb']:.1f} MB | | |",
        f"| `import app`, cold, fresh process (median of 5) | {r['import_app_seconds']:.2f} s | | |",
        f"| Lambda package (`make package`: requirements.txt + app.py + chalicelib) | {pkg_text} | | |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
