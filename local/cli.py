"""The `lighthpc` command line.

`lighthpc demo` runs one whole mission on an embedded AWS (moto, in this process): it posts the
config through the API, uploads a sample, delivers the S3 events to the scheduler, runs a worker
agent for each EC2 instance the scheduler launched, delivers the result events, prints the email
and checks the merged result against the same computation run in a single process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)  # the demo never talks to a real account

    from moto import mock_aws

    from local.inprocess import InProcessCluster
    from worker_ami.apps.kmer_match import demo_sample, kmers, match, read_sequences

    seed, ref_length, k = 7, 1000, 12
    hits = list(range(5, args.references, max(1, args.references // 9)))
    sample = demo_sample(seed, hits, ref_length)
    config = {
        "name": "demo: k-mer match",
        "input": "samples/demo sample.fa",
        "split": {
            "mode": "count",
            "count": args.transactions,
            "interval": {"start": 0, "end": args.references},
        },
        "app": {
            "builtin": "kmer-match",
            "params": {"k": k, "seed": seed, "ref_length": ref_length},
        },
        "instances": {"types": ["c5.large", "m5.large"], "max_instances": args.workers, "slots": 2},
        "notify": "you@example.org",
    }
    began = time.monotonic()
    with mock_aws():
        cluster = InProcessCluster.start()
        step = _stepper(began)
        response = cluster.submit(config)
        if response.status_code != 201:
            print(f"the API refused the config: {response.body.decode()}", file=sys.stderr)
            return 1
        mission_id = json.loads(response.body)["mission_id"]
        step(f"POST /missions -> 201, mission {mission_id}")
        cluster.upload(config["input"], sample.encode())
        step(f"uploaded s3://{cluster.stack.outputs['SourceBucketName']}/{config['input']}")
        cluster.deliver_source_events()
        mission = json.loads(cluster.get(f"/missions/{mission_id}").body)
        step(
            f"light_scheduler: {mission['status']}, {mission['transactions']['total']}"
            f" transactions, {mission['instances']} Spot instances launched"
        )
        reports = cluster.run_workers(mission_id)
        for r in reports:
            step(f"worker {r.instance_id}: {r.succeeded} transactions, then terminated itself")
        cluster.deliver_result_events()
        mission = json.loads(cluster.get(f"/missions/{mission_id}").body)
        step(f"result_processor: mission {mission['status']}, merged into {mission['result']}")
        emails = cluster.emails()
        for email in emails:
            print(f"\n--- email to {email.attributes.get('notify')} ---")
            print(f"Subject: {email.subject}\n\n{email.body}")
        merged = cluster.result(mission["result"]) if mission["result"] else b""
    sample_kmers: set[str] = set()
    for sequence in read_sequences(sample.splitlines()):
        sample_kmers |= kmers(sequence, k)
    expected = "".join(
        match(sample_kmers, 0, args.references, k=k, seed=seed, ref_length=ref_length)
    ).encode()
    checks = {
        "mission SUCCEEDED": mission["status"] == "SUCCEEDED",
        "exactly one email": len(emails) == 1,
        "merged result equals the single-process run": merged == expected,
    }
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    print(f"{len(merged.splitlines())} matching references; {time.monotonic() - began:.1f} s")
    return 0 if all(checks.values()) else 1


def _stepper(began: float):
    def step(message: str) -> None:
        print(f"[{time.monotonic() - began:6.2f}s] {message}", flush=True)

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lighthpc", description="lighthpc on your machine")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help="run one whole mission on an embedded AWS and check it")
    p.add_argument("--transactions", type=int, default=64)
    p.add_argument("--references", type=int, default=640)
    p.add_argument("--workers", type=int, default=4)
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
