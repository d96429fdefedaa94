"""worker_ami.service_models: the worker's EC2 model, trimmed to the calls the agent makes."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from botocore import xform_name

import worker_ami
from worker_ami.service_models import OPERATIONS, model_path, trimmed


def test_the_trimmed_models_are_what_the_installed_botocore_gives() -> None:
    # Regenerate with `python -m worker_ami.service_models` after an upgrade of botocore.
    for service, operations in OPERATIONS.items():
        version, model = trimmed(service, operations)
        assert json.loads(model_path(service, version).read_text()) == model
        assert sorted(model["operations"]) == sorted(operations)


def test_every_ec2_call_in_the_worker_is_in_its_trimmed_model() -> None:
    allowed = {xform_name(op) for op in OPERATIONS["ec2"]}
    called = set()
    for source in Path(worker_ami.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            # `<anything>.ec2.<operation>`
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ec2"
            ):
                called.add(node.attr)
    assert called, "the agent terminates its instance through the EC2 API"
    assert called <= allowed, f"regenerate the trimmed model with {called - allowed}"
