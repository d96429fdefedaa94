"""The receipt of real missions, in-process on moto: the merge writes a manifest next to the
result, the email pins it, `lighthpc verify` checks a result and its parts against it and names
every tampered part; a part changed before the merge is never merged."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chalicelib.context import get_context
from chalicelib.layout import manifest_key, parse_outcome_key, result_key
from chalicelib.receipt import FORMAT
from chalicelib.results import merge_parts
from local.cli import main
from local.client import verify_receipt
from local.inprocess import InProcessCluster
from tests.functional.test_mission import (
    SAMPLE,
    kmer_config,
    run_to_completion,
    single_process_result,
    submit,
)


def start(cluster: InProcessCluster, config: dict) -> str:
    mission_id = submit(cluster, config)
    cluster.upload(config["input"], SAMPLE)
    cluster.deliver_source_events()
    return mission_id


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read(cluster: InProcessCluster, key: str) -> bytes:
    return cluster.s3.get_object(Bucket=bucket(cluster), Key=key)["Body"].read()


def bucket(cluster: InProcessCluster) -> str:
    return cluster.stack.outputs["ResultBucketName"]


def manifest_of(cluster: InProcessCluster, mission_id: str) -> list[dict]:
    return [json.loads(line) for line in read(cluster, manifest_key(mission_id)).splitlines()]


@pytest.fixture
def done(cluster: InProcessCluster) -> str:
    """A 12-transaction mission, run to completion and mailed."""
    mission_id = start(cluster, kmer_config("receipt", "samples/r.fa"))
    mission = run_to_completion(cluster, mission_id)
    assert mission["status"] == "SUCCEEDED"
    return mission_id


@contextlib.contextmanager
def api_over_http(cluster: InProcessCluster) -> Iterator[str]:
    """The in-process API on a loopback port, as a deployed stage's EndpointURL would be."""

    class Forward(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            response = cluster.get(self.path.removeprefix("/api"))
            self.send_response(response.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/api"
    finally:
        server.shutdown()


def test_a_merged_result_verifies_against_its_manifest(cluster: InProcessCluster, done: str):
    mission_id = done
    result = read(cluster, result_key(mission_id))
    assert result == single_process_result()
    head, *rows, foot = manifest_of(cluster, mission_id)

    # The mission line: the input exactly as planned, the config, the owner.
    source = cluster.s3.head_object(
        Bucket=cluster.stack.outputs["SourceBucketName"], Key="samples/r.fa"
    )
    assert head["format"] == FORMAT and head["mission_id"] == mission_id
    assert head["input"]["key"] == "samples/r.fa"
    assert head["input"]["version_id"] == source["VersionId"]
    assert head["input"]["etag"] == source["ETag"].strip('"')
    assert head["config"]["app"]["builtin"] == "kmer-match"
    assert head["owner"] == "local"

    # A line per block (however the workers cut the mission): who ran it, how, and the part,
    # which is what S3 holds; the blocks cover every transaction once, in order.
    workers = set(cluster.instance_states(mission_id))
    covered = [i for r in rows for i in range(r["index"], r["index"] + r.get("span", 1))]
    assert covered == list(range(12))
    offset = 0
    for r in rows:
        assert r["status"] == "SUCCEEDED" and r["attempts"] == 1 and r["exit_code"] == 0
        assert r["worker"].split("/")[0] in workers and r["seconds"] > 0
        part = r["part"]
        assert part["offset"] == offset
        stored = cluster.s3.get_object(
            Bucket=bucket(cluster), Key=part["key"], ChecksumMode="ENABLED"
        )
        body = stored["Body"].read()
        assert (len(body), sha(body)) == (part["bytes"], part["sha256"])
        # The worker's upload carried S3's own checksum, and its stamp.
        assert stored["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(sha(body))).decode()
        assert stored["Metadata"]["sha256"] == sha(body)
        assert result[offset : offset + part["bytes"]] == body
        offset += part["bytes"]
    # The result line pins the result by its parts: their sha256s, in order, and its length.
    digests = "".join(r["part"]["sha256"] for r in rows)
    assert (foot["bytes"], foot["parts_sha256"]) == (len(result), sha(digests.encode()))
    assert (foot["transactions"], foot["parts"]) == (12, len(rows))
    assert foot["estimated_cost_usd"] > 0

    # The email names the manifest and pins it by its sha256.
    manifest = read(cluster, manifest_key(mission_id))
    (email,) = cluster.emails()
    uri = f"s3://{bucket(cluster)}/{manifest_key(mission_id)}"
    assert f"Receipt:          {uri}\n" in email.body
    assert f"Receipt sha256:   {sha(manifest)}\n" in email.body

    # And the check a user runs says so.
    verification = verify_receipt(
        cluster.s3, bucket(cluster), mission_id, check_parts=True, expected_manifest_sha256=None
    )
    assert verification.problems == []
    assert verification.manifest_sha256 == sha(manifest)
    assert (verification.transactions, verification.parts) == (12, len(rows))


def test_lighthpc_verify_detects_a_tampered_part(
    cluster: InProcessCluster, done: str, capsys: pytest.CaptureFixture[str]
):
    mission_id = done
    (email,) = cluster.emails()
    pinned = email.body.split("Receipt sha256:   ")[1].split()[0]
    _, *rows, _ = manifest_of(cluster, mission_id)
    with api_over_http(cluster) as url:
        verify = ["--api", url, "verify", mission_id, "--parts"]
        assert main([*verify, "--manifest-sha256", pinned]) == 0
        assert f"ok: the result matches its manifest: 12 transactions, {len(rows)} parts" in (
            capsys.readouterr().out
        )

        # Someone with write access to parts/ changes one after the merge.
        row = rows[len(rows) // 2]
        key = row["part"]["key"]
        cluster.s3.put_object(Bucket=bucket(cluster), Key=key, Body=b"ref 999999\n")
        assert main(verify) == 1
        out = capsys.readouterr().out
        (mismatch,) = [line for line in out.splitlines() if line.startswith("MISMATCH")]
        assert mismatch.startswith(f"MISMATCH #{row['index']} {key}: the part object (11 bytes")
        # The result itself is still the one the manifest describes.
        assert main(verify[:-1]) == 0
        capsys.readouterr()

        # A manifest other than the one the email pinned is refused too.
        assert main([*verify[:-1], "--manifest-sha256", "0" * 64]) == 1
        assert "not " + "0" * 64 + " (the email's)" in capsys.readouterr().out


def test_lighthpc_verify_detects_a_tampered_result(cluster: InProcessCluster, done: str):
    mission_id = done
    result = read(cluster, result_key(mission_id))
    rows = [r for r in manifest_of(cluster, mission_id) if r["kind"] == "transaction"]
    third = rows[3]["part"]
    at = third["offset"]
    tampered = result[:at] + b"X" + result[at + 1 :]
    cluster.s3.put_object(Bucket=bucket(cluster), Key=result_key(mission_id), Body=tampered)
    problems = verify_receipt(cluster.s3, bucket(cluster), mission_id).problems
    assert [(p.index, p.key) for p in problems] == [(3, third["key"])]
    # Grown by a byte: past the last part's range, the result is not the one described.
    cluster.s3.put_object(Bucket=bucket(cluster), Key=result_key(mission_id), Body=result + b"X")
    problems = verify_receipt(cluster.s3, bucket(cluster), mission_id).problems
    assert [(p.index, p.key) for p in problems] == [(None, result_key(mission_id))]
    assert f"({len(result) + 1} bytes) is not the one the manifest describes" in problems[0].what


def test_a_rerun_of_the_merge_leaves_the_same_receipt(cluster: InProcessCluster, done: str):
    """A redelivered completing event merges again: the same result, the first receipt kept."""
    mission_id = done
    before = read(cluster, manifest_key(mission_id)), read(cluster, result_key(mission_id))
    ctx = get_context()
    assert merge_parts(ctx, ctx.store.missions.get(mission_id)) == result_key(mission_id)
    after = read(cluster, manifest_key(mission_id)), read(cluster, result_key(mission_id))
    assert after == before
    assert verify_receipt(cluster.s3, bucket(cluster), mission_id, check_parts=True).problems == []


def test_a_partly_failed_mission_has_a_receipt_of_its_partial_result(cluster: InProcessCluster):
    code = (
        "import sys; s = sys.argv[2];"
        " sys.exit('no licence') if s == '48' else open(sys.argv[1], 'w').write(s + '\\n')"
    )
    argv = ["{python}", "-c", code, "{output}", "{start}"]
    config = kmer_config("partly", "in.txt", count=4, app={"argv": argv}, max_attempts=1)
    mission_id = start(cluster, config)
    mission = run_to_completion(cluster, mission_id)
    assert mission["status"] == "FAILED" and mission["result"]
    assert read(cluster, result_key(mission_id)) == b"0\n24\n72\n"
    _, *rows, foot = manifest_of(cluster, mission_id)
    assert [(r["index"], r["status"], r["part"] is None) for r in rows] == [
        (0, "SUCCEEDED", False),
        (1, "SUCCEEDED", False),
        (2, "FAILED", True),
        (3, "SUCCEEDED", False),
    ]
    assert rows[2]["exit_code"] == 1 and (foot["transactions"], foot["parts"]) == (4, 3)
    assert verify_receipt(cluster.s3, bucket(cluster), mission_id, check_parts=True).problems == []
    assert "Receipt sha256:" in cluster.emails()[0].body


def _same_stamp_other_bytes(cluster: InProcessCluster, key: str) -> None:
    """Changed bytes, the worker's stamp copied: only the merge's own hashing can tell."""
    metadata = cluster.s3.head_object(Bucket=bucket(cluster), Key=key)["Metadata"]
    cluster.s3.put_object(Bucket=bucket(cluster), Key=key, Body=b"forged\n", Metadata=metadata)


def _no_stamp(cluster: InProcessCluster, key: str) -> None:
    cluster.s3.put_object(Bucket=bucket(cluster), Key=key, Body=b"forged\n")


def _wrong_s3_checksum(cluster: InProcessCluster, key: str) -> None:
    """S3 holding a checksum its bytes do not have (AWS refuses such a PUT; moto stores it):
    botocore's check on GetObject catches it."""
    body = read(cluster, key)
    cluster.s3.put_object(
        Bucket=bucket(cluster),
        Key=key,
        Body=body,
        Metadata=cluster.s3.head_object(Bucket=bucket(cluster), Key=key)["Metadata"],
        ChecksumAlgorithm="SHA256",
        ChecksumSHA256=base64.b64encode(hashlib.sha256(b"other").digest()).decode(),
    )


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_same_stamp_other_bytes, "its worker uploaded"),
        (_no_stamp, "it carries no sha256 from its worker"),
        (_wrong_s3_checksum, "S3's checksum refused its bytes"),
    ],
)
def test_a_part_changed_before_the_merge_is_never_merged(
    cluster: InProcessCluster, tamper, reason: str
):
    mission_id = start(cluster, kmer_config("changed", "samples/c.fa", count=4))
    cluster.run_workers(mission_id)
    store = get_context().store
    # The last part, whichever transactions its block holds: the error names its first.
    listed = cluster.s3.list_objects_v2(Bucket=bucket(cluster), Prefix=f"parts/{mission_id}/")
    key = max(o["Key"] for o in listed["Contents"])
    outcome = parse_outcome_key(key)
    assert outcome is not None
    first = outcome.index
    tamper(cluster, key)
    cluster.deliver_result_events()
    mission = json.loads(cluster.get(f"/missions/{mission_id}").body)
    assert mission["status"] == "FAILED" and mission["result"] is None
    assert f"transaction {first}: its part {key} is not what its worker" in mission["error"]
    assert reason in mission["error"]
    assert store.missions.get(mission_id).result_key is None
    listed = cluster.s3.list_objects_v2(Bucket=bucket(cluster), Prefix=f"results/{mission_id}/")
    assert listed.get("KeyCount", 0) == 0  # neither a result nor a receipt
    (email,) = cluster.emails()
    assert f"The mission failed: transaction {first}: its part {key}" in email.body
    assert "Receipt:" not in email.body
