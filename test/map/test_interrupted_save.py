"""KeyframeMap saves interrupted by SIGKILL: the old map survives and the next save or load removes the litter."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agnostic_reloc.features.keypoints import Keypoints
from agnostic_reloc.map.store import KeyframeMap, remove_stale_temporaries
from agnostic_reloc.types import Keyframe

REPO = Path(__file__).resolve().parents[2]

# A writer process: saves a small map, then a large one (`n` keyframes of 500 kept keypoints with 128-D
# descriptors, ~128 KB each) whose final fsync stalls, the moment a large save spends longest in. The parent
# kills it with SIGKILL there: the full-size temporary is written, the rename has not happened.
WRITER = """
import os, sys, time
import numpy as np
from agnostic_reloc.features.keypoints import Keypoints
from agnostic_reloc.map.store import KeyframeMap
from agnostic_reloc.types import Keyframe

def build(n, seed):
    rng = np.random.default_rng(seed)
    kp = Keypoints(rng.uniform(0, 479, (500, 2)))
    desc = rng.normal(size=(500, 128)).astype(np.float16)  # shared by all keyframes: the file is big, RAM is not
    m = KeyframeMap()
    for i in range(n):
        T = np.eye(4)
        T[0, 3] = i
        m.add(Keyframe(id=i, stamp=0.1 * i, keypoints=kp, T_map_cam=T, K=np.diag([500.0, 500.0, 1.0]),
                       image_size=(640, 480), kept=np.arange(500), descriptors=desc))
    return m

path, n_old, n_new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
build(n_old, 0).save(path)
real_fsync = os.fsync

def stalling_fsync(fd):
    real_fsync(fd)
    print("temporary written", flush=True)
    time.sleep(600)

new = build(n_new, 1)
os.fsync = stalling_fsync
new.save(path)
"""


def small_map(n: int, seed: int) -> KeyframeMap:
    rng = np.random.default_rng(seed)
    m = KeyframeMap()
    for i in range(n):
        m.add(Keyframe(id=i, stamp=0.1 * i, keypoints=Keypoints(rng.uniform(0, 479, (20, 2))), T_map_cam=np.eye(4),
                       K=np.diag([500.0, 500.0, 1.0]), image_size=(640, 480), kept=np.arange(20),
                       descriptors=rng.normal(size=(20, 64)).astype(np.float16)))
    return m


def kill_writer_mid_save(path: Path, n_old: int = 3, n_new: int = 200) -> int:
    """Run WRITER on `path`, SIGKILL it while its large save is in progress; returns its (now dead) pid."""
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(n_old), str(n_new)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(120, child.kill)  # a hung writer fails the test instead of blocking it
    guard.start()
    try:
        line = child.stdout.readline()
        assert line.strip() == "temporary written", f"writer failed: {line!r} {child.stderr.read()}"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    finally:
        guard.cancel()
        child.stdout.close()
        child.stderr.close()
    return child.pid


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                       check=True)
    return int(p.stdout)


def removed_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agnostic_reloc.map.store"]


@pytest.mark.parametrize("next_op", ["load", "save"])
def test_sigkill_mid_save_keeps_old_map_and_next_op_removes_litter(tmp_path, caplog, next_op):
    path = tmp_path / "map.agrl"
    pid = kill_writer_mid_save(path)
    litter = tmp_path / f"map.agrl.tmp-{pid}"
    assert litter.stat().st_size > 200 * 500 * 128 * 2  # the full-size temporary of the 200-keyframe map
    assert not (tmp_path / f"map.agrl.tmp-{os.getpid()}").exists()

    caplog.set_level(logging.WARNING, logger="agnostic_reloc.map.store")
    if next_op == "load":
        old = KeyframeMap.load(path, verify=True)
        assert old.ids() == [0, 1, 2]  # the map saved before the interrupted one, intact
        assert old.get(2).T_map_cam[0, 3] == 2.0 and old.get(2).descriptors.shape == (500, 128)
    else:
        small_map(5, 7).save(path)
        assert KeyframeMap.load(path, verify=True).ids() == [0, 1, 2, 3, 4]
    assert sorted(os.listdir(tmp_path)) == ["map.agrl"]
    lines = removed_lines(caplog)
    assert len(lines) == 1 and str(litter) in lines[0] and f"writer pid {pid} is not running" in lines[0], lines


def test_only_dead_writers_temporaries_are_removed(tmp_path, caplog):
    path = tmp_path / "map.agrl"
    small_map(3, 0).save(path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        dead = tmp_path / f"map.agrl.tmp-{dead_pid()}"  # a writer that died mid-save
        live = tmp_path / f"map.agrl.tmp-{sleeper.pid}"  # a live concurrent writer of the same map
        mine = tmp_path / f"map.agrl.tmp-{os.getpid()}"  # this process's own temporary (another thread's save)
        other_map = tmp_path / f"other.agrl.tmp-{dead.name.rsplit('-', 1)[1]}"  # another map's litter
        not_a_temporary = tmp_path / "map.agrl.tmp-backup"
        for p in (dead, live, mine, other_map, not_a_temporary):
            p.write_bytes(bytes(3 << 20))
        caplog.set_level(logging.WARNING, logger="agnostic_reloc.map.store")
        assert remove_stale_temporaries(path) == [str(dead)]
        assert live.exists() and mine.exists() and other_map.exists() and not_a_temporary.exists()
        lines = removed_lines(caplog)
        assert len(lines) == 1 and str(dead) in lines[0] and "(3.0 MB)" in lines[0], lines

        # The live pid again, but the file predates the process holding it now: the pid was reused (reboot,
        # container restart), the writer is gone.
        before_start = time.time() - 600
        os.utime(live, (before_start, before_start))
        caplog.clear()
        assert KeyframeMap.load(path).ids() == [0, 1, 2]
        assert not live.exists() and mine.exists()
        lines = removed_lines(caplog)
        assert len(lines) == 1 and f"pid {sleeper.pid} now belongs to a process started after" in lines[0], lines
    finally:
        sleeper.kill()
        sleeper.wait()
