"""EC2 Spot Instance Interruption Warning, from the control side (EventBridge -> Lambda).

The worker hands its transactions back when it sees the notice; this does the same even when
the worker cannot (hung, or its metadata poll missed the window), and asks for replacement
capacity. Both sides use the same conditional hand-back, so together they act once.
"""

from __future__ import annotations

from botocore.exceptions import ClientError

from chalicelib.capacity import launch_and_record
from chalicelib.context import Context
from chalicelib.layout import MISSION_TAG
from chalicelib.observability import bind_mission, logger
from chalicelib.states import MissionStatus
from chalicelib.store import Conflict, NotFound


def on_spot_interruption(ctx: Context, instance_id: str) -> int:
    """Hand back the instance's transactions and request a replacement; returns how many."""
    mission_id = _mission_of(ctx, instance_id)
    if mission_id is None:
        return 0  # not one of ours
    bind_mission(mission_id)
    try:
        mission = ctx.store.missions.get(mission_id)
    except NotFound:
        return 0
    if mission.status is not MissionStatus.RUNNING:
        return 0
    handed = 0
    for txn in ctx.store.transactions.leased(mission_id):
        owner = txn.lease_owner or ""
        if owner.split("/", 1)[0] != instance_id:
            continue
        try:
            ctx.store.transactions.hand_back(
                txn, owner, ctx.clock(), f"handed back: Spot interruption of {instance_id}"
            )
            handed += 1
        except Conflict:
            pass  # the worker handed it back itself, or finished it
    work_left = ctx.store.transactions.has_work_left(ctx.store.missions.get(mission_id))
    if work_left and ctx.store.missions.claim_replacement(mission_id, instance_id):
        # One replacement per interrupted instance; the token makes a redelivered warning a no-op.
        launch_and_record(ctx, mission, 1, token_suffix=f"-{instance_id}")
    logger.warning(
        "Spot interruption handled", extra={"instance_id": instance_id, "handed_back": handed}
    )
    return handed


def _mission_of(ctx: Context, instance_id: str) -> str | None:
    try:
        reservations = ctx.aws.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == "InvalidInstanceID.NotFound":
            return None
        raise
    for reservation in reservations:
        for instance in reservation["Instances"]:
            for tag in instance.get("Tags", []):
                if tag["Key"] == MISSION_TAG:
                    return tag["Value"]
    return None
