"""The IAM policies as data: each function's policy file (named in .chalice/config.json) and the
worker role's policy (in infra/resources.yaml), with CloudFormation references resolved against
a stack, for the tests that hold the policies to the code and to least privilege."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from local.stack import Stack, load_template

ROOT = Path(__file__).resolve().parents[2]
CHALICE_DIR = ROOT / ".chalice"
# Statements Lambda itself uses on the function's behalf (writing its logs, polling its queue,
# sending a failed async event to the dead-letter queue): no code of ours makes these calls.
SERVICE_SID_PREFIX = "LambdaService"


def _config() -> dict[str, Any]:
    return json.loads((CHALICE_DIR / "config.json").read_text())


def policy_files() -> dict[str, Path]:
    """Function name -> its policy file, as Chalice reads them from config.json."""
    functions = _config().get("lambda_functions", {})
    return {name: CHALICE_DIR / cfg["iam_policy_file"] for name, cfg in functions.items()}


FUNCTION_POLICY_FILES = sorted(policy_files())


def function_statements(name: str) -> list[dict[str, Any]]:
    return json.loads(policy_files()[name].read_text())["Statement"]


def worker_statements() -> list[dict[str, Any]]:
    role = load_template()["Resources"]["WorkerRole"]["Properties"]
    (policy,) = role["Policies"]
    return policy["PolicyDocument"]["Statement"]


class Resolver:
    """Evaluates Ref / Fn::GetAtt / Fn::Sub against a stack made by local/stack.py."""

    def __init__(self, stack: Stack, account: str = "123456789012") -> None:
        self.stack = stack
        self.pseudo = {
            "AWS::Partition": "aws",
            "AWS::Region": stack.region,
            "AWS::AccountId": account,
        }
        self.types = {k: v.get("Type") for k, v in load_template()["Resources"].items()}
        self.account = account

    def ref(self, name: str) -> str:
        if name in self.pseudo:
            return self.pseudo[name]
        if name == "Stage":
            return self.stack.stage
        # A resource's Ref is its physical id (a queue's is its URL); a resource the embedded
        # stack does not have stays a visible placeholder.
        return self.stack.resources.get(name, f"<{name}>")

    def get_att(self, name: str, attribute: str) -> str:
        physical = self.stack.resources.get(name)
        kind = self.types.get(name)
        if physical is None:
            return f"<{name}.{attribute}>"
        region, account = self.stack.region, self.account
        if attribute == "Arn":
            return {
                "AWS::DynamoDB::Table": f"arn:aws:dynamodb:{region}:{account}:table/{physical}",
                "AWS::S3::Bucket": f"arn:aws:s3:::{physical}",
                "AWS::SQS::Queue": f"arn:aws:sqs:{region}:{account}:{physical.rsplit('/', 1)[-1]}",
                "AWS::IAM::Role": f"arn:aws:iam::{account}:role/{physical}",
                "AWS::Logs::LogGroup": f"arn:aws:logs:{region}:{account}:log-group:{physical}:*",
            }[kind]
        if attribute == "GroupId":
            return physical
        if attribute == "QueueName":
            return physical.rsplit("/", 1)[-1]
        raise KeyError(f"{name}.{attribute}")

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self(v) for v in value]
        if not isinstance(value, dict):
            return value
        if set(value) == {"Ref"}:
            return self.ref(value["Ref"])
        if set(value) == {"Fn::GetAtt"}:
            name, attribute = value["Fn::GetAtt"]
            return self.get_att(name, attribute)
        if set(value) == {"Fn::Sub"}:
            return re.sub(r"\$\{([^!}][^}]*)\}", self._sub, value["Fn::Sub"])
        return {k: self(v) for k, v in value.items()}

    def _sub(self, match: re.Match[str]) -> str:
        name, _, attribute = match.group(1).partition(".")
        return self.get_att(name, attribute) if attribute else self.ref(name)


def resolved(statements: list[dict[str, Any]], stack: Stack) -> list[dict[str, Any]]:
    resolve = Resolver(stack)
    return [
        {**s, "Action": as_list(s["Action"]), "Resource": as_list(resolve(s["Resource"]))}
        for s in statements
        if s.get("Effect") == "Allow"
    ]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
