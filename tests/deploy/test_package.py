"""The deployable package: `chalice package` + infra/resources.yaml, linted and checked resource
by resource. Builds the package once (it fetches requirements.txt wheels from the registry)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import botocore
import pytest
import yaml

import app
from chalicelib.settings import Settings
from local.package import build, provided_by_runtime
from tests.deploy.test_worker_ami import BOOTSTRAP

STAGE = "prod"


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> Path:
    return build(STAGE, tmp_path_factory.mktemp("package") / STAGE)


@pytest.fixture(scope="module")
def template(packaged) -> dict[str, Any]:
    return yaml.safe_load(packaged.read_text())


def of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v.get("Type") == kind}


def test_cfn_lint_finds_no_error(packaged):
    lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run([str(lint), str(packaged)], capture_output=True, text=True)
    print(result.stdout)
    # cfn-lint's exit code is a bit mask: 2 = error, 4 = warning, 8 = informational.
    assert result.returncode & 2 == 0, result.stdout
    assert result.returncode == 0, result.stdout  # and no warning either, today


def test_the_package_is_pinned_to_its_stage(template, packaged):
    assert template["Parameters"]["Stage"]["AllowedValues"] == [STAGE]
    assert (packaged.parent / "deployment.zip").stat().st_size > 1_000_000


def test_buckets_are_encrypted_private_tls_only_and_notify_their_queues(template):
    buckets = of_type(template, "AWS::S3::Bucket")
    assert set(buckets) == {"SourceBucket", "ResultBucket"}
    for bucket in buckets.values():
        p = bucket["Properties"]
        (rule,) = p["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
        block = p["PublicAccessBlockConfiguration"]
        assert all(
            block[k] is True
            for k in (
                "BlockPublicAcls",
                "BlockPublicPolicy",
                "IgnorePublicAcls",
                "RestrictPublicBuckets",
            )
        )
        assert p["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
        (notification,) = p["NotificationConfiguration"]["QueueConfigurations"]
        assert notification["Event"] == "s3:ObjectCreated:*"
    policies = of_type(template, "AWS::S3::BucketPolicy")
    assert {p["Properties"]["Bucket"]["Ref"] for p in policies.values()} == set(buckets)
    for policy in policies.values():
        (deny,) = policy["Properties"]["PolicyDocument"]["Statement"]
        assert deny["Effect"] == "Deny"
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_queues_have_dead_letters_encryption_and_s3_may_send(template):
    queues = of_type(template, "AWS::SQS::Queue")
    for name in ("SourceEventsQueue", "ResultEventsQueue"):
        p = queues[name]["Properties"]
        dlq = p["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        assert dlq in queues and dlq != name
    assert all(q["Properties"]["SqsManagedSseEnabled"] is True for q in queues.values())
    policies = of_type(template, "AWS::SQS::QueuePolicy")
    granted = {}
    for policy in policies.values():
        (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
        assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
        assert statement["Action"] == "sqs:SendMessage"
        assert "aws:SourceArn" in statement["Condition"]["ArnEquals"]
        assert "aws:SourceAccount" in statement["Condition"]["StringEquals"]
        granted[policy["Properties"]["Queues"][0]["Ref"]] = statement
    assert set(granted) == {"SourceEventsQueue", "ResultEventsQueue"}


def test_tables_are_on_demand_with_point_in_time_recovery(template):
    tables = of_type(template, "AWS::DynamoDB::Table")
    assert set(tables) == {"MissionTable", "TransactionTable", "InputTable", "IdempotencyTable"}
    for table in tables.values():
        p = table["Properties"]
        assert p["BillingMode"] == "PAY_PER_REQUEST"
        assert p["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    ttl = tables["IdempotencyTable"]["Properties"]["TimeToLiveSpecification"]
    assert ttl == {"AttributeName": "expiration", "Enabled": True}


def test_topic_and_an_optional_email_subscription(template):
    assert of_type(template, "AWS::SNS::Topic")
    (subscription,) = of_type(template, "AWS::SNS::Subscription").values()
    assert subscription["Condition"] == "HasNotificationEmail"
    assert subscription["Properties"]["Protocol"] == "email"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "NotificationEmail"}


def test_worker_launch_template_is_hardened(template):
    (lt,) = of_type(template, "AWS::EC2::LaunchTemplate").values()
    data = lt["Properties"]["LaunchTemplateData"]
    assert data["ImageId"] == {"Ref": "WorkerAmiId"}
    assert template["Parameters"]["WorkerAmiId"]["Type"] == "AWS::EC2::Image::Id"
    metadata = data["MetadataOptions"]
    assert metadata["HttpTokens"] == "required"  # IMDSv2 only
    assert metadata["InstanceMetadataTags"] == "enabled"  # the agent reads its mission tag
    assert metadata["HttpPutResponseHopLimit"] == 1
    assert "KeyName" not in data  # no SSH key
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert all(m["Ebs"]["Encrypted"] is True for m in data["BlockDeviceMappings"])
    assert data["IamInstanceProfile"] == {"Arn": {"Fn::GetAtt": ["WorkerInstanceProfile", "Arn"]}}
    user_data = data["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert "/opt/lighthpc/bin/lighthpc-bootstrap" in user_data
    (group,) = of_type(template, "AWS::EC2::SecurityGroup").values()
    assert "SecurityGroupIngress" not in group["Properties"]  # nothing connects to a worker
    assert [r["FromPort"] for r in group["Properties"]["SecurityGroupEgress"]] == [443]


def test_worker_instance_profile_carries_the_worker_role(template):
    (profile,) = of_type(template, "AWS::IAM::InstanceProfile").values()
    assert profile["Properties"]["Roles"] == [{"Ref": "WorkerRole"}]
    role = of_type(template, "AWS::IAM::Role")["WorkerRole"]["Properties"]
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "ec2.amazonaws.com"}


def test_schedule_and_spot_warning_rule(template):
    functions = of_type(template, "AWS::Serverless::Function")
    (sweeper_event,) = functions["Sweeper"]["Properties"]["Events"].values()
    assert sweeper_event == {"Type": "Schedule", "Properties": {"Schedule": "rate(1 minute)"}}
    (spot_event,) = functions["SpotInterruption"]["Properties"]["Events"].values()
    assert spot_event["Type"] == "CloudWatchEvent"
    assert spot_event["Properties"]["Pattern"] == {
        "source": ["aws.ec2"],
        "detail-type": ["EC2 Spot Instance Interruption Warning"],
    }
    for name in ("Sweeper", "SpotInterruption"):
        dead_letters = functions[name]["Properties"]["DeadLetterQueue"]
        assert dead_letters == {
            "Type": "SQS",
            "TargetArn": {"Fn::GetAtt": ["AsyncEventsDLQ", "Arn"]},
        }


def test_sqs_event_sources_report_partial_failures_from_their_own_queues(template):
    functions = of_type(template, "AWS::Serverless::Function")
    expected = {"LightScheduler": "SourceEventsQueue", "ResultProcessor": "ResultEventsQueue"}
    for function, queue in expected.items():
        (event,) = functions[function]["Properties"]["Events"].values()
        assert event["Type"] == "SQS"
        assert event["Properties"]["Queue"] == {"Fn::GetAtt": [queue, "Arn"]}
        assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["SQS_PARTIAL_BATCH_RESPONSES"] == "true"


def test_every_function_has_its_own_role_from_its_policy_file(template):
    functions = of_type(template, "AWS::Serverless::Function")
    roles = {f["Properties"]["Role"]["Fn::GetAtt"][0] for f in functions.values()}
    assert len(roles) == len(functions) == 5
    assert "DefaultRole" not in template["Resources"]  # Chalice's catch-all role is gone
    for role in roles:
        (policy,) = template["Resources"][role]["Properties"]["Policies"]
        assert policy["PolicyDocument"]["Statement"]


def test_the_api_requires_iam_authorization(template):
    api = of_type(template, "AWS::Serverless::Api")["RestAPI"]["Properties"]
    paths = api["DefinitionBody"]["paths"]
    methods = [m for path in paths.values() for m in path.values()]
    routes = [m for route in app.app.routes.values() for m in route]  # every route of app.py
    assert len(methods) == len(routes) >= 7
    assert all(m.get("security") == [{"sigv4": []}] for m in methods), methods
    scheme = api["DefinitionBody"]["securityDefinitions"]["sigv4"]
    assert scheme["x-amazon-apigateway-authtype"] == "awsSigv4"
    assert api["MethodSettings"][0]["ThrottlingRateLimit"] > 0


def test_the_functions_find_every_resource_through_their_environment(template):
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env == {
        "MISSION_TABLE": {"Ref": "MissionTable"},
        "TRANSACTION_TABLE": {"Ref": "TransactionTable"},
        "INPUT_TABLE": {"Ref": "InputTable"},
        "IDEMPOTENCY_TABLE": {"Ref": "IdempotencyTable"},
        "SOURCE_BUCKET": {"Ref": "SourceBucket"},
        "RESULT_BUCKET": {"Ref": "ResultBucket"},
        "SOURCE_QUEUE": {"Fn::GetAtt": ["SourceEventsQueue", "QueueName"]},
        "TOPIC_ARN": {"Ref": "CompletionTopic"},
        "WORKER_LAUNCH_TEMPLATE": {"Ref": "WorkerLaunchTemplate"},
        "WORKER_SUBNETS": {"Ref": "WorkerSubnetIds"},
        "SQS_PARTIAL_BATCH_RESPONSES": "true",
    }


def test_queues_outlast_their_functions_and_the_planning_lease_fits_between(template):
    from chalicelib.scheduler import PLANNING_LEASE_SECONDS

    functions = of_type(template, "AWS::Serverless::Function")
    queues = of_type(template, "AWS::SQS::Queue")
    visibility = {}
    for name, function in functions.items():
        for event in function["Properties"].get("Events", {}).values():
            if event["Type"] == "SQS":
                queue = event["Properties"]["Queue"]["Fn::GetAtt"][0]
                visibility[name] = queues[queue]["Properties"]["VisibilityTimeout"]
                # Lambda's advice: six times the function's timeout.
                assert visibility[name] >= 6 * function["Properties"]["Timeout"], name
    scheduler_timeout = functions["LightScheduler"]["Properties"]["Timeout"]
    assert scheduler_timeout >= 300  # time to count the lines of a large input
    assert scheduler_timeout < PLANNING_LEASE_SECONDS < visibility["LightScheduler"]


def test_the_package_leaves_out_what_the_lambda_runtime_has_and_still_imports(packaged, tmp_path):
    """At most 10 MB, no boto3/botocore; unzipped beside only the runtime's libraries (as in
    /var/runtime), `import app` works, as Lambda's cold start does it."""
    archive = packaged.parent / "deployment.zip"
    assert archive.stat().st_size <= 10 * 1024 * 1024, archive.stat().st_size
    with zipfile.ZipFile(archive) as zipped:
        names = zipped.namelist()
        zipped.extractall(tmp_path / "task")
    tops = {name.split("/", 1)[0] for name in names}
    assert not [t for t in tops if provided_by_runtime(t + "/")], tops
    assert {"app.py", "chalicelib", "pynamodb", "aws_lambda_powertools", "pydantic"} <= tops

    runtime = tmp_path / "runtime"  # stands in for /var/runtime: boto3 and its dependencies
    runtime.mkdir()
    site = Path(botocore.__file__).parent.parent
    for entry in site.iterdir():
        if provided_by_runtime(entry.name + ("/" if entry.is_dir() else "")):
            (runtime / entry.name).symlink_to(entry)
    probe = (
        "import sys; sys.path[:0] = sys.argv[1:]; import app, chalicelib.store, botocore;"
        "assert botocore.__file__.startswith(sys.argv[2]), botocore.__file__; print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe, str(tmp_path / "task"), str(runtime)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def run_user_data(script: str, root: Path) -> dict[str, str]:
    """The launch template's user data run for real, with the repo's bootstrap (not starting
    the unit); returns the env file it wrote for the agent."""
    script = re.sub(r"\$\{[^}]+\}", "x", script)  # what CloudFormation would substitute
    script = script.replace("/opt/lighthpc/bin/lighthpc-bootstrap", f"bash {BOOTSTRAP} --no-start")
    script = script.replace("shutdown -h now", "exit 3")
    done = subprocess.run(
        ["bash", "-c", script],
        env={"PATH": "/usr/bin:/bin", "LIGHTHPC_ROOT": str(root), "LC_ALL": "C"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    lines = (root / "etc" / "lighthpc" / "worker.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_workers_get_the_stages_argv_policy_from_their_user_data(template, tmp_path):
    (lt,) = of_type(template, "AWS::EC2::LaunchTemplate").values()
    script = lt["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    env = run_user_data(script, tmp_path)
    assert env["ALLOW_INLINE_ARGV"] == "false" and env["ALLOWED_PROGRAMS"] == ""
    assert env["LIGHTHPC_STAGE"] == "x"


def test_a_stages_allowed_programs_reach_the_worker_as_its_settings_read_them(
    monkeypatch, tmp_path
):
    import local.package

    monkeypatch.setattr(
        local.package,
        "stage_environment",
        lambda stage: {
            "ALLOW_INLINE_ARGV": "False",
            "ALLOWED_PROGRAMS": "/usr/bin/blastn  /opt/x,y",
        },
    )
    required = "LIGHTHPC_STAGE AWS_REGION SOURCE_BUCKET RESULT_BUCKET MISSION_TABLE"
    args = "".join(f"  {k}=v \\\n" for k in (*required.split(), "TRANSACTION_TABLE", "TOPIC_ARN"))
    bootstrap = "/opt/lighthpc/bin/lighthpc-bootstrap"
    script = f"#!/bin/bash\n{bootstrap} \\\n{args}  || {{ echo failed >&2; shutdown -h now; }}\n"
    document = {
        "Resources": {
            "WorkerLaunchTemplate": {
                "Type": "AWS::EC2::LaunchTemplate",
                "Properties": {
                    "LaunchTemplateData": {"UserData": {"Fn::Base64": {"Fn::Sub": script}}}
                },
            }
        }
    }
    local.package.pass_argv_policy(document, "dev")
    data = document["Resources"]["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    env = run_user_data(data["UserData"]["Fn::Base64"]["Fn::Sub"], tmp_path)
    settings = Settings.from_env(env)
    assert settings.allowed_programs == ("/usr/bin/blastn", "/opt/x", "y")
    assert settings.allow_inline_argv is False
