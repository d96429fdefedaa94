"""The embedded AWS: moto started, lighthpc's stack provisioned in it, this process pointed at it.

One context manager for every local runtime: `lighthpc up` and the benchmarks run moto's server
(other processes, the workers, reach it over HTTP); the in-process cluster and the functional
tests run moto's in-process mock. On exit moto stops and the environment is as it was.

With an AWS-fidelity profile (local/fidelity.py: `fidelity=`, or `LIGHTHPC_FIDELITY=aws` in `env`
or the environment) the provisioned stack then answers as AWS would: latency, throttling,
conflicts, GSI lag, size limits, capacity shortfalls. It is installed after provisioning (the
stack is set up, not tested) and removed before moto stops.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import boto3

from chalicelib.context import reset_process_state
from local import fidelity as fidelity_profile
from local.fidelity import FIDELITY_ENV, Fidelity, FidelityOptions
from local.moto_patches import patch_dynamodb
from local.stack import Stack, provision

REGION = "us-east-1"
# Variables a developer's shell may hold that must never reach the embedded AWS's clients.
_FOREIGN = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL")


@dataclass(frozen=True)
class EmbeddedAws:
    stack: Stack
    endpoint: str | None  # None: moto's in-process mock (no server)
    fidelity: Fidelity | None = None  # the AWS-fidelity profile in force, with its ledger


@contextmanager
def embedded_aws(
    *,
    server: bool = True,
    port: int = 0,
    stage: str = "local",
    env: dict[str, str] | None = None,
    verbose: bool = False,
    fidelity: FidelityOptions | None = None,
) -> Iterator[EmbeddedAws]:
    """moto (a server on 127.0.0.1:`port`, or the in-process mock), the stack provisioned from
    the deployment template, and this process's environment (and lighthpc's cached settings,
    clients and store) pointed at it; `env` is set on top of the stack's variables.

    `fidelity` (or, when None, the spec in `env`'s or the environment's LIGHTHPC_FIDELITY)
    puts the AWS-fidelity profile in front of moto for as long as the stack runs."""
    if fidelity is None:
        spec = (env or {}).get(FIDELITY_ENV, os.environ.get(FIDELITY_ENV))
        fidelity = FidelityOptions.parse(spec)
    patch_dynamodb()  # moto runs in this process, server or mock: the patch covers it
    saved = dict(os.environ)
    for name in _FOREIGN:
        os.environ.pop(name, None)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": REGION,
            "POWERTOOLS_TRACE_DISABLED": "1",
        }
    )
    try:
        with _moto(server, port, verbose) as endpoint:
            if endpoint is not None:
                os.environ["AWS_ENDPOINT_URL"] = endpoint
            stack = provision(boto3.Session(), stage=stage, region=REGION)
            os.environ.update(stack.environment())
            os.environ.update(env or {})
            reset_process_state()
            with fidelity_profile.installed(fidelity) as profile:
                yield EmbeddedAws(stack=stack, endpoint=endpoint, fidelity=profile)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        reset_process_state()


@contextmanager
def _moto(server: bool, port: int, verbose: bool) -> Iterator[str | None]:
    if not server:
        from moto import mock_aws

        with mock_aws():
            yield None
        return
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=verbose)
    moto.start()
    try:
        host, bound = moto.get_host_and_port()
        yield f"http://{host}:{bound}"
    finally:
        moto.stop()
