"""How the CLI, the demo, the chaos suite and the benchmarks talk to lighthpc: HTTP and S3.

A running `lighthpc up` is found through `<home>/stack.json` (`RuntimeInfo`); a deployed stage is
an `DeployedApi` (its `EndpointURL`), every call signed with SigV4 from the default AWS
credentials. Nothing here starts a stack.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

DEFAULT_HOME = Path(".lighthpc")
INFO_FILE = "stack.json"  # written by a running `lighthpc up`, removed when it stops


@dataclass(frozen=True)
class RuntimeInfo:
    stage: str
    region: str
    aws_endpoint: str
    api_url: str
    source_bucket: str
    result_bucket: str
    topic_arn: str
    outbox: str
    workers: str
    pid: int

    def describe(self) -> str:
        return "\n".join(
            [
                f"AWS endpoint   {self.aws_endpoint}   (region {self.region}, any credentials)",
                f"API            {self.api_url}",
                f"source bucket  s3://{self.source_bucket}",
                f"result bucket  s3://{self.result_bucket}",
                f"outbox         {self.outbox}",
                f"worker logs    {self.workers}",
            ]
        )


def read_info(home: Path) -> RuntimeInfo | None:
    path = home / INFO_FILE
    if not path.exists():
        return None
    return RuntimeInfo(**json.loads(path.read_text()))


TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


class CliError(Exception):
    """A problem to tell the user in one line, and exit 1."""


# ---- talking to a running stack ----------------------------------------------------------


def require_stack(home: Path) -> RuntimeInfo:
    info = read_info(home)
    if info is None:
        raise CliError(
            f"no local stack found in {home}/: start one with `lighthpc up` (in another terminal)"
        )
    try:
        urllib.request.urlopen(f"{info.api_url}/missions", timeout=3).close()  # noqa: S310
    except (urllib.error.URLError, OSError) as e:
        raise CliError(
            f"the local stack in {home}/ does not answer at {info.api_url} ({e});"
            " is `lighthpc up` still running?"
        ) from e
    return info


@dataclass(frozen=True)
class DeployedApi:
    """A deployed stage's API (IAM authorization): every call is signed with SigV4."""

    api_url: str
    region: str

    @classmethod
    def from_url(cls, url: str, region: str | None) -> DeployedApi:
        host = urlparse(url).hostname or ""
        # https://<id>.execute-api.<region>.amazonaws.com/api
        parts = host.split(".")
        from_host = parts[2] if len(parts) > 3 and parts[1] == "execute-api" else None
        chosen = (
            region
            or from_host
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
        )
        if not chosen:
            raise CliError(f"cannot tell the region of {url}: pass --region")
        return cls(api_url=url.rstrip("/"), region=chosen)

    def sign(self, method: str, url: str, data: bytes | None, headers: dict[str, str]) -> dict:
        import boto3
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        credentials = boto3.Session().get_credentials()
        if credentials is None:
            raise CliError(
                f"no AWS credentials to sign requests to {self.api_url}"
                " (aws configure, AWS_PROFILE or the AWS_* variables)"
            )
        request = AWSRequest(method=method, url=url, data=data, headers=headers)
        SigV4Auth(credentials, "execute-api", self.region).add_auth(request)
        return dict(request.headers.items())

    def s3(self) -> Any:
        import boto3

        return boto3.session.Session().client("s3", region_name=self.region)


Target = RuntimeInfo | DeployedApi


def api(
    info: Target,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    url = f"{info.api_url}{path}"
    sent = {"Content-Type": "application/json", **(headers or {})}
    if isinstance(info, DeployedApi):
        sent = info.sign(method, url, data, sent)
    request = urllib.request.Request(  # noqa: S310 - the local stack's or the deployed API's URL
        url, data=data, method=method, headers=sent
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        payload = e.read()
        try:
            return e.code, json.loads(payload)
        except ValueError:
            return e.code, {"error": payload.decode(errors="replace")}


def explain(status: int, body: Any) -> str:
    if isinstance(body, dict) and body.get("fields"):
        fields = "\n".join(f"  {f['field']}: {f['reason']}" for f in body["fields"])
        return f"HTTP {status}: {body.get('error')}\n{fields}"
    if isinstance(body, dict) and body.get("error"):
        return f"HTTP {status}: {body['error']}"
    return f"HTTP {status}: {body}"


def s3_client(info: Target) -> Any:
    if isinstance(info, DeployedApi):
        return info.s3()
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=info.aws_endpoint,
        region_name=info.region,
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - the embedded AWS takes any credentials
    )


def post_once(
    info: Target, config: dict[str, Any], attempts: int = 3, path: str = "/missions"
) -> tuple[int, Any]:
    """POST a config, retrying a lost connection with the same Idempotency-Key: the API answers
    a retry with the first answer, so a mission never starts twice. (HTTP errors are answers,
    returned by `api`, and are not retried.)"""
    headers = {"Idempotency-Key": f"cli-{uuid.uuid4().hex}"}
    error: OSError | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(attempt)
        try:
            return api(info, "POST", path, config, headers)
        except OSError as e:  # urllib's URLError included
            error = e
    raise CliError(f"cannot reach {info.api_url}: {error}") from error


def progress_line(mission: dict[str, Any], width: int = 40) -> str:
    counts = mission.get("transactions", {})
    total = counts.get("total") or 0
    done = counts.get("SUCCEEDED", 0) + counts.get("FAILED", 0) + counts.get("CANCELLED", 0)
    filled = int(width * done / total) if total else 0
    bar = "#" * filled + "." * (width - filled)
    return (
        f"[{bar}] {done}/{total}  {mission['status']:<14}"
        f" pending {counts.get('PENDING', 0)} running {counts.get('RUNNING', 0)}"
        f" succeeded {counts.get('SUCCEEDED', 0)} failed {counts.get('FAILED', 0)}"
        + (f" cancelled {counts['CANCELLED']}" if counts.get("CANCELLED") else "")
    )


def watch(info: Target, mission_id: str, timeout: float, out: TextIO | None = sys.stdout) -> dict:
    """Until the mission is finished and its email sent (showing progress on `out`, unless
    None); returns the mission."""
    return _follow(info, f"/missions/{mission_id}", progress_line, timeout, out, overwrite=True)


def _follow(
    info: Target,
    path: str,
    line_of: Callable[[dict[str, Any]], str],
    timeout: float,
    out: TextIO | None,
    overwrite: bool = False,
) -> dict:
    """GET `path` until what it answers ended and its email was sent, writing `line_of` it to
    `out` whenever that changes (over the last one on a terminal, with `overwrite`)."""
    deadline = time.monotonic() + timeout
    tty = overwrite and out is not None and out.isatty()
    last = ""
    while True:
        status, body = api(info, "GET", path)
        if status != 200:
            raise CliError(explain(status, body))
        line = line_of(body)
        if out is not None and line != last:
            out.write(("\r" + line) if tty else (line + "\n"))
            out.flush()
            last = line
        if body["status"] in TERMINAL and body.get("notified_at"):
            if tty and out is not None:
                out.write("\n")
            return body
        if time.monotonic() > deadline:
            raise CliError(f"{path} still {body['status']} after {timeout:g} s")
        time.sleep(0.5)


# ---- receipts ----------------------------------------------------------------------------


def _span_of(line: bytes) -> int:
    """How many transactions a manifest's transaction line stands for (1 if it cannot say:
    `verify` reports a malformed line itself)."""
    try:
        span = json.loads(line).get("span", 1)
    except (ValueError, AttributeError):
        return 1
    return span if isinstance(span, int) and span > 0 else 1


@dataclass(frozen=True)
class Verification:
    """What `lighthpc verify` found: the objects checked and every problem (none: verified)."""

    result_uri: str
    manifest_uri: str
    manifest_sha256: str  # of the manifest's bytes as read
    result_bytes: int | None
    result_sha256: str | None  # of the result's bytes as read (the manifest pins its parts)
    parts_sha256: str | None  # the manifest's result line: the sha256 of its parts' sha256s
    transactions: int
    parts: int
    parts_checked: bool
    problems: list[Any]  # chalicelib.receipt.Problem


def verify_receipt(
    s3: Any,
    bucket: str,
    mission_id: str,
    check_parts: bool = False,
    expected_manifest_sha256: str | None = None,
) -> Verification:
    """Check a mission's merged result (and, with `check_parts`, its part objects under parts/)
    against its manifest, reading each object once, streamed."""
    import hashlib

    from chalicelib.layout import SHA256_METADATA, manifest_key, result_key
    from chalicelib.receipt import Problem, lines, verify

    mkey, rkey = manifest_key(mission_id), result_key(mission_id)
    try:
        response = s3.get_object(Bucket=bucket, Key=mkey)
    except s3.exceptions.NoSuchKey as e:
        raise CliError(f"mission {mission_id} has no receipt at s3://{bucket}/{mkey}") from e
    digest = hashlib.sha256()
    footer: dict[str, Any] = {}
    counts = {"transactions": 0, "parts": 0}

    def manifest() -> Any:
        for line in lines(response["Body"], digest):
            if b'"kind":"transaction"' in line:
                # A line is a block of `span` transactions (format 3; one before it).
                span = _span_of(line)
                counts["transactions"] += span
                counts["parts"] += b'"part":null' not in line
            elif b'"kind":"result"' in line:
                footer.update(json.loads(line))
            yield line

    def read_part(key: str) -> Any:
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"]
        except s3.exceptions.NoSuchKey:
            return None

    whole = hashlib.sha256()
    s3_checksum: str | None = None

    def read_result() -> Any:
        nonlocal s3_checksum
        try:
            response = s3.get_object(Bucket=bucket, Key=rkey, ChecksumMode="ENABLED")
        except s3.exceptions.NoSuchKey:
            return _Empty()
        s3_checksum = response.get("ChecksumSHA256")
        return _Hashed(response["Body"], whole)

    problems = verify(
        manifest(), read_result, read_part if check_parts else None, lambda: s3_checksum
    )
    sha256 = digest.hexdigest()
    stored = response.get("Metadata", {}).get(SHA256_METADATA)
    if stored != sha256:
        problems.append(
            Problem(f"the manifest's sha256 is {sha256}, its metadata says {stored}", key=mkey)
        )
    if expected_manifest_sha256 and expected_manifest_sha256.lower() != sha256:
        problems.append(
            Problem(
                f"the manifest's sha256 is {sha256}, not {expected_manifest_sha256} (the email's)",
                key=mkey,
            )
        )
    return Verification(
        result_uri=f"s3://{bucket}/{rkey}",
        manifest_uri=f"s3://{bucket}/{mkey}",
        manifest_sha256=sha256,
        result_bytes=footer.get("bytes"),
        result_sha256=footer.get("sha256") or whole.hexdigest(),
        parts_sha256=footer.get("parts_sha256"),
        transactions=counts["transactions"],
        parts=counts["parts"],
        parts_checked=check_parts,
        problems=problems,
    )


class _Hashed:
    """A body that feeds `digest` with what is read of it."""

    def __init__(self, body: Any, digest: Any) -> None:
        self._body, self._digest = body, digest

    def read(self, size: int = -1) -> bytes:
        chunk = self._body.read(size)
        self._digest.update(chunk)
        return bytes(chunk)


class _Empty:
    """A result that is not there reads as no bytes (and fails the check)."""

    def read(self, size: int = -1) -> bytes:
        return b""


def verify_mission(
    info: Target,
    mission_id: str,
    check_parts: bool = False,
    expected_manifest_sha256: str | None = None,
) -> Verification:
    """`verify_receipt` for a mission the API knows: its result names the bucket."""
    status, mission = api(info, "GET", f"/missions/{mission_id}")
    if status != 200:
        raise CliError(explain(status, mission))
    if not mission.get("result"):
        raise CliError(f"mission {mission_id} ({mission['status']}) has no merged result")
    bucket = mission["result"].removeprefix("s3://").split("/", 1)[0]
    return verify_receipt(
        s3_client(info), bucket, mission_id, check_parts, expected_manifest_sha256
    )


def describe_verification(v: Verification) -> str:
    parts = " (every part object in S3 checked too)" if v.parts_checked else ""
    head = [
        f"result    {v.result_uri}  ({v.result_bytes} bytes, sha256 {v.result_sha256}"
        + (f"; parts_sha256 {v.parts_sha256})" if v.parts_sha256 else ")"),
        f"manifest  {v.manifest_uri}  (sha256 {v.manifest_sha256}; the email's"
        ' "Receipt sha256" must be this)',
    ]
    if not v.problems:
        return "\n".join(
            [
                *head,
                f"ok: the result matches its manifest: {v.transactions} transactions,"
                f" {v.parts} parts{parts}",
            ]
        )
    return "\n".join(
        [
            *head,
            *(f"MISMATCH {p}" for p in v.problems),
            f"FAILED: {len(v.problems)} problem(s){parts}",
        ]
    )


def find_email(info: RuntimeInfo, mission_id: str, wait: float = 10.0) -> Path | None:
    deadline = time.monotonic() + wait
    while True:
        found = sorted(Path(info.outbox).glob(f"*-{mission_id}.eml"))
        if found or time.monotonic() > deadline:
            return found[-1] if found else None
        time.sleep(0.2)


# ---- pipelines ---------------------------------------------------------------------------


def pipeline_line(pipeline: dict[str, Any]) -> str:
    """One line: the pipeline's status, then each stage's status and transactions done."""
    stages = []
    for stage in pipeline.get("stages", []):
        counts = stage.get("transactions") or {}
        done = sum(counts.get(s, 0) for s in TERMINAL)
        stages.append(f"{stage['stage']} {stage['status']} {done}/{counts.get('total') or 0}")
    return f"pipeline {pipeline['status']:<14} " + " | ".join(stages)


def watch_pipeline(
    info: Target, pipeline_id: str, timeout: float, out: TextIO | None = sys.stdout
) -> dict:
    """Until every stage ended and the pipeline's one email was sent (a line on `out` whenever
    a stage moves, unless None); returns the pipeline."""
    return _follow(info, f"/pipelines/{pipeline_id}", pipeline_line, timeout, out)


def find_pipeline_email(info: RuntimeInfo, pipeline_id: str, wait: float = 10.0) -> Path | None:
    """The pipeline's email: the outbox names it by its `pipeline_id` attribute."""
    return find_email(info, pipeline_id, wait)
