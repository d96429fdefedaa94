"""`lighthpc --api URL ...` against a deployed stage: SigV4-signed calls, the input uploaded to the
bucket the API names, a submission retried with one Idempotency-Key. A small HTTP server on
loopback plays the deployed API; moto's mock plays S3."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from moto import mock_aws

from local.cli import DeployedApi, main


class FakeApi(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    def _answer(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        FakeApi.seen.append(("POST", self.path, dict(self.headers), body))
        config = json.loads(body)
        upload = {"bucket": "deployed-source", "key": config["input"]}
        self._answer(
            201,
            {
                "mission_id": "m-1",
                "status": "AWAITING_INPUT",
                "upload": {**upload, "uri": f"s3://deployed-source/{config['input']}"},
            },
        )

    def do_GET(self) -> None:
        FakeApi.seen.append(("GET", self.path, dict(self.headers), b""))
        if self.path == "/api/me":
            prefix = "inputs/111122223333/user/alice/"
            self._answer(200, {"principal": "alice", "operator": False, "input_prefix": prefix})
            return
        self._answer(
            200,
            {
                "missions": [
                    {
                        "mission_id": "m-1",
                        "status": "RUNNING",
                        "created_at": "2026-11-23T00:00:00",
                        "name": "x",
                    }
                ]
            },
        )

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def deployed(monkeypatch) -> Iterator[str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    FakeApi.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/api"
    server.shutdown()


def test_region_comes_from_the_endpoint_url():
    url = "https://abc123.execute-api.eu-west-1.amazonaws.com/api/"
    assert DeployedApi.from_url(url, None) == DeployedApi(url.rstrip("/"), "eu-west-1")
    assert DeployedApi.from_url(url, "us-east-2").region == "us-east-2"


def test_status_is_signed_for_execute_api(deployed, capsys):
    assert main(["--api", deployed, "--region", "eu-west-1", "status"]) == 0
    ((method, path, headers, _),) = FakeApi.seen
    assert (method, path) == ("GET", "/api/missions")
    authorization = headers["Authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/execute-api/aws4_request" in authorization
    assert "m-1" in capsys.readouterr().out


def test_submit_signs_posts_with_a_key_and_uploads_where_the_api_says(deployed, tmp_path):
    config = tmp_path / "mission.json"
    config.write_text(json.dumps({"name": "x", "input": "samples/in.fa"}))
    sample = tmp_path / "in.fa"
    sample.write_text(">a\nACGT\n")
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(
            Bucket="deployed-source",
            CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
        )
        code = main(
            [
                "--api",
                deployed,
                "--region",
                "eu-west-1",
                "submit",
                str(sample),
                "--config",
                str(config),
            ]
        )
        assert code == 0
        stored = s3.get_object(Bucket="deployed-source", Key="samples/in.fa")["Body"].read()
    assert stored == b">a\nACGT\n"
    ((method, path, headers, _),) = FakeApi.seen
    assert (method, path) == ("POST", "/api/missions")
    assert headers["Idempotency-Key"].startswith("cli-")
    assert "idempotency-key" in headers["Authorization"].lower()  # the key is signed too


def test_submit_without_an_input_key_uploads_into_the_callers_own_folder(deployed, tmp_path):
    config = tmp_path / "mission.json"
    config.write_text(json.dumps({"name": "x"}))
    sample = tmp_path / "reads.fa"
    sample.write_text(">a\nACGT\n")
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(
            Bucket="deployed-source",
            CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
        )
        args = ["--api", deployed, "--region", "eu-west-1", "submit", str(sample)]
        assert main([*args, "--config", str(config)]) == 0
        key = "inputs/111122223333/user/alice/reads.fa"
        assert s3.get_object(Bucket="deployed-source", Key=key)["Body"].read() == b">a\nACGT\n"
    assert [(m, p) for m, p, _, _ in FakeApi.seen] == [
        ("GET", "/api/me"),
        ("POST", "/api/missions"),
    ]
    assert json.loads(FakeApi.seen[1][3])["input"] == key


def test_no_credentials_is_a_clear_error(deployed, monkeypatch, capsys, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert main(["--api", deployed, "--region", "eu-west-1", "status"]) == 1
    assert "no AWS credentials" in capsys.readouterr().err
    assert FakeApi.seen == []


def test_a_lost_connection_is_retried_with_the_same_key(monkeypatch):
    import urllib.error

    from local import client

    sent: list[str] = []

    def flaky(info, method, path, body=None, headers=None):
        sent.append(headers["Idempotency-Key"])
        if len(sent) < 3:
            raise urllib.error.URLError("connection reset")
        return 201, {"mission_id": "m-1"}

    monkeypatch.setattr(client, "api", flaky)
    monkeypatch.setattr(client.time, "sleep", lambda seconds: None)
    target = DeployedApi("https://x.execute-api.eu-west-1.amazonaws.com/api", "eu-west-1")
    assert client.post_once(target, {"name": "x"}) == (201, {"mission_id": "m-1"})
    assert len(sent) == 3 and len(set(sent)) == 1

    def down(*args, **kwargs):
        raise OSError("network down")

    monkeypatch.setattr(client, "api", down)
    with pytest.raises(client.CliError, match="cannot reach"):
        client.post_once(target, {"name": "x"})
