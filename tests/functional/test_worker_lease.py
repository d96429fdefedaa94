"""On moto, with the real sweeper: a worker keeps its leases through a slow input download."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from chalicelib.capacity import mission_instances
from chalicelib.context import get_context, reset_process_state
from chalicelib.sweeper import sweep
from local.inprocess import InProcessCluster, instance_metadata
from tests.functional.test_mission import kmer_config
from tests.functional.test_reliability import mission, rows, start
from worker_ami.agent import WorkerAgent


class SlowDownloads:
    """S3 as it is for a large input: the download takes a while."""

    def __init__(self, s3: Any, seconds: float) -> None:
        self._s3, self._seconds = s3, seconds

    def download_file(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(self._seconds)
        self._s3.download_file(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)


def test_a_slow_download_keeps_its_leases_while_the_sweeper_runs(
    cluster: InProcessCluster, monkeypatch
):
    # A lease of 3 s renewed every second, through a download of 7.5 s: two and a half leases.
    # (With 1 s, one renewal late by a third of a second on a loaded 2-core machine lost it;
    # with 2 s, a fresh-clone run of the whole suite once lost one too.)
    monkeypatch.setenv("LEASE_SECONDS", "3")
    reset_process_state()
    instances = {"max_instances": 1, "slots": 2}
    mission_id = start(cluster, kmer_config("slow input", "big.fa", count=4, instances=instances))
    [instance] = mission_instances(cluster.ec2, mission_id, ["running"])
    ctx = get_context()
    workdir = cluster.workdir / instance["InstanceId"]
    workdir.mkdir(parents=True)
    agent = WorkerAgent(
        settings=ctx.settings,
        store=ctx.store,
        # Both slots wait for the slow download, holding their claims.
        aws=SimpleNamespace(s3=SlowDownloads(ctx.aws.s3, 7.5), ec2=ctx.aws.ec2),
        metadata=instance_metadata(instance),
        workdir=workdir,
    )
    stop = threading.Event()
    taken_back: list[int] = []

    def sweeper() -> None:
        while not stop.wait(0.2):
            taken_back.append(sweep(ctx).requeued)

    sweeping = threading.Thread(target=sweeper)
    sweeping.start()
    try:
        report = agent.run()
    finally:
        stop.set()
        sweeping.join()
    cluster.deliver_result_events()
    assert len(taken_back) > 5  # the sweeper ran all along
    # No lease was taken back: a taken-back transaction runs again, with a second attempt. (A
    # sweep may still recreate an index whose claim it saw handed out but not yet written, the
    # "lost claim" repair racing a live worker on a loaded machine: harmless, as the worker's
    # own conditional create then fails and it claims the next; it spends no attempt.)
    assert report.succeeded == 4
    assert [(t["status"], t["attempts"]) for t in rows(cluster, mission_id)] == [
        ("SUCCEEDED", 1)
    ] * 4
    assert mission(cluster, mission_id)["status"] == "SUCCEEDED"
