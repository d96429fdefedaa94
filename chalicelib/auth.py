"""Who is calling the REST API, and whether this stage lets them in.

Deployed stages put every route behind API Gateway's IAM authorization (SigV4), so a request
only reaches Lambda once API Gateway has verified its signature, and API Gateway then names the
caller in `requestContext.identity`. This module is the second line: outside the `local` stage a
request whose identity names no IAM principal is refused here too, so a route deployed without its
authorizer (or a test, or a misconfigured proxy) fails closed instead of open.

Plain functions over the request context dict, so unit tests need neither Chalice nor AWS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chalicelib.errors import ApiError

LOCAL_STAGE = "local"
LOCAL_CALLER = "local"  # `submitted_by` of missions submitted without an IAM identity, locally
# The scheme a client must use, sent in WWW-Authenticate with the 401 (RFC 9110 section 11.6.1).
SIGV4_SCHEME = "AWS4-HMAC-SHA256"


class Unauthenticated(ApiError):
    """The request carries no authenticated IAM caller, and this stage requires one.

    A 401, not a 403: the request carries no credentials at all (RFC 9110 section 15.5.2). A 401
    from the app, unlike API Gateway's own 403s, also tells the operator that a request reached
    Lambda without passing the route's IAM authorizer.
    """

    STATUS_CODE = 401

    def __init__(self, stage: str) -> None:
        super().__init__(
            f"stage {stage!r} accepts only requests signed with AWS Signature Version 4 by an"
            " IAM principal allowed to call execute-api:Invoke on this API"
        )
        self.stage = stage

    def body(self) -> dict[str, Any]:
        return {"error": "authentication required", "reason": str(self), "stage": self.stage}

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": SIGV4_SCHEME}


def iam_principal(request_context: Mapping[str, Any] | None) -> str | None:
    """The IAM principal API Gateway authenticated for this request, or None.

    With AWS_IAM authorization API Gateway sets `identity.userArn` (the effective user or assumed
    role ARN), `identity.caller` (the principal id that signed) and `identity.accountId`. Without
    it they are null, and a local gateway sets only `sourceIp`. The ARN is preferred; the
    account and caller id name the principal when the ARN is missing.
    """
    identity = (request_context or {}).get("identity") or {}
    if not isinstance(identity, Mapping):
        return None
    user_arn = _text(identity.get("userArn"))
    if user_arn:
        return user_arn
    caller, account = _text(identity.get("caller")), _text(identity.get("accountId"))
    if caller and account:
        return f"{account}:{caller}"
    return None


def authenticate(request_context: Mapping[str, Any] | None, stage: str) -> str:
    """The caller to record as `submitted_by`; raises Unauthenticated outside the local stage.

    The local stage (the embedded runtime on 127.0.0.1) needs no identity; it still records one
    when the request has it.
    """
    principal = iam_principal(request_context)
    if principal is not None:
        return principal
    if stage == LOCAL_STAGE:
        return LOCAL_CALLER
    raise Unauthenticated(stage)


def _text(value: Any) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None
