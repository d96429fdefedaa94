"""`lighthpc demo`: one whole, checked mission on a fresh local stack.

It starts the stack (as `lighthpc up` does), then acts as a user: POSTs the config over HTTP,
uploads a FASTA sample over S3, shows progress, prints the email from the outbox, downloads the
merged result and compares it with the same computation run in this process, and checks the
result and every part against the mission's receipt (as `lighthpc verify --parts` does). Exit 0
only if the mission succeeded, exactly one email came, the result is equal and it verifies.

`lighthpc demo --pipeline` runs two stages instead (POST /pipelines): "match", the same k-mer
match, then "rank", kmer-top over match's result on machines of its own; one email for both, and
the final result must equal `top()` of the single-process run.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from worker_ami.apps.kmer_match import demo_sample, kmers, match, read_sequences
from worker_ami.apps.kmer_top import top

SEED, REF_LENGTH, K = 7, 1000, 12
INPUT_KEY = "samples/demo sample.fa"
RANK_TOP = 10
# Each stage on machines of its own: compute-optimised for the match, memory for the rank.
MATCH_TYPES, RANK_TYPES = ["c6i.large", "c5.large"], ["r5.large"]


def demo_config(transactions: int, references: int, workers: int) -> dict[str, Any]:
    return {
        "name": "demo: k-mer match",
        "input": INPUT_KEY,
        "split": {
            "mode": "count",
            "count": transactions,
            "interval": {"start": 0, "end": references},
        },
        "app": {
            "builtin": "kmer-match",
            "params": {"k": K, "seed": SEED, "ref_length": REF_LENGTH},
        },
        "instances": {"types": ["c5.large", "m5.large"], "max_instances": workers, "slots": 2},
        "notify": "you@example.org",
    }


def demo_input(references: int) -> str:
    hits = list(range(5, references, max(1, references // 9)))
    return demo_sample(SEED, hits, REF_LENGTH)


def expected_result(sample: str, references: int, ref_length: int = REF_LENGTH) -> bytes:
    """The single-process run the merged result must equal."""
    sample_kmers: set[str] = set()
    for sequence in read_sequences(sample.splitlines()):
        sample_kmers |= kmers(sequence, K)
    lines = match(sample_kmers, 0, references, k=K, seed=SEED, ref_length=ref_length)
    return "".join(lines).encode()


def pipeline_config(
    transactions: int, references: int, workers: int, input_key: str = INPUT_KEY
) -> dict[str, Any]:
    """Two stages: the demo's k-mer match (no reduce), then kmer-top over its result."""
    match_config = demo_config(transactions, references, workers)
    del match_config["notify"]  # the pipeline's one email tells of every stage
    match_config["input"] = input_key
    match_config["instances"] = {"types": MATCH_TYPES, "max_instances": workers, "slots": 2}
    rank_config = {
        "name": f"demo: top {RANK_TOP}",
        "input": {"stage": "match"},
        "split": {"mode": "count", "count": 1, "interval": {"start": 0, "end": 1}},
        "app": {"builtin": "kmer-top", "params": {"top": RANK_TOP}},
        "instances": {"types": RANK_TYPES, "max_instances": 1, "slots": 1},
    }
    return {
        "name": "demo: match, then rank",
        "notify": "you@example.org",
        "budget_usd": None,
        "stages": [
            {"stage": "match", "config": match_config},
            {"stage": "rank", "config": rank_config},
        ],
    }


def expected_top(sample: str, references: int, n: int = RANK_TOP) -> bytes:
    """The single-process run of both stages: the final result must equal it."""
    merged = expected_result(sample, references).decode()
    return "".join(top(merged.splitlines(keepends=True), n)).encode()


def _stepper(began: float):
    def step(message: str) -> None:
        print(f"[{time.monotonic() - began:6.2f}s] {message}", flush=True)

    return step


def _verdict(
    checks: dict[str, bool], began: float, merged: bytes, what: str = "matching references"
) -> int:
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    print(f"{len(merged.splitlines())} {what}; {time.monotonic() - began:.1f} s in all")
    return 0 if all(checks.values()) else 1


def run_demo(
    home: Path | None, transactions: int, references: int, workers: int, api_port: int
) -> int:
    from local.client import (
        api,
        describe_verification,
        find_email,
        s3_client,
        verify_mission,
        watch,
    )
    from local.runtime import LocalRuntime

    began = time.monotonic()
    step = _stepper(began)
    home = Path(tempfile.mkdtemp(prefix="lighthpc-demo-")) if home is None else home
    runtime = LocalRuntime(
        home=home, aws_port=0, api_port=api_port, max_workers=workers, echo=lambda _: None
    )
    info = runtime.start()
    try:
        step("local stack up:\n" + info.describe())
        sample = demo_input(references)
        status, body = api(
            info, "POST", "/missions", demo_config(transactions, references, workers)
        )
        if status != 201:
            print(f"the API refused the config: HTTP {status} {body}", file=sys.stderr)
            return 1
        mission_id = body["mission_id"]
        step(f"POST /missions -> 201, mission {mission_id}")
        s3 = s3_client(info)
        s3.put_object(Bucket=info.source_bucket, Key=INPUT_KEY, Body=sample.encode())
        step(f"uploaded {len(sample)} bytes to s3://{info.source_bucket}/{INPUT_KEY}")
        mission = watch(info, mission_id, timeout=600)
        step(
            f"mission {mission['status']}: {mission['instances']} workers,"
            f" {mission['instance_seconds']:.1f} instance-seconds"
        )
        email = find_email(info, mission_id)
        emails = sorted(Path(info.outbox).glob(f"*-{mission_id}.eml"))
        if email is not None:
            print(f"\n--- {email} ---\n{email.read_text()}")
        merged, verified = b"", False
        if mission["result"]:
            bucket, key = mission["result"].removeprefix("s3://").split("/", 1)
            merged = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            verification = verify_mission(info, mission_id, check_parts=True)
            step("lighthpc verify --parts:\n" + describe_verification(verification))
            verified = not verification.problems and (
                email is not None and verification.manifest_sha256 in email.read_text()
            )
        _, listed = api(info, "GET", f"/missions/{mission_id}/transactions")
    finally:
        runtime.stop()
    step("local stack stopped")
    return _verdict(
        {
            "mission SUCCEEDED": mission["status"] == "SUCCEEDED",
            f"all {transactions} transactions SUCCEEDED": [
                t["status"] for t in listed["transactions"]
            ]
            == ["SUCCEEDED"] * transactions,
            "exactly one email in the outbox": len(emails) == 1,
            "merged result equals the single-process run": merged
            == expected_result(sample, references),
            "result and parts verified against the receipt the email names": verified,
        },
        began,
        merged,
    )


def run_demo_in_process(transactions: int, references: int, workers: int) -> int:
    """The same mission inside one process on moto's mock, handlers called directly."""
    from local.client import describe_verification, verify_receipt
    from local.inprocess import InProcessCluster

    began = time.monotonic()
    step = _stepper(began)
    sample = demo_input(references)
    with InProcessCluster.running() as cluster:
        response = cluster.submit(demo_config(transactions, references, workers))
        if response.status_code != 201:
            print(f"the API refused the config: {response.body.decode()}", file=sys.stderr)
            return 1
        mission_id = json.loads(response.body)["mission_id"]
        step(f"POST /missions -> 201, mission {mission_id}")
        cluster.upload(INPUT_KEY, sample.encode())
        cluster.deliver_source_events()
        mission = json.loads(cluster.get(f"/missions/{mission_id}").body)
        step(f"light_scheduler: {mission['status']}, {mission['instances']} instances launched")
        for r in cluster.run_workers(mission_id):
            step(f"worker {r.instance_id}: {r.succeeded} transactions, then terminated itself")
        cluster.deliver_result_events()
        mission = json.loads(cluster.get(f"/missions/{mission_id}").body)
        emails = cluster.emails()
        for email in emails:
            print(f"\n--- email ---\nSubject: {email.subject}\n\n{email.body}")
        merged = cluster.result(mission["result"]) if mission["result"] else b""
        verified = False
        if mission["result"]:
            bucket = mission["result"].removeprefix("s3://").split("/", 1)[0]
            verification = verify_receipt(cluster.s3, bucket, mission_id, check_parts=True)
            step("lighthpc verify --parts:\n" + describe_verification(verification))
            verified = not verification.problems and any(
                verification.manifest_sha256 in e.body for e in emails
            )
    return _verdict(
        {
            "mission SUCCEEDED": mission["status"] == "SUCCEEDED",
            "exactly one email": len(emails) == 1,
            "merged result equals the single-process run": merged
            == expected_result(sample, references),
            "result and parts verified against the receipt the email names": verified,
        },
        began,
        merged,
    )


def run_pipeline_demo(
    home: Path | None, transactions: int, references: int, workers: int, api_port: int
) -> int:
    """`run_demo` for a two-stage pipeline: match, then rank (see the module's docstring)."""
    from local.client import api, explain, find_pipeline_email, s3_client, watch_pipeline
    from local.runtime import LocalRuntime

    began = time.monotonic()
    step = _stepper(began)
    home = Path(tempfile.mkdtemp(prefix="lighthpc-demo-")) if home is None else home
    runtime = LocalRuntime(
        home=home, aws_port=0, api_port=api_port, max_workers=workers, echo=lambda _: None
    )
    info = runtime.start()
    config = pipeline_config(transactions, references, workers)
    wanted_types = {s["stage"]: set(s["config"]["instances"]["types"]) for s in config["stages"]}
    try:
        step("local stack up:\n" + info.describe())
        sample = demo_input(references)
        status, body = api(info, "POST", "/pipelines", config)
        if status != 201:
            print(f"the API refused the pipeline: {explain(status, body)}", file=sys.stderr)
            return 1
        pipeline_id = body["pipeline_id"]
        step(
            f"POST /pipelines -> 201, pipeline {pipeline_id}: "
            + ", ".join(f"{s['stage']} = {s['mission_id']}" for s in body["stages"])
        )
        s3 = s3_client(info)
        s3.put_object(Bucket=info.source_bucket, Key=INPUT_KEY, Body=sample.encode())
        step(f"uploaded {len(sample)} bytes to s3://{info.source_bucket}/{INPUT_KEY}")
        pipeline = watch_pipeline(info, pipeline_id, timeout=600)
        step(f"pipeline {pipeline['status']}, estimated cost ${pipeline['estimated_cost_usd']:.4f}")
        machines: dict[str, set[str]] = {}
        for stage in pipeline["stages"]:
            _, timeline = api(info, "GET", f"/missions/{stage['mission_id']}/timeline?limit=1")
            machines[stage["stage"]] = {i["type"] for i in timeline.get("instances") or []}
            step(
                f"stage {stage['stage']} ({stage['mission_id']}): {stage['status']} on"
                f" {len(timeline.get('instances') or [])} instance(s) of"
                f" {', '.join(sorted(machines[stage['stage']])) or 'no type'}"
            )
        email = find_pipeline_email(info, pipeline_id)
        time.sleep(1.0)  # a duplicate would land right after: give it the chance
        emails = sorted(Path(info.outbox).glob(f"*-{pipeline_id}.eml"))
        stray = [
            p
            for s in pipeline["stages"]
            for p in Path(info.outbox).glob(f"*-{s['mission_id']}*.eml")
        ]
        text = email.read_text() if email is not None else ""
        if email is not None:
            print(f"\n--- {email} ---\n{text}")
        final, result = b"", pipeline["stages"][-1].get("result")
        if result:
            bucket, key = result.removeprefix("s3://").split("/", 1)
            final = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            print(f"--- {result} ---\n{final.decode(errors='replace')}", end="")
    finally:
        runtime.stop()
    step("local stack stopped")
    stages = pipeline["stages"]
    return _verdict(
        {
            "pipeline SUCCEEDED": pipeline["status"] == "SUCCEEDED",
            f"every stage SUCCEEDED ({', '.join(s['stage'] for s in stages)})": [
                s["status"] for s in stages
            ]
            == ["SUCCEEDED"] * len(config["stages"]),
            "each stage ran on its own instance types": all(
                machines.get(name) and machines[name] <= types
                for name, types in wanted_types.items()
            ),
            "exactly one email in the outbox, none per stage": len(emails) == 1 and not stray,
            "the email tells of every stage": all(
                f"Stage {s['stage']!r} ({s['mission_id']}): {s['status']}" in text for s in stages
            ),
            f"final result equals top({RANK_TOP}) of the single-process run": final
            == expected_top(sample, references),
        },
        began,
        final,
        what="top references",
    )
