"""The worker agent against in-memory fakes: transient store errors, the lease kept from claim to
outcome, an input no app can spoil for the next, and an instance that always ends itself.

The apps are real (tiny) subprocesses; the store, S3 and EC2 are fakes with the conditions of the
real ones, and errors injected per operation.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chalicelib.config import parse_mission_config
from chalicelib.domain import Mission, Transaction, Usage
from chalicelib.layout import MISSION_TAG, failure_key, part_key
from chalicelib.settings import Settings
from chalicelib.states import MissionStatus, TransactionStatus
from chalicelib.store import Conflict, StoreError
from worker_ami import agent as agent_module
from worker_ami.agent import Backoff, WorkerAgent
from worker_ami.metadata import InstanceIdentity, StaticMetadata

T = TransactionStatus
MISSION_ID = "m-agent"
INSTANCE_ID = "i-agent"
INPUT = b"line one\nline two\nline three\n"
SOURCE_KEY = "in.txt"
COPY = "import shutil, sys; shutil.copyfile(sys.argv[1], sys.argv[2])"
FAIL = "import sys; sys.exit(1)"


def mission(count: int = 2, code: str = COPY, **overrides: Any) -> Mission:
    body = {
        "name": "agent",
        "input": SOURCE_KEY,
        "split": {"mode": "count", "count": count, "interval": {"start": 0, "end": 100}},
        "app": {"argv": ["{python}", "-c", code, "{input}", "{output}"]},
        **overrides,
    }
    config = parse_mission_config(json.dumps(body), Settings.from_env({}))
    return Mission(
        mission_id=MISSION_ID,
        name=config.name,
        status=MissionStatus.RUNNING,
        config=config,
        input_key=SOURCE_KEY,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        total=count,
    )


class Faults:
    """Errors to raise, per operation, before the operation does anything."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.queued: dict[str, list[Exception]] = defaultdict(list)
        self.always: dict[str, Exception] = {}
        self._lock = threading.Lock()

    def enter(self, operation: str) -> None:
        with self._lock:
            self.calls[operation] += 1
            if operation in self.always:
                raise self.always[operation]
            if self.queued[operation]:
                raise self.queued[operation].pop(0)


class FakeTransactions:
    """The worker's side of the transaction table, with the real table's conditions."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.items: dict[int, Transaction] = {}
        self.taken_back: list[int] = []
        self.lock = threading.Lock()

    def claim_next(
        self, mission: Mission, owner: str, now: float, lease_seconds: int, want: int = 1
    ) -> Transaction | None:
        """One transaction at a time, whatever `want` (blocks are the real table's test)."""
        self.faults.enter("claim_next")
        with self.lock:
            for index in range(mission.total):
                held = self.items.get(index)
                if held is None or held.status is T.PENDING:
                    s = mission.plan.slice(index)
                    txn = Transaction(
                        MISSION_ID,
                        index,
                        T.RUNNING,
                        s.start,
                        s.end,
                        attempts=(held.attempts if held else 0) + 1,
                        claim=(held.claim if held else 0) + 1,
                        lease_owner=owner,
                        lease_expires_at=now + lease_seconds,
                    )
                    self.items[index] = txn
                    return txn
        return None

    def _held(self, txn: Transaction, owner: str) -> bool:
        held = self.items[txn.index]
        return held.status is T.RUNNING and self._same_claim(held, txn, owner)

    @staticmethod
    def _same_claim(held: Transaction, txn: Transaction, owner: str) -> bool:
        return held.lease_owner == owner and held.claim == txn.claim

    def extend_lease(self, txn: Transaction, owner: str, now: float, lease_seconds: int) -> bool:
        self.faults.enter("extend_lease")
        with self.lock:
            if not self._held(txn, owner):
                return False
            held = self.items[txn.index]
            self.items[txn.index] = dataclasses.replace(held, lease_expires_at=now + lease_seconds)
            return True

    def finish(self, txn: Transaction, *, owner: str, status: T, **fields: Any) -> None:
        self.faults.enter("finish")
        with self.lock:
            held = self.items[txn.index]
            if self._same_claim(held, txn, owner) and held.status in (T.RUNNING, status):
                self.items[txn.index] = dataclasses.replace(
                    held,
                    status=status,
                    exit_code=fields["exit_code"],
                    run_seconds=fields["run_seconds"],
                    part_key=fields["part_key"],
                    lease_expires_at=None,
                )  # refused silently, as the store's conditional write is

    def requeue(self, txn: Transaction, owner: str, exit_code: int | None, error: str, now: float):
        self.faults.enter("requeue")
        self._release(txn, owner, 0, error)

    def hand_back(self, txn: Transaction, owner: str, now: float, reason: str) -> None:
        self.faults.enter("hand_back")
        self._release(txn, owner, -1, reason)

    def _release(self, txn: Transaction, owner: str, attempts: int, error: str) -> None:
        with self.lock:
            if not self._held(txn, owner):
                raise Conflict(f"transaction {txn.index} is no longer held by {owner}")
            held = self.items[txn.index]
            self.items[txn.index] = dataclasses.replace(
                held,
                status=T.PENDING,
                attempts=held.attempts + attempts,
                lease_owner=None,
                lease_expires_at=None,
                error=error,
            )

    def take_back_expired(self, now: float) -> None:
        """The sweeper: requeue every lease that expired before `now`."""
        with self.lock:
            for index, held in list(self.items.items()):
                if held.status is T.RUNNING and held.lease_expired(now):
                    self.items[index] = dataclasses.replace(
                        held, status=T.PENDING, lease_owner=None, lease_expires_at=None
                    )
                    self.taken_back.append(index)

    def steal(self, index: int) -> None:
        """Another worker holds it now (the lease was taken back and claimed again)."""
        with self.lock:
            held = self.items[index]
            self.items[index] = dataclasses.replace(
                held, lease_owner="i-other/0", attempts=held.attempts + 1, claim=held.claim + 1
            )


class FakeMissions:
    def __init__(self, mission: Mission, faults: Faults) -> None:
        self.mission = mission
        self.faults = faults
        self.usage: list[tuple[float, float]] = []

    def get(self, mission_id: str) -> Mission:
        self.faults.enter("get")
        return self.mission

    def add_instance_usage(self, mission_id: str, instance_id: str, usage: Usage) -> bool:
        self.faults.enter("add_instance_usage")
        self.usage.append((usage.instance_seconds, usage.estimated_cost))
        return True


class FakeStore:
    def __init__(self, mission: Mission) -> None:
        self.faults = Faults()
        self.missions = FakeMissions(mission, self.faults)
        self.transactions = FakeTransactions(self.faults)


class FakeS3:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.downloads = 0
        self.while_downloading: Callable[[], None] = lambda: None
        self.while_uploading: Callable[[], None] = lambda: None

    def download_file(
        self, bucket: str, key: str, filename: str, ExtraArgs: dict | None = None
    ) -> None:
        self.downloads += 1
        self.while_downloading()
        Path(filename).write_bytes(self.objects[bucket, key])

    def upload_file(
        self, filename: str, bucket: str, key: str, ExtraArgs: dict | None = None
    ) -> None:
        self.while_uploading()
        self.objects[bucket, key] = Path(filename).read_bytes()

    def put_object(self, *, Bucket: str, Key: str, Body: bytes) -> None:
        self.objects[Bucket, Key] = Body


class FakeEc2:
    def __init__(self) -> None:
        self.terminated: list[str] = []

    def terminate_instances(self, *, InstanceIds: list[str]) -> None:
        self.terminated += InstanceIds


class FakeClock:
    """Sleeping only moves the clock: backoff costs the test no time."""

    def __init__(self) -> None:
        self.now = time.time()
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@dataclasses.dataclass
class World:
    store: FakeStore
    s3: FakeS3
    ec2: FakeEc2
    clock: FakeClock
    settings: Settings
    workdir: Path

    @property
    def faults(self) -> Faults:
        return self.store.faults

    @property
    def transactions(self) -> FakeTransactions:
        return self.store.transactions

    def agent(
        self, *, real_time: bool = False, slots: int = 1, launched_at: float | None = None
    ) -> WorkerAgent:
        identity = InstanceIdentity(
            INSTANCE_ID, {MISSION_TAG: MISSION_ID}, "c5.large", launched_at=launched_at
        )
        return WorkerAgent(
            settings=self.settings,
            store=self.store,  # type: ignore[arg-type]
            aws=self,  # its s3 and ec2
            metadata=StaticMetadata(identity),
            workdir=self.workdir,
            clock=time.time if real_time else self.clock,
            sleep=time.sleep if real_time else self.clock.sleep,
            slots=slots,
            python=sys.executable,
        )

    def part(self, index: int) -> bytes | None:
        return self.s3.objects.get((self.settings.result_bucket, part_key(MISSION_ID, index, 1)))

    def status(self) -> list[tuple[T, int]]:
        items = self.transactions.items
        return [(items[i].status, items[i].attempts) for i in sorted(items)]


def world(tmp_path: Path, m: Mission | None = None, lease: int = 90) -> World:
    settings = Settings.from_env({"LEASE_SECONDS": str(lease), "SPOT_POLL_SECONDS": "0.05"})
    s3 = FakeS3()
    s3.objects[settings.source_bucket, SOURCE_KEY] = INPUT
    workdir = tmp_path / "work"
    workdir.mkdir()
    return World(FakeStore(m or mission()), s3, FakeEc2(), FakeClock(), settings, workdir)


def spot_notice(agent: WorkerAgent) -> None:
    """What the agent's watcher does on a Spot interruption notice."""
    agent.draining.set()
    agent.interrupted.set()


def transient() -> StoreError:
    return StoreError("could not claim: TransactionConflict (simulated)")


# ---- defect 3: transient store errors ------------------------------------------------------


@pytest.mark.parametrize("operation", ["get", "claim_next", "finish"])
def test_a_worker_survives_transient_store_errors(tmp_path: Path, operation: str) -> None:
    w = world(tmp_path)
    w.faults.queued[operation] = [transient(), transient()]
    report = w.agent().run()
    assert report.succeeded == 2
    assert w.status() == [(T.SUCCEEDED, 1), (T.SUCCEEDED, 1)]
    assert w.part(0) == w.part(1) == INPUT
    assert len(w.clock.slept) == 2  # backed off twice, on the injected clock
    assert w.ec2.terminated == [INSTANCE_ID]


def test_a_requeue_that_failed_transiently_is_retried(tmp_path: Path) -> None:
    w = world(tmp_path, mission(count=1, code=FAIL, max_attempts=2))
    w.faults.queued["requeue"] = [transient()]
    report = w.agent().run()
    assert report.failed_attempts == 2
    assert w.faults.calls["requeue"] == 2
    assert w.status() == [(T.FAILED, 2)]  # requeued once, then failed for good
    assert (w.settings.result_bucket, failure_key(MISSION_ID, 0, 2)) in w.s3.objects  # claim 2


def test_a_hand_back_that_failed_transiently_is_retried(tmp_path: Path) -> None:
    w = world(tmp_path, mission(count=1, code="import time; time.sleep(30)"))
    w.faults.queued["hand_back"] = [transient()]
    agent = w.agent()
    threading.Timer(0.3, spot_notice, args=(agent,)).start()
    report = agent.run()
    assert (report.handed_back, report.interrupted) == (1, True)
    assert w.faults.calls["hand_back"] == 2
    assert w.status() == [(T.PENDING, 0)]  # no attempt spent


def test_a_heartbeat_that_failed_transiently_keeps_the_attempt(tmp_path: Path) -> None:
    w = world(tmp_path, mission(count=1, code="import time, sys; time.sleep(1.2); " + COPY), 1)
    w.faults.queued["extend_lease"] = [transient()]
    report = w.agent(real_time=True).run()
    assert report.succeeded == 1
    assert w.faults.calls["extend_lease"] >= 2
    assert w.status() == [(T.SUCCEEDED, 1)]


def test_backoff_is_jittered_exponential_and_bounded() -> None:
    backoff = Backoff(attempts=8, base_seconds=0.1, cap_seconds=1.0)
    runs = [list(backoff.delays()) for _ in range(50)]
    assert all(len(r) == 7 for r in runs)  # one fewer than the attempts
    for n in range(7):
        ceiling = min(1.0, 0.1 * 2**n)
        assert all(0 <= r[n] <= ceiling for r in runs)
    assert len({r[3] for r in runs}) > 1  # jittered: workers do not retry in step


def test_a_conflict_is_an_answer_and_is_not_retried(tmp_path: Path) -> None:
    w = world(tmp_path, mission(count=2, code=FAIL, max_attempts=2))
    w.faults.queued["requeue"] = [Conflict("transaction 0 is no longer held by i-agent/0")]
    w.agent().run()
    # No backoff: the only waits are the looks for a just-queued retry (RETRY_POLL_SECONDS).
    assert set(w.clock.slept) <= {agent_module.RETRY_POLL_SECONDS}
    # The refused requeue dropped that outcome; the slot went on with the others.
    assert w.faults.calls["requeue"] == 2 and w.faults.calls["claim_next"] >= 3


def test_a_store_that_stays_down_ends_the_slot_cleanly(tmp_path: Path) -> None:
    w = world(tmp_path)
    w.faults.always["claim_next"] = transient()
    report = w.agent().run()
    backoff = Backoff()
    assert w.faults.calls["claim_next"] == backoff.attempts  # bounded
    assert len(w.clock.slept) == backoff.attempts - 1
    assert report.succeeded == 0
    assert w.ec2.terminated == [INSTANCE_ID]


def test_an_outcome_that_cannot_be_recorded_is_given_up(tmp_path: Path) -> None:
    """Its lease expires and the sweeper takes it back; the worker goes on."""
    w = world(tmp_path)
    w.faults.always["finish"] = transient()
    w.agent().run()
    assert w.faults.calls["finish"] == 2 * Backoff().attempts  # both, each bounded
    assert w.status() == [(T.RUNNING, 1), (T.RUNNING, 1)]
    assert w.ec2.terminated == [INSTANCE_ID]


@pytest.mark.parametrize("failing", ["add_instance_usage", "flush_metrics"])
def test_the_instance_ends_itself_even_if_accounting_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    w = world(tmp_path)
    if failing == "flush_metrics":

        def broken() -> None:
            raise RuntimeError("metrics backend down")

        monkeypatch.setattr(agent_module, "flush_metrics", broken)
    else:
        w.faults.always["add_instance_usage"] = transient()
    report = w.agent().run()
    assert report.succeeded == 2
    assert w.ec2.terminated == [INSTANCE_ID]


def test_the_usage_reported_runs_from_the_instances_launch_as_ec2_bills_it(tmp_path: Path) -> None:
    """The boot before the agent started is in the report (the identity document's
    `pendingTime`), as in the control side's age of a live instance; without a launch time,
    or with one after the agent's start (a clock that disagrees), from the agent's start."""
    w = world(tmp_path)
    w.agent(launched_at=w.clock.now - 95.0).run()
    ((seconds, cost),) = w.store.missions.usage
    assert 95.0 <= seconds < 96.0 and cost > 0
    for launched_at in (None, w.clock.now + 30.0):
        w.store.missions.usage.clear()
        began = w.clock.now
        w.agent(launched_at=launched_at).run()
        ((seconds, _),) = w.store.missions.usage
        assert seconds == pytest.approx(w.clock.now - began)


def test_the_instance_ends_itself_even_if_the_mission_cannot_be_read(tmp_path: Path) -> None:
    w = world(tmp_path)
    w.faults.always["get"] = transient()
    with pytest.raises(StoreError):
        w.agent().run()
    assert w.ec2.terminated == [INSTANCE_ID]


# ---- defect 4: the lease is kept from claim to outcome --------------------------------------


def sweeping(w: World, seconds: float) -> Callable[[], None]:
    """A slow first transfer while the sweeper takes back every lease that expires."""
    transfers = []

    def slow() -> None:
        transfers.append(1)
        if len(transfers) > 1:
            return
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            time.sleep(0.1)
            w.transactions.take_back_expired(time.time())

    return slow


@pytest.mark.parametrize("transfer", ["download", "upload"])
def test_the_lease_is_kept_through_a_slow_transfer(tmp_path: Path, transfer: str) -> None:
    w = world(tmp_path, mission(count=1), lease=1)
    setattr(w.s3, f"while_{transfer}ing", sweeping(w, 1.8))
    report = w.agent(real_time=True).run()
    assert w.transactions.taken_back == []
    assert report.succeeded == 1
    assert w.status() == [(T.SUCCEEDED, 1)]


def test_a_lease_lost_during_the_download_runs_no_app_and_uploads_nothing(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    code = f"import pathlib; pathlib.Path({str(ran)!r}).touch()"
    w = world(tmp_path, mission(count=1, code=code), lease=1)

    def lose_it() -> None:
        w.transactions.steal(0)
        time.sleep(0.8)  # the heartbeat looks at least once

    w.s3.while_downloading = lose_it
    report = w.agent(real_time=True).run()
    assert not ran.exists()
    assert w.part(0) is None
    assert w.faults.calls["finish"] == w.faults.calls["hand_back"] == 0
    assert (report.succeeded, report.failed_attempts) == (0, 0)
    assert w.transactions.items[0].lease_owner == "i-other/0"


def test_a_lease_lost_while_the_app_runs_stops_it(tmp_path: Path) -> None:
    w = world(tmp_path, mission(count=1, code="import time; time.sleep(30)"), lease=1)
    threading.Timer(0.5, w.transactions.steal, args=(0,)).start()
    began = time.monotonic()
    w.agent(real_time=True).run()
    assert time.monotonic() - began < 5  # killed, not waited for
    assert w.part(0) is None
    assert w.faults.calls["hand_back"] == w.faults.calls["requeue"] == 0  # nothing to give back


def test_the_heartbeat_stops_with_the_attempt(tmp_path: Path) -> None:
    w = world(tmp_path, mission(count=1), lease=1)
    w.agent(real_time=True).run()
    beats = w.faults.calls["extend_lease"]
    time.sleep(0.8)
    assert w.faults.calls["extend_lease"] == beats
    assert not [t for t in threading.enumerate() if t.name.startswith("heartbeat")]


# ---- defect 10: the app gets a read-only input ----------------------------------------------

# Reads its input, then overwrites it if it may (root may, whatever the mode says).
SPOIL = (
    "import os, sys; path = sys.argv[1]; data = open(path, 'rb').read(); "
    "os.access(path, os.W_OK) and open(path, 'r+b').write(b'SPOILED'); "
    "open(sys.argv[2], 'wb').write(data)"
)


def test_an_app_cannot_spoil_the_input_of_the_next_attempt(tmp_path: Path) -> None:
    w = world(tmp_path, mission(count=3, code=SPOIL))
    report = w.agent().run()
    assert report.succeeded == 3
    assert [w.part(i) for i in range(3)] == [INPUT] * 3
    cached = w.workdir / "input"
    assert cached.stat().st_mode & 0o222 == 0  # no write permission for anyone


def test_an_untouched_input_is_downloaded_once(tmp_path: Path) -> None:
    w = world(tmp_path, mission(count=3))
    w.agent().run()
    assert w.s3.downloads == 1
