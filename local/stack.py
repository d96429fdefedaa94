"""Create lighthpc's resources in moto from the very template that deployment merges.

moto's CloudFormation creates the queues, buckets, tables, topic and launch template but does not
apply a bucket's NotificationConfiguration or VersioningConfiguration, so `provision` applies
those afterwards, read from the same template.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().parent.parent / "infra" / "resources.yaml"


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation's short forms (`!Sub`, `!GetAtt`...) into their long forms."""


def _long_form(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _long_form)


def load_template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # noqa: S506 - safe loader subclass


def _references(value: Any) -> set[str]:
    """Logical names a template fragment refers to (Ref, GetAtt, and ${...} in Sub)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref" and isinstance(inner, str):
                found.add(inner)
            elif key == "Fn::GetAtt":
                found.add(inner[0] if isinstance(inner, list) else inner.split(".")[0])
            elif key == "Fn::Sub":
                text = inner[0] if isinstance(inner, list) else inner
                found |= {m.split(".")[0] for m in re.findall(r"\$\{([^!][^}]*)\}", text)}
                if isinstance(inner, list):
                    found |= _references(inner[1])
            else:
                found |= _references(inner)
    elif isinstance(value, list):
        for item in value:
            found |= _references(item)
    return found


# Resource policies moto's CloudFormation cannot create (it warns and skips them) and does not
# enforce anyway; the deployment tests check them in the packaged template instead.
_SKIPPED_BY_MOTO = {"AWS::SQS::QueuePolicy", "AWS::S3::BucketPolicy"}


def embedded_template() -> dict[str, Any]:
    """The template without what amends Chalice's functions: the embedded AWS runs the app
    itself. Drops `Globals`, entries without a Type, and whatever refers to those."""
    template = load_template()
    template.pop("Globals", None)
    resources = {
        name: body
        for name, body in template["Resources"].items()
        if "Type" in body and body["Type"] not in _SKIPPED_BY_MOTO
    }
    parameters = set(template.get("Parameters", {}))
    while True:
        known = set(resources) | parameters
        orphans = {
            name
            for name, body in resources.items()
            if {r for r in _references(body) if not r.startswith("AWS::")} - known
        }
        if not orphans:
            break
        for name in orphans:
            del resources[name]
    for body in resources.values():
        depends = body.pop("DependsOn", [])
        kept = [d for d in ([depends] if isinstance(depends, str) else depends) if d in resources]
        if kept:
            body["DependsOn"] = kept
    template["Resources"] = resources
    return template


@dataclass(frozen=True)
class Stack:
    stage: str
    region: str
    outputs: dict[str, str]
    # logical id -> physical id, as CloudFormation reports them (tests resolve policies with it)
    resources: dict[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        """The variables `chalicelib.settings` reads, pointing at this stack."""
        o = self.outputs
        return {
            "LIGHTHPC_STAGE": self.stage,
            "AWS_DEFAULT_REGION": self.region,
            "MISSION_TABLE": o["MissionTableName"],
            "TRANSACTION_TABLE": o["TransactionTableName"],
            "INPUT_TABLE": o["InputTableName"],
            "IDEMPOTENCY_TABLE": o["IdempotencyTableName"],
            "SOURCE_BUCKET": o["SourceBucketName"],
            "RESULT_BUCKET": o["ResultBucketName"],
            "SOURCE_QUEUE": o["SourceEventsQueueUrl"].rsplit("/", 1)[-1],
            "TOPIC_ARN": o["TopicArn"],
            "WORKER_LAUNCH_TEMPLATE": o["LaunchTemplateName"],
        }

    @property
    def source_queue_url(self) -> str:
        return self.outputs["SourceEventsQueueUrl"]

    @property
    def result_queue_url(self) -> str:
        return self.outputs["ResultEventsQueueUrl"]


def provision(session: Any, stage: str = "local", region: str = "us-east-1") -> Stack:
    """Create the stack (waiting for it) and wire the bucket notifications; returns outputs."""
    cfn = session.client("cloudformation", region_name=region)
    name = f"lighthpc-{stage}-resources"
    cfn.create_stack(
        StackName=name,
        TemplateBody=json.dumps(embedded_template()),
        Parameters=[
            {"ParameterKey": "Stage", "ParameterValue": stage},
            {"ParameterKey": "WorkerVpcId", "ParameterValue": _default_vpc(session, region)},
        ],
    )
    cfn.get_waiter("stack_create_complete").wait(
        StackName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
    )
    description = cfn.describe_stacks(StackName=name)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in description.get("Outputs", [])}
    physical = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in cfn.describe_stack_resources(StackName=name)["StackResources"]
        if "LogicalResourceId" in r  # moto lists a condition-skipped resource as empty
    }
    _apply_bucket_settings(session, region, physical)
    return Stack(stage=stage, region=region, outputs=outputs, resources=physical)


def _default_vpc(session: Any, region: str) -> str:
    ec2 = session.client("ec2", region_name=region)
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    return vpcs[0]["VpcId"]


def _apply_bucket_settings(session: Any, region: str, physical: dict[str, str]) -> None:
    s3 = session.client("s3", region_name=region)
    sqs = session.client("sqs", region_name=region)
    for logical, resource in embedded_template()["Resources"].items():
        if resource["Type"] != "AWS::S3::Bucket":
            continue
        versioning = resource.get("Properties", {}).get("VersioningConfiguration")
        if versioning:
            s3.put_bucket_versioning(
                Bucket=physical[logical],
                VersioningConfiguration={"Status": versioning["Status"]},
            )
        notification = resource.get("Properties", {}).get("NotificationConfiguration")
        if not notification:
            continue
        configs = []
        for entry in notification.get("QueueConfigurations", []):
            queue_logical = entry["Queue"]["Fn::GetAtt"][0]  # !GetAtt Queue.Arn
            arn = sqs.get_queue_attributes(
                QueueUrl=physical[queue_logical], AttributeNames=["QueueArn"]
            )["Attributes"]["QueueArn"]
            config: dict[str, Any] = {"QueueArn": arn, "Events": [entry["Event"]]}
            if "Filter" in entry:
                config["Filter"] = {"Key": {"FilterRules": entry["Filter"]["S3Key"]["Rules"]}}
            configs.append(config)
        s3.put_bucket_notification_configuration(
            Bucket=physical[logical], NotificationConfiguration={"QueueConfigurations": configs}
        )
