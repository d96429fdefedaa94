"""The mission table (and the input bindings, the rendezvous of a config and its upload).

Every status change is a conditional write whose sources come from `chalicelib.states`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from pynamodb.exceptions import TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from chalicelib.config import MissionConfig
from chalicelib.domain import Mission, Pipeline, Usage, utc
from chalicelib.planning import Plan
from chalicelib.states import TERMINAL_MISSION, MissionStatus, mission_sources
from chalicelib.store.errors import Conflict, InputBusy, NotFound, conditional, translated
from chalicelib.store.models import (
    LISTED,
    NEEDS_CARE,
    InputModel,
    InstanceUsageModel,
    MissionModel,
    instance_usage_key,
)

M = MissionStatus
# A TransactWriteItems holds at most 100 items: the instances' usage items and the mission's.
USAGES_PER_TRANSACTION = 99


def mission_of(item: MissionModel) -> Mission:
    """The one place a mission item becomes a `Mission`."""
    return Mission(
        mission_id=item.mission_id,
        name=item.name,
        status=MissionStatus(item.status),
        config=MissionConfig.model_validate_json(item.config_json),
        input_key=item.input_key,
        created_at=item.created_at,
        submitted_by=item.submitted_by,
        input_etag=item.input_etag,
        input_version=item.input_version,
        input_bytes=_int(item.input_bytes),
        started_at=item.started_at,
        running_at=item.running_at,
        finished_at=item.finished_at,
        notified_at=item.notified_at,
        planning_lease_until=_float(item.planning_lease_until),
        notify_lease_until=_float(item.notify_lease_until),
        total=int(item.n_total or 0),
        input_lines=_int(item.n_lines),
        handed_out=int(item.next_index or 0),
        succeeded=int(item.n_succeeded or 0),
        failed=int(item.n_failed or 0),
        instances=int(item.n_instances or 0),
        relaunches=int(item.relaunches or 0),
        requeued=int(item.n_requeued or 0),
        reclaimed=int(item.n_reclaimed or 0),
        relaunched_at=item.relaunched_at,
        launch_errors=item.launch_errors,
        instance_seconds=float(item.instance_seconds or 0),
        estimated_cost=float(item.estimated_cost or 0),
        result_key=item.result_key,
        error=item.error,
        cancelled_by=item.cancelled_by,
        input_bucket=item.input_bucket,
        reduce_of=item.reduce_of,
        concatenation_key=item.concatenation_key,
        downstream=frozenset(item.downstream or ()),
        pipeline=_pipeline_of(item.pipeline_json),
    )


def _pipeline_json(pipeline: Pipeline | None) -> str | None:
    if pipeline is None:
        return None
    return json.dumps(
        {
            "id": pipeline.pipeline_id,
            "name": pipeline.name,
            "stages": [list(stage) for stage in pipeline.stages],
            "notify": pipeline.notify,
            "budget_usd": pipeline.budget_usd,
        }
    )


def _pipeline_of(text: str | None) -> Pipeline | None:
    if not text:
        return None
    data = json.loads(text)
    return Pipeline(
        pipeline_id=data["id"],
        name=data["name"],
        stages=tuple((name, mission_id) for name, mission_id in data["stages"]),
        notify=data.get("notify"),
        budget_usd=data.get("budget_usd"),
    )


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


class MissionStore:
    def __init__(self, atomic: Callable[[], TransactWrite]) -> None:
        # A DynamoDB TransactWriteItems: several items written all or nothing.
        self._atomic = atomic

    # ---- reads ------------------------------------------------------------------------------

    def get(self, mission_id: str) -> Mission:
        with translated(f"read mission {mission_id}", missing=f"no mission {mission_id!r}"):
            return mission_of(MissionModel.get(mission_id, consistent_read=True))

    def newest(self, limit: int, submitted_by: str | None = None) -> list[Mission]:
        """The newest `limit` missions (of one submitter, if named), newest first: one index
        query and one batch read."""
        with translated("list missions"):
            if submitted_by is None:
                index, hash_key = MissionModel.by_creation, LISTED
            else:
                index, hash_key = MissionModel.by_owner, submitted_by
            newest = index.query(hash_key, scan_index_forward=False, limit=limit)
            items = list(MissionModel.batch_get([m.mission_id for m in newest]))
        missions = [mission_of(item) for item in items]
        missions.sort(key=lambda m: m.created_at, reverse=True)
        return missions

    def awaiting(self, input_key: str) -> str | None:
        """The mission waiting for this input key, if any."""
        try:
            with translated("read input binding"):
                return InputModel.get(input_key, consistent_read=True).mission_id
        except NotFound:
            return None

    def needing_care(self) -> list[str]:
        """The missions the sweeper looks at, by id: every mission from its creation until its
        email is sent (the sparse care index). Ids, not missions: the sweeper reads each one
        consistently on its own, so one it cannot read does not stop the others."""
        with translated("read the missions needing care"):
            return sorted(m.mission_id for m in MissionModel.needing_care.query(NEEDS_CARE))

    # ---- the life of a mission --------------------------------------------------------------

    def create(self, *missions: Mission) -> None:
        """Store new missions all or none (a pipeline's stages together), each an upload's
        awaiting its input key, or a mission fed by another's result, which records it as
        downstream, so its end starts it.

        Raises InputBusy if another mission holds one of the input keys, NotFound if an upstream
        outside this batch does not exist."""
        new = {m.mission_id: m for m in missions}
        fed: dict[str, set[str]] = {}
        for m in missions:
            if m.upstream is not None and m.reduce_of is None:
                fed.setdefault(m.upstream, set()).add(m.mission_id)
        with conditional(f"store missions {', '.join(new)}") as write, self._atomic() as tx:
            for m in missions:
                tx.save(
                    self._item_of(m, fed.get(m.mission_id)),
                    condition=MissionModel.mission_id.does_not_exist(),
                )
                if m.binds_input_key:
                    tx.save(
                        InputModel(m.input_key, mission_id=m.mission_id),
                        condition=InputModel.input_key.does_not_exist(),
                    )
            for upstream, ids in fed.items():
                if upstream not in new:
                    tx.update(
                        MissionModel(upstream),
                        actions=[MissionModel.downstream.add(ids)],
                        condition=MissionModel.mission_id.exists(),
                    )
        if write.applied:
            return
        for m in missions:
            if m.binds_input_key:
                holder = self.awaiting(m.input_key)
                if holder is not None and holder != m.mission_id:
                    raise InputBusy(m.input_key, holder)
        for upstream in fed:
            if upstream not in new:
                self.get(upstream)  # NotFound if it is gone
        raise InputBusy(missions[0].input_key, None)

    @staticmethod
    def _item_of(mission: Mission, downstream: set[str] | None) -> MissionModel:
        return MissionModel(
            mission.mission_id,
            name=mission.name,
            status=mission.status.value,
            config_json=mission.config.model_dump_json(),
            input_key=mission.input_key,
            notify=mission.notify,
            submitted_by=mission.submitted_by,
            created_at=mission.created_at,
            needs_care=NEEDS_CARE,
            reduce_of=mission.reduce_of,
            downstream=downstream or None,
            pipeline_json=_pipeline_json(mission.pipeline),
        )

    def create_reduce(self, reduce: Mission) -> bool:
        """Store a mission's reduce stage, once: False if it exists already."""
        with conditional(f"store the reduce {reduce.mission_id}") as write:
            self._item_of(reduce, None).save(condition=MissionModel.mission_id.does_not_exist())
        return write.applied

    def bind_upstream_result(self, mission_id: str, bucket: str, key: str) -> bool:
        """Its upstream's result becomes a waiting mission's input; False if it stopped waiting
        (another delivery bound it and began planning, or it ended)."""
        with conditional(f"bind the input of {mission_id}") as write:
            self._update(
                mission_id,
                [MissionModel.input_bucket.set(bucket), MissionModel.input_key.set(key)],
                condition=MissionModel.status == M.AWAITING_INPUT.value,
            )
        return write.applied

    def begin_planning(self, mission_id: str, now: float, lease_seconds: int) -> Mission | None:
        """Take the right to plan: exactly one caller wins, however many events arrive.

        A mission awaiting its input moves to PLANNING. A planner that died mid-way left PLANNING
        with a lease; once that lease has expired a redelivered event takes over (the input
        binding is kept until planning ends, so a redelivered S3 event still finds the mission).
        Returns None if the mission is not startable or someone else holds the lease.
        """
        unleased = MissionModel.planning_lease_until.does_not_exist() | (
            MissionModel.planning_lease_until < now
        )
        with conditional(f"begin planning {mission_id}") as write:
            item = self._move(
                mission_id,
                M.PLANNING,
                [
                    MissionModel.planning_lease_until.set(now + lease_seconds),
                    MissionModel.started_at.set(utc(now)),
                ],
                also=unleased,
            )
        return mission_of(item) if write.applied else None

    def record_input(
        self, mission_id: str, etag: str, size: int, version: str | None = None
    ) -> None:
        """The input the mission plans on: the version (and ETag) every reader then pins."""
        self._update(
            mission_id,
            [
                MissionModel.input_etag.set(etag),
                MissionModel.input_bytes.set(size),
                _set_or_remove(MissionModel.input_version, version),
            ],
        )

    def mark_running(
        self,
        mission: Mission,
        plan: Plan,
        *,
        instances: int,
        launch_errors: str | None,
        now: float,
    ) -> None:
        """PLANNING -> RUNNING with the plan: no item per transaction is written (see claims).
        The mission keeps its input key: its workers still read that input."""
        lines = [] if plan.total_lines is None else [MissionModel.n_lines.set(plan.total_lines)]
        self._move(
            mission.mission_id,
            M.RUNNING,
            [
                *lines,
                MissionModel.n_total.set(plan.count),
                MissionModel.n_instances.set(instances),
                _set_or_remove(MissionModel.launch_errors, launch_errors),
                MissionModel.running_at.set(utc(now)),
                MissionModel.planning_lease_until.remove(),
            ],
            only_from=[M.PLANNING],
        )

    def fail_planning(self, mission: Mission, reason: str, now: float) -> None:
        """Fail a mission whose input cannot be planned (empty, missing, too large...)."""
        self._move_and_release(
            mission,
            M.FAILED,
            [
                MissionModel.error.set(reason),
                MissionModel.finished_at.set(utc(now)),
                MissionModel.planning_lease_until.remove(),
            ],
            only_from=[M.PLANNING],
        )

    def expire_planning(self, mission: Mission, reason: str, now: float) -> bool:
        """Fail a mission whose planning never finished (its planners kept dying, or its input
        cannot be planned in time); False if a planner holds a live lease or it moved on."""
        unleased = MissionModel.planning_lease_until.does_not_exist() | (
            MissionModel.planning_lease_until < now
        )
        with conditional(f"expire the planning of {mission.mission_id}") as write:
            self._move_and_release(
                mission,
                M.FAILED,
                [
                    MissionModel.error.set(reason),
                    MissionModel.finished_at.set(utc(now)),
                    MissionModel.planning_lease_until.remove(),
                ],
                only_from=[M.PLANNING],
                also=unleased,
            )
        return write.applied

    def cancel(self, mission: Mission, now: float, by: str | None = None) -> None:
        """Cancel a mission that has not finished (`by`: the caller); Conflict if it has.

        Atomic with the counting (which needs RUNNING): the counters are final from here on."""
        self._move_and_release(
            mission,
            M.CANCELLED,
            [
                MissionModel.error.set("cancelled by request"),
                MissionModel.finished_at.set(utc(now)),
                MissionModel.planning_lease_until.remove(),
                _set_or_remove(MissionModel.cancelled_by, by),
            ],
        )

    def expire_awaiting(self, mission: Mission, reason: str, now: float) -> bool:
        """Fail a mission whose input never came; False if it started or ended meanwhile."""
        with conditional(f"expire mission {mission.mission_id}") as write:
            self._move_and_release(
                mission,
                M.FAILED,
                [MissionModel.error.set(reason), MissionModel.finished_at.set(utc(now))],
                only_from=[M.AWAITING_INPUT],
            )
        return write.applied

    def finish(
        self,
        mission: Mission,
        status: MissionStatus,
        result_key: str | None,
        usage: Usage,
        now: float,
        *,
        error: str | None = None,
        instances: int = 0,
    ) -> bool:
        """RUNNING (or, for a mission read REDUCING, REDUCING: its reduce ended) ->
        SUCCEEDED/FAILED, once. False if another event already finished it.

        `usage`: what is not any of its instances' (a reduce stage's), added to what the agents
        reported: an ADD, not a SET of a total read earlier, so a report that lands while the
        mission settles (a merge can take minutes) is kept. Its instances still alive are
        accounted just before (`account_by_age`). `instances`: a reduce stage's,
        added to the mission's; `error`: why it failed as a whole."""
        source = M.REDUCING if mission.status is M.REDUCING else M.RUNNING
        with conditional(f"finish mission {mission.mission_id}") as write:
            self._move_and_release(
                mission,
                status,
                [
                    _set_or_remove(MissionModel.result_key, result_key),
                    *([MissionModel.error.set(error)] if error else []),
                    MissionModel.finished_at.set(utc(now)),
                    MissionModel.instance_seconds.add(usage.instance_seconds),
                    MissionModel.estimated_cost.add(usage.estimated_cost),
                    *([MissionModel.n_instances.add(instances)] if instances else []),
                ],
                only_from=[source],
            )
        return write.applied

    def begin_reduce(self, mission: Mission, concatenation_key: str) -> bool:
        """RUNNING -> REDUCING, once: every transaction succeeded and the parts are merged into
        `concatenation_key`, which its reduce stage reads. False if another event did it. The
        mission's own instances are still accounted by their agents' reports (it is live)."""
        with conditional(f"begin the reduce of {mission.mission_id}") as write:
            self._move(
                mission.mission_id,
                M.REDUCING,
                [MissionModel.concatenation_key.set(concatenation_key)],
                only_from=[M.RUNNING],
            )
        return write.applied

    def time_out(self, mission: Mission, reason: str, now: float) -> bool:
        """RUNNING -> FAILED for the mission as a whole; False if it already finished."""
        with conditional(f"time out mission {mission.mission_id}") as write:
            self._move_and_release(
                mission,
                M.FAILED,
                [MissionModel.error.set(reason), MissionModel.finished_at.set(utc(now))],
                only_from=[M.RUNNING],
            )
        return write.applied

    # ---- the email --------------------------------------------------------------------------

    def claim_notification(self, mission_id: str, now: float, lease_seconds: int) -> bool:
        """The right to send the completion email: one holder at a time, until it is sent.

        If the holder fails to publish, its lease runs out and a redelivered event sends it.
        """
        free = MissionModel.notify_lease_until.does_not_exist() | (
            MissionModel.notify_lease_until < now
        )
        with conditional(f"claim the email of {mission_id}") as write:
            self._update(
                mission_id,
                [MissionModel.notify_lease_until.set(now + lease_seconds)],
                condition=MissionModel.notified_at.does_not_exist() & free,
            )
        return write.applied

    def mark_notified(self, mission_id: str, now: float) -> bool:
        """Its email went out (or, for a reduce stage or a pipeline stage, the email that tells
        of it); False if it was marked already."""
        with conditional(f"mark {mission_id} notified") as write:
            self._update(
                mission_id,
                # Off the care index: the sweeper has nothing left to do for it.
                [MissionModel.notified_at.set(utc(now)), MissionModel.needs_care.remove()],
                condition=MissionModel.notified_at.does_not_exist(),
            )
        return write.applied

    # ---- the merge (chalicelib.merge) -------------------------------------------------------

    def claim_merge(
        self, mission_id: str, owner: str, now: float, until: float, running: bool = True
    ) -> MergeClaim | None:
        """The right to work on a mission's merge: one holder at a time, until `until` (no
        later than the holder's invocation can run, so a holder that died frees it then).

        Returns where the merge stands, or None if another holder has it, or (`running`) the
        mission is not RUNNING: a merge of a mission that ended is only ever cleaned up."""
        free = MissionModel.merge_lease_until.does_not_exist() | (
            MissionModel.merge_lease_until < now
        )
        condition = free & (MissionModel.status == M.RUNNING.value) if running else free
        with conditional(f"claim the merge of {mission_id}") as write:
            item = self._update(
                mission_id,
                [
                    MissionModel.merge_owner.set(owner),
                    MissionModel.merge_lease_until.set(until),
                    MissionModel.merge_claims.add(1),
                ],
                condition=condition,
            )
        if not write.applied:
            return None
        return MergeClaim(item.merge_checkpoint, int(item.merge_claims or 0))

    def save_merge(self, mission_id: str, owner: str, checkpoint: str, until: float | None) -> bool:
        """Record the merge's checkpoint, keeping the lease until `until` (None: releasing it).
        Only its holder, and only while the mission is RUNNING: False otherwise, and the
        holder stops (a newer holder took over, or the mission ended meanwhile)."""
        lease = (
            [MissionModel.merge_owner.remove(), MissionModel.merge_lease_until.remove()]
            if until is None
            else [MissionModel.merge_lease_until.set(until)]
        )
        with conditional(f"save the merge of {mission_id}") as write:
            self._update(
                mission_id,
                [MissionModel.merge_checkpoint.set(checkpoint), *lease],
                condition=(MissionModel.merge_owner == owner)
                & (MissionModel.status == M.RUNNING.value),
            )
        return write.applied

    def end_merge(self, mission_id: str, owner: str, checkpoint: str | None) -> bool:
        """Release the lease, leaving `checkpoint` (None: none), whatever the mission's state:
        a merge refused, abandoned or cleaned up. Only its holder; False otherwise."""
        with conditional(f"end the merge of {mission_id}") as write:
            self._update(
                mission_id,
                [
                    MissionModel.merge_owner.remove(),
                    MissionModel.merge_lease_until.remove(),
                    _set_or_remove(MissionModel.merge_checkpoint, checkpoint),
                ],
                condition=MissionModel.merge_owner == owner,
            )
        return write.applied

    def merge_checkpoint(self, mission_id: str) -> str | None:
        """The merge's last checkpoint, read fresh (None: it never began)."""
        with translated(f"read mission {mission_id}", missing=f"no mission {mission_id!r}"):
            item = MissionModel.get(
                mission_id,
                consistent_read=True,
                attributes_to_get=["mission_id", "merge_checkpoint"],
            )
        return item.merge_checkpoint

    # ---- capacity ---------------------------------------------------------------------------

    def account_instances(
        self,
        mission_id: str,
        usages: Mapping[str, Usage],
        *,
        by: str,
        while_in: Collection[MissionStatus],
    ) -> dict[str, Usage]:
        """Add to the mission the usage of each instance (by id) that nobody accounted yet, and
        only while the mission's status is in `while_in`. Each instance's usage item is created
        (only if it does not exist) in one TransactWriteItems with the mission's ADD of their
        sum, so an instance counts once, whoever comes first: its agent at its exit, or the
        control side for an instance still alive at the end. Safe to repeat (a lost reply
        finds its instances accounted). Returns the usages this call added."""
        added: dict[str, Usage] = {}
        ids = list(usages)
        for start in range(0, len(ids), USAGES_PER_TRANSACTION):
            todo = {i: usages[i] for i in ids[start : start + USAGES_PER_TRANSACTION]}
            while todo:
                refused = self._account_once(mission_id, todo, by, while_in)
                if refused is None:  # the mission is not in `while_in`: nothing more is added
                    return added
                if not refused:
                    added |= todo
                    break
                todo = {i: u for i, u in todo.items() if i not in refused}
        return added

    def _account_once(
        self,
        mission_id: str,
        usages: Mapping[str, Usage],
        by: str,
        while_in: Collection[MissionStatus],
    ) -> frozenset[str] | None:
        """One TransactWriteItems of `account_instances`: the empty set if it was written, else
        the instances already accounted, or None if the mission's status is not in `while_in`
        (a cancelled transaction gives a reason per item, in the order they were written)."""
        ids = list(usages)
        seconds = sum(u.instance_seconds for u in usages.values())
        cost = sum(u.estimated_cost for u in usages.values())
        U = InstanceUsageModel
        try:
            with translated(f"account {len(ids)} instances of {mission_id}"), self._atomic() as tx:
                for instance_id in ids:
                    usage = usages[instance_id]
                    tx.update(
                        U(instance_usage_key(mission_id, instance_id)),
                        actions=[
                            U.instance_seconds.set(usage.instance_seconds),
                            U.estimated_cost.set(usage.estimated_cost),
                            U.accounted_by.set(by),
                        ],
                        condition=U.mission_id.does_not_exist(),
                    )
                tx.update(
                    MissionModel(mission_id),
                    actions=[
                        MissionModel.instance_seconds.add(seconds),
                        MissionModel.estimated_cost.add(cost),
                    ],
                    condition=MissionModel.mission_id.exists()
                    & MissionModel.status.is_in(*[s.value for s in while_in]),
                )
        except Conflict as e:
            cause = e.__cause__
            reasons = cause.cancellation_reasons if isinstance(cause, TransactWriteError) else None
            refused = [r is not None and r.code == "ConditionalCheckFailed" for r in reasons or []]
            if len(refused) != len(ids) + 1 or refused[-1]:
                return None
            return frozenset(i for i, no in zip(ids, refused[:-1], strict=True) if no)
        return frozenset()

    def add_instance_usage(self, mission_id: str, instance_id: str, usage: Usage) -> bool:
        """An agent's report of its instance's life, when it exits: added only while the
        mission is live, and only if the instance is not accounted yet. Once the mission ended,
        its figures are final (its end accounted the instances still alive by their age,
        `account_by_age`): a late report would make the API disagree with the email.
        False if refused."""
        live = [s for s in M if s not in TERMINAL_MISSION]
        added = self.account_instances(mission_id, {instance_id: usage}, by="agent", while_in=live)
        return bool(added)

    def account_by_age(
        self, mission_id: str, ages: Mapping[str, Usage], *, while_in: Collection[MissionStatus]
    ) -> dict[str, Usage]:
        """The control side's count of instances by their age: those still alive as the
        mission ends, or those its end stopped (EC2 bills no further), each unless its agent
        reported it first. Returns the ones added."""
        return self.account_instances(mission_id, ages, by="control", while_in=while_in)

    def add_stage_usage(self, mission_id: str, usage: Usage) -> None:
        """A cancelled reduce stage's usage (its instances accounted in it), added to its
        mission, which ended with it."""
        self._update(
            mission_id,
            [
                MissionModel.instance_seconds.add(usage.instance_seconds),
                MissionModel.estimated_cost.add(usage.estimated_cost),
            ],
            condition=MissionModel.status.is_in(*[s.value for s in TERMINAL_MISSION]),
        )

    def accounted(self, mission_id: str, instance_ids: Iterable[str]) -> set[str]:
        """Which of these instances have their usage in the mission already (consistent reads,
        100 keys a BatchGetItem)."""
        keys = {instance_usage_key(mission_id, i): i for i in instance_ids}
        if not keys:
            return set()
        with translated(f"read the accounted instances of {mission_id}"):
            found = InstanceUsageModel.batch_get(
                list(keys), consistent_read=True, attributes_to_get=["mission_id"]
            )
            return {keys[item.mission_id] for item in found}

    def record_relaunch(
        self, mission_id: str, instances: int, launch_errors: str | None, now: float
    ) -> None:
        self._update(
            mission_id,
            [
                MissionModel.n_instances.add(instances),
                MissionModel.relaunches.add(1),
                MissionModel.relaunched_at.set(utc(now)),
                _set_or_remove(MissionModel.launch_errors, launch_errors),
            ],
        )

    def claim_replacement(self, mission_id: str, instance_id: str) -> bool:
        """The right to replace an interrupted instance, once (EC2 client tokens do that on AWS,
        but not in moto, and a conditional write is cheaper than trusting either)."""
        with conditional(f"claim the replacement of {instance_id}") as write:
            self._update(
                mission_id,
                [MissionModel.replaced_instances.add({instance_id})],
                condition=~MissionModel.replaced_instances.contains(instance_id),
            )
        return write.applied

    # ---- the writes -------------------------------------------------------------------------

    def _move(
        self,
        mission_id: str,
        target: MissionStatus,
        actions: list[Action],
        only_from: list[MissionStatus] | None = None,
        also: Condition | None = None,
    ) -> MissionModel:
        """A status change: the condition is the state table's sources (narrowed by
        `only_from`), and `also` if given."""
        condition = MissionModel.status.is_in(*mission_sources(target, only_from))
        return self._update(
            mission_id,
            [MissionModel.status.set(target.value), *actions],
            condition if also is None else condition & also,
        )

    def _move_and_release(
        self,
        mission: Mission,
        target: MissionStatus,
        actions: list[Action],
        only_from: list[MissionStatus] | None = None,
        also: Condition | None = None,
    ) -> None:
        """A status change that also releases the input key for later configs, atomically: every
        move into a terminal state (the key is the mission's from its config until it ends)."""
        with (
            translated(
                f"update mission {mission.mission_id}",
                refused=f"mission {mission.mission_id} cannot become {target.value} from its state",
            ),
            self._atomic() as tx,
        ):
            condition = MissionModel.status.is_in(*mission_sources(target, only_from))
            tx.update(
                MissionModel(mission.mission_id),
                actions=[MissionModel.status.set(target.value), *actions],
                condition=condition if also is None else condition & also,
            )
            if mission.binds_input_key:
                tx.delete(
                    InputModel(mission.input_key),
                    condition=InputModel.input_key.does_not_exist()
                    | (InputModel.mission_id == mission.mission_id),
                )

    def _update(
        self, mission_id: str, actions: list[Action], condition: Condition | None = None
    ) -> MissionModel:
        item = MissionModel(mission_id)
        exists = MissionModel.mission_id.exists()
        with translated(
            f"update mission {mission_id}",
            refused=f"mission {mission_id} is not in the expected state",
        ):
            item.update(
                actions=actions, condition=exists if condition is None else exists & condition
            )
        return item


@dataclass(frozen=True)
class MergeClaim:
    """Where a merge stands when its lease is taken: the checkpoint its last holder saved
    (JSON, `chalicelib.merge.Checkpoint`), None if it never began; and how many times its
    lease was taken, this time included (1: no invocation before this one began it)."""

    checkpoint: str | None
    claims: int = 1


def _set_or_remove(attribute: object, value: object) -> Action:
    return attribute.set(value) if value else attribute.remove()  # type: ignore[attr-defined]
