"""What the DDS tests share (test_node.py, test_orbslam3_node.py): an isolated domain and a node subprocess."""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import pytest


def isolate_domain(lo: int, hi: int) -> str:
    """Put this process (and the node subprocesses it starts) on a DDS domain in [lo, hi], localhost only."""
    os.environ["ROS_DOMAIN_ID"] = str(random.Random(os.getpid()).randint(lo, hi))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return os.environ["ROS_DOMAIN_ID"]


def start_script(script: Path, tmp: Path, args: list[str]) -> subprocess.Popen:
    """Run an installed console script with `args`, its output in tmp/<name>-<ns>.log (see node_log)."""
    if not script.exists():
        pytest.skip(f"console script {script} missing: run ./setup.sh")
    log = open(tmp / f"{script.name}-{time.time_ns()}.log", "w")
    proc = subprocess.Popen([str(script), *args], stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    proc.log_path = log.name  # type: ignore[attr-defined]
    return proc


def node_log(proc: subprocess.Popen) -> str:
    """Everything the node subprocess printed so far."""
    return Path(proc.log_path).read_text()  # type: ignore[attr-defined]
