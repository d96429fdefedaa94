"""The worker agent: claim a transaction, run the app on its slice, upload the part, repeat.

Run on the worker AMI as `python -m worker_ami.agent`. Everything it talks to is injected (store,
S3 and EC2 clients, instance metadata, clock), so tests run it in-process against moto and the
local runtime runs it as a process with its own metadata endpoint.

Outcomes travel through the result bucket: a part (`.out`) or, once a transaction is out of
attempts, a failure marker (`.failed`); result_processor counts both. A failed attempt with
attempts left goes back to the queue for any worker.

A worker outlives a store that falters: each store call it makes is safe to repeat, and is
repeated with backoff; a slot that still cannot go on stops, and the lease it held expires into
the sweeper's hands. Whatever happens, the instance ends itself when the agent is done.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, TypeVar

from botocore.exceptions import (
    ConnectionClosedError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from chalicelib.apps import (
    BUILTIN_APPS,
    ProgramNotAllowed,
    builtin_argv,
    check_program,
    render_argv,
)
from chalicelib.config import ArgvApp, BytesSplit, LinesSplit, split_align
from chalicelib.domain import Mission, Transaction, Usage
from chalicelib.layout import (
    MISSION_TAG,
    FailureMarker,
    PartStamp,
    failure_key,
    line_index_key,
    part_key,
)
from chalicelib.observability import bind_mission, count, flush_metrics, logger
from chalicelib.pricing import estimated_cost
from chalicelib.settings import Settings
from chalicelib.splitting import copy_range, decode_slice_bounds, fetch_slice, offset_range
from chalicelib.states import MissionStatus, TransactionStatus, after_failed_attempt
from chalicelib.store import Conflict, NotFound, Store, StoreError
from chalicelib.store.transactions import MAX_SPAN
from worker_ami.metadata import InstanceIdentity, MetadataSource
from worker_ami.runner import AppResult, app_sandbox, run_app

# How long a worker waits for a mission still being planned (workers can boot that fast locally).
PLANNING_WAIT_SECONDS = 300.0
# A retry becomes visible to claims through the retry index (a GSI, eventually consistent: under a
# second, typically). A worker that queued one looks for work this long before it leaves.
RETRY_VISIBLE_WITHIN_SECONDS = 5.0
RETRY_POLL_SECONDS = 0.5
# How often a working agent reads its mission's status (at most; a heartbeat period if shorter):
# a cancel (or a mission failed as a whole) stops its apps within that, even when the instance's
# termination is slow or never comes. One GetItem per agent, not per slot.
MISSION_POLL_SECONDS = 10.0
_READ_CHUNK = 1024 * 1024  # how a ranged read of the input is streamed to the slice's file
_STREAM_BREAKS = (
    ResponseStreamingError,
    IncompleteReadError,
    ReadTimeoutError,
    ConnectionClosedError,
)
_STREAM_RESUMES = 3  # per range: then the slot stops, and the lease expires into a retry

R = TypeVar("R")

# A claim takes about this much work (AWS Batch's advice: pack short jobs into minutes; lithops'
# chunksize): the calls made per claim (the cursor, the item, the lease, the part, the count)
# then cost little per transaction, and a lost block costs at most this much work again.
BLOCK_SECONDS = 30.0
# ... and at least this much, however little remains: a claim of less costs its calls (the
# cursor, the item, the part, its count, and the part's read in the merge) for too little work,
# while the slots finishing that much sooner together saves no more than this.
MIN_BLOCK_SECONDS = 2.0
# A claim that would leave at most this share of itself behind takes that rest too: the rest's
# own claim, part and count are saved for at most a tenth more of the block's time on one slot.
REST_TAKEN_WITHIN = 0.1


def block_size(mean_seconds: float | None, remaining: int, parallel: int) -> int:
    """How many transactions to claim at once: about BLOCK_SECONDS of them at the pace seen so
    far (one while none has run), and no more than a share of what remains to hand out (guided
    self-scheduling: half of it over the slots that share it), so the last blocks shrink and
    the slots finish about together; but never less than MIN_BLOCK_SECONDS of them, nor
    leaving behind a rest of REST_TAKEN_WITHIN of the block or less."""
    if mean_seconds is None:
        return 1
    per_second = 1 / max(mean_seconds, 1e-3)
    by_time = int(BLOCK_SECONDS * per_second)
    least = int(MIN_BLOCK_SECONDS * per_second)
    size = max(remaining // (2 * max(1, parallel)), least)
    if 0 < remaining - size <= REST_TAKEN_WITHIN * size:
        size = remaining
    return max(1, min(MAX_SPAN, by_time, size))


class _Pace:
    """What this worker has seen: how long a transaction takes here (wall time, input and
    upload included), and how many were never handed out yet, as of its last claim."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds = 0.0
        self._runs = 0
        self.remaining = 0
        self._probe_taken = False
        self._known = threading.Event()  # a first transaction ran (or its slot gave up)

    @property
    def mean_seconds(self) -> float | None:
        with self._lock:
            return self._seconds / self._runs if self._runs else None

    def ran(self, seconds: float) -> None:
        with self._lock:
            self._seconds += seconds
            self._runs += 1
        self._known.set()

    def take_probe(self) -> bool:
        """True for the first slot to ask: its claim, of one transaction, finds the pace."""
        with self._lock:
            taken, self._probe_taken = self._probe_taken, True
            return not taken

    def wait_for_probe(self, seconds: float) -> None:
        """Until the first transaction has run (or its slot stopped), at most `seconds`."""
        self._known.wait(seconds)

    def probe_over(self) -> None:
        self._known.set()

    def claimed(self, block: Transaction, total: int) -> None:
        """New blocks come off the cursor in index order: what lies past the furthest one
        claimed is left (a retry, further back, says nothing)."""
        with self._lock:
            self.remaining = min(self.remaining, max(0, total - block.last - 1))

    def start(self, mission: Mission) -> None:
        self.remaining = max(0, mission.total - mission.handed_out)


@dataclass(frozen=True)
class Backoff:
    """How a worker waits out a transient store error: throttling past botocore's own retries,
    a TransactionConflict (which botocore never retries), a network blip.

    Full jitter, so the slots of a fleet do not retry in step; a bound, so a store that stays
    down stops the slot rather than keeping the instance (and its bill) alive.
    """

    attempts: int = 6
    base_seconds: float = 0.2
    cap_seconds: float = 5.0

    def delays(self) -> Iterator[float]:
        """The waits between the attempts: one fewer than the attempts."""
        for n in range(self.attempts - 1):
            yield random.uniform(0, min(self.cap_seconds, self.base_seconds * 2**n))


class Verdict(Enum):
    """What one attempt's result means for its transaction."""

    HAND_BACK = "hand back"  # not the app's fault (interrupted, lease lost): no attempt spent
    SUCCEEDED = "succeeded"
    RETRY = "retry"  # failed, attempts left: back to the queue for any worker
    FAILED = "failed"  # failed for good: a failure marker reports it


def verdict_of(result: AppResult, attempt: int, mission: Mission, interrupted: bool) -> Verdict:
    """Pure: the verdict on an attempt, from its result, the mission's rules and the notice."""
    if result.refused:  # the stage's policy refuses the program: so would any other attempt
        return Verdict.FAILED
    if result.aborted or (interrupted and result.exit_code != 0):
        return Verdict.HAND_BACK
    if result.exit_code == 0:
        return Verdict.SUCCEEDED
    after = after_failed_attempt(
        attempt, mission.config.max_attempts, result.exit_code, mission.exit_rules
    )
    return Verdict.RETRY if after is TransactionStatus.PENDING else Verdict.FAILED


_LOG_OF = {
    Verdict.HAND_BACK: ("transaction handed back", "warning"),
    Verdict.SUCCEEDED: ("transaction succeeded", "info"),
    Verdict.RETRY: ("attempt failed; transaction requeued", "warning"),
    Verdict.FAILED: ("transaction failed for good", "error"),
}


@dataclass(frozen=True)
class AgentReport:
    instance_id: str
    mission_id: str | None
    succeeded: int
    failed_attempts: int
    handed_back: int
    interrupted: bool
    seconds: float


class WorkerClients(Protocol):
    """The AWS clients the agent uses (`chalicelib.aws.AwsClients`, which builds each on its
    first use): S3 from the start, EC2 only at the end, to terminate the instance (building it
    at boot was 0.1 s of CPU that every instance paid before its first transaction)."""

    @property
    def s3(self) -> Any: ...

    @property
    def ec2(self) -> Any: ...


class WorkerAgent:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        aws: WorkerClients,
        metadata: MetadataSource,
        workdir: Path,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        slots: int | None = None,
        python: str = sys.executable,
        terminate_when_done: bool = True,
        backoff: Backoff = Backoff(),
    ) -> None:
        self._settings = settings
        self._store = store
        self._aws = aws
        self._s3 = aws.s3
        self._metadata = metadata
        self._workdir = workdir
        self._clock = clock
        self._sleep = sleep
        self._slots_override = slots
        self._python = python
        self._terminate_when_done = terminate_when_done
        self._backoff = backoff
        self._input_lock = threading.Lock()
        self._input_path: Path | None = None
        self._input_fingerprint: tuple[int, ...] | None = None
        self._counts_lock = threading.Lock()
        self._verdicts: Counter[Verdict] = Counter()
        self._last_requeue_at: float | None = None  # when this worker last queued a retry
        self._pace = _Pace()  # how big a block to claim
        # Set by a Spot interruption notice: stop claiming, stop apps, hand work back.
        self.interrupted = threading.Event()
        # Set by a notice or a rebalance recommendation: claim no more transactions.
        self.draining = threading.Event()
        self._done = threading.Event()
        # Set once the mission is found no longer RUNNING (cancelled): stop the apps, record no
        # outcome, upload nothing; `_mission_ended_as` says what it became.
        self._mission_ended = threading.Event()
        self._mission_ended_as: MissionStatus | None = None

    # ---- the main loop --------------------------------------------------------------------

    def run(self) -> AgentReport:
        began = self._clock()
        identity = self._metadata.identity()
        mission_id = identity.tags.get(MISSION_TAG)
        bind_mission(mission_id)
        logger.append_keys(instance_id=identity.instance_id)
        watcher = threading.Thread(
            target=self._watch_for_interruption, name="spot-watch", daemon=True
        )
        self._read_notices()  # before the first claim, not after it
        watcher.start()
        try:
            if mission_id is None:
                logger.error("instance has no mission tag; nothing to do")
            else:
                self._work_on(identity.instance_id, mission_id)
        finally:
            self._done.set()
            seconds = self._clock() - began
            self._account(identity, mission_id, self._billed_seconds(identity, began))
            if self._terminate_when_done:
                logger.info("no work left: terminating this instance")
                self._aws.ec2.terminate_instances(InstanceIds=[identity.instance_id])
        return AgentReport(
            identity.instance_id,
            mission_id,
            self._verdicts[Verdict.SUCCEEDED],
            self._verdicts[Verdict.RETRY] + self._verdicts[Verdict.FAILED],
            self._verdicts[Verdict.HAND_BACK],
            self.interrupted.is_set(),
            seconds,
        )

    def _billed_seconds(self, identity: InstanceIdentity, began: float) -> float:
        """This instance's life as EC2 bills it: from its launch (`pendingTime`: the boot before
        this agent started included, as the control side's age of a live instance counts it)
        until now; from the agent's start where metadata has no launch time."""
        launched = identity.launched_at
        start = began if launched is None or launched > began else launched
        return max(0.0, self._clock() - start)

    def _account(self, identity: InstanceIdentity, mission_id: str | None, seconds: float) -> None:
        """Usage and metrics, best effort: neither may keep the instance alive (and billed).

        The usage counts once per instance (a conditional write), so a repeat after a lost
        reply is refused, and transient errors are retried.
        """
        try:
            if mission_id is not None:
                cost = estimated_cost(identity.instance_type, identity.market, seconds)
                usage = Usage(instance_seconds=seconds, estimated_cost=cost)
                added = self._retrying(
                    "add this instance's usage",
                    lambda: self._store.missions.add_instance_usage(
                        mission_id, identity.instance_id, usage
                    ),
                )
                if not added:  # the mission ended, or an earlier try (or the end) counted it
                    logger.info("usage not added: this instance is accounted already")
        except Exception:
            logger.exception("could not record this instance's usage")
        try:
            flush_metrics()
        except Exception:
            logger.exception("could not flush the metrics")

    def _retrying(self, operation: str, call: Callable[[], R]) -> R:
        """`call`, tried again after a transient StoreError, with backoff on the injected sleep.

        Only for calls that are safe to repeat: reads, idempotent writes, and conditional writes
        that a repeat after a lost reply finds refused. A Conflict or NotFound is an answer and
        is raised at once; the last StoreError is raised once the bound is spent.
        """
        delays = self._backoff.delays()
        while True:
            try:
                return call()
            except (Conflict, NotFound):
                raise
            except StoreError as e:
                delay = next(delays, None)
                if delay is None:
                    raise
                logger.warning(
                    "store error; trying again",
                    extra={"operation": operation, "error": str(e), "retry_in": round(delay, 3)},
                )
                self._sleep(delay)

    def _watch_for_interruption(self) -> None:
        """Poll `spot/instance-action` (EC2 gives two minutes' notice) and the rebalance
        recommendation until the work is done.

        A notice: stop claiming, stop the apps, hand their transactions back. A rebalance
        recommendation (elevated risk, no deadline yet): stop claiming new transactions and
        let the running ones finish; the sweeper relaunches capacity if work is stranded.
        """
        while not self._read_notices() and not self._done.wait(self._settings.spot_poll_seconds):
            pass

    def _read_notices(self) -> bool:
        """One look at the metadata; True once interrupted (nothing more to watch for)."""
        try:
            notice = self._metadata.spot_action()
            rebalance = self._metadata.rebalance_recommended()
        except OSError as e:  # metadata hiccup: try again next poll
            logger.warning("could not read instance metadata", extra={"error": repr(e)})
            return False
        if notice is not None:
            logger.warning("Spot interruption notice: handing work back", extra=notice)
            self.draining.set()
            self.interrupted.set()
            return True
        if rebalance and not self.draining.is_set():
            logger.warning("rebalance recommended: finishing running work, claiming no more")
            self.draining.set()
        return False

    def _work_on(self, instance_id: str, mission_id: str) -> None:
        mission = self._wait_until_planned(mission_id)
        if mission is None:
            return
        self._pace.start(mission)
        # Default: one slot per vCPU of this machine.
        slots = self._slots_override or mission.config.instances.slots or os.cpu_count() or 1
        threads = [
            threading.Thread(
                target=self._slot_loop, args=(f"{instance_id}/{slot}", mission), name=f"slot-{slot}"
            )
            for slot in range(slots)
        ]
        watch_over = threading.Event()
        watch = threading.Thread(
            target=self._watch_mission, args=(mission_id, watch_over), name="mission-watch"
        )
        watch.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        watch_over.set()
        watch.join()

    def _watch_mission(self, mission_id: str, over: threading.Event) -> None:
        """Read the mission's status while the slots work; once it is no longer RUNNING (a
        cancel, or a mission failed as a whole), claim no more and stop the apps at once.

        Waits on `over`, not the injected sleep, so it ends with the slots. A failed read says
        nothing: the next one is a period later (and the heartbeat's lease renewal, refused for
        a transaction the sweeper settled, stops an app too).
        """
        period = min(MISSION_POLL_SECONDS, self._settings.lease_seconds / 3)
        while not over.wait(period):
            try:
                status = self._store.missions.get(mission_id).status
            except StoreError as e:
                logger.warning("could not read the mission's status", extra={"error": str(e)})
                continue
            if status is not MissionStatus.RUNNING:
                logger.warning("the mission ended: stopping its apps", extra={"status": status})
                self._mission_ended_as = status
                self.draining.set()
                self._mission_ended.set()
                return

    def _wait_until_planned(self, mission_id: str) -> Mission | None:
        deadline = self._clock() + PLANNING_WAIT_SECONDS
        delay = 0.2
        while True:
            mission = self._retrying(
                "read the mission", lambda: self._store.missions.get(mission_id)
            )
            if mission.status is not MissionStatus.PLANNING:
                break
            if self._clock() > deadline:
                logger.error("mission still planning after the wait; giving up")
                return None
            self._sleep(delay)
            delay = min(delay * 2, 5.0)
        if mission.status is not MissionStatus.RUNNING:
            logger.info("mission is not running", extra={"status": mission.status.value})
            return None
        return mission

    def _slot_loop(self, owner: str, mission: Mission) -> None:
        bind_mission(mission.mission_id)
        lease = self._settings.lease_seconds
        transactions = self._store.transactions
        slots = self._slots_override or mission.config.instances.slots or os.cpu_count() or 1
        parallel = max(1, mission.instances) * slots

        def claim() -> Transaction | None:
            want = block_size(self._pace.mean_seconds, self._pace.remaining, parallel)
            return transactions.claim_next(mission, owner, self._clock(), lease, want)

        # One slot claims the worker's first transaction alone; the others wait for its pace
        # (at most MIN_BLOCK_SECONDS) rather than each claiming a block of one too: a few-ms
        # transaction would otherwise start every slot on a claim, a part and a count of its
        # own (16 of a 480-transaction mission's 34-39 blocks on 4 workers of 4 slots). A long
        # first transaction costs the other slots that much idle time, once per worker.
        probe = self._pace.take_probe()
        if not probe:
            self._pace.wait_for_probe(MIN_BLOCK_SECONDS)
        try:
            while not self.draining.is_set():
                # Safe to repeat: a claim whose reply was lost leaves indexes handed out but
                # never written (the sweeper requeues them) or a lease nobody renews (it
                # expires).
                block = self._retrying("claim", claim)
                if block is None:
                    if not self._requeued_recently():
                        return
                    # A retry this worker just queued may not be in the retry index yet (a GSI:
                    # it lags, typically under a second): look again before leaving.
                    self._sleep(RETRY_POLL_SECONDS)
                    continue
                self._pace.claimed(block, mission.total)
                self._run_block(owner, mission, block)
        except Exception:
            # The store stayed unreachable past the backoff, or S3 failed: this slot stops. The
            # lease it held is renewed no more, expires, and the sweeper takes it back.
            logger.exception("slot stopped", extra={"slot": owner})
        finally:
            if probe:  # whatever became of it, the other slots wait no longer
                self._pace.probe_over()

    def _requeued_recently(self) -> bool:
        last = self._last_requeue_at
        return last is not None and self._clock() - last < RETRY_VISIBLE_WITHIN_SECONDS

    # ---- one block --------------------------------------------------------------------------

    def _run_block(self, owner: str, mission: Mission, block: Transaction) -> None:
        """Run the block's transactions one after another, each as its own attempt of the app,
        their outputs joined in index order into the block's one part.

        The block stops at the first transaction that does not succeed (or at a Spot notice):
        what succeeded before it is delivered as a block of its own (`split`), and the verdict
        on that transaction applies to the rest of the block from it on, so a failed
        transaction is retried alone, first in its block, and nothing after it was tried."""
        workdir = Path(tempfile.mkdtemp(prefix=f"b{block.index:08d}-", dir=self._workdir))
        lease = self._settings.lease_seconds
        heartbeat = _Heartbeat(
            self._store, block, owner, lease, self._clock, self._backoff, self._mission_ended
        )
        joined = workdir / "part.out"
        try:
            with heartbeat, open(joined, "wb") as part:  # from the claim until it is recorded
                seconds = 0.0
                for index in block.indexes:
                    member = block.member(mission.plan.slice(index))
                    if index > block.index and self.interrupted.is_set():
                        result = AppResult(0, "", 0.0, aborted=True)  # not started: handed back
                    else:
                        began = self._clock()
                        result = self._run_member(mission, member, heartbeat, part)
                        if result is None:  # the mission ended, or the lease was lost
                            return self._abandon(owner, block, heartbeat)
                        self._pace.ran(self._clock() - began)
                    verdict = verdict_of(
                        result, member.attempts, mission, self.interrupted.is_set()
                    )
                    if verdict is not Verdict.SUCCEEDED:
                        part.close()
                        self._stop_at(
                            verdict, owner, mission, block, index, result, joined, seconds
                        )
                        return None
                    seconds += result.seconds
                part.close()
                self._settle(
                    Verdict.SUCCEEDED, owner, mission, block, AppResult(0, "", seconds), joined
                )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return None

    def _run_member(
        self,
        mission: Mission,
        member: Transaction,
        heartbeat: _Heartbeat,
        part: Any,
    ) -> AppResult | None:
        """One transaction of a block, in its own scratch; a success's output is appended to
        the block's part. None if the block is to be abandoned (mission ended, lease lost)."""
        # Beside the block's folder, not in it: the runner opens the scratch to the app's user,
        # who must not reach the part being joined.
        scratch = Path(tempfile.mkdtemp(prefix=f"t{member.index:08d}-", dir=self._workdir))
        output = scratch / "part.out"
        try:
            result = self._attempt(mission, member, scratch, output, heartbeat)
            if self._mission_ended.is_set() or not heartbeat.alive:
                return None
            if result.exit_code == 0 and not output.exists():
                return AppResult(
                    1, f"the app exited 0 but wrote no output to {output}", result.seconds
                )
            if result.exit_code == 0 and not result.aborted and not result.refused:
                with open(output, "rb") as out:
                    shutil.copyfileobj(out, part, _READ_CHUNK)
            return result
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _abandon(self, owner: str, block: Transaction, heartbeat: _Heartbeat) -> None:
        """The mission ended (cancelled: the block is settled here, by the lease holder, or, if
        this worker dies first, by the sweeper), or the lease was lost (taken back, maybe
        claimed again: the outcome is the new holder's to give). Nothing is uploaded."""
        if self._mission_ended.is_set() and heartbeat.held:
            if self._mission_ended_as is MissionStatus.CANCELLED:
                self._retrying(
                    "cancel",
                    lambda: self._store.transactions.cancel(
                        block, self._clock(), "stopped: its mission was cancelled", owner
                    ),
                )
            logger.warning("mission ended: attempt stopped", extra={"index": block.index})
            return
        logger.warning(
            "lost the lease; outcome dropped",
            extra={"index": block.index, "span": block.span, "attempt": block.attempts},
        )

    def _stop_at(
        self,
        verdict: Verdict,
        owner: str,
        mission: Mission,
        block: Transaction,
        index: int,
        result: AppResult,
        joined: Path,
        seconds: float,
    ) -> None:
        """The block stopped at transaction `index`: deliver what succeeded before it, and give
        the verdict to the rest, `index` first (a lone failure alone: the rest goes back)."""
        transactions, plan, lease = (
            self._store.transactions,
            mission.plan,
            self._settings.lease_seconds,
        )
        rest = block

        def cut(held: Transaction, at: int) -> tuple[Transaction, Transaction]:
            # Safe to repeat: one whose reply was lost shortened the block, so its repeat is
            # refused (a Conflict), and the lease, renewed no more, expires into a retry.
            return self._retrying(
                "cut the block",
                lambda: transactions.split(
                    held, owner, at, plan.slice(at).start, self._clock(), lease
                ),
            )

        try:
            if index > block.index:
                done, rest = cut(block, index)
                self._settle(
                    Verdict.SUCCEEDED, owner, mission, done, AppResult(0, "", seconds), joined
                )
            if verdict is Verdict.FAILED and rest.span > 1:
                rest, after = cut(rest, index + 1)
                self._retrying(
                    "hand back",
                    lambda: transactions.hand_back(
                        after, owner, self._clock(), f"sent back: transaction {index} failed"
                    ),
                )
        except Conflict:
            logger.warning("lost the lease; outcome dropped", extra={"index": block.index})
            return
        except StoreError as e:
            logger.error("could not cut the block", extra={"index": index, "error": str(e)})
            return
        self._settle(verdict, owner, mission, rest, result, None)

    def _attempt(
        self,
        mission: Mission,
        txn: Transaction,
        scratch: Path,
        output: Path,
        heartbeat: _Heartbeat,
    ) -> AppResult:
        """Run the app once on the transaction's slice, while the lease is still ours."""
        input_path = self._input_for(mission, txn, scratch)
        if not heartbeat.alive:  # lost during the download: not worth starting the app
            return AppResult(0, "", 0.0, aborted=True)
        sandbox = app_sandbox(self._python)  # who runs the app, and with which {python}
        # Paths relative to the app's working directory, its scratch: an app user reaches them
        # without searching the agent's directories above it (it may not, locally).
        values = {
            "input": os.path.relpath(input_path, scratch),
            "output": os.path.relpath(output, scratch),
            "index": txn.index,
            "count": mission.total,
            "start": txn.start,
            "end": txn.end,
            "attempt": txn.attempts,
            "python": sandbox.python,
        }
        try:
            argv = render_argv(self._argv_template(mission), values)
        except ProgramNotAllowed as e:
            return AppResult(126, f"refused by the worker: {e}", 0.0, refused=True)
        except (KeyError, ValueError, IndexError) as e:
            # Validation refuses such templates; a config stored before a rule changed must
            # still fail as an attempt, not crash the worker.
            return AppResult(126, f"cannot render the argv template: {e!r}", 0.0)
        return run_app(
            argv,
            mission.config.timeouts.transaction_seconds,
            scratch,
            scratch / "stderr.log",
            keep_going=lambda: not self.interrupted.is_set() and heartbeat.alive,
            sandbox=sandbox,
            output=output,
        )

    def _settle(
        self,
        verdict: Verdict,
        owner: str,
        mission: Mission,
        txn: Transaction,
        result: AppResult,
        output: Path | None,
    ) -> None:
        """Carry a block's verdict out: the part (`output`, for a success) or the marker to
        S3, the record to the store. A verdict other than success is its first transaction's."""
        log = {
            "index": txn.index,
            "span": txn.span,
            "attempt": txn.attempts,
            "seconds": round(result.seconds, 3),
        }
        failed = verdict in (Verdict.RETRY, Verdict.FAILED)
        if failed:  # the app failed on this worker, whoever holds the lease now
            log |= {"exit_code": result.exit_code, "stderr": result.stderr_tail[-300:]}
            self._tally(verdict)
        transactions = self._store.transactions
        bucket = self._settings.result_bucket
        # hand_back and requeue are safe to repeat: one whose reply was lost released the lease,
        # so its repeat is refused (a Conflict), never applied twice.
        try:
            if verdict is Verdict.HAND_BACK:
                self._retrying(
                    "hand back",
                    lambda: transactions.hand_back(
                        txn, owner, self._clock(), "handed back: Spot interruption"
                    ),
                )
            elif verdict is Verdict.RETRY:
                self._retrying(
                    "requeue",
                    lambda: transactions.requeue(
                        txn, owner, result.exit_code, result.stderr_tail, self._clock()
                    ),
                )
                count("TransactionsRetried")
                self._last_requeue_at = self._clock()
            elif verdict is Verdict.SUCCEEDED:
                if output is None:
                    raise ValueError("a success without its part")
                key = part_key(mission.mission_id, txn.index, txn.claim, txn.span)
                # The part's sha256, exit code and seconds go with it; the merge checks them.
                stamp = PartStamp.of_file(output, result.exit_code, result.seconds)
                self._s3.upload_file(str(output), bucket, key, ExtraArgs=stamp.upload_args())
                self._finish(txn, owner, TransactionStatus.SUCCEEDED, result, None, key)
            else:
                marker = FailureMarker(
                    error=result.stderr_tail or f"exit code {result.exit_code}",
                    exit_code=result.exit_code,
                    attempts=txn.attempts,
                    timed_out=result.timed_out,
                )
                key = failure_key(mission.mission_id, txn.index, txn.claim)
                self._s3.put_object(Bucket=bucket, Key=key, Body=marker.to_bytes())
                self._finish(txn, owner, TransactionStatus.FAILED, result, marker.error, None)
        except Conflict:
            # The lease was taken from us (it expired and the transaction was requeued): the
            # other holder's outcome counts; ours is dropped.
            logger.warning("lost the lease; outcome dropped", extra=log)
            return
        except StoreError as e:
            # Still failing after the backoff: the lease, renewed no more once this attempt
            # ends, expires and the sweeper takes the transaction back.
            logger.error("could not record the outcome", extra=log | {"error": str(e)})
            return
        if not failed:
            self._tally(verdict, txn.span if verdict is Verdict.SUCCEEDED else 1)
        message, level = _LOG_OF[verdict]
        getattr(logger, level)(message, extra=log)

    def _tally(self, verdict: Verdict, transactions: int = 1) -> None:
        with self._counts_lock:
            self._verdicts[verdict] += transactions

    def _finish(
        self,
        txn: Transaction,
        owner: str,
        status: TransactionStatus,
        result: AppResult,
        error: str | None,
        part: str | None,
    ) -> None:
        # Idempotent: its condition accepts the status it sets, and only for the same owner.
        self._retrying(
            "finish",
            lambda: self._store.transactions.finish(
                txn,
                owner=owner,
                status=status,
                exit_code=result.exit_code,
                error=error,
                run_seconds=result.seconds,
                part_key=part,
                now=self._clock(),
            ),
        )

    def _argv_template(self, mission: Mission) -> list[str]:
        app = mission.config.app
        if isinstance(app, ArgvApp):
            # Checked again here, not only by the API: the mission item is all this worker saw.
            check_program(app.argv, self._settings)
            return list(app.argv)
        return builtin_argv(BUILTIN_APPS[app.builtin], app.params.model_dump())

    # ---- input ----------------------------------------------------------------------------

    def _input_for(self, mission: Mission, txn: Transaction, scratch: Path) -> Path:
        """The app's `input` in its scratch: a link to a root-owned, read-only file.

        Count mode: the whole input, downloaded once per worker and shared. Lines and bytes
        mode: only this transaction's slice, fetched with ranged reads of the planned version
        (`chalicelib.splitting`); an empty slice is an empty file, and the app still runs."""
        view = scratch / "input"
        split = mission.config.split
        if not isinstance(split, LinesSplit | BytesSplit):
            view.symlink_to(os.path.relpath(self._download_input(mission), scratch))
            return view
        sliced = scratch / "slice.in"
        with open(sliced, "wb") as out:
            if isinstance(split, BytesSplit):
                self._fetch_chunk(mission, txn, out.write)
            else:
                self._fetch_lines(mission, txn, out.write)
        sliced.chmod(0o444)  # the agent's, read-only: an app user reads it and cannot write it
        view.symlink_to(sliced.name)
        return view

    def _fetch_chunk(
        self, mission: Mission, txn: Transaction, write: Callable[[bytes], Any]
    ) -> None:
        """Bytes mode: the lines (records) that begin in [start, end), from a read of the chunk
        and a little past it, and further reads only while its last line goes on."""
        if mission.input_bytes is None:
            raise ValueError("the mission has no recorded input size to cut its chunks by")
        fetch_slice(
            lambda first, stop: self._read_input(mission, first, stop),
            write,
            txn.start,
            txn.end,
            mission.input_bytes,
            split_align(mission.config),
        )

    def _fetch_lines(
        self, mission: Mission, txn: Transaction, write: Callable[[bytes], Any]
    ) -> None:
        """Lines mode: the slice's bounds from the scheduler's line index (16 bytes), then
        exactly those bytes of the input."""
        if mission.input_bytes is None:
            raise ValueError("the mission has no recorded input size")
        first, stop = offset_range(txn.index)
        response = self._s3.get_object(
            Bucket=self._settings.result_bucket,
            Key=line_index_key(mission.mission_id),
            Range=f"bytes={first}-{stop - 1}",
        )
        begin, end = decode_slice_bounds(response["Body"].read(), mission.input_bytes)
        copy_range(lambda a, b: self._read_input(mission, a, b), write, begin, end)

    def _read_input(self, mission: Mission, first: int, stop: int) -> Iterator[bytes]:
        """The planned input's bytes [first, stop), streamed: one ranged GetObject, resumed
        from the first byte not yet read if the stream breaks (botocore retries a request, not
        a body read halfway)."""
        delivered, breaks = first, 0
        while delivered < stop:
            body = self._s3.get_object(
                Bucket=mission.bucket_of_input(self._settings.source_bucket),
                Key=mission.input_key,
                Range=f"bytes={delivered}-{stop - 1}",
                **mission.input_pin,
            )["Body"]
            try:
                for piece in body.iter_chunks(chunk_size=_READ_CHUNK):
                    delivered += len(piece)
                    yield piece
                return
            except _STREAM_BREAKS as e:
                breaks += 1
                if breaks > _STREAM_RESUMES:
                    raise
                logger.warning(
                    "input stream broke; reading on", extra={"at": delivered, "error": repr(e)}
                )
            finally:
                body.close()  # a slice found before the range's end reads no further

    def _download_input(self, mission: Mission) -> Path:
        """The whole input (count mode), downloaded once per worker and read-only for the apps.

        When the agent is root, apps run as other users and cannot change it at all. When it is
        not, an app runs as the agent's own user and could chmod and change the file; that
        changes its inode's ctime, and the next attempt gets a fresh download.
        """
        with self._input_lock:
            path = self._workdir / "input"
            if self._input_path is not None and _fingerprint(path) != self._input_fingerprint:
                logger.warning("the cached input was changed (by an app?): downloading it again")
                self._input_path = None
            if self._input_path is None:
                partial = self._workdir / "input.download"
                partial.unlink(missing_ok=True)
                source = mission.bucket_of_input(self._settings.source_bucket)
                # Exactly the version the mission planned, whatever was uploaded since.
                pin = {"VersionId": mission.input_version} if mission.input_version else None
                self._s3.download_file(source, mission.input_key, str(partial), ExtraArgs=pin)
                partial.chmod(0o444)
                # Searchable (not listable) by the app users, who reach `input` from their own
                # directories through `../input`.
                self._workdir.chmod(self._workdir.stat().st_mode | 0o001)
                os.replace(partial, path)  # an app opening the path finds the old or the new one
                self._input_path, self._input_fingerprint = path, _fingerprint(path)
            return self._input_path


def _fingerprint(path: Path) -> tuple[int, ...] | None:
    """What any change to a file changes (ctime even on a chmod), or None if it is gone."""
    try:
        s = path.stat()
    except FileNotFoundError:
        return None
    return (s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)


class _Heartbeat:
    """Renews the lease about three times per lease period, in its own thread, from the claim
    until the outcome is recorded: a long download or upload must not cost a live worker its
    lease (and the transaction an attempt).

    `alive` turns False for good once the lease is found taken (`held` too) or the mission
    ended (the agent's `ended` event, set by its mission watch); the attempt then stops. A failed
    renewal is tried again with backoff, then on the usual schedule: it says nothing about the
    lease, which the next renewal (or the outcome's conditional write) settles. The waits are on
    the stop event, not the injected sleep, so the heartbeat ends with its attempt at once.
    """

    def __init__(
        self,
        store: Store,
        txn: Transaction,
        owner: str,
        lease: int,
        clock: Callable[[], float],
        backoff: Backoff,
        ended: threading.Event | None = None,
    ) -> None:
        self._store, self._txn, self._owner = store, txn, owner
        self._lease, self._clock, self._backoff = lease, clock, backoff
        self._lost = threading.Event()
        self._ended = ended or threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._renew, name=f"heartbeat-{txn.index}", daemon=True
        )

    @property
    def alive(self) -> bool:
        return self.held and not self._ended.is_set()

    @property
    def held(self) -> bool:
        """The lease is still ours (as far as the last renewal knows)."""
        return not self._lost.is_set()

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopped.set()
        self._thread.join()

    def _renew(self) -> None:
        period = self._lease / 3
        wait, delays = period, self._backoff.delays()
        transactions, index = self._store.transactions, self._txn.index
        while not self._stopped.wait(wait):
            try:
                held = transactions.extend_lease(self._txn, self._owner, self._clock(), self._lease)
            except StoreError as e:
                wait = min(next(delays, period), period)
                logger.warning(
                    "could not renew the lease; trying again",
                    extra={"index": index, "error": str(e), "retry_in": round(wait, 3)},
                )
                continue
            if not held:
                if not self._stopped.is_set():  # not merely the outcome recorded meanwhile
                    logger.warning("lease lost: stopping the attempt", extra={"index": index})
                self._lost.set()
                return
            wait, delays = period, self._backoff.delays()


def main(argv: list[str] | None = None) -> int:
    from chalicelib.aws import AwsClients
    from chalicelib.settings import get_settings
    from worker_ami.metadata import Imdsv2Metadata
    from worker_ami.service_models import use_trimmed_models

    parser = argparse.ArgumentParser(prog="python -m worker_ami.agent", description=__doc__)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="scratch space (default: a new temporary directory)",
    )
    parser.add_argument(
        "--slots",
        type=int,
        default=None,
        help="transactions run at once (default: the mission's slots)",
    )
    parser.add_argument(
        "--no-terminate",
        action="store_true",
        help="do not terminate this instance when the work is done",
    )
    args = parser.parse_args(argv)
    use_trimmed_models()  # before the first client: its EC2 client costs ms, not 130 ms of CPU
    settings = get_settings()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lighthpc-worker-"))
    workdir.mkdir(parents=True, exist_ok=True)
    agent = WorkerAgent(
        settings=settings,
        store=Store(settings),
        aws=AwsClients(),
        metadata=Imdsv2Metadata(settings.imds_url),
        workdir=workdir,
        slots=args.slots,
        terminate_when_done=not args.no_terminate,
    )
    report = agent.run()
    logger.info(
        "worker done",
        extra={"succeeded": report.succeeded, "failed_attempts": report.failed_attempts},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
