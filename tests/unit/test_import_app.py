"""Importing app.py (what Lambda does on a cold start) needs no environment, network or AWS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import socket

def refuse(*args, **kwargs):
    raise AssertionError("importing app.py opened a network connection")

socket.socket.connect = refuse
socket.create_connection = refuse

import app

routes = sorted(app.app.routes)
expected = [
    "/me",
    "/missions",
    "/missions/{mission_id}",
    "/missions/{mission_id}/map",
    "/missions/{mission_id}/outcome",
    "/missions/{mission_id}/timeline",
    "/missions/{mission_id}/transactions",
    "/openapi.json",
    "/overview",
    "/pipelines",
    "/pipelines/{pipeline_id}",
]
assert routes == expected, routes
handlers = sorted(source.name for source in app.app.event_sources)
assert handlers == ["light_scheduler", "result_processor", "spot_interruption", "sweeper"], (
    handlers
)
print("ok")
"""


def test_import_app_with_an_empty_environment():
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
