"""Who is calling the REST API, and whether this stage lets them in.

Deployed stages put every route behind API Gateway's IAM authorization (SigV4), so a request
only reaches Lambda once API Gateway has verified its signature, and API Gateway then names the
caller in `requestContext.identity`. This module is the second line: outside the `local` stage a
request whose identity names no IAM principal is refused here too, so a route deployed without its
authorizer (or a test, or a misconfigured proxy) fails closed instead of open.

Then `Caller` says what the authenticated principal may see: its own missions (the tenancy rule:
a mission belongs to the principal that submitted it), or every mission for an operator, and,
in deployed stages, only inputs under its own prefix of the source bucket.

Plain functions over the request context dict, so unit tests need neither Chalice nor AWS.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from chalicelib.errors import ApiError

LOCAL_STAGE = "local"
LOCAL_CALLER = "local"  # `submitted_by` of missions submitted without an IAM identity, locally
# The scheme a client must use, sent in WWW-Authenticate with the 401 (RFC 9110 section 11.6.1).
SIGV4_SCHEME = "AWS4-HMAC-SHA256"
INPUTS_ROOT = "inputs/"  # per-caller input prefixes live under it: inputs/<account>/<name>/
# arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION: the role an assumed-role session acts as.
_ASSUMED_ROLE = re.compile(
    r"^arn:(?P<partition>[\w-]+):sts::(?P<account>\d+):assumed-role/(?P<role>[^/]+)/"
)


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


@dataclass(frozen=True)
class Caller:
    """An authenticated principal and what it may reach.

    `principal` owns the missions it submits. An `operator` sees and cancels every mission and
    may bind any input. `input_prefix`, when set, is the only part of the source bucket whose
    objects this caller may bind as a mission's input (None: any key, as in the local stage).
    """

    principal: str
    operator: bool = False
    input_prefix: str | None = None

    def owns(self, submitted_by: str | None) -> bool:
        return self.operator or submitted_by == self.principal

    def may_bind(self, input_key: str) -> bool:
        return self.operator or self.input_prefix is None or input_key.startswith(self.input_prefix)


def caller_of(principal: str, stage: str, operators: Iterable[str]) -> Caller:
    """What `principal` may reach in `stage`, `operators` being the stage's operator patterns.

    The local stage's unsigned caller is its machine's one user, and operates it: it sees every
    mission, older ones stored without a submitter included.
    """
    local_user = stage == LOCAL_STAGE and principal == LOCAL_CALLER
    return Caller(
        principal=principal,
        operator=local_user or is_operator(principal, operators),
        input_prefix=None if stage == LOCAL_STAGE else input_prefix(principal),
    )


def is_operator(principal: str, operators: Iterable[str]) -> bool:
    """Whether the principal matches an operator pattern (fnmatch globs over ARNs).

    An assumed-role session also matches as its role's ARN (arn:aws:iam::ACCOUNT:role/NAME), so
    "arn:aws:iam::111122223333:role/lighthpc-operator" admits every session of that role.
    """
    names = [principal]
    role = _ASSUMED_ROLE.match(principal)
    if role:
        names.append(f"arn:{role['partition']}:iam::{role['account']}:role/{role['role']}")
    return any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in operators)


def input_prefix(principal: str) -> str:
    """The caller's own folder in the source bucket: inputs/ACCOUNT/RESOURCE/.

    From the ARN's account and resource (user/NAME, assumed-role/ROLE/SESSION, role/NAME), so it
    is stable for a principal and different between two principals; "ACCOUNT:CALLER" without an
    ARN gives inputs/ACCOUNT/CALLER/. Characters S3 treats specially never occur in IAM names.
    """
    parts = principal.split(":", 5)
    if len(parts) == 6 and parts[0] == "arn":
        account, resource = parts[4], parts[5]
    else:
        account, _, resource = principal.partition(":")
    return f"{INPUTS_ROOT}{account or 'unknown'}/{resource.strip('/')}/"
