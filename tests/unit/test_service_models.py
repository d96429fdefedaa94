"""worker_ami.service_models: the worker's EC2 model, trimmed to the calls the agent makes."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from botocore import xform_name

import worker_ami
from worker_ami.service_models import OPERATIONS, model_path, shape_names, trimmed


def test_the_trimmed_models_are_whole_and_agree_with_the_installed_botocore() -> None:
    # `python -m worker_ami.service_models` regenerates them. An older file stays usable: a
    # member botocore added since is one the worker does not send, and one a reply carries is
    # skipped by the parser. So the check is that ours is a part of botocore's, and whole.
    for service, operations in OPERATIONS.items():
        version, current = trimmed(service, operations)
        ours = json.loads(model_path(service, version).read_text())
        assert sorted(ours["operations"]) == sorted(operations)
        assert ours["metadata"]["protocol"] == current["metadata"]["protocol"]
        referenced = {name for node in ours["operations"].values() for name in shape_names(node)}
        referenced |= {name for shape in ours["shapes"].values() for name in shape_names(shape)}
        assert referenced <= set(ours["shapes"]), "a shape referred to and missing"
        for op, spec in ours["operations"].items():
            assert spec["input"] == current["operations"][op]["input"]
        for name, shape in ours["shapes"].items():
            theirs = current["shapes"].get(name)
            assert theirs is not None and shape["type"] == theirs["type"], name
            for member, spec in shape.get("members", {}).items():
                assert spec["shape"] == theirs["members"][member]["shape"], (name, member)


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
