"""Build the deployable template: `python -m local.package --stage dev --out build/dev`.

Runs `chalice package` with infra/resources.yaml merged in, then pins the template's Stage
parameter to the stage it was packaged for: the functions' environment comes from that
Chalice stage (.chalice/config.json), so deploying the package under another stage name would
point one stage's policy at another stage's resources. Last, it drops from deployment.zip what
the Lambda Python runtime already carries (boto3 and botocore with their dependencies, pulled in
by pynamodb): 16 of the package's 20 MB, and the cold start's unzip with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
MERGE_TEMPLATE = ROOT / "infra" / "resources.yaml"
# Top-level names in site-packages of the distributions every Lambda Python runtime ships in
# /var/runtime (boto3 and its dependencies). The code uses no API younger than that runtime's
# boto3 (S3 checksums, 2022, are the youngest).
RUNTIME_PROVIDED = (
    "boto3",
    "botocore",
    "s3transfer",
    "jmespath",
    "dateutil",
    "urllib3",
    "six",
    "python_dateutil",
)


def build(stage: str, out: Path) -> Path:
    """Package the app for `stage` into `out`; returns the template (out/sam.yaml)."""
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ)
    env["LIGHTHPC_STAGE"] = stage  # the queue names Chalice binds at import (settings.py)
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")  # chalice wants one; the stack's wins
    chalice = Path(sys.executable).with_name("chalice")
    subprocess.run(  # noqa: S603 - fixed argv, no shell
        [
            str(chalice),
            "package",
            "--stage",
            stage,
            "--merge-template",
            str(MERGE_TEMPLATE),
            str(out),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=sys.stderr,  # chalice's progress; stdout is the template's path (main)
    )
    template = out / "sam.yaml"
    document = yaml.safe_load(template.read_text())
    pin_stage(document, stage)
    bind_queues(document, stage)
    pass_argv_policy(document, stage)
    template.write_text(yaml.safe_dump(document, sort_keys=False))
    leave_out_runtime_provided(out / "deployment.zip")
    return template


def provided_by_runtime(name: str) -> bool:
    """Whether a path in the zip belongs to a distribution of RUNTIME_PROVIDED."""
    top = name.split("/", 1)[0]
    stem = top.removesuffix(".py").split("-", 1)[0]
    return stem in RUNTIME_PROVIDED and (top.endswith((".dist-info", ".py")) or "/" in name)


def leave_out_runtime_provided(archive: Path) -> None:
    lean = archive.with_suffix(".lean.zip")
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(lean, "w") as target:
        for info in source.infolist():
            if not provided_by_runtime(info.filename):
                target.writestr(info, source.read(info), compress_type=zipfile.ZIP_DEFLATED)
    lean.replace(archive)


def pin_stage(document: dict[str, Any], stage: str) -> None:
    parameter = document["Parameters"]["Stage"]
    parameter["Default"] = stage
    parameter["AllowedValues"] = [stage]
    parameter.pop("AllowedPattern", None)
    parameter["Description"] = f"Packaged for the {stage!r} stage of .chalice/config.json."


def bind_queues(document: dict[str, Any], stage: str) -> None:
    """Point each SQS event source at the queue resource instead of an ARN built from its name.

    Chalice spells the queue's ARN out (`Fn::Sub`), so CloudFormation would not know that the
    event source needs the queue created first; a merge template cannot replace that value
    (Chalice merges dictionaries key by key), hence this step.
    """
    resources = document["Resources"]
    queues = {
        body["Properties"]["QueueName"]["Fn::Sub"].replace("${Stage}", stage): name
        for name, body in resources.items()
        if body.get("Type") == "AWS::SQS::Queue"
    }
    for body in resources.values():
        if body.get("Type") != "AWS::Serverless::Function":
            continue
        for event in body["Properties"].get("Events", {}).values():
            if event["Type"] != "SQS":
                continue
            queue_name = event["Properties"]["Queue"]["Fn::Sub"].rsplit(":", 1)[-1]
            event["Properties"]["Queue"] = {"Fn::GetAtt": [queues[queue_name], "Arn"]}


def stage_environment(stage: str) -> dict[str, str]:
    """The environment .chalice/config.json gives the functions of `stage`."""
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    return {
        **config.get("environment_variables", {}),
        **config["stages"][stage].get("environment_variables", {}),
    }


def pass_argv_policy(document: dict[str, Any], stage: str) -> None:
    """Give the workers the stage's argv policy (ALLOW_INLINE_ARGV, ALLOWED_PROGRAMS) in their
    user data: the agent checks each program again before it runs it, and must agree with the
    API that admitted the mission. The bootstrap takes commas, not spaces, between programs."""
    env = stage_environment(stage)
    allow_inline = env.get("ALLOW_INLINE_ARGV", "false").strip().lower()
    programs = ",".join(env.get("ALLOWED_PROGRAMS", "").replace(",", " ").split())
    if "${" in programs or "'" in programs:
        raise ValueError(f"ALLOWED_PROGRAMS of stage {stage!r} cannot go into user data")
    resources = document["Resources"]
    (template,) = [r for r in resources.values() if r["Type"] == "AWS::EC2::LaunchTemplate"]
    user_data = template["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]
    script = user_data["Fn::Sub"]
    marker = "  || {"
    policy = f"  ALLOW_INLINE_ARGV={allow_inline} \\\n  ALLOWED_PROGRAMS='{programs}' \\\n"
    if marker not in script:
        raise ValueError("the launch template's user data has no bootstrap call to extend")
    user_data["Fn::Sub"] = script.replace(marker, policy + marker, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.package", description=__doc__)
    parser.add_argument("--stage", required=True, help="a stage of .chalice/config.json")
    parser.add_argument("--out", type=Path, required=True, help="output folder (replaced)")
    args = parser.parse_args(argv)
    template = build(args.stage, args.out)
    print(template)
    return 0


if __name__ == "__main__":
    sys.exit(main())
