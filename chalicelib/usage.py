"""What a mission's instances used: their age by EC2's records, and the accounting that counts
each instance once (`MissionStore.account_instances`), whoever comes first: its agent as it
exits, or the control side, by the instance's age, for one still alive at the mission's end.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chalicelib.capacity import mission_instances
from chalicelib.context import Context
from chalicelib.domain import NO_USAGE, Mission, Usage
from chalicelib.pricing import estimated_cost


def still_running(ctx: Context, mission_id: str) -> Usage:
    """The age of the mission's instances still running and not accounted yet: an instance
    whose agent reported as it exits may still show as running (it terminates itself after
    the report, and DescribeInstances is eventually consistent)."""
    alive = mission_instances(ctx.aws.ec2, mission_id, ["pending", "running"])
    ages = ages_of(alive, ctx.clock())
    for instance_id in ctx.store.missions.accounted(mission_id, ages):
        del ages[instance_id]
    return total(ages.values())


def ages_of(instances: Iterable[dict[str, Any]], now: float) -> dict[str, Usage]:
    """What each described instance has run (and cost) from its launch until `now`, by id."""
    ages: dict[str, Usage] = {}
    for instance in instances:
        age = max(0.0, now - instance["LaunchTime"].timestamp())
        market = instance.get("InstanceLifecycle") or "on-demand"
        ages[instance["InstanceId"]] = Usage(
            instance_seconds=age,
            estimated_cost=estimated_cost(instance.get("InstanceType"), market, age),
        )
    return ages


def total(usages: Iterable[Usage]) -> Usage:
    seconds = cost = 0.0
    for usage in usages:
        seconds += usage.instance_seconds
        cost += usage.estimated_cost
    return Usage(instance_seconds=seconds, estimated_cost=cost)


def account_alive_instances(ctx: Context, mission: Mission) -> Usage:
    """Before a live mission ends, its instances still alive (the last workers are typically
    still exiting), by their age: each once, unless its agent reported it first, and only
    while the mission is as read (so a mission that ended meanwhile gets nothing). An agent
    whose report comes later finds its instance accounted, and once the mission ended its
    report is refused anyway. Done before the end, not after it: an agent refused by the end
    terminates its instance, which a later DescribeInstances would no longer show. Safe to
    repeat. Returns what it added."""
    alive = mission_instances(ctx.aws.ec2, mission.mission_id, ["pending", "running"])
    if not alive:
        return NO_USAGE
    added = ctx.store.missions.account_by_age(
        mission.mission_id, ages_of(alive, ctx.clock()), while_in=[mission.status]
    )
    return total(added.values())
