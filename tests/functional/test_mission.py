"""Whole missions in-process on moto: API, S3 event, scheduler, workers, results, email."""

from __future__ import annotations

import json

import pytest

from chalicelib.context import get_context
from local.inprocess import ApiCallCounter, InProcessCluster
from worker_ami.apps.kmer_match import demo_sample, kmers, match, read_sequences

SEED, REF_LENGTH, K = 7, 600, 10
SAMPLE = demo_sample(SEED, [3, 17, 40, 41, 77], REF_LENGTH, fragment=200).encode()
REFERENCES = 96


def kmer_config(name: str, key: str, count: int = 12, **overrides):
    config = {
        "name": name,
        "input": key,
        "split": {"mode": "count", "count": count, "interval": {"start": 0, "end": REFERENCES}},
        "app": {
            "builtin": "kmer-match",
            "params": {"k": K, "seed": SEED, "ref_length": REF_LENGTH},
        },
        "instances": {"types": ["c5.large", "m5.large"], "max_instances": 3, "slots": 2},
        "notify": "owner@example.org",
    }
    config.update(overrides)
    return config


def single_process_result() -> bytes:
    sample = set()
    for sequence in read_sequences(SAMPLE.decode().splitlines()):
        sample |= kmers(sequence, K)
    lines = match(sample, 0, REFERENCES, k=K, seed=SEED, ref_length=REF_LENGTH)
    return "".join(lines).encode()


def submit(cluster: InProcessCluster, config: dict) -> str:
    response = cluster.submit(config)
    assert response.status_code == 201, response.body
    body = json.loads(response.body)
    assert body["status"] == "AWAITING_INPUT"
    assert body["upload"]["key"] == config["input"]
    return body["mission_id"]


def run_to_completion(cluster: InProcessCluster, mission_id: str, times: int = 1) -> dict:
    cluster.run_workers(mission_id)
    cluster.deliver_result_events(times=times)
    return json.loads(cluster.get(f"/missions/{mission_id}").body)


def transactions(cluster: InProcessCluster, mission_id: str) -> list[dict]:
    return json.loads(cluster.get(f"/missions/{mission_id}/transactions").body)["transactions"]


def assert_succeeded(cluster: InProcessCluster, mission_id: str, mission: dict, name: str):
    assert mission["status"] == "SUCCEEDED", mission
    assert mission["transactions"]["SUCCEEDED"] == mission["transactions"]["total"] == 12
    rows = transactions(cluster, mission_id)
    assert all(t["status"] == "SUCCEEDED" for t in rows)
    assert all(t["finished_at"] for t in rows)
    # A block's seconds are its whole run's, so its rows in the API show none: the workers'
    # timings are on the blocks themselves.
    blocks = list(get_context().store.transactions.of(mission_id))
    assert blocks and all(b.run_seconds is not None for b in blocks)
    assert cluster.result(mission["result"]) == single_process_result()
    emails = cluster.emails()
    assert len(emails) == 1, [e.subject for e in emails]
    email = emails[0]
    assert email.subject == f"lighthpc: {name} SUCCEEDED"
    assert "12 in all, 12 succeeded, 0 failed" in email.body
    assert mission["result"] in email.body
    assert "Instance-seconds:" in email.body and "Duration:" in email.body
    assert "Submitted by:     local" in email.body
    assert "Estimated cost:   $" in email.body
    assert mission["estimated_cost_usd"] > 0 and mission["instance_seconds"] > 0
    assert email.attributes["notify"] == "owner@example.org"
    states = cluster.instance_states(mission_id)
    assert states and set(states.values()) == {"terminated"}


def test_config_first_then_upload(cluster: InProcessCluster):
    mission_id = submit(cluster, kmer_config("config first", "samples/a.fa"))
    cluster.deliver_source_events()  # the start request: input not there yet, nothing happens
    assert json.loads(cluster.get(f"/missions/{mission_id}").body)["status"] == "AWAITING_INPUT"
    assert cluster.instance_states(mission_id) == {}

    cluster.upload("samples/a.fa", SAMPLE)
    cluster.deliver_source_events()
    mission = json.loads(cluster.get(f"/missions/{mission_id}").body)
    assert mission["status"] == "RUNNING"
    assert mission["transactions"]["PENDING"] == 12
    assert len(cluster.instance_states(mission_id)) == 3  # 12 transactions / 2 slots, capped at 3

    mission = run_to_completion(cluster, mission_id)
    assert_succeeded(cluster, mission_id, mission, "config first")


def test_upload_first_then_config(cluster: InProcessCluster):
    key = "samples/with space/ü+plus.fa"  # arrives URL-encoded in the S3 event
    cluster.upload(key, SAMPLE)
    cluster.deliver_source_events()  # no mission awaits it yet: ignored
    mission_id = submit(cluster, kmer_config("upload first", key))
    cluster.deliver_source_events()  # the start request finds the input and starts
    mission = run_to_completion(cluster, mission_id)
    assert_succeeded(cluster, mission_id, mission, "upload first")


def test_every_event_delivered_twice(cluster: InProcessCluster):
    mission_id = submit(cluster, kmer_config("twice", "samples/b.fa"))
    cluster.upload("samples/b.fa", SAMPLE)
    cluster.deliver_source_events(times=2)
    assert len(cluster.instance_states(mission_id)) == 3  # started once, launched once
    mission = run_to_completion(cluster, mission_id, times=2)
    assert_succeeded(cluster, mission_id, mission, "twice")


# Fails on attempts 1 and 2, then writes "<start>-<end>". No braces: argv elements are templates.
FLAKY = (
    "import sys; attempt = int(sys.argv[1]);"
    " sys.exit('attempt %d: simulated failure' % attempt) if attempt < 3 else"
    " open(sys.argv[2], 'w').write('%s-%s\\n' % (sys.argv[3], sys.argv[4]))"
)


def test_app_that_fails_twice_then_succeeds(cluster: InProcessCluster):
    argv = ["{python}", "-c", FLAKY, "{attempt}", "{output}", "{start}", "{end}"]
    config = kmer_config("flaky", "in.txt", count=5, app={"argv": argv}, max_attempts=3)
    mission_id = submit(cluster, config)
    cluster.upload("in.txt", b"anything\n")
    cluster.deliver_source_events()
    mission = run_to_completion(cluster, mission_id)
    assert mission["status"] == "SUCCEEDED"
    rows = transactions(cluster, mission_id)
    assert [t["status"] for t in rows] == ["SUCCEEDED"] * 5
    assert [t["attempts"] for t in rows] == [3] * 5
    expected = "".join(f"{t['start']}-{t['end']}\n" for t in rows).encode()
    assert cluster.result(mission["result"]) == expected
    assert len(cluster.emails()) == 1


def test_app_that_always_fails(cluster: InProcessCluster):
    argv = ["{python}", "-c", "import sys; sys.exit('no licence for solver')"]
    config = kmer_config("doomed", "in.txt", count=4, app={"argv": argv}, max_attempts=2)
    mission_id = submit(cluster, config)
    cluster.upload("in.txt", b"anything\n")
    cluster.deliver_source_events()
    mission = run_to_completion(cluster, mission_id, times=2)
    assert mission["status"] == "FAILED"
    assert mission["result"] is None
    rows = transactions(cluster, mission_id)
    assert [(t["status"], t["attempts"], t["exit_code"]) for t in rows] == [("FAILED", 2, 1)] * 4
    emails = cluster.emails()
    assert len(emails) == 1
    assert emails[0].subject == "lighthpc: doomed FAILED"
    assert "4 in all, 0 succeeded, 4 failed" in emails[0].body
    for t in rows:
        assert f"#{t['index']} [{t['start']}, {t['end']}) after 2 attempt(s), exit code 1" in (
            emails[0].body
        )
    assert emails[0].body.count("no licence for solver") == 4
    assert set(cluster.instance_states(mission_id).values()) == {"terminated"}


def test_lines_mode_with_seq_stats(cluster: InProcessCluster):
    lines = [f"{'ACGT' * (i % 7 + 1)}{'GG' * (i % 3)}" for i in range(25)]
    body = ("\n".join(lines) + "\n").encode()
    config = {
        "name": "lines",
        "input": "reads.txt",
        "split": {"mode": "lines", "lines_per_transaction": 4},
        "app": {"builtin": "seq-stats"},
        "instances": {"max_instances": 2, "slots": 2},
    }
    cluster.upload("reads.txt", body)
    mission_id = submit(cluster, config)
    cluster.deliver_source_events()
    mission = run_to_completion(cluster, mission_id)
    assert mission["status"] == "SUCCEEDED"
    assert mission["transactions"]["total"] == 7  # 25 lines, 4 per transaction
    from worker_ami.apps.seq_stats import stats

    expected = "".join(stats(body.splitlines(keepends=True), 0)).encode()
    assert cluster.result(mission["result"]) == expected


def test_empty_input_fails_the_mission_with_a_reason(cluster: InProcessCluster):
    mission_id = submit(cluster, kmer_config("empty", "empty.fa"))
    cluster.upload("empty.fa", b"")
    cluster.deliver_source_events()
    mission = json.loads(cluster.get(f"/missions/{mission_id}").body)
    assert mission["status"] == "FAILED"
    assert "is empty" in mission["error"]
    assert cluster.instance_states(mission_id) == {}  # nothing launched
    assert transactions(cluster, mission_id) == []  # nothing half-written
    emails = cluster.emails()
    assert len(emails) == 1 and "is empty" in emails[0].body
    # The input key is free again: a new config for it is accepted.
    assert cluster.submit(kmer_config("again", "empty.fa")).status_code == 201


def test_second_config_for_an_awaited_input_is_a_conflict(cluster: InProcessCluster):
    first = submit(cluster, kmer_config("first", "shared.fa"))
    response = cluster.submit(kmer_config("second", "shared.fa"))
    assert response.status_code == 409
    assert json.loads(response.body)["mission_id"] == first
    listed = json.loads(cluster.get("/missions").body)["missions"]
    assert [m["mission_id"] for m in listed] == [first]  # the refused one left nothing behind


def test_bad_config_is_a_400_naming_the_field_and_writes_nothing(cluster: InProcessCluster):
    response = cluster.submit(kmer_config("bad", "x.fa", max_attempts=0))
    assert response.status_code == 400
    body = json.loads(response.body)
    assert [f["field"] for f in body["fields"]] == ["max_attempts"]
    assert json.loads(cluster.get("/missions").body)["missions"] == []


def test_unknown_mission_is_404(cluster: InProcessCluster):
    assert cluster.get("/missions/m-nope").status_code == 404
    assert cluster.get("/missions/m-nope/transactions").status_code == 404


@pytest.fixture
def api_calls():
    counter = ApiCallCounter()
    with counter.installed():
        yield counter


def test_api_calls_per_transaction(cluster: InProcessCluster, api_calls: ApiCallCounter, capsys):
    """Counts the AWS calls the product makes per transaction (reported in README)."""
    count = 24
    mission_id = submit(cluster, kmer_config("counted", "c.fa", count=count))
    cluster.upload("c.fa", SAMPLE)
    api_calls.reset()
    cluster.deliver_source_events()
    planning = len(api_calls.calls)
    api_calls.reset()
    cluster.run_workers(mission_id)
    working = len(api_calls.calls)
    api_calls.reset()
    cluster.deliver_result_events()
    results = len(api_calls.calls)
    with capsys.disabled():
        per = (planning + working + results) / count
        print(
            f"\nAWS API calls for {count} transactions: planning {planning}, workers {working},"
            f" results {results}; {per:.1f} per transaction"
        )
    assert json.loads(cluster.get(f"/missions/{mission_id}").body)["status"] == "SUCCEEDED"
    # Bounds close to today's figures (planning 9, 8.9 per transaction in all): planning is a
    # constant dozen calls whatever the size, and a call more per transaction is a regression.
    assert planning <= 10
    assert per <= 9.5


def test_the_list_is_newest_first_and_the_sweeper_forgets_mailed_missions(cluster):
    first = submit(cluster, kmer_config("first", "first.fa", count=4))
    second = submit(cluster, kmer_config("second", "second.fa", count=4))
    listed = json.loads(cluster.get("/missions").body)["missions"]
    assert [m["mission_id"] for m in listed] == [second, first]
    store = get_context().store
    assert set(store.missions.needing_care()) == {first, second}
    cluster.upload("first.fa", SAMPLE)
    cluster.deliver_source_events()
    assert run_to_completion(cluster, first)["status"] == "SUCCEEDED"
    assert store.missions.needing_care() == [second]  # mailed: off
    assert len(json.loads(cluster.get("/missions").body)["missions"]) == 2  # still listed
