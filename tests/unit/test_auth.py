"""Who may call the API in which stage: the pure rules of chalicelib.auth."""

from __future__ import annotations

import pytest

from chalicelib.auth import (
    LOCAL_CALLER,
    Unauthenticated,
    authenticate,
    iam_principal,
)

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
    assert len(methods) == 5, methods
    assert {key: security for key, security in methods.items() if security != [{"sigv4": []}]} == {}
