"""Packaging as a robot uses it: colcon build installs the node, config and launch files; the pip path too."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_colcon_build_installs_node_config_and_launch(tmp_path):
    colcon = Path(sys.executable).parent / "colcon"
    if not colcon.exists():
        pytest.skip("colcon is not installed in this environment (requirements-ros.txt installs it)")
    src = tmp_path / "src" / "agnostic_reloc"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    out = subprocess.run([str(colcon), "build", "--base-paths", str(tmp_path / "src"),
                          "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    inst = tmp_path / "install" / "agnostic_reloc"
    for rel in ("share/ament_index/resource_index/packages/agnostic_reloc", "share/agnostic_reloc/package.xml",
                "share/agnostic_reloc/config/reloc.yaml", "share/agnostic_reloc/launch/reloc.launch.py",
                "share/agnostic_reloc/config/orbslam3_bridge.yaml", "share/agnostic_reloc/config/reloc.rviz",
                "share/agnostic_reloc/launch/orbslam3_reloc.launch.py",
                "lib/agnostic_reloc/reloc_node", "lib/agnostic_reloc/agnostic-reloc", "lib/agnostic_reloc/orbslam3_bridge"):
        assert (inst / rel).exists(), f"colcon build did not install {rel}"
    assert (inst / "share/agnostic_reloc/config/reloc.yaml").read_text() == (ROOT / "config/reloc.yaml").read_text()


def test_pip_path_has_ament_index_entries():
    """setup.sh runs agnostic_reloc.ament_install: launch_ros finds the package with AMENT_PREFIX_PATH=.venv."""
    prefix = Path(sys.prefix)
    if not (prefix / "bin" / "reloc_node").exists():
        pytest.skip("agnostic_reloc is not pip-installed in this interpreter's prefix")
    from agnostic_reloc.ament_install import install

    written = install(prefix)  # idempotent: what setup.sh did
    assert (prefix / "share/ament_index/resource_index/packages/agnostic_reloc") in written
    assert (prefix / "lib/agnostic_reloc/reloc_node").resolve() == (prefix / "bin/reloc_node").resolve()
    assert (prefix / "lib/agnostic_reloc/orbslam3_bridge").resolve() == (prefix / "bin/orbslam3_bridge").resolve()
    assert (prefix / "share/agnostic_reloc/launch/reloc.launch.py").is_file()
    assert (prefix / "share/agnostic_reloc/config/reloc.yaml").is_file()
    assert (prefix / "share/agnostic_reloc/config/reloc.rviz").is_file()  # launch rviz:=true finds it in share/
    assert "AMENT_PREFIX_PATH" in (prefix / "bin/activate").read_text(), "setup.sh adds AMENT_PREFIX_PATH to activate"
