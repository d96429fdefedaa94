"""`lighthpc up`: the whole system on one machine, with the code that runs in Lambda and on EC2.

- moto's server on 127.0.0.1 plays S3, DynamoDB, EC2, SNS, SQS (and CloudFormation, which creates
  the resources from `infra/resources.yaml`); every client finds it through `AWS_ENDPOINT_URL`;
- Chalice's local server serves the REST API of `app.py`;
- the event pump delivers queued events to the handlers `app.py` registers;
- the local fleet turns launched EC2 instances into worker agent processes;
- the outbox turns SNS messages into .eml files.

With `fidelity` (local/fidelity.py) the embedded AWS answers as AWS would (latency, throttling,
conflicts, GSI lag, limits, capacity shortfalls); `runtime.fidelity.ledger` counts what it did.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import boto3

from chalicelib.observability import logger
from local.chaos import Chaos, ChaosOptions
from local.client import DEFAULT_HOME, INFO_FILE, RuntimeInfo
from local.embedded import embedded_aws
from local.fidelity import Fidelity, FidelityOptions
from local.fleet import LocalFleet
from local.outbox import Outbox
from local.pump import EventBus, PumpThread, schedules, sqs_pollers
from local.stack import Stack

APP_DIR = Path(__file__).resolve().parent.parent
LAMBDA_SQS_CONCURRENCY = 5


def quiet_request_logs() -> None:
    """moto's server and Chalice's local server log every request; the console is for missions."""
    import chalice.local

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    chalice.local.ChaliceRequestHandler.log_message = lambda *args, **kwargs: None  # type: ignore[method-assign]


class LocalRuntime:
    def __init__(
        self,
        home: Path = DEFAULT_HOME,
        aws_port: int = 0,
        api_port: int = 8000,
        max_workers: int = 8,
        stage: str = "local",
        echo: Any = print,
        verbose: bool = False,
        sweep_seconds: float = 60.0,
        worker_env: dict[str, str] | None = None,
        chaos: ChaosOptions | None = None,
        fidelity: FidelityOptions | None = None,
    ) -> None:
        self._verbose = verbose
        self._sweep_seconds = sweep_seconds
        self._worker_env = worker_env or {}
        self.chaos = Chaos(chaos) if chaos is not None and chaos.active else None
        self._fidelity_options = fidelity  # None: as $LIGHTHPC_FIDELITY says (off if unset)
        self.fidelity: Fidelity | None = None  # the profile in force once started (and after)
        self.home = home.resolve()
        self._aws_port = aws_port
        self._api_port = api_port
        self._max_workers = max_workers
        self._stage = stage
        self._echo = echo
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._resources = ExitStack()
        self._workers_dir = self.home / "workers"
        self.info: RuntimeInfo | None = None
        self.fleet: LocalFleet | None = None
        self.pollers: list[Any] = []
        self.schedules: list[Any] = []
        self.events: EventBus | None = None
        self._api: Any = None

    def start(self) -> RuntimeInfo:
        self.home.mkdir(parents=True, exist_ok=True)
        if not self._verbose:
            quiet_request_logs()
            logger.setLevel("WARNING")  # the handlers' INFO lines, as CloudWatch would hold them
        # The handlers share the workers' lease settings; EMF metrics would drown the console.
        env = {"POWERTOOLS_METRICS_DISABLED": "true", **self._worker_env}
        try:
            embedded = self._resources.enter_context(
                embedded_aws(
                    port=self._aws_port,
                    stage=self._stage,
                    env=env,
                    verbose=self._verbose,
                    fidelity=self._fidelity_options,
                )
            )
            self.fidelity = embedded.fidelity
            api_url = self._start_api()
            outbox = self._start_pump(embedded.stack)
            self._start_fleet()
        except BaseException:
            self.stop()
            raise
        stack = embedded.stack
        self.info = RuntimeInfo(
            stage=self._stage,
            region=stack.region,
            aws_endpoint=embedded.endpoint or "",
            api_url=api_url,
            source_bucket=stack.outputs["SourceBucketName"],
            result_bucket=stack.outputs["ResultBucketName"],
            topic_arn=stack.outputs["TopicArn"],
            outbox=str(outbox.folder),
            workers=str(self._workers_dir),
            pid=os.getpid(),
        )
        (self.home / INFO_FILE).write_text(json.dumps(asdict(self.info), indent=2) + "\n")
        return self.info

    def _start_pump(self, stack: Stack) -> Outbox:
        """A thread per event source app.py registers, and one for the outbox."""
        import app as app_module  # the same module Lambda imports

        session = boto3.Session()
        sqs = session.client("sqs")
        self.pollers = sqs_pollers(app_module, sqs, stack.region, self.chaos)
        self.schedules = schedules(app_module, self._sweep_seconds, stack.region)
        self.events = EventBus(app_module, stack.region, self.chaos)
        outbox = Outbox(
            session.client("sns"),
            sqs,
            stack.outputs["TopicArn"],
            f"lighthpc-{self._stage}-outbox",
            folder=self.home / "outbox",
            echo=self._echo,
        )
        # Lambda works through an SQS queue five batches at a time, in five concurrent
        # invocations (its least while messages wait): each queue gets as many pollers here.
        pollers = [p for p in self.pollers for _ in range(LAMBDA_SQS_CONCURRENCY)]
        for source in [*pollers, *self.schedules, outbox]:
            thread = PumpThread(source, self._stop)
            thread.start()
            self._threads.append(thread)
        return outbox

    def _start_fleet(self) -> None:
        self.fleet = LocalFleet(
            boto3.Session().client("ec2"),
            self._stage,
            self._workers_dir,
            self._max_workers,
            env=dict(os.environ),
            chaos=self.chaos,
            events=self.events,
        ).start()

    def _start_api(self) -> str:
        from chalice.cli.factory import CLIFactory
        from chalice.local import create_local_server

        import app as app_module

        config = CLIFactory(project_dir=str(APP_DIR)).create_config_obj(
            chalice_stage_name=self._stage
        )
        # Chalice's local gateway admits IAMAuthorizer routes and warns on every request; app.py
        # checks the caller itself (chalicelib.auth), so the warning would only spam the output.
        warnings.filterwarnings(
            "ignore",
            message="IAMAuthorizer is not a supported in local mode",
            module=r"chalice\.local",
        )
        self._api = create_local_server(app_module.app, config, "127.0.0.1", self._api_port)
        # Its own serve_forever first prints the configured port (0 for "any"): the URL below
        # is the one that counts.
        thread = threading.Thread(target=self._api.server.serve_forever, name="api", daemon=True)
        thread.start()
        host, port = self._api.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._stop.set()
        if self.fleet is not None:
            self.fleet.stop()
            self.fleet = None
        for thread in self._threads:
            thread.join(timeout=5)
        if self._api is not None:
            self._api.shutdown()
            self._api = None
        (self.home / INFO_FILE).unlink(missing_ok=True)
        self._resources.close()  # moto stops; the environment is restored

    def __enter__(self) -> LocalRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
