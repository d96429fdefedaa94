"""Create lighthpc's resources in moto from the very template that deployment merges.

moto's CloudFormation creates the queues, buckets, tables, topic and launch template but does not
apply a bucket's NotificationConfiguration, so `provision` applies those afterwards, read from
the same template.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().parent.parent / "infra" / "resources.yaml"


class _Tagged:
    """A CloudFormation short-form function (`!Sub`, `!GetAtt`...) kept as data."""

    def __init__(self, tag: str, value: Any) -> None:
        self.tag, self.value = tag, value


class _CfnLoader(yaml.SafeLoader):
    pass


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> _Tagged:
    if isinstance(node, yaml.ScalarNode):
        return _Tagged(suffix, loader.construct_scalar(node))
    if isinstance(node, yaml.SequenceNode):
        return _Tagged(suffix, loader.construct_sequence(node))
    return _Tagged(suffix, loader.construct_mapping(node))


_CfnLoader.add_multi_constructor("!", _construct_tagged)


def load_template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # noqa: S506 - safe loader subclass


@dataclass(frozen=True)
class Stack:
    stage: str
    region: str
    outputs: dict[str, str]

    def environment(self) -> dict[str, str]:
        """The variables `chalicelib.settings` reads, pointing at this stack."""
        o = self.outputs
        return {
            "LIGHTHPC_STAGE": self.stage,
            "AWS_DEFAULT_REGION": self.region,
            "MISSION_TABLE": o["MissionTableName"],
            "TRANSACTION_TABLE": o["TransactionTableName"],
            "INPUT_TABLE": o["InputTableName"],
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
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": "Stage", "ParameterValue": stage}],
    )
    cfn.get_waiter("stack_create_complete").wait(
        StackName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
    )
    description = cfn.describe_stacks(StackName=name)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in description.get("Outputs", [])}
    physical = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in cfn.describe_stack_resources(StackName=name)["StackResources"]
    }
    _apply_notifications(session, region, physical)
    return Stack(stage=stage, region=region, outputs=outputs)


def _apply_notifications(session: Any, region: str, physical: dict[str, str]) -> None:
    s3 = session.client("s3", region_name=region)
    sqs = session.client("sqs", region_name=region)
    for logical, resource in load_template()["Resources"].items():
        notification = resource.get("Properties", {}).get("NotificationConfiguration")
        if resource["Type"] != "AWS::S3::Bucket" or not notification:
            continue
        configs = []
        for entry in notification.get("QueueConfigurations", []):
            queue_logical = entry["Queue"].value.split(".")[0]  # !GetAtt Queue.Arn
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
