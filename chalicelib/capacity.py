"""Asking EC2 for workers: one EC2 Fleet `instant` call, tagged, with a client token.

`launch_for` is how every caller launches (the scheduler's first fleet, the sweeper's top-ups, a
Spot replacement); `launch_and_record` adds the record of a relaunch on the mission.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chalicelib.config import Instances
from chalicelib.context import Context
from chalicelib.domain import Mission
from chalicelib.layout import MISSION_TAG, STAGE_TAG
from chalicelib.planning import instances_needed
from chalicelib.settings import Settings


@dataclass(frozen=True)
class LaunchResult:
    instance_ids: list[str]
    errors: list[str] = field(default_factory=list)

    @property
    def error_text(self) -> str | None:
        """The errors in one line, as the mission records them (None: none)."""
        return "; ".join(self.errors) or None


def worker_tags(settings: Settings, mission_id: str) -> list[dict[str, str]]:
    return [
        {"Key": MISSION_TAG, "Value": mission_id},
        {"Key": STAGE_TAG, "Value": settings.stage},
        {"Key": "Name", "Value": f"lighthpc-{settings.stage}-worker-{mission_id}"},
    ]


def launch_template_key(template: str) -> str:
    # CloudFormation's Ref of a launch template is its id; a name works too.
    return "LaunchTemplateId" if template.startswith("lt-") else "LaunchTemplateName"


def overrides(types: list[str], subnets: tuple[str, ...]) -> list[dict[str, str]]:
    """Every instance type in every subnet: the fleet picks the pools with capacity (and, for
    Spot, the cheapest of the least likely to be interrupted) across all of them."""
    if not subnets:
        return [{"InstanceType": t} for t in types]
    return [{"InstanceType": t, "SubnetId": subnet} for t in types for subnet in subnets]


def fleet_request(
    settings: Settings,
    mission_id: str,
    instances: Instances,
    count: int,
    market: str,
    client_token: str,
) -> dict[str, Any]:
    """The CreateFleet request: several instance types, capacity in instances, one call."""
    capacity: dict[str, Any] = {"TotalTargetCapacity": count, "DefaultTargetCapacityType": market}
    if market == "spot":
        capacity["SpotTargetCapacity"] = count
    else:
        capacity["OnDemandTargetCapacity"] = count
    request: dict[str, Any] = {
        "Type": "instant",
        "ClientToken": client_token[:64],
        "LaunchTemplateConfigs": [
            {
                "LaunchTemplateSpecification": {
                    launch_template_key(settings.launch_template): settings.launch_template,
                    "Version": "$Latest",
                },
                "Overrides": overrides(instances.types, settings.worker_subnets),
            }
        ],
        "TargetCapacitySpecification": capacity,
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": worker_tags(settings, mission_id)}
        ],
    }
    if market == "spot":
        request["SpotOptions"] = {"AllocationStrategy": "price-capacity-optimized"}
    return request


def launch_workers(
    ec2: Any,
    settings: Settings,
    mission_id: str,
    instances: Instances,
    count: int,
    token_suffix: str = "",
) -> LaunchResult:
    """Launch `count` workers; with `on_demand_fallback`, fill a Spot shortfall On-Demand.

    The client token makes a retried call for the same mission (and relaunch round, the
    `token_suffix`) return the fleet it already launched instead of a second one.
    """
    ids: list[str] = []
    errors: list[str] = []
    markets = [instances.market]
    if instances.market == "spot" and instances.on_demand_fallback:
        markets.append("on-demand")
    for market in markets:
        missing = count - len(ids)
        if missing <= 0:
            break
        token = f"{mission_id}-{market}{token_suffix}"
        response = ec2.create_fleet(
            **fleet_request(settings, mission_id, instances, missing, market, token)
        )
        for group in response.get("Instances", []):
            ids.extend(group.get("InstanceIds", []))
        for err in response.get("Errors", []):
            errors.append(f"{market}: {err.get('ErrorCode')}: {err.get('ErrorMessage')}")
    return LaunchResult(instance_ids=ids, errors=errors)


def instances_wanted(ctx: Context, mission: Mission, transactions: int) -> int:
    """Instances to run `transactions` at once, within the mission's and the stage's caps."""
    cap = min(mission.config.instances.max_instances, ctx.settings.max_instances)
    return instances_needed(transactions, mission.slots, cap)


def launch_for(ctx: Context, mission: Mission, count: int, token_suffix: str = "") -> LaunchResult:
    """Launch `count` workers for the mission (its instance types and market, the stage's
    launch template and subnets)."""
    return launch_workers(
        ctx.aws.ec2, ctx.settings, mission.mission_id, mission.config.instances, count, token_suffix
    )


def launch_and_record(ctx: Context, mission: Mission, count: int, token_suffix: str) -> int:
    """A relaunch (top-up, stranded work, Spot replacement), recorded on the mission; returns
    how many instances came. `token_suffix` names the round, so a retried call launches none
    twice."""
    launch = launch_for(ctx, mission, count, token_suffix)
    ctx.store.missions.record_relaunch(
        mission.mission_id, len(launch.instance_ids), launch.error_text, ctx.clock()
    )
    return len(launch.instance_ids)


def mission_instances(ec2: Any, mission_id: str, states: list[str]) -> list[dict[str, Any]]:
    paginator = ec2.get_paginator("describe_instances")
    filters = [
        {"Name": f"tag:{MISSION_TAG}", "Values": [mission_id]},
        {"Name": "instance-state-name", "Values": states},
    ]
    found: list[dict[str, Any]] = []
    for page in paginator.paginate(Filters=filters):
        for reservation in page["Reservations"]:
            found.extend(reservation["Instances"])
    return found


def terminate_mission_instances(ec2: Any, mission_id: str) -> list[str]:
    """Terminate every live instance tagged with the mission (cancel, and stray workers)."""
    ids = [i["InstanceId"] for i in mission_instances(ec2, mission_id, ["pending", "running"])]
    for start in range(0, len(ids), 1000):  # TerminateInstances takes at most 1000 ids
        ec2.terminate_instances(InstanceIds=ids[start : start + 1000])
    return ids
