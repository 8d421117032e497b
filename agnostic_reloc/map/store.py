"""The keyframe map in RAM and on disk (one versioned, crc-checked, memory-mappable file).

File format (version 1), all integers little-endian:

    offset 0   magic  b"AGRLMAP\\0"                       8 bytes
    offset 8   format version                            uint32
    offset 12  header length H (bytes, space padded)     uint32
    offset 16  crc32 of the H header bytes               uint32
    offset 20  reserved (0)                              uint32
    offset 24  JSON header, utf-8, H bytes
    then       raw C-order arrays, each at a 64-byte-aligned absolute offset

The JSON header holds creation info, counts, `file_size`, and per array: dtype (numpy str, e.g. "<f2"),
shape, absolute byte offset, nbytes, crc32 and `per` ("keyframe" | "keypoint" | "kept"). Per-keypoint and
per-kept-keypoint data of all keyframes are concatenated into flat arrays; keyframe i owns rows
kf_kp_offset[i]:kf_kp_offset[i+1] (resp. kf_kept_offset) of them. An optional field (map_points, kept,
descriptors, orb_desc, ...) is either written for every keyframe (filler rows where a keyframe has none,
its bit in kf_flags cleared) or, when no keyframe has it, written with zero rows.

Loop corrections: the optional per-keyframe array `kf_T_corrected_slam` [N x 4 x 4] float64 holds each
keyframe's T_corrected_slam, the transform that moves its SLAM pose `kf_T_map_cam` onto the loop-corrected
(pose-graph) trajectory: T_corrected_cam = T_corrected_slam @ T_map_cam (bit 128 of kf_flags set where a
keyframe has one; zero rows when none has). The correction is stored rather than T_corrected_cam so that a
reloaded map gives back exactly the correction it was saved with. The array was added within version 1:
readers ignore arrays they do not know, so a build that predates it still reads such a file (without the
corrections), and a file without it (written before it existed, or re-saved by such a build, bit 128 possibly
left set) loads with no corrections.

Saving writes `path + ".tmp-<pid>"`, fsyncs it and `os.replace`s it over `path`, so a crash mid-save leaves
the previous map intact. A writer killed mid-save (SIGKILL, power loss) leaves its temporary behind, as big as
the map; the next save or load of the same path removes the temporaries of writers that are gone (see
`remove_stale_temporaries`), never one a live writer is still writing.

Loading with mmap=True memory-maps the flat (big) arrays read-only; the per-keyframe arrays are read into RAM
and crc-checked.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import socket
import stat
import struct
import sys
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np

from ..features.keypoints import Keypoints
from ..types import Keyframe

logger = logging.getLogger(__name__)

MAGIC = b"AGRLMAP\0"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
_PREFIX = struct.Struct("<8sIIII")  # magic, version, header length, header crc32, reserved
ALIGN = 64
_CHUNK_BYTES = 16 << 20  # streaming write / crc chunk
STALE_TMP_AGE_S = 3600.0  # a temporary not written to for this long is stale even if a process has its pid

# flag bits in kf_flags: which optional Keyframe fields are present
_FLAGS = {"map_points": 1, "map_point_ids": 2, "kept": 4, "descriptors": 8, "global_desc": 16,
          "orb_desc": 32, "orb_valid": 64}
_CORRECTED = 128  # kf_flags bit: the keyframe has a loop correction in kf_T_corrected_slam
_CORRECTION_ARRAY = "kf_T_corrected_slam"  # optional per-keyframe array [N x 4 x 4] float64 (or [0 x 4 x 4])

# flat arrays: name -> (per, numpy dtype, trailing shape or None for "descriptor dim", filler value)
_KP_ARRAYS = {
    "xy": (np.float32, (2,), 0), "octave": (np.int32, (), 0), "response": (np.float32, (), 0),
    "angle": (np.float32, (), 0), "size": (np.float32, (), 0),
    "map_points": (np.float32, (3,), np.nan), "map_point_ids": (np.int64, (), -1),
}
_KEPT_ARRAYS = {
    "kept": (np.int64, (), -1), "descriptors": (np.float16, None, 0), "orb_desc": (np.uint8, (32,), 0),
    "orb_valid": (np.bool_, (), False),
}
_KF_ARRAYS = {
    "kf_id": (np.int64, ()), "kf_stamp": (np.float64, ()), "kf_n_slam": (np.int64, ()),
    "kf_T_map_cam": (np.float64, (4, 4)), "kf_K": (np.float64, (3, 3)), "kf_image_size": (np.int64, (2,)),
    "kf_scale_factor": (np.float64, ()), "kf_flags": (np.uint8, ()), "kf_kp_offset": (np.int64, ()),
    "kf_kept_offset": (np.int64, ()), "kf_global_desc": (np.float32, None),
}


class MapFormatError(ValueError):
    """A map file is missing, truncated, corrupt, or of an unsupported format version."""


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _crc(arr: np.ndarray, crc: int = 0) -> int:
    flat = arr.reshape(-1).view(np.uint8) if arr.size else np.zeros(0, np.uint8)
    for start in range(0, len(flat), _CHUNK_BYTES):
        crc = zlib.crc32(flat[start:start + _CHUNK_BYTES], crc)
    return crc


# ---------------------------------------------------------------------------------------------------- rows
class _RowStore:
    """Append-only contiguous rows keyed by id, with lazy (tombstone) removal.

    `arrays()` returns read-only views that stay valid snapshots: appends write past them or reallocate,
    and removal is applied by compaction into new arrays.
    """

    def __init__(self, width: int, dtype) -> None:
        self.width, self.dtype = width, dtype
        self.ids = np.zeros(0, np.int64)
        self.rows = np.zeros((0, width), dtype)
        self.n = 0
        self.row_of: dict[int, int] = {}
        self.dead: set[int] = set()

    def _reserve(self, extra: int) -> None:
        need = self.n + extra
        if need <= len(self.ids):
            return
        cap = max(need, 2 * len(self.ids), 64)
        ids, rows = np.zeros(cap, np.int64), np.zeros((cap, self.width), self.dtype)
        ids[: self.n], rows[: self.n] = self.ids[: self.n], self.rows[: self.n]
        self.ids, self.rows = ids, rows

    def extend(self, ids: np.ndarray, rows: np.ndarray) -> None:
        self._reserve(len(ids))
        self.ids[self.n: self.n + len(ids)] = ids
        self.rows[self.n: self.n + len(ids)] = rows
        for i, kid in enumerate(ids.tolist()):
            self.row_of[kid] = self.n + i
        self.n += len(ids)

    def adopt(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Fill an empty store with existing arrays without copying (full capacity: appends reallocate)."""
        assert self.n == 0
        self.ids, self.rows, self.n = ids, rows, len(ids)
        self.row_of = {kid: i for i, kid in enumerate(ids.tolist())}

    def remove(self, kid: int) -> None:
        row = self.row_of.pop(kid, None)
        if row is not None:
            self.dead.add(row)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self.dead:
            keep = np.ones(self.n, bool)
            keep[list(self.dead)] = False
            ids, rows = self.ids[: self.n][keep], self.rows[: self.n][keep]
            self.ids, self.rows, self.n, self.dead = ids, rows, len(ids), set()
            self.row_of = {kid: i for i, kid in enumerate(ids.tolist())}
        ids, rows = self.ids[: self.n], self.rows[: self.n]
        ids.flags.writeable = False  # views only: the buffers stay writeable for appends
        rows.flags.writeable = False
        return ids, rows

    def nbytes(self) -> int:
        return self.ids.nbytes + self.rows.nbytes + 100 * len(self.row_of)


# ---------------------------------------------------------------------------------------------------- file
@dataclass
class _Segment:
    """The keyframes of one loaded map file (flat arrays, possibly memory-mapped)."""

    path: str
    arrays: dict[str, np.ndarray]
    mmap: bool

    def keyframe(self, row: int) -> Keyframe:
        a = self.arrays
        p0, p1 = int(a["kf_kp_offset"][row]), int(a["kf_kp_offset"][row + 1])
        q0, q1 = int(a["kf_kept_offset"][row]), int(a["kf_kept_offset"][row + 1])
        flags = int(a["kf_flags"][row])

        def opt(name: str, lo: int, hi: int):
            return a[name][lo:hi] if flags & _FLAGS[name] else None

        kp = Keypoints(a["xy"][p0:p1], a["octave"][p0:p1], a["response"][p0:p1], a["angle"][p0:p1],
                       a["size"][p0:p1], float(a["kf_scale_factor"][row]))
        w, h = (int(v) for v in a["kf_image_size"][row])
        return Keyframe(
            id=int(a["kf_id"][row]), stamp=float(a["kf_stamp"][row]), keypoints=kp,
            T_map_cam=a["kf_T_map_cam"][row], K=a["kf_K"][row], image_size=(w, h),
            n_slam=int(a["kf_n_slam"][row]),
            map_points=opt("map_points", p0, p1), map_point_ids=opt("map_point_ids", p0, p1),
            kept=opt("kept", q0, q1), descriptors=opt("descriptors", q0, q1),
            global_desc=a["kf_global_desc"][row] if flags & _FLAGS["global_desc"] else None,
            orb_desc=opt("orb_desc", q0, q1), orb_valid=opt("orb_valid", q0, q1))

    def ram_bytes(self) -> int:
        return sum(v.nbytes for v in self.arrays.values() if not isinstance(v, np.memmap))


def _n_kept(kf: Keyframe) -> int:
    for name in ("kept", "descriptors", "orb_desc", "orb_valid"):
        value = getattr(kf, name)
        if value is not None:
            return len(value)
    return 0


def _normalised(kf: Keyframe, desc_dim: int | None, global_dim: int | None) -> Keyframe:
    """Validate `kf` beyond Keyframe.validate() (storable shapes) and cast fields to the stored dtypes."""
    kf.validate()
    n, q = len(kf.keypoints), _n_kept(kf)
    try:
        kid = int(kf.id)
    except (TypeError, ValueError):
        raise ValueError(f"keyframe id must be an integer, got {kf.id!r}") from None
    if kid != kf.id:
        raise ValueError(f"keyframe id must be an integer, got {kf.id!r}")

    def cast(name: str, dtype, shape: tuple) -> np.ndarray | None:
        value = getattr(kf, name)
        if value is None:
            return None
        arr = np.asarray(value, dtype=dtype)
        if arr.shape != shape:
            raise ValueError(f"keyframe {kid}: {name} has shape {arr.shape}, expected {shape}")
        return arr

    d = None if kf.descriptors is None else np.shape(kf.descriptors)[-1]
    if kf.descriptors is not None and (np.ndim(kf.descriptors) != 2 or (desc_dim is not None and d != desc_dim)):
        raise ValueError(f"keyframe {kid}: descriptors have shape {np.shape(kf.descriptors)}, expected "
                         f"[{q} x {desc_dim or 'D'}] (one row per kept keypoint, same D for the whole map)")
    g = None if kf.global_desc is None else np.size(kf.global_desc)
    if kf.global_desc is not None and global_dim is not None and g != global_dim:
        raise ValueError(f"keyframe {kid}: global_desc has {g} entries, the map uses {global_dim}")
    out = Keyframe(
        id=kid, stamp=float(kf.stamp), keypoints=kf.keypoints,
        T_map_cam=cast("T_map_cam", np.float64, (4, 4)), K=cast("K", np.float64, (3, 3)),
        image_size=(int(kf.image_size[0]), int(kf.image_size[1])), n_slam=int(kf.n_slam),
        map_points=cast("map_points", np.float32, (n, 3)), map_point_ids=cast("map_point_ids", np.int64, (n,)),
        kept=cast("kept", np.int64, (q,)), descriptors=cast("descriptors", np.float16, (q, d)),
        global_desc=None if g is None else np.asarray(kf.global_desc, np.float32).reshape(-1),
        orb_desc=cast("orb_desc", np.uint8, (q, 32)), orb_valid=cast("orb_valid", np.bool_, (q,)))
    if out.kept is not None and len(out.kept) and (out.kept.min() < 0 or out.kept.max() >= n):
        raise ValueError(f"keyframe {kid}: kept indices must lie in [0, {n}), got "
                         f"[{out.kept.min()}, {out.kept.max()}]")
    if out.global_desc is not None and not np.isfinite(out.global_desc).all():
        raise ValueError(f"keyframe {kid}: global_desc is not finite")
    return out


# ---------------------------------------------------------------------------------------------- temporaries
_PID_REUSE_SLACK_S = 2.0  # process start times from /proc are known to about a second (boot time in whole s)


def _tmp_path(path: str) -> str:
    """The temporary `save` writes before renaming it over `path`: named by the writer's pid."""
    return f"{path}.tmp-{os.getpid()}"


def _process_state(pid: int) -> tuple[str, float] | None:
    """(state letter, start time in unix seconds) of a running process from /proc (Linux); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read()
        fields = fields[fields.rindex(b")") + 2:].split()  # after "pid (comm) ": field 3 (state) onwards
        with open("/proc/stat", "rb") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith(b"btime "))
        return fields[0].decode(), boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start (ticks)
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _stale_reason(pid: int, mtime: float, now: float) -> str | None:
    """Why the temporary of writer `pid`, last written at `mtime` (unix s), is stale; None while it may be live.

    Stale: no process has the pid (or only a zombie); or the process with that pid started after the file was
    last written (the pid was reused, e.g. after a reboot or a container restart); or the file was not written
    to for STALE_TMP_AGE_S (a save writes continuously, so its writer is gone or hung).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"writer pid {pid} is not running"
    except PermissionError:
        pass  # a process of another user has the pid
    except (OverflowError, OSError):
        return f"writer pid {pid} is not a valid process id"
    state = _process_state(pid)
    if state is not None and state[0] in ("Z", "X"):
        return f"writer pid {pid} has exited"
    if state is not None and mtime < state[1] - _PID_REUSE_SLACK_S:
        return f"pid {pid} now belongs to a process started after the file was last written"
    if now - mtime > STALE_TMP_AGE_S:
        return f"not written to for {(now - mtime) / 3600:.1f} h"
    return None


def remove_stale_temporaries(path: str | os.PathLike) -> list[str]:
    """Remove the temporaries `<path>.tmp-<pid>` that writers of map `path` left when they died mid-save.

    A temporary is removed only when its writer is gone (see `_stale_reason`): a live process saving the same
    map concurrently keeps its file. Pids are those of this host: do not save one map path from several hosts
    of a shared file system at once. Logs one warning per removed file; never raises (a file that cannot be
    removed is logged and left).

    Returns:
        the paths removed.
    """
    directory, base = os.path.split(os.path.abspath(os.fspath(path)))
    pattern = re.compile(re.escape(base) + r"\.tmp-([0-9]{1,12})")
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    now = time.time()
    for name in sorted(names):
        match = pattern.fullmatch(name)
        if match is None or int(match.group(1)) < 1:
            continue
        tmp = os.path.join(directory, name)
        try:
            info = os.lstat(tmp)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode):
            continue
        reason = _stale_reason(int(match.group(1)), info.st_mtime, now)
        if reason is None:
            continue
        try:
            os.remove(tmp)
        except FileNotFoundError:  # another process cleaned it up meanwhile
            continue
        except OSError as exc:
            logger.warning("could not remove %s, the temporary of an interrupted map save (%s): %s", tmp, reason, exc)
            continue
        logger.warning("removed %s (%.1f MB), the temporary of an interrupted map save: %s", tmp,
                       info.st_size / 2**20, reason)
        removed.append(tmp)
    return removed


# ---------------------------------------------------------------------------------------------------- map
class KeyframeMap:
    """Keyframes by id, in insertion order; thread-safe; saved to / loaded from one map file.

    Keyframes loaded from a file are served as views of its (memory-mapped, read-only) arrays; keyframes
    added afterwards live in RAM and are returned by reference (do not mutate them). Descriptors are
    stored float16.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._where: OrderedDict[int, tuple[_Segment | None, int | Keyframe]] = OrderedDict()
        self._ram_bytes = 0
        self._positions = _RowStore(3, np.float64)
        self._global = _RowStore(0, np.float32)
        self.desc_dim: int | None = None  # ALIKED descriptor dim D of the map (set by the first keyframe)
        self.global_dim: int | None = None  # global descriptor dim G (set by the first keyframe)
        self._corrections: dict[int, np.ndarray] = {}  # kf id -> T_corrected_slam [4 x 4] (read-only)

    # ------------------------------------------------------------------ container
    def add(self, kf: Keyframe) -> None:
        """Validate and insert a keyframe; ValueError naming the problem (or a duplicate id)."""
        with self._lock:
            stored = _normalised(kf, self.desc_dim, self.global_dim)
            if stored.id in self._where:
                raise ValueError(f"keyframe id {stored.id} is already in the map")
            self._where[stored.id] = (None, stored)
            self._ram_bytes += _kf_nbytes(stored)
            if stored.descriptors is not None:
                self.desc_dim = stored.descriptors.shape[1]
            self._positions.extend(np.array([stored.id]), stored.T_map_cam[None, :3, 3])
            if stored.global_desc is not None:
                self._add_global(np.array([stored.id]), stored.global_desc[None])

    def _add_global(self, ids: np.ndarray, rows: np.ndarray, adopt: bool = False) -> None:
        if self.global_dim is None:
            self.global_dim = rows.shape[1]
            self._global = _RowStore(self.global_dim, np.float32)
        if adopt:
            self._global.adopt(ids, rows)
        else:
            self._global.extend(ids, rows)

    def get(self, kid: int) -> Keyframe:
        """The keyframe with id `kid` (KeyError if absent)."""
        with self._lock:
            try:
                seg, item = self._where[int(kid)]
            except KeyError:
                raise KeyError(f"keyframe {kid} is not in the map") from None
        return item if seg is None else seg.keyframe(item)  # type: ignore[return-value,arg-type]

    def remove(self, kid: int) -> None:
        """Remove keyframe `kid` (KeyError if absent); its file rows are dropped at the next save."""
        with self._lock:
            try:
                seg, item = self._where.pop(int(kid))
            except KeyError:
                raise KeyError(f"keyframe {kid} is not in the map") from None
            if seg is None:
                self._ram_bytes -= _kf_nbytes(item)  # type: ignore[arg-type]
            self._positions.remove(int(kid))
            self._global.remove(int(kid))
            self._corrections.pop(int(kid), None)

    def clear(self) -> None:
        with self._lock:
            self.__init__()  # type: ignore[misc]

    def __contains__(self, kid: object) -> bool:
        with self._lock:
            return kid in self._where

    def __len__(self) -> int:
        with self._lock:
            return len(self._where)

    def ids(self) -> list[int]:
        """Keyframe ids in insertion order."""
        with self._lock:
            return list(self._where)

    def __iter__(self) -> Iterator[Keyframe]:
        """Keyframes in insertion order (a snapshot of the ids; ones removed meanwhile are skipped)."""
        for kid in self.ids():
            try:
                yield self.get(kid)
            except KeyError:
                continue

    def set_corrections(self, corrections: Mapping[int, np.ndarray]) -> None:
        """Store the loop corrections T_corrected_slam [4 x 4] of the given keyframes (replacing theirs; other
        keyframes keep what they have). They are written by `save` and given back by `corrections` after `load`.

        Raises:
            ValueError: an id that is not in the map, or a matrix that is not a finite 4x4 rigid transform.
        """
        checked = {}
        for kid, T in corrections.items():
            T = np.array(T, np.float64)
            if T.shape != (4, 4) or not np.isfinite(T).all() or np.abs(T[3] - [0, 0, 0, 1]).max() > 1e-9:
                raise ValueError(f"keyframe {kid}: correction must be a finite 4x4 transform (last row 0 0 0 1), "
                                 f"got shape {T.shape}")
            T.flags.writeable = False
            checked[int(kid)] = T
        with self._lock:
            unknown = [kid for kid in checked if kid not in self._where]
            if unknown:
                raise ValueError(f"corrections for keyframes not in the map: {unknown[:10]}")
            self._corrections.update(checked)

    def corrections(self) -> dict[int, np.ndarray]:
        """Keyframe id -> stored T_corrected_slam [4 x 4] float64 (read-only), for the keyframes that have one, in
        insertion order. A map loaded from a file without corrections has none."""
        with self._lock:
            return {kid: self._corrections[kid] for kid in self._where if kid in self._corrections}

    def global_descriptors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids [N] int64, G [N x D] float32) of keyframes with a global descriptor, insertion order.

        Read-only views of one contiguous buffer (no copy; a later add/remove does not change them).
        """
        with self._lock:
            if self.global_dim is None:
                return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
            return self._global.arrays()

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids [N] int64, camera centres [N x 3] float64 in the map frame), read-only views."""
        with self._lock:
            return self._positions.arrays()

    def memory_bytes(self) -> int:
        """Estimated RAM in bytes held by the map (excludes memory-mapped file pages)."""
        with self._lock:
            segs = {id(s): s for s, _ in self._where.values() if s is not None}
            shared = sum(s.arrays["kf_global_desc"].nbytes for s in segs.values()
                         if s.arrays["kf_global_desc"] is self._global.rows)
            return (self._ram_bytes + sum(s.ram_bytes() for s in segs.values()) + self._positions.nbytes()
                    + self._global.nbytes() - shared + 120 * len(self._where) + 250 * len(self._corrections))

    # ------------------------------------------------------------------ save
    def save(self, path: str | os.PathLike) -> None:
        """Write all keyframes (loaded + added) to `path` atomically (tmp file, fsync, os.replace).

        Temporaries that earlier writers killed mid-save left beside `path` are removed first
        (`remove_stale_temporaries`).
        """
        path = os.fspath(path)
        with self._lock:  # snapshot: entries and corrections are immutable references, the writing runs unlocked
            entries = list(self._where.values())
            desc_dim, global_dim = self.desc_dim, self.global_dim
            corrections = dict(self._corrections)
        remove_stale_temporaries(path)
        tmp = _tmp_path(path)
        try:
            with open(tmp, "wb") as f:
                _write(f, entries, desc_dim, global_dim, corrections)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise
        try:  # make the rename durable
            fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass

    # ------------------------------------------------------------------ load
    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = False) -> "KeyframeMap":
        """Open a map file.

        Args:
            path: file written by `save`.
            mmap: memory-map the per-keypoint arrays read-only (else read everything into RAM).
            verify: also check the crc32 of memory-mapped arrays (reads the whole file once).
        Raises:
            MapFormatError: missing/truncated/corrupt file, wrong magic, unsupported version.

        Temporaries that writers killed mid-save left beside `path` are removed (`remove_stale_temporaries`).
        """
        path = os.fspath(path)
        remove_stale_temporaries(path)
        arrays = _read(path, mmap, verify)
        out = cls()
        seg = _Segment(path, arrays, mmap)
        ids = arrays["kf_id"]
        n = len(ids)
        if len(np.unique(ids)) != n:
            raise MapFormatError(f"map file {path}: duplicate keyframe ids")
        flags = arrays["kf_flags"]
        for f in ("descriptors", "kf_global_desc"):
            if arrays[f].ndim != 2:
                raise MapFormatError(f"map file {path}: array {f} must be 2-D")
        if (flags & _FLAGS["descriptors"]).any():
            out.desc_dim = int(arrays["descriptors"].shape[1])
        out._where = OrderedDict((kid, (seg, row)) for row, kid in enumerate(ids.tolist()))
        out._positions.extend(ids, arrays["kf_T_map_cam"][:, :3, 3])
        has_g = (flags & _FLAGS["global_desc"]) != 0
        if has_g.all() and n:  # share the loaded array (no second copy)
            out._add_global(ids, arrays["kf_global_desc"], adopt=True)
        elif has_g.any():
            out._add_global(ids[has_g], arrays["kf_global_desc"][has_g])
        corrected = arrays.get(_CORRECTION_ARRAY)
        if corrected is not None and len(corrected):  # absent: an older file, whatever bit 128 says
            out._corrections = {int(ids[r]): corrected[r] for r in np.flatnonzero(flags & _CORRECTED)}
        return out


def _kf_nbytes(kf: Keyframe) -> int:
    total = 400
    for v in (kf.keypoints.xy, kf.keypoints.octave, kf.keypoints.response, kf.keypoints.angle, kf.keypoints.size,
              kf.T_map_cam, kf.K, kf.map_points, kf.map_point_ids, kf.kept, kf.descriptors, kf.global_desc,
              kf.orb_desc, kf.orb_valid):
        if v is not None and not isinstance(v, np.memmap):
            total += v.nbytes
    return total


# ---------------------------------------------------------------------------------------------------- write
def _keypoint_field(kf: Keyframe, name: str):
    if name in ("xy", "octave", "response", "angle", "size"):
        return getattr(kf.keypoints, name)
    return getattr(kf, name)


def _write(f, entries: list, desc_dim: int | None, global_dim: int | None,
           corrections: dict[int, np.ndarray] | None = None) -> None:
    """Stream the keyframes `entries` ((segment, row) or (None, Keyframe)) and their loop `corrections`
    (kf id -> T_corrected_slam) into the open file `f`."""
    n = len(entries)
    # ---- per-keyframe arrays (in RAM)
    kf = {name: np.zeros((n, *(shape if shape is not None else (global_dim or 0,))), dtype)
          for name, (dtype, shape) in _KF_ARRAYS.items() if name not in ("kf_kp_offset", "kf_kept_offset")}
    n_kp, n_kept = np.zeros(n, np.int64), np.zeros(n, np.int64)
    present = {name: False for name in _FLAGS}
    for i, (seg, item) in enumerate(entries):
        if seg is None:
            k: Keyframe = item
            kf["kf_id"][i], kf["kf_stamp"][i], kf["kf_n_slam"][i] = k.id, k.stamp, k.n_slam
            kf["kf_T_map_cam"][i], kf["kf_K"][i], kf["kf_image_size"][i] = k.T_map_cam, k.K, k.image_size
            kf["kf_scale_factor"][i] = k.keypoints.scale_factor
            flags = sum(bit for name, bit in _FLAGS.items() if getattr(k, name) is not None)
            kf["kf_flags"][i] = flags
            if k.global_desc is not None:
                kf["kf_global_desc"][i] = k.global_desc
            n_kp[i], n_kept[i] = len(k.keypoints), _n_kept(k)
        else:
            a = seg.arrays
            for name in kf:
                if name == "kf_global_desc":
                    if a["kf_flags"][item] & _FLAGS["global_desc"]:
                        kf[name][i] = a[name][item]
                else:
                    kf[name][i] = a[name][item]
            n_kp[i] = a["kf_kp_offset"][item + 1] - a["kf_kp_offset"][item]
            n_kept[i] = a["kf_kept_offset"][item + 1] - a["kf_kept_offset"][item]
        for name, bit in _FLAGS.items():
            present[name] |= bool(kf["kf_flags"][i] & bit)
    if not present["global_desc"]:
        kf["kf_global_desc"] = np.zeros((0, 0), np.float32)
    corrections = corrections or {}
    has = np.array([kid in corrections for kid in kf["kf_id"].tolist()], bool)
    kf["kf_flags"] = np.where(has, kf["kf_flags"] | _CORRECTED, kf["kf_flags"] & ~np.uint8(_CORRECTED)).astype(np.uint8)
    kf[_CORRECTION_ARRAY] = (np.stack([corrections.get(kid, np.eye(4)) for kid in kf["kf_id"].tolist()])
                             .astype(np.float64) if has.any() else np.zeros((0, 4, 4), np.float64))
    kf["kf_kp_offset"] = np.concatenate([[0], np.cumsum(n_kp)]).astype(np.int64)
    kf["kf_kept_offset"] = np.concatenate([[0], np.cumsum(n_kept)]).astype(np.int64)
    P, Q = int(kf["kf_kp_offset"][-1]), int(kf["kf_kept_offset"][-1])

    # ---- layout of the flat arrays
    specs: dict[str, dict] = {}
    for name, arr in kf.items():
        specs[name] = {"per": "keyframe", "dtype": arr.dtype.str, "shape": list(arr.shape)}
    for per, table, rows in (("keypoint", _KP_ARRAYS, P), ("kept", _KEPT_ARRAYS, Q)):
        for name, (dtype, trail, _) in table.items():
            trail = trail if trail is not None else (desc_dim or 0,)
            count = rows if (name not in _FLAGS or present[name]) else 0
            specs[name] = {"per": per, "dtype": np.dtype(dtype).str, "shape": [count, *trail]}
    for spec in specs.values():
        spec["nbytes"] = int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
    header = {
        "format": "agnostic_reloc.KeyframeMap", "version": FORMAT_VERSION,
        "created": {"time_unix": datetime.datetime.now().timestamp(),
                    "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    "host": socket.gethostname(), "pid": os.getpid(),
                    "python": sys.version.split()[0], "numpy": np.__version__,
                    "writer": "agnostic_reloc.mapstore"},
        "n_keyframes": n, "n_keypoints": P, "n_kept": Q, "n_corrected": int(has.sum()),
        "descriptor_dim": desc_dim, "global_dim": global_dim,
        "file_size": 0, "arrays": specs,
    }
    for spec in specs.values():  # widest values: reserve room for the real ones
        spec["crc32"], spec["offset"] = 0xFFFFFFFF, 10 ** 15
    header["file_size"] = 10 ** 15
    offset = _align(_PREFIX.size + len(json.dumps(header).encode()))
    hlen = offset - _PREFIX.size  # the header text is space padded to this length
    for spec in specs.values():
        spec["offset"] = offset
        offset = _align(offset + spec["nbytes"])
    header["file_size"] = offset
    f.write(b"\0" * specs["kf_id"]["offset"])  # placeholder prefix + header, rewritten at the end

    # ---- stream the arrays, computing crcs
    def put(name: str, arr: np.ndarray, crc: int) -> int:
        arr = np.ascontiguousarray(arr)
        flat = arr.reshape(-1).view(np.uint8) if arr.size else np.zeros(0, np.uint8)
        for start in range(0, len(flat), _CHUNK_BYTES):
            chunk = flat[start:start + _CHUNK_BYTES]
            f.write(chunk)
            crc = zlib.crc32(chunk, crc)
        return crc

    for name, spec in specs.items():
        pos = f.tell()
        if pos > spec["offset"]:
            raise RuntimeError(f"map writer layout error at {name}")
        f.write(b"\0" * (spec["offset"] - pos))
        dtype, shape = np.dtype(spec["dtype"]), spec["shape"]
        if spec["per"] == "keyframe":
            crc = put(name, kf[name].astype(dtype, copy=False), 0)
        elif shape[0] == 0:
            crc = 0
        else:
            crc = _stream_flat(name, spec["per"], dtype, tuple(shape[1:]), entries, put)
        if f.tell() != spec["offset"] + spec["nbytes"]:
            raise RuntimeError(f"map writer wrote a wrong number of bytes for {name}")
        spec["crc32"] = crc
    f.write(b"\0" * (header["file_size"] - f.tell()))
    text = json.dumps(header).encode()
    if len(text) > hlen:
        raise RuntimeError("map header grew past its reserved space")
    text = text.ljust(hlen, b" ")
    f.seek(0)
    f.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(text), zlib.crc32(text), 0))
    f.write(text)


def _stream_flat(name: str, per: str, dtype: np.dtype, trail: tuple, entries: list, put) -> int:
    """Write flat array `name` of all entries in order; contiguous rows of one loaded file are copied in runs."""
    table = _KP_ARRAYS if per == "keypoint" else _KEPT_ARRAYS
    filler = table[name][2]
    off_name = "kf_kp_offset" if per == "keypoint" else "kf_kept_offset"
    crc = 0
    run: list = []  # [segment, first row, end row]

    def flush_run(crc: int) -> int:
        seg, r0, r1 = run
        a = seg.arrays
        lo, hi = int(a[off_name][r0]), int(a[off_name][r1])
        src = a[name]
        if len(src) == 0:  # the source file had no such field: filler rows
            return put(name, np.full((hi - lo, *trail), filler, dtype), crc)
        step = max(1, _CHUNK_BYTES // max(1, src[:1].nbytes))
        for s in range(lo, hi, step):
            crc = put(name, np.asarray(src[s:min(hi, s + step)], dtype), crc)
        return crc

    for seg, item in entries:
        if seg is not None:
            if run and run[0] is seg and run[2] == item:
                run[2] = item + 1
                continue
            if run:
                crc = flush_run(crc)
            run = [seg, item, item + 1]
            continue
        if run:
            crc = flush_run(crc)
            run = []
        k: Keyframe = item
        rows = len(k.keypoints) if per == "keypoint" else _n_kept(k)
        value = _keypoint_field(k, name)
        if value is None:
            arr = np.full((rows, *trail), filler, dtype)
        else:
            try:
                arr = np.asarray(value, dtype=dtype)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"keyframe {k.id}: cannot store {name} as {dtype}: {exc}") from exc
            if arr.shape != (rows, *trail):
                raise ValueError(f"keyframe {k.id}: {name} has shape {arr.shape}, expected {(rows, *trail)} "
                                 f"(was the keyframe modified after it was added?)")
        crc = put(name, arr, crc)
    if run:
        crc = flush_run(crc)
    return crc


# ---------------------------------------------------------------------------------------------------- read
def _read(path: str, mmap: bool, verify: bool) -> dict[str, np.ndarray]:
    def bad(problem: str) -> MapFormatError:
        return MapFormatError(f"map file {path}: {problem}")

    if not os.path.isfile(path):
        raise bad("does not exist (or is not a regular file)")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(_PREFIX.size)
        if len(prefix) < len(MAGIC) or prefix[: len(MAGIC)] != MAGIC:
            raise bad(f"wrong magic bytes {prefix[:len(MAGIC)]!r} (expected {MAGIC!r}): not a keyframe map")
        if len(prefix) < _PREFIX.size:
            raise bad(f"truncated: {size} bytes, shorter than the {_PREFIX.size}-byte prefix")
        _, version, hlen, hcrc, _ = _PREFIX.unpack(prefix)
        if version not in SUPPORTED_VERSIONS:
            raise bad(f"unsupported format version {version} (this build reads versions "
                      f"{', '.join(map(str, SUPPORTED_VERSIONS))}); update agnostic_reloc")
        text = f.read(hlen)
        if len(text) < hlen:
            raise bad(f"truncated: {size} bytes, the header alone needs {_PREFIX.size + hlen}")
        if zlib.crc32(text) != hcrc:
            raise bad("header crc32 mismatch (the header is corrupt)")
        try:
            header = json.loads(text.decode("utf-8"))
            specs = header["arrays"]
            file_size = int(header["file_size"])
            wanted = set(_KF_ARRAYS) | set(_KP_ARRAYS) | set(_KEPT_ARRAYS)
            missing = wanted - set(specs)
            if missing:
                raise KeyError(f"arrays {sorted(missing)}")
            wanted |= {_CORRECTION_ARRAY} & set(specs)  # optional; other unknown arrays are skipped
            layout = {name: (np.dtype(specs[name]["dtype"]), tuple(int(s) for s in specs[name]["shape"]),
                             int(specs[name]["offset"]), int(specs[name]["nbytes"]), int(specs[name]["crc32"]))
                      for name in wanted}
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise bad(f"malformed JSON header ({type(exc).__name__}: {exc})") from None
        if size < file_size:
            raise bad(f"truncated: {size} bytes on disk but the header says {file_size}")
        arrays: dict[str, np.ndarray] = {}
        for name, (dtype, shape, offset, nbytes, crc) in layout.items():
            if int(np.prod(shape)) * dtype.itemsize != nbytes or offset % ALIGN or offset + nbytes > size:
                raise bad(f"array {name} has an inconsistent layout (shape {shape}, offset {offset}, "
                          f"{nbytes} bytes, file {size} bytes)")
            big = name in _KP_ARRAYS or name in _KEPT_ARRAYS
            if big and mmap and nbytes > 0:
                arr = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
                if verify and _crc(arr) != crc:
                    raise bad(f"crc32 mismatch in array {name} (the file is corrupt)")
            else:
                f.seek(offset)
                buf = f.read(nbytes)
                if len(buf) != nbytes:
                    raise bad(f"truncated while reading array {name}")
                if zlib.crc32(buf) != crc:
                    raise bad(f"crc32 mismatch in array {name} (the file is corrupt)")
                arr = np.frombuffer(buf, dtype=dtype).reshape(shape)  # read-only, owns `buf`
            arrays[name] = arr
    n = layout["kf_id"][1][0]
    if layout["kf_kp_offset"][1] != (n + 1,) or layout["kf_kept_offset"][1] != (n + 1,):
        raise bad("keyframe offset arrays do not match the number of keyframes")
    if _CORRECTION_ARRAY in layout and layout[_CORRECTION_ARRAY][1] not in ((0, 4, 4), (n, 4, 4)):
        raise bad(f"array {_CORRECTION_ARRAY} has shape {layout[_CORRECTION_ARRAY][1]}, expected (0 or {n}, 4, 4)")
    for off, names in (("kf_kp_offset", _KP_ARRAYS), ("kf_kept_offset", _KEPT_ARRAYS)):
        o = arrays[off]
        if n and (o[0] != 0 or np.any(np.diff(o) < 0)):
            raise bad(f"{off} is not a non-decreasing offset array starting at 0")
        for name in names:
            if len(arrays[name]) not in (0, int(o[-1])):
                raise bad(f"array {name} has {len(arrays[name])} rows, the offsets say {int(o[-1])}")
    return arrays
