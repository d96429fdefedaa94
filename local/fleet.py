"""The local fleet: every EC2 instance the scheduler launched in moto becomes a worker process.

Each worker gets its own instance-metadata endpoint (instance id, tags, Spot notices) and runs
`python -m worker_ami.agent`, the program the worker AMI runs. Terminating the instance (the agent
does it itself when the work is done; cancel does it by tag) ends the process. At most
`max_workers` run at once; other instances wait, as capacity would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib.capacity import STAGE_TAG
from chalicelib.observability import logger
from local.imds import MetadataServer

POLL_SECONDS = 0.5
TERMINATION_GRACE_SECONDS = 5.0


@dataclass
class LocalWorker:
    instance_id: str
    tags: dict[str, str]
    metadata: MetadataServer
    process: subprocess.Popen
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    terminated_at: float | None = None


class LocalFleet:
    def __init__(
        self,
        ec2: Any,
        stage: str,
        workdir: Path,
        max_workers: int,
        env: dict[str, str] | None = None,
    ) -> None:
        self._ec2 = ec2
        self._stage = stage
        self._workdir = workdir
        self._max_workers = max_workers
        self._env = dict(os.environ if env is None else env)
        self._waiting: deque[tuple[str, dict[str, str]]] = deque()
        self._known: set[str] = set()
        self.running: dict[str, LocalWorker] = {}
        self.finished: list[LocalWorker] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="local-fleet", daemon=True)

    def start(self) -> LocalFleet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            for worker in list(self.running.values()):
                self._end(worker, kill=True)

    # ---- what chaos and the CLI use -------------------------------------------------------

    def worker(self, instance_id: str) -> LocalWorker | None:
        with self._lock:
            return self.running.get(instance_id)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "running": len(self.running),
                "waiting": len(self._waiting),
                "finished": len(self.finished),
            }

    # ---- the loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as e:
                logger.warning("local fleet step failed", extra={"error": repr(e)})
            self._stop.wait(POLL_SECONDS)

    def step(self) -> None:
        alive = self._alive_instances()
        with self._lock:
            for instance_id, tags in alive.items():
                if instance_id not in self._known:
                    self._known.add(instance_id)
                    self._waiting.append((instance_id, tags))
            # Instances terminated while waiting never start.
            self._waiting = deque((i, t) for i, t in self._waiting if i in alive)
            for worker in list(self.running.values()):
                self._reap(worker, instance_alive=worker.instance_id in alive)
            while self._waiting and len(self.running) < self._max_workers:
                self._launch(*self._waiting.popleft())

    def _alive_instances(self) -> dict[str, dict[str, str]]:
        paginator = self._ec2.get_paginator("describe_instances")
        filters = [
            {"Name": f"tag:{STAGE_TAG}", "Values": [self._stage]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
        alive: dict[str, dict[str, str]] = {}
        for page in paginator.paginate(Filters=filters):
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                    alive[instance["InstanceId"]] = tags
        return alive

    def _launch(self, instance_id: str, tags: dict[str, str]) -> None:
        metadata = MetadataServer(instance_id, tags).start()
        workdir = self._workdir / instance_id
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = self._workdir / f"{instance_id}.log"
        env = {**self._env, "LIGHTHPC_IMDS_URL": metadata.url}
        with open(log_path, "ab") as log:
            process = subprocess.Popen(  # noqa: S603 - our own agent, argv list
                [sys.executable, "-m", "worker_ami.agent", "--workdir", str(workdir)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running[instance_id] = LocalWorker(instance_id, tags, metadata, process, log_path)

    def _reap(self, worker: LocalWorker, instance_alive: bool) -> None:
        if worker.process.poll() is not None:
            self._end(worker, kill=False)
        elif not instance_alive:
            # Terminated from outside (or by the agent, which is about to exit): give the
            # process a moment, as EC2's shutdown would, then end it.
            now = time.monotonic()
            if worker.terminated_at is None:
                worker.terminated_at = now
            elif now - worker.terminated_at > TERMINATION_GRACE_SECONDS:
                self._end(worker, kill=True)

    def _end(self, worker: LocalWorker, kill: bool) -> None:
        if kill and worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()
        worker.metadata.stop()
        self.running.pop(worker.instance_id, None)
        self.finished.append(worker)
