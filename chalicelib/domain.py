"""What the store hands out: a mission and a transaction as typed, frozen values.

The store builds them from its items in one place each (`chalicelib.store`), so domain code never
sees pynamodb, parses no config and casts no numbers: the config is parsed once, counts are ints,
times are datetimes (or epoch seconds for leases, which conditions compare with the clock).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property

from chalicelib.config import MissionConfig, exit_rules, slots_per_instance, upstream_of
from chalicelib.layout import pinned_input
from chalicelib.planning import Plan, Slice
from chalicelib.states import TERMINAL_MISSION, MissionStatus, TransactionStatus


def utc(epoch: float) -> datetime:
    """Epoch seconds (the clock's) as the aware datetime the values carry."""
    return datetime.fromtimestamp(epoch, tz=UTC)


def reduce_id(mission_id: str) -> str:
    """The id of a mission's reduce stage (a one-transaction mission of its own): derived, so
    creating it twice creates it once."""
    return f"{mission_id}-reduce"


@dataclass(frozen=True)
class Pipeline:
    """Stages submitted together (POST /pipelines): missions, each feeding the next through
    `{"input": {"mission": ...}}`, watched and mailed as one. Stored with every stage, so any
    of them finds the others. Its id is its first stage's with `p-` for `m-`."""

    pipeline_id: str
    name: str
    stages: tuple[tuple[str, str], ...]  # (stage name, mission id), in submission order
    notify: str | None = None
    budget_usd: float | None = None

    @property
    def mission_ids(self) -> list[str]:
        return [mission_id for _, mission_id in self.stages]

    def stage_of(self, mission_id: str) -> str | None:
        return next((name for name, m in self.stages if m == mission_id), None)


@dataclass(frozen=True)
class Mission:
    mission_id: str
    name: str
    status: MissionStatus
    config: MissionConfig
    input_key: str
    created_at: datetime
    submitted_by: str | None = None
    input_etag: str | None = None
    input_version: str | None = None
    input_bytes: int | None = None
    started_at: datetime | None = None  # planning began
    running_at: datetime | None = None
    finished_at: datetime | None = None
    notified_at: datetime | None = None
    planning_lease_until: float | None = None  # epoch seconds
    notify_lease_until: float | None = None  # epoch seconds
    total: int = 0  # transactions in the plan (0 until planned)
    input_lines: int | None = None  # lines mode: the input's line count, for the plan
    handed_out: int = 0  # the claim cursor: indexes below it were handed to a worker
    succeeded: int = 0
    failed: int = 0
    instances: int = 0
    relaunches: int = 0
    relaunched_at: datetime | None = None
    requeued: int = 0  # transactions ever sent back for another attempt
    reclaimed: int = 0  # of those, claimed again
    launch_errors: str | None = None
    instance_seconds: float = 0.0
    estimated_cost: float = 0.0  # USD
    result_key: str | None = None
    error: str | None = None  # why the mission failed as a whole
    cancelled_by: str | None = None  # the caller whose DELETE cancelled it
    # Where the input is read from: None for the source bucket (an upload); the result bucket
    # for a mission fed by another's result, once that result is bound to it.
    input_bucket: str | None = None
    reduce_of: str | None = None  # this mission is that mission's reduce stage
    concatenation_key: str | None = None  # with a reduce: the merged parts (the reduce's input)
    downstream: frozenset[str] = frozenset()  # missions waiting for this one's result
    pipeline: Pipeline | None = None

    @property
    def upstream(self) -> str | None:
        """The mission whose result is this one's input (a reduce's: the mission it reduces)."""
        return upstream_of(self.config)

    @property
    def binds_input_key(self) -> bool:
        """Whether it holds an input binding (an upload's key of the source bucket)."""
        return self.upstream is None

    def bucket_of_input(self, source_bucket: str) -> str:
        return self.input_bucket or source_bucket

    @property
    def mails_its_own_end(self) -> bool:
        """A reduce stage's end is its mission's news; a pipeline stage's, the pipeline's."""
        return self.reduce_of is None and self.pipeline is None

    @cached_property
    def plan(self) -> Plan:
        """The formula for slice `i` (a lines-mode plan is empty until the lines are counted, a
        bytes-mode plan until the input's size is recorded)."""
        return Plan.for_split(self.config.split, self.input_lines, self.input_bytes)

    @property
    def input_pin(self) -> dict[str, str]:
        """GetObject arguments for exactly the input this mission planned."""
        return pinned_input(self.input_version, self.input_etag)

    @property
    def notify(self) -> str | None:
        return self.config.notify

    @property
    def counted(self) -> int:
        return self.succeeded + self.failed

    @property
    def remaining(self) -> int:
        return self.total - self.counted

    @property
    def waiting(self) -> int:
        """Transactions sent back and not yet claimed again (the retry index, counted)."""
        return max(0, self.requeued - self.reclaimed)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_MISSION

    @property
    def slots(self) -> int:
        return slots_per_instance(self.config.instances)

    @property
    def exit_rules(self) -> list[tuple[str, str]]:
        return exit_rules(self.config)


@dataclass(frozen=True)
class Transaction:
    mission_id: str
    index: int
    status: TransactionStatus
    start: int
    end: int
    attempts: int = 0
    claim: int = 0  # the claim that holds it now (0: never claimed)
    lease_owner: str | None = None
    lease_expires_at: float | None = None  # epoch seconds
    exit_code: int | None = None
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    run_seconds: float | None = None
    part_key: str | None = None
    counted: bool = False  # its outcome is in the mission's counters (result_processor set it)
    # A claim packs a run of consecutive transactions into one item (a block): this one covers
    # indexes `index` .. `last`, all in its status, with one lease and one part. Only its first
    # transaction may have been attempted before (a block stops at its first failure and sends
    # the rest back from there), so `attempts` is the first's.
    span: int = 1

    @property
    def last(self) -> int:
        return self.index + self.span - 1

    @property
    def indexes(self) -> range:
        return range(self.index, self.index + self.span)

    def attempts_of(self, index: int) -> int:
        """How many attempts transaction `index` of this block has had (claimed: this one)."""
        if index == self.index:
            return self.attempts
        return 0 if self.status is TransactionStatus.PENDING else 1

    def member(self, s: Slice) -> Transaction:
        """Transaction `s.index` of this block, alone: the block's status, lease and times, its
        own slice and attempts. A block's seconds are its whole run's, so a member has none; an
        error or failing exit code is its first transaction's (a block stops at its first
        failure), so the others have none."""
        if self.span == 1:
            return self
        first = s.index == self.index
        succeeded = self.status is TransactionStatus.SUCCEEDED
        return replace(
            self,
            index=s.index,
            start=s.start,
            end=s.end,
            span=1,
            attempts=self.attempts_of(s.index),
            run_seconds=None,
            exit_code=self.exit_code if first or succeeded else None,
            error=self.error if first else None,
        )

    @classmethod
    def pending(cls, mission_id: str, s: Slice) -> Transaction:
        """A transaction never claimed: it has no item, only its slice of the plan."""
        return cls(mission_id, s.index, TransactionStatus.PENDING, s.start, s.end)

    def lease_expired(self, now: float) -> bool:
        return self.lease_expires_at is not None and self.lease_expires_at < now


@dataclass(frozen=True)
class Usage:
    """What a mission's instances cost: instance-seconds and an estimate in USD."""

    instance_seconds: float
    estimated_cost: float


NO_USAGE = Usage(instance_seconds=0.0, estimated_cost=0.0)
