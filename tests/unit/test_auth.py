"""Who may call the API in which stage: the pure rules of chalicelib.auth."""

from __future__ import annotations

import pytest

from chalicelib.auth import (
    LOCAL_CALLER,
    Unauthenticated,
    authenticate,
    caller_of,
    iam_principal,
    input_prefix,
)
from chalicelib.settings import Settings

USER_ARN = "arn:aws:iam::111122223333:user/alice"
ROLE_ARN = "arn:aws:sts::111122223333:assumed-role/lighthpc-submitter/ci-run-42"

# What API Gateway puts in requestContext.identity for a REST API without IAM authorization
# (every principal field null), and what Chalice's local gateway puts there.
ANONYMOUS = {
    "cognitoIdentityPoolId": None,
    "accountId": None,
    "cognitoIdentityId": None,
    "caller": None,
    "accessKey": None,
    "sourceIp": "203.0.113.7",
    "principalOrgId": None,
    "userArn": None,
    "userAgent": "curl/8.5.0",
    "user": None,
}
CHALICE_LOCAL = {"sourceIp": "127.0.0.1"}
# After SigV4 verification of an assumed-role caller.
SIGNED = ANONYMOUS | {
    "accountId": "111122223333",
    "caller": "AROAEXAMPLEID:ci-run-42",
    "user": "AROAEXAMPLEID:ci-run-42",
    "accessKey": "ASIAEXAMPLEKEY",
    "userArn": ROLE_ARN,
}


def context(identity: object) -> dict[str, object]:
    return {"httpMethod": "POST", "resourcePath": "/missions", "identity": identity}


@pytest.mark.parametrize(
    "request_context",
    [context(CHALICE_LOCAL), context(ANONYMOUS), context({}), context(None), {}, None],
    ids=["chalice-local", "anonymous", "empty identity", "null identity", "no identity", "none"],
)
def test_local_stage_admits_a_request_without_identity(request_context):
    assert authenticate(request_context, "local") == LOCAL_CALLER == "local"


@pytest.mark.parametrize("stage", ["dev", "prod", "anything-but-local"])
@pytest.mark.parametrize(
    "identity",
    [
        CHALICE_LOCAL,
        ANONYMOUS,
        {},
        None,
        "not-a-mapping",
        ANONYMOUS | {"userArn": ""},
        ANONYMOUS | {"userArn": "   "},
        ANONYMOUS | {"userArn": 42},
        ANONYMOUS | {"caller": "AIDAEXAMPLE"},  # a caller id without its account names nobody
        ANONYMOUS | {"accountId": "111122223333"},
    ],
    ids=[
        "chalice-local",
        "anonymous",
        "empty",
        "null",
        "not a mapping",
        "blank arn",
        "whitespace arn",
        "arn not a string",
        "caller only",
        "account only",
    ],
)
def test_other_stages_refuse_a_request_without_an_iam_principal(identity, stage):
    with pytest.raises(Unauthenticated) as raised:
        authenticate(context(identity), stage)
    assert raised.value.stage == stage
    assert "Signature Version 4" in str(raised.value) and stage in str(raised.value)


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_other_stages_admit_a_signed_request_and_name_its_arn(stage):
    assert authenticate(context(SIGNED), stage) == ROLE_ARN
    user = ANONYMOUS | {"userArn": USER_ARN, "caller": "AIDAEXAMPLE", "accountId": "111122223333"}
    assert authenticate(context(user), stage) == USER_ARN


def test_submitted_by_prefers_the_arn_then_account_and_caller_then_local():
    assert iam_principal(context(SIGNED)) == ROLE_ARN
    no_arn = SIGNED | {"userArn": None}
    assert iam_principal(context(no_arn)) == "111122223333:AROAEXAMPLEID:ci-run-42"
    assert authenticate(context(no_arn), "dev") == "111122223333:AROAEXAMPLEID:ci-run-42"
    assert iam_principal(context(ANONYMOUS)) is None
    # Locally an identity is not needed, but one that is there is still recorded.
    assert authenticate(context(SIGNED), "local") == ROLE_ARN
    assert authenticate(context(CHALICE_LOCAL), "local") == "local"


def test_every_route_is_behind_iam_authorization():
    """API Gateway enforces SigV4 only on the methods the deployed API definition marks so."""
    from chalice.deploy.swagger import SwaggerGenerator

    import app

    swagger = SwaggerGenerator(
        region="us-east-1",
        deployed_resources={"api_handler_arn": "arn:aws:lambda:us-east-1:111122223333:function:f"},
    ).generate_swagger(app.app)
    assert swagger["securityDefinitions"]["sigv4"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    methods = {
        (method.upper(), path): spec.get("security")
        for path, by_method in swagger["paths"].items()
        for method, spec in by_method.items()
    }
    assert len(methods) == sum(len(m) for m in app.app.routes.values()) >= 7, methods
    assert {key: security for key, security in methods.items() if security != [{"sigv4": []}]} == {}


# ---- tenancy: what an authenticated caller may reach -------------------------------------

OPERATOR_ROLE = "arn:aws:iam::111122223333:role/lighthpc-dev-operator"


@pytest.mark.parametrize(
    ("principal", "operator"),
    [
        ("arn:aws:sts::111122223333:assumed-role/lighthpc-dev-operator/carol", True),
        (OPERATOR_ROLE, True),
        ("arn:aws:sts::444455556666:assumed-role/lighthpc-dev-operator/x", True),  # any account
        ("arn:aws:sts::111122223333:assumed-role/lighthpc-dev-operator-not/carol", False),
        ("arn:aws:sts::111122223333:assumed-role/lighthpc-prod-operator/carol", False),
        ("arn:aws:iam::111122223333:user/lighthpc-dev-operator", False),
        (ROLE_ARN, False),
        ("111122223333:AROAEXAMPLE:carol", False),
    ],
)
def test_the_default_operator_is_every_session_of_the_stage_operator_role(principal, operator):
    settings = Settings.from_env({"LIGHTHPC_STAGE": "dev"})
    assert settings.operators == ("arn:aws:iam::*:role/lighthpc-dev-operator",)
    assert caller_of(principal, "dev", settings.operators).operator is operator


def test_operators_are_configurable_and_local_has_none_but_its_own_user():
    settings = Settings.from_env({"LIGHTHPC_STAGE": "prod", "OPERATORS": f"{USER_ARN}, {ROLE_ARN}"})
    assert settings.operators == (USER_ARN, ROLE_ARN)
    assert caller_of(USER_ARN, "prod", settings.operators).operator
    assert not caller_of(OPERATOR_ROLE, "prod", settings.operators).operator
    assert Settings.from_env({}).operators == ()
    assert caller_of(LOCAL_CALLER, "local", ()).operator
    assert not caller_of(LOCAL_CALLER, "dev", ()).operator  # "local" is special only locally
    assert not caller_of(USER_ARN, "local", ()).operator


def test_each_principal_has_its_own_input_folder_outside_the_local_stage():
    alice = caller_of(USER_ARN, "dev", ())
    session = caller_of(ROLE_ARN, "dev", ())
    assert alice.input_prefix == "inputs/111122223333/user/alice/"
    assert session.input_prefix == "inputs/111122223333/assumed-role/lighthpc-submitter/ci-run-42/"
    assert input_prefix("111122223333:AIDAEXAMPLE") == "inputs/111122223333/AIDAEXAMPLE/"
    assert alice.may_bind("inputs/111122223333/user/alice/run/1.fa")
    assert not alice.may_bind("inputs/111122223333/user/alice2/1.fa")  # a folder, not a prefix
    assert not alice.may_bind(session.input_prefix + "x.fa")
    assert not alice.may_bind("samples/x.fa")
    assert caller_of(USER_ARN, "local", ()).may_bind("samples/x.fa")  # one user: any key
    operator = caller_of(OPERATOR_ROLE, "dev", ("arn:aws:iam::*:role/lighthpc-dev-operator",))
    assert operator.may_bind("samples/x.fa") and operator.owns(None) and operator.owns(USER_ARN)
    assert alice.owns(USER_ARN) and not alice.owns(ROLE_ARN) and not alice.owns(None)
