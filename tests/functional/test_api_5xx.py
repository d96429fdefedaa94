"""Requests that made the API answer 500 (issue 12), and other odd ones: each is a 4xx that
names its field, and a 4xx leaves nothing written.

Written before the fixes; the fuzz test (test_fuzz_api.py) finds the same from the OpenAPI
description. A write is a successful AWS call that is not a read, counted with botocore hooks on
every client (`Ledger`), which also checks what moto lets through and AWS refuses: a partition
key over 2048 bytes.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from chalicelib.context import get_context, reset_process_state
from local.faults import on_every_client
from local.inprocess import InProcessCluster
from tests.functional.test_mission import SAMPLE, kmer_config, submit

JSON = {"Content-Type": "application/json"}
COUNT = 12  # transactions of the planned mission
READS = ("Get", "List", "Describe", "Query", "Scan", "Head", "BatchGet", "TransactGet")
# DynamoDB refuses a partition key over 2048 bytes in every call (ValidationException, "Size of
# hashkey has exceeded the maximum size limit of 2048 bytes"): a 500 on AWS. moto checks only
# writes, so the ledger checks every call's keys.
MAX_KEY_BYTES = 2048


@dataclass(frozen=True)
class Write:
    call: str  # service.Operation
    table: str | None = None
    key: str | None = None  # the item's `id`, for the idempotency table's records


@dataclass
class Ledger:
    """The AWS writes that succeeded since the last `take()`, and the calls AWS would refuse
    for their key size, through botocore's hooks on every client."""

    writes: list[Write] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def before(self, params: Any = None, model: Any = None, context: Any = None, **_: Any):
        context["ledger_params"] = params  # the call's own parameters; `context` reaches after
        if model.service_model.service_name == "dynamodb":
            for name in oversized_keys(model.name, params or {}):
                with self._lock:
                    self.refused.append(f"dynamodb.{model.name}: key {name} over 2048 bytes")

    def after(self, http_response: Any = None, model: Any = None, context: Any = None, **_: Any):
        if model.name.startswith(READS) or http_response is None:
            return
        if http_response.status_code >= 300:
            return
        params = (context or {}).get("ledger_params") or {}
        record = params.get("Item") or params.get("Key") or {}
        key = record.get("id", {}).get("S") if isinstance(record, dict) else None
        service = model.service_model.service_name
        write = Write(f"{service}.{model.name}", params.get("TableName"), key)
        with self._lock:
            self.writes.append(write)

    def take(self) -> list[Write]:
        """The writes since the last take (AWS's refusals stay, for `refused`)."""
        with self._lock:
            taken, self.writes = self.writes, []
        return taken

    @classmethod
    @contextmanager
    def installed(cls) -> Iterator[Ledger]:
        ledger = cls()
        with (
            on_every_client("before-parameter-build.*.*", ledger.before),
            on_every_client("after-call.*.*", ledger.after),
        ):
            reset_process_state()  # the app's clients are built again, under the hooks
            try:
                yield ledger
            finally:
                reset_process_state()


def oversized_keys(operation: str, params: dict[str, Any]) -> Iterator[str]:
    keys = [params["Key"]] if isinstance(params.get("Key"), dict) else []
    for spec in (params.get("RequestItems") or {}).values():
        keys += spec.get("Keys", []) if isinstance(spec, dict) else []
    for item in params.get("TransactItems") or []:
        keys += [action["Key"] for action in item.values() if "Key" in action]
    if operation == "Query":  # the values the key condition names
        values = params.get("ExpressionAttributeValues") or {}
        named = re.findall(r":\w+", params.get("KeyConditionExpression") or "")
        keys.append({name: values[name] for name in named if name in values})
    for key in keys:
        for name, value in key.items():
            text = value.get("S") if isinstance(value, dict) else None
            if isinstance(text, str) and len(text.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
                yield name


def lasting_writes(writes: list[Write], idempotency_table: str) -> list[Write]:
    """The writes a 4xx must not make: all but the idempotency records a request put and
    removed again (Powertools puts its record before the answer is known, and deletes it when
    the answer is an error)."""
    records = [w for w in writes if w.table == idempotency_table]
    put = sorted(str(w.key) for w in records if w.call == "dynamodb.PutItem")
    removed = sorted(str(w.key) for w in records if w.call == "dynamodb.DeleteItem")
    undone = len(put) + len(removed) == len(records) and put == removed
    others = [w for w in writes if w.table != idempotency_table]
    return others if undone else writes


@dataclass
class Planned:
    cluster: InProcessCluster
    mission_id: str  # planned: COUNT transactions, none claimed yet
    ledger: Ledger

    def get(self, path: str) -> Any:
        return self.cluster.get(path)

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> Any:
        return self.cluster.api.http.post("/missions", headers=headers or JSON, body=body)

    def lasting_writes(self, request: Callable[[], Any]) -> tuple[Any, list[Write]]:
        """The answer to `request()`, and the writes it made that outlast it."""
        self.ledger.take()
        response = request()
        writes = lasting_writes(self.ledger.take(), get_context().settings.idempotency_table)
        return response, writes


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> Iterator[Planned]:
    workdir = tmp_path_factory.mktemp("api-5xx")
    with InProcessCluster.running(workdir=workdir) as cluster, Ledger.installed() as ledger:
        cluster.deliver_source_events()  # S3's s3:TestEvent
        mission_id = submit(cluster, kmer_config("paged", "paged.fa", count=COUNT))
        cluster.upload("paged.fa", SAMPLE)
        cluster.deliver_source_events()
        mission = json.loads(cluster.get(f"/missions/{mission_id}").body)
        assert mission["status"] == "RUNNING" and mission["transactions"]["total"] == COUNT
        yield Planned(cluster, mission_id, ledger)


@pytest.fixture
def api(planned: Planned) -> Iterator[Planned]:
    """The planned mission's API; after the test, no call was one AWS refuses."""
    planned.ledger.refused.clear()
    yield planned
    assert planned.ledger.refused == []


def fields_of(response: Any) -> list[str]:
    assert 400 <= response.status_code < 500, (response.status_code, response.body)
    return [f["field"] for f in json.loads(response.body)["fields"]]


@pytest.mark.parametrize("depth", [100, 1_000, 30_000])
@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deeply_nested_json_is_a_400(api: Planned, opener: str, depth: int):
    closer = "]" if opener == "[" else "}"
    body = (opener * depth + "1" + closer * depth).encode()[:65_536]  # at most the size limit
    response, writes = api.lasting_writes(lambda: api.post(body))
    assert response.status_code == 400, response.body
    assert fields_of(response) == ["(body)"]
    assert writes == []


def test_nesting_inside_a_valid_config_is_a_400(api: Planned):
    config = kmer_config("nested", "nested.fa")
    config["app"]["params"]["extra"] = json.loads("[" * 500 + "]" * 500)
    response, writes = api.lasting_writes(lambda: api.post(json.dumps(config).encode()))
    assert response.status_code == 400, response.body
    assert fields_of(response) == ["(body)"]
    assert writes == []


@pytest.mark.parametrize(
    "builtin", [["kmer-match"], 5, {"name": "kmer-match"}, None, True, 1.5, [], {}]
)
def test_a_builtin_that_is_not_a_string_is_a_400(api: Planned, builtin: Any):
    config = kmer_config("builtin", "builtin.fa", app={"builtin": builtin})
    response, writes = api.lasting_writes(lambda: api.post(json.dumps(config).encode()))
    assert response.status_code == 400, response.body
    assert fields_of(response) == ["app"]
    assert writes == []


@pytest.mark.parametrize("after", ["-2", "-5", "-1000000", "-9223372036854775808"])
def test_after_below_minus_one_is_a_400(api: Planned, after: str):
    response = api.get(f"/missions/{api.mission_id}/transactions?after={after}")
    assert response.status_code == 400, response.body
    assert fields_of(response) == ["after"]


@pytest.mark.parametrize("limit", ["0", "-1", "-1000"])
def test_a_limit_below_one_is_a_400(api: Planned, limit: str):
    response = api.get(f"/missions/{api.mission_id}/transactions?limit={limit}")
    assert response.status_code == 400, response.body
    assert fields_of(response) == ["limit"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("after", "%2B3"),  # "+3"
        ("after", "%203"),  # " 3"
        ("after", "1_0"),
        ("after", "%D9%A3"),  # ARABIC-INDIC DIGIT THREE: int() takes it
        ("after", ""),
        ("after", "1e3"),
        ("after", "-99999999999999999999"),
        ("limit", "1" * 5000),  # more digits than int() converts
        ("limit", str(2**63)),
        ("limit", "0x10"),
    ],
)
def test_query_integers_are_plain_ascii_decimals(api: Planned, name: str, value: str):
    response = api.get(f"/missions/{api.mission_id}/transactions?{name}={value}")
    assert response.status_code == 400, response.body
    assert fields_of(response) == [name]


@pytest.mark.parametrize("limit", [1, 5, COUNT - 1, COUNT, COUNT + 1, 10**6, 2**63 - 1])
def test_pages_cover_every_transaction_once_and_say_when_there_is_more(api: Planned, limit: int):
    seen: list[int] = []
    after, pages = -1, 0
    while True:
        query = f"limit={limit}" + ("" if after == -1 else f"&after={after}")
        response = api.get(f"/missions/{api.mission_id}/transactions?{query}")
        assert response.status_code == 200, response.body
        page = json.loads(response.body)
        rows = [t["index"] for t in page["transactions"]]
        assert rows, page  # a page that says there is more is never empty
        assert len(rows) == min(limit, COUNT - len(seen), 1000)
        seen += rows
        pages += 1
        if page["next_after"] is None:
            break
        assert page["next_after"] == rows[-1]
        after = page["next_after"]
    assert seen == list(range(COUNT))
    assert pages == -(-COUNT // min(limit, 1000))


@pytest.mark.parametrize("after", [COUNT - 1, COUNT, 10**6, 2**63 - 1])
def test_after_the_last_transaction_is_an_empty_last_page(api: Planned, after: int):
    response = api.get(f"/missions/{api.mission_id}/transactions?after={after}")
    assert response.status_code == 200, response.body
    assert json.loads(response.body) == {"transactions": [], "next_after": None}


ODD_IDS = ["m-%00", "%F0%9F%92%A5", "%FF%FE", "%20", "m-" + "%" * 3, "x" * 2048]
TOO_LONG_IDS = ["x" * 2049, "x" * 5000, "ü" * 1025]  # over DynamoDB's 2048 bytes per key


@pytest.mark.parametrize("mission_id", [*ODD_IDS, *TOO_LONG_IDS])
def test_odd_mission_ids_are_404s_that_write_nothing(planned: Planned, mission_id: str):
    api = planned  # not `api`: the refusals are this test's own to check
    api.ledger.refused.clear()
    for path in (f"/missions/{mission_id}", f"/missions/{mission_id}/transactions"):
        response = api.get(path)
        assert response.status_code == 404, (path, response.body)
        assert "error" in json.loads(response.body)
    delete = f"/missions/{mission_id}"
    response, writes = api.lasting_writes(lambda: api.cluster.api.http.delete(delete))
    assert response.status_code == 404, response.body
    assert writes == []
    assert api.ledger.refused == []


@pytest.mark.parametrize(
    "headers",
    [
        {**JSON, "Idempotency-Key": "k" * 100_000},
        {**JSON, "Idempotency-Key": "ключ"},
        {**JSON, "Idempotency-Key": ""},
        {**JSON, "Idempotency-Key": "ok-key"},
        {"Content-Type": "application/json; charset=utf-16"},
        {"Content-Type": "application/json;;;"},
    ],
)
def test_odd_headers_are_4xx_and_write_nothing(api: Planned, headers: dict[str, str]):
    body = json.dumps({**kmer_config("odd", "odd.fa"), "name": 7}).encode()  # a bad config
    response, writes = api.lasting_writes(lambda: api.post(body, headers))
    assert 400 <= response.status_code < 500, response.body
    assert writes == []


def test_a_busy_input_is_a_409_that_writes_nothing_even_with_a_key(api: Planned):
    body = json.dumps(kmer_config("again", "paged.fa")).encode()  # the planned mission's input
    headers = {**JSON, "Idempotency-Key": "busy-input"}
    response, writes = api.lasting_writes(lambda: api.post(body, headers))
    assert response.status_code == 409, response.body
    assert writes == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_other_content_types_are_415(api: Planned, content_type: str):
    body = json.dumps(kmer_config("typed", "typed.fa")).encode()
    response, writes = api.lasting_writes(lambda: api.post(body, {"Content-Type": content_type}))
    assert response.status_code == 415, response.body
    assert writes == []
