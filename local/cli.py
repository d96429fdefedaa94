"""The `lighthpc` command line: run the local stack and drive missions like a user would.

    lighthpc up                       the whole system on this machine, until Ctrl-C
    lighthpc demo                     start it, run a checked 64-transaction mission, stop
    lighthpc demo --pipeline          the same, as two stages: match, then rank (kmer-top)
    lighthpc submit FILE --config C   POST the config (a mission's or a pipeline's), upload FILE
    lighthpc watch ID                 a live progress bar (m-...) or stage lines (p-...), the email
    lighthpc status [ID]              missions, or one mission
    lighthpc cancel ID                cancel a mission
    lighthpc verify ID                check a merged result against its receipt
    lighthpc dashboard                the dashboard page, for the local stack or --api URL

Everything but `up` and `demo` talks to a running `lighthpc up` through HTTP and S3, found through
`<home>/stack.json` (home: `--home`, `$LIGHTHPC_HOME` or `.lighthpc`), or, with `--api URL`, to a
deployed stage's API (its `EndpointURL`), signing every call with SigV4 from the default AWS
credentials; the input then goes to the deployed source bucket.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from local.chaos import CRASHABLE_HANDLERS, ChaosInvalid, ChaosOptions
from local.client import (
    DEFAULT_HOME,
    CliError,
    DeployedApi,
    Target,
    api,
    describe_verification,
    explain,
    find_email,
    post_once,
    require_stack,
    s3_client,
    verify_mission,
    watch,
    watch_pipeline,
)
from local.dashboard import DashboardServer
from local.fidelity import FidelityInvalid, FidelityOptions
from local.runtime import LocalRuntime

STOP_TIMEOUT_SECONDS = 40


def target(args: argparse.Namespace) -> Target:
    """The deployed API named by --api, or the local stack of --home."""
    if args.api:
        return DeployedApi.from_url(args.api, args.region)
    return require_stack(args.home)


# ---- commands ----------------------------------------------------------------------------


# The `up` flag of each ChaosOptions field, so a refused switch is named as the user typed it.
CHAOS_FLAGS = {
    "kill_fraction": "--kill-fraction",
    "spot_fraction": "--spot-fraction",
    "spot_notice_seconds": "--spot-notice-seconds",
    "duplicate": "--duplicate",
    "max_delay_seconds": "--max-delay",
    "crash_once": "--crash-once",
    "crash_on_batch": "--crash-batch",
}


def chaos_options(args: argparse.Namespace) -> ChaosOptions:
    """The chaos switches of `up`, checked before anything starts."""
    try:
        return ChaosOptions(
            kill_fraction=args.kill_fraction,
            spot_fraction=args.spot_fraction,
            spot_notice_seconds=args.spot_notice_seconds,
            duplicate=args.duplicate,
            max_delay_seconds=args.max_delay,
            crash_once=tuple(args.crash_once),
            crash_on_batch=args.crash_batch,
        )
    except ChaosInvalid as e:
        flags = " + ".join(CHAOS_FLAGS.get(o, o) for o in e.options)
        raise CliError(f"{flags}: {e.reason}") from e


def fidelity_options(spec: str | None) -> FidelityOptions | None:
    """The --fidelity profile (`off`, `aws` or `aws,name=value,...`), checked before anything
    starts."""
    try:
        return FidelityOptions.parse(spec)
    except FidelityInvalid as e:
        raise CliError(f"--fidelity {' + '.join(e.options)}: {e.reason}") from e


def cmd_up(args: argparse.Namespace) -> int:
    worker_env = {} if args.lease_seconds is None else {"LEASE_SECONDS": str(args.lease_seconds)}
    chaos = chaos_options(args)
    fidelity = fidelity_options(args.fidelity)
    runtime = LocalRuntime(
        home=args.home,
        aws_port=args.aws_port,
        api_port=args.api_port,
        max_workers=args.max_workers,
        verbose=args.verbose,
        sweep_seconds=args.sweep_seconds,
        worker_env=worker_env,
        chaos=chaos,
        fidelity=fidelity,
    )
    stop = threading.Event()
    # Explicit handlers: a process started in the background may inherit SIGINT as ignored,
    # and then Python would never raise KeyboardInterrupt.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    info = runtime.start()
    try:
        dashboard = DashboardServer(info, port=args.dashboard_port).start()
    except OSError as e:  # its port is taken (another `up`?): the stack itself still serves
        print(f"dashboard port {args.dashboard_port}: {e}; serving on a free port", flush=True)
        dashboard = DashboardServer(info, port=0).start()
    print("lighthpc is up (Ctrl-C to stop)\n" + info.describe(), flush=True)
    print(f"dashboard      {dashboard.url}/", flush=True)
    if runtime.fidelity is not None:
        print(f"AWS-fidelity profile: {runtime.fidelity.options.describe()}", flush=True)
    print(f"stack details: {args.home.resolve() / 'stack.json'}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    print("\nstopping...", flush=True)
    dashboard.stop()
    stopper = threading.Thread(target=runtime.stop, name="stop", daemon=True)
    stopper.start()
    stopper.join(timeout=STOP_TIMEOUT_SECONDS)
    if stopper.is_alive():
        print(
            f"not stopped after {STOP_TIMEOUT_SECONDS} s: exiting anyway",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)  # a thread that will not end must not keep the stack's ports forever
    print("stopped", flush=True)
    if runtime.fidelity is not None:
        print(f"AWS-fidelity profile injected: {runtime.fidelity.ledger.summary()}", flush=True)
    return 0


def default_input_key(info: Target, filename: str) -> str:
    """FILENAME in the caller's own folder of the source bucket (GET /me), in deployed stages
    the only inputs a caller may bind; inputs/FILENAME where any key will do."""
    status, me = api(info, "GET", "/me")
    if status != 200:
        raise CliError(explain(status, me))
    return f"{me.get('input_prefix') or 'inputs/'}{filename}"


def cmd_submit(args: argparse.Namespace) -> int:
    info = target(args)
    try:
        config = json.loads(Path(args.config).read_text())
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read config {args.config}: {e}") from e
    if not isinstance(config, dict):
        raise CliError(f"config {args.config} must be a JSON object")
    if args.file is not None and not Path(args.file).is_file():
        raise CliError(f"input file {args.file} not found")
    if "stages" in config:
        return _submit_pipeline(info, config, args.file)
    if args.key:
        config["input"] = args.key
    if "input" not in config:
        if args.file is None:
            raise CliError("give the input FILE, or an input in the config")
        config["input"] = default_input_key(info, Path(args.file).name)
    status, body = post_once(info, config)
    if status != 201:
        raise CliError(explain(status, body))
    upload = body["upload"]
    if upload is None:  # fed by another mission's result
        print(f"mission {body['mission_id']} submitted; it starts once its upstream SUCCEEDS")
    elif args.file is None:
        print(f"mission {body['mission_id']} submitted; upload its input to {upload['uri']}")
    else:
        s3_client(info).upload_file(str(args.file), upload["bucket"], upload["key"])
        print(f"mission {body['mission_id']} submitted; uploaded {args.file} to {upload['uri']}")
    print(f"follow it with: lighthpc watch {body['mission_id']}")
    return 0


def _submit_pipeline(info: Target, config: dict[str, Any], file: str | None) -> int:
    """POST /pipelines; FILE (if given) is the input of the first stage that awaits an upload."""
    status, body = post_once(info, config, path="/pipelines")
    if status != 201:
        raise CliError(explain(status, body))
    print(f"pipeline {body['pipeline_id']} submitted:")
    uploaded = file is None
    for stage in body["stages"]:
        upload, where = stage["upload"], "waits for the stage it reads"
        if upload is not None and not uploaded:
            s3_client(info).upload_file(str(file), upload["bucket"], upload["key"])
            uploaded, where = True, f"uploaded {file} to {upload['uri']}"
        elif upload is not None:
            where = f"upload its input to {upload['uri']}"
        print(f"  {stage['stage']}: mission {stage['mission_id']}, {where}")
    print(f"follow it with: lighthpc watch {body['pipeline_id']}")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    info = target(args)
    if args.mission_id.startswith("p-"):
        pipeline = watch_pipeline(info, args.mission_id, args.timeout)
        email = None if isinstance(info, DeployedApi) else find_email(info, args.mission_id)
        if email is not None:
            print(f"\n--- {email} ---\n{email.read_text()}")
        return 0 if pipeline["status"] == "SUCCEEDED" else 1
    mission = watch(info, args.mission_id, args.timeout)
    # A deployed stage's email goes to its subscribers; the local stack keeps it in the outbox.
    email = None if isinstance(info, DeployedApi) else find_email(info, args.mission_id)
    if email is not None:
        print(f"\n--- {email} ---\n{email.read_text()}")
    return 0 if mission["status"] == "SUCCEEDED" else 1


def cmd_status(args: argparse.Namespace) -> int:
    info = target(args)
    if args.mission_id:
        status, body = api(info, "GET", f"/missions/{args.mission_id}")
        if status != 200:
            raise CliError(explain(status, body))
        print(json.dumps(body, indent=2))
        return 0
    status, body = api(info, "GET", "/missions")
    if status != 200:
        raise CliError(explain(status, body))
    print(f"{'mission':<28} {'status':<15} {'created':<26} name")
    for m in body["missions"]:
        print(f"{m['mission_id']:<28} {m['status']:<15} {m['created_at']:<26} {m['name']}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    info = target(args)
    status, body = api(info, "DELETE", f"/missions/{args.mission_id}")
    if status != 200:
        raise CliError(explain(status, body))
    print(
        f"mission {args.mission_id} {body['status']}; "
        f"{body['instances_terminated']} instance(s) terminated"
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 only if the result (and with --parts every part object) matches the manifest."""
    info = target(args)
    verification = verify_mission(info, args.mission_id, args.parts, args.manifest_sha256)
    print(describe_verification(verification))
    return 1 if verification.problems else 0


def cmd_chaos(args: argparse.Namespace) -> int:
    from local.chaos_suite import CHAOS_FIDELITY, SuiteOptions, run_suite, table

    # The suite's own profile unless --fidelity names one (`off`: moto as it is).
    fidelity = CHAOS_FIDELITY if args.fidelity is None else fidelity_options(args.fidelity)
    row = run_suite(
        SuiteOptions(
            missions=args.missions,
            transactions=args.transactions,
            fidelity=fidelity,
            timeout_seconds=args.timeout,
        )
    )
    print(table(row))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(row, indent=2) + "\n")
    print("ok: nothing lost, one email per mission, results equal" if row["ok"] else "FAILED")
    return 0 if row["ok"] else 1


def cmd_dashboard(args: argparse.Namespace) -> int:
    """The dashboard page on this machine, for the local stack or (--api) a deployed stage: its
    calls are forwarded there, signed with the user's own credentials for a deployed one."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    where = target(args)
    try:
        server = DashboardServer(where, port=args.port).start()
    except OSError as e:
        raise CliError(f"cannot serve the dashboard on port {args.port}: {e}") from e
    print(f"dashboard      {server.url}/   (for {where.api_url}; Ctrl-C to stop)", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from local.demo import run_demo, run_demo_in_process, run_pipeline_demo

    if args.in_process:
        if args.pipeline:
            raise CliError("--pipeline runs on a local stack: drop --in-process")
        return run_demo_in_process(args.transactions, args.references, args.workers)
    if args.pipeline:
        return run_pipeline_demo(
            None, args.transactions, args.references, args.workers, args.api_port
        )
    # A fresh folder of its own, so a running `lighthpc up` is left alone.
    return run_demo(None, args.transactions, args.references, args.workers, args.api_port)


# ---- entry point -------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    default_home = Path(os.environ.get("LIGHTHPC_HOME", str(DEFAULT_HOME)))
    p = argparse.ArgumentParser(
        prog="lighthpc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--home",
        type=Path,
        default=default_home,
        help=f"local stack folder (default: $LIGHTHPC_HOME or {DEFAULT_HOME})",
    )
    p.add_argument(
        "--api",
        default=os.environ.get("LIGHTHPC_API"),
        help="a deployed stage's EndpointURL (default: $LIGHTHPC_API); calls are SigV4-signed",
    )
    p.add_argument("--region", default=None, help="the deployed API's region (default: its URL's)")
    commands = p.add_subparsers(dest="command", required=True)
    _add_up(commands)
    _add_runs(commands)
    _add_mission_commands(commands)
    return p


def _add_up(commands: Any) -> None:
    up = commands.add_parser("up", help="run the whole system locally until Ctrl-C")
    up.add_argument("--aws-port", type=int, default=4566, help="embedded AWS port (0: any)")
    up.add_argument("--api-port", type=int, default=8000, help="REST API port (0: any)")
    up.add_argument("--max-workers", type=int, default=8, help="concurrent local workers")
    up.add_argument("--dashboard-port", type=int, default=8080, help="dashboard page port (0: any)")
    up.add_argument("--verbose", action="store_true", help="log every request")
    up.add_argument(
        "--sweep-seconds",
        type=float,
        default=60.0,
        help="how often the sweeper schedule fires (AWS: every minute)",
    )
    up.add_argument(
        "--lease-seconds",
        type=int,
        default=None,
        help="workers' lease without a heartbeat (default 90)",
    )
    up.add_argument(
        "--fidelity",
        default="off",
        metavar="PROFILE",
        help="make the embedded AWS answer as AWS would: `aws` (latency, hot-item throttling,"
        " TransactionConflict, GSI lag, 38-digit numbers, 400 KB items, SNS bytes, EC2 Fleet"
        " shortfalls), `aws,name=value,...` to change a figure (e.g. gsi_lag_seconds=2,"
        " latency.s3=0.05:0.2), or `off` (default; $LIGHTHPC_FIDELITY otherwise)",
    )
    chaos = up.add_argument_group("chaos switches")
    chaos.add_argument(
        "--kill-fraction", type=float, default=0.0, help="fraction of workers lost without notice"
    )
    chaos.add_argument(
        "--spot-fraction",
        type=float,
        default=0.0,
        help="fraction of workers sent a Spot interruption notice",
    )
    chaos.add_argument(
        "--spot-notice-seconds",
        type=float,
        default=120.0,
        help="time from a Spot notice to the instance's reclaim",
    )
    chaos.add_argument("--duplicate", type=int, default=1, help="deliver every event N times")
    chaos.add_argument(
        "--max-delay",
        type=float,
        default=0.0,
        help="delay each event batch up to this many seconds, and reorder it",
    )
    chaos.add_argument(
        "--crash-once",
        action="append",
        default=[],
        choices=sorted(CRASHABLE_HANDLERS),
        metavar="HANDLER",
        help="make this handler crash once mid-batch, on mission traffic (repeatable; one of "
        + ", ".join(sorted(CRASHABLE_HANDLERS))
        + ")",
    )
    chaos.add_argument(
        "--crash-batch",
        type=int,
        default=1,
        metavar="N",
        help="crash on the Nth batch that carries mission traffic to the handler (default 1)",
    )
    up.set_defaults(func=cmd_up)


def _add_runs(commands: Any) -> None:
    """The commands that start a stack of their own, run missions on it and stop it."""
    suite = commands.add_parser("chaos", help="run missions under chaos and print what survived")
    suite.add_argument("--missions", type=int, default=4)
    suite.add_argument("--transactions", type=int, default=24)
    suite.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for every mission's email"
    )
    suite.add_argument("--json", type=Path, default=None, help="also write the row as JSON here")
    suite.add_argument(
        "--fidelity",
        default=None,
        metavar="PROFILE",
        help="the AWS-fidelity profile (default: the suite's own, with conflicts, throttling"
        " and GSI lag; `off`, `aws` or `aws,name=value,...` as for `up`)",
    )
    suite.set_defaults(func=cmd_chaos)

    demo = commands.add_parser("demo", help="run one checked mission on a fresh local stack")
    demo.add_argument("--transactions", type=int, default=64)
    demo.add_argument("--references", type=int, default=640)
    demo.add_argument("--workers", type=int, default=4)
    demo.add_argument("--api-port", type=int, default=0)
    demo.add_argument(
        "--in-process",
        action="store_true",
        help="run everything in this process on moto's mock instead",
    )
    demo.add_argument(
        "--pipeline",
        action="store_true",
        help="run two stages instead: the k-mer match, then kmer-top over its result",
    )
    demo.set_defaults(func=cmd_demo)


def _add_mission_commands(commands: Any) -> None:
    """The commands that talk to a running stack (or, with --api, a deployed one)."""
    submit = commands.add_parser(
        "submit", help="POST a config (a mission's or a pipeline's) and upload its input file"
    )
    submit.add_argument("file", nargs="?", help="the input (none for one fed by a mission)")
    submit.add_argument(
        "--config", required=True, help="mission or pipeline config (JSON file; with 'stages')"
    )
    submit.add_argument("--key", help="input key in the source bucket (default: the config's)")
    submit.set_defaults(func=cmd_submit)

    watch_p = commands.add_parser("watch", help="follow a mission or pipeline, then its email")
    watch_p.add_argument("mission_id", help="m-... (a mission) or p-... (a pipeline)")
    watch_p.add_argument("--timeout", type=float, default=3600)
    watch_p.set_defaults(func=cmd_watch)

    status = commands.add_parser("status", help="list missions, or show one")
    status.add_argument("mission_id", nargs="?")
    status.set_defaults(func=cmd_status)

    cancel = commands.add_parser("cancel", help="cancel a mission")
    cancel.add_argument("mission_id")
    cancel.set_defaults(func=cmd_cancel)

    verify = commands.add_parser(
        "verify", help="check a merged result against its manifest (the receipt)"
    )
    verify.add_argument("mission_id")
    verify.add_argument(
        "--parts",
        action="store_true",
        help="also check every part object still under parts/ against the manifest",
    )
    verify.add_argument(
        "--manifest-sha256",
        metavar="HEX",
        default=None,
        help="the manifest's sha256 as the email gives it: the manifest must have it",
    )
    verify.set_defaults(func=cmd_verify)

    dashboard = commands.add_parser(
        "dashboard", help="serve the dashboard page for the local stack, or for --api URL"
    )
    dashboard.add_argument("--port", type=int, default=8080, help="port to serve on (0: any)")
    dashboard.set_defaults(func=cmd_dashboard)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as e:
        print(f"lighthpc: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
