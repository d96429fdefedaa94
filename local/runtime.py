"""`lighthpc up`: the whole system on one machine, with the code that runs in Lambda and on EC2.

- moto's server on 127.0.0.1 plays S3, DynamoDB, EC2, SNS, SQS (and CloudFormation, which creates
  the resources from `infra/resources.yaml`); every client finds it through `AWS_ENDPOINT_URL`;
- Chalice's local server serves the REST API of `app.py`;
- the event pump delivers queued events to the handlers `app.py` registers;
- the local fleet turns launched EC2 instances into worker agent processes;
- the outbox turns SNS messages into .eml files.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from chalicelib.context import reset_process_state
from chalicelib.observability import logger
from local.chaos import Chaos, ChaosOptions
from local.fleet import LocalFleet
from local.moto_patches import make_dynamodb_writes_atomic
from local.pump import EventBus, Outbox, PumpThread, schedules, sqs_pollers
from local.stack import provision

APP_DIR = Path(__file__).resolve().parent.parent
DEFAULT_HOME = Path(".lighthpc")
INFO_FILE = "stack.json"


@dataclass(frozen=True)
class RuntimeInfo:
    stage: str
    region: str
    aws_endpoint: str
    api_url: str
    source_bucket: str
    result_bucket: str
    topic_arn: str
    outbox: str
    workers: str
    pid: int

    def describe(self) -> str:
        return "\n".join(
            [
                f"AWS endpoint   {self.aws_endpoint}   (region {self.region}, any credentials)",
                f"API            {self.api_url}",
                f"source bucket  s3://{self.source_bucket}",
                f"result bucket  s3://{self.result_bucket}",
                f"outbox         {self.outbox}",
                f"worker logs    {self.workers}",
            ]
        )


def quiet_request_logs() -> None:
    """moto's server and Chalice's local server log every request; the console is for missions."""
    import chalice.local

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    chalice.local.ChaliceRequestHandler.log_message = lambda *args, **kwargs: None  # type: ignore[method-assign]


def read_info(home: Path) -> RuntimeInfo | None:
    path = home / INFO_FILE
    if not path.exists():
        return None
    return RuntimeInfo(**json.loads(path.read_text()))


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
    ) -> None:
        self._verbose = verbose
        self._sweep_seconds = sweep_seconds
        self._worker_env = worker_env or {}
        self.chaos = Chaos(chaos) if chaos is not None and chaos.active else None
        self.home = home.resolve()
        self._aws_port = aws_port
        self._api_port = api_port
        self._max_workers = max_workers
        self._stage = stage
        self._echo = echo
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._saved_env: dict[str, str] | None = None
        self.info: RuntimeInfo | None = None
        self.fleet: LocalFleet | None = None
        self.pollers: list[Any] = []
        self.schedules: list[Any] = []
        self.events: EventBus | None = None
        self._moto: ThreadedMotoServer | None = None
        self._api: Any = None

    def start(self) -> RuntimeInfo:
        self.home.mkdir(parents=True, exist_ok=True)
        if not self._verbose:
            quiet_request_logs()
            logger.setLevel("WARNING")  # the handlers' INFO lines, as CloudWatch would hold them
        make_dynamodb_writes_atomic()  # moto runs in this process: the patch covers the server
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self._aws_port)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"

        self._saved_env = dict(os.environ)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(name, None)
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "local",
                "AWS_SECRET_ACCESS_KEY": "local",
                "AWS_DEFAULT_REGION": "us-east-1",
                "POWERTOOLS_TRACE_DISABLED": "1",
            }
        )
        session = boto3.Session()
        stack = provision(session, stage=self._stage)
        os.environ.update(stack.environment())
        os.environ.update(self._worker_env)  # the handlers share the workers' lease settings
        reset_process_state()

        api_url = self._start_api()
        import app as app_module  # the same module Lambda imports

        sqs = session.client("sqs")
        self.pollers = sqs_pollers(app_module, sqs, stack.region, self.chaos)
        self.schedules = schedules(app_module, self._sweep_seconds, stack.region)
        self.events = EventBus(app_module, stack.region, self.chaos)
        outbox = Outbox(
            session.client("sns"),
            session.client("sqs"),
            stack.outputs["TopicArn"],
            self.home / "outbox",
            f"lighthpc-{self._stage}-outbox",
            echo=self._echo,
        )
        for source in [*self.pollers, *self.schedules, outbox]:
            thread = PumpThread(source, self._stop)
            thread.start()
            self._threads.append(thread)
        workers_dir = self.home / "workers"
        self.fleet = LocalFleet(
            session.client("ec2"),
            self._stage,
            workers_dir,
            self._max_workers,
            env={**os.environ, **self._worker_env},
            chaos=self.chaos,
            events=self.events,
        ).start()

        self.info = RuntimeInfo(
            stage=self._stage,
            region=stack.region,
            aws_endpoint=endpoint,
            api_url=api_url,
            source_bucket=stack.outputs["SourceBucketName"],
            result_bucket=stack.outputs["ResultBucketName"],
            topic_arn=stack.outputs["TopicArn"],
            outbox=str(outbox.folder),
            workers=str(workers_dir),
            pid=os.getpid(),
        )
        (self.home / INFO_FILE).write_text(json.dumps(asdict(self.info), indent=2) + "\n")
        return self.info

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
        thread = threading.Thread(target=self._api.serve_forever, name="api", daemon=True)
        thread.start()
        host, port = self._api.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._stop.set()
        if self.fleet is not None:
            self.fleet.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._api is not None:
            self._api.shutdown()
        if self._moto is not None:
            self._moto.stop()
        (self.home / INFO_FILE).unlink(missing_ok=True)
        if self._saved_env is not None:
            os.environ.clear()
            os.environ.update(self._saved_env)
            reset_process_state()

    def __enter__(self) -> LocalRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
