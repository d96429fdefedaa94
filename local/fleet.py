"""The local fleet: every EC2 instance the scheduler launched in moto becomes a worker process.

Each worker gets its own instance-metadata endpoint (instance id, tags, Spot notices) and runs
`python -m worker_ami.agent`, the program the worker AMI runs. Terminating the instance (the agent
does it itself when the work is done; cancel does it by tag) ends the process and everything it
started, its apps included (each runs in a session of its own), as terminating an EC2 instance
does. At most `max_workers` run at once; other instances wait, as capacity would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib.layout import STAGE_TAG
from chalicelib.observability import logger
from local.chaos import Chaos
from local.imds import MetadataServer
from local.pump import EventBus

POLL_SECONDS = 0.5
# Carried with the tags from describe to the metadata server (never real tag keys: no colon).
_TYPE, _LIFECYCLE, _LAUNCHED = " instance-type", " lifecycle", " launch-time"
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
    fate: str | None = None  # chaos: "kill" or "spot"
    fate_at: float = 0.0
    reclaim_at: float | None = None  # after a Spot notice, when EC2 takes the instance


class LocalFleet:
    def __init__(
        self,
        ec2: Any,
        stage: str,
        workdir: Path,
        max_workers: int,
        env: dict[str, str] | None = None,
        chaos: Chaos | None = None,
        events: EventBus | None = None,
    ) -> None:
        self._chaos = chaos
        self._events = events
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
                self._apply_fate(worker)
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
                    tags[_TYPE] = instance.get("InstanceType", "")
                    tags[_LIFECYCLE] = instance.get("InstanceLifecycle") or "on-demand"
                    tags[_LAUNCHED] = str(instance["LaunchTime"].timestamp())
                    alive[instance["InstanceId"]] = tags
        return alive

    def _launch(self, instance_id: str, tags: dict[str, str]) -> None:
        described = dict(tags)
        instance_type, lifecycle = described.pop(_TYPE), described.pop(_LIFECYCLE)
        launched_at = float(described.pop(_LAUNCHED))
        metadata = MetadataServer(
            instance_id, described, instance_type, lifecycle, launched_at=launched_at
        ).start()
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
        worker = LocalWorker(instance_id, tags, metadata, process, log_path)
        if self._chaos is not None:
            worker.fate, after = self._chaos.fate()
            worker.fate_at = worker.started + after
        self.running[instance_id] = worker

    def _apply_fate(self, worker: LocalWorker) -> None:
        now = time.monotonic()
        if worker.reclaim_at is not None and now >= worker.reclaim_at:
            worker.reclaim_at = None
            self._ec2.terminate_instances(InstanceIds=[worker.instance_id])  # EC2 reclaims it
        if worker.fate is None or now < worker.fate_at or worker.process.poll() is not None:
            return
        fate, worker.fate = worker.fate, None
        assert self._chaos is not None
        if fate == "kill":
            # Lost without notice: the machine is gone, and with it the agent and its apps.
            kill_process_tree(worker.process.pid)
            self._ec2.terminate_instances(InstanceIds=[worker.instance_id])
            self._chaos.ledger.add(workers_killed=1)
            logger.warning("chaos: worker killed", extra={"instance_id": worker.instance_id})
            return
        notice_seconds = self._chaos.options.spot_notice_seconds
        reclaim = time.time() + notice_seconds
        worker.metadata.spot_action = {
            "action": "terminate",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reclaim)),
        }
        worker.reclaim_at = now + notice_seconds
        self._chaos.ledger.add(notices_sent=1)
        logger.warning("chaos: Spot notice", extra={"instance_id": worker.instance_id})
        if self._events is not None:
            self._events.put(
                "EC2 Spot Instance Interruption Warning",
                "aws.ec2",
                {"instance-id": worker.instance_id, "instance-action": "terminate"},
                [f"arn:aws:ec2:us-east-1:123456789012:instance/{worker.instance_id}"],
            )

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
            kill_process_tree(worker.process.pid)  # the instance is gone: all that ran on it
            worker.process.wait()
        worker.metadata.stop()
        self.running.pop(worker.instance_id, None)
        self.finished.append(worker)


def kill_process_tree(root: int) -> None:
    """SIGKILL `root` and every process it started, whatever their session or process group.

    The apps an agent runs are each in a session of their own (so that the agent can kill an
    app's whole group), so killing the agent's group would leave them running, orphaned. First
    the tree is frozen (SIGSTOP, parents before children, until no new process shows up), so
    nothing forks or reparents while it is killed; then the groups of its processes are killed
    too, which takes a grandchild that was already orphaned but stayed in its app's group.
    On a real instance, terminating it (or systemd stopping the agent's unit: its cgroup) does
    the same.
    """
    tree: dict[int, int] = {}  # pid -> its process group
    frontier = [root]
    while frontier:
        _signal(frontier, signal.SIGSTOP)
        tree |= {pid: _pgid(pid) for pid in frontier}
        children = _children_by_parent()
        frontier = [c for pid in tree for c in children.get(pid, []) if c not in tree]
    own = {os.getpgrp(), 0, 1}
    for group in {g for g in tree.values() if g not in own}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    _signal(list(tree), signal.SIGKILL)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return 0


def _children_by_parent() -> dict[int, list[int]]:
    """Every process's children, from /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children
