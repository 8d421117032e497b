"""`agnostic-reloc doctor`: what this install has and lacks, one line per component, each with its fix.

    component      need      status   what was found                      fix
    weights        required  ok       8 official files, sha256 verified
    device         optional  warn     CPU only (no CUDA): ~4 s/keyframe   install a CUDA build of torch ...

Status is `ok`, `missing` (not there, or broken) or `warn` (usable, with a caveat to know about). A
`required` component that is missing makes `main` return 1: the official weights, torch, the package's
own imports, a configured fine-tuned checkpoint that does not load, and rclpy with the RMW when `ros`
is asked for. Everything else has a fallback or is only needed for one job (ORB-SLAM3, the test photos,
RViz): it is reported, never fatal. Nothing is built or downloaded here.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

OK, MISSING, WARN = "ok", "missing", "warn"
MIN_FREE_GB = 2.0  # free disk below this for maps is a warning
ROS_DISTRO_HINT = "source /opt/ros/<distro>/setup.bash"
DEFAULT_RMW = "rmw_fastrtps_cpp"  # the default RMW of ROS 2 Kilted, and the one requirements-ros.txt installs
# package modules a node or a replay imports (imported here to find a broken install before the robot does)
CORE_MODULES = ("agnostic_reloc.loop.engine", "agnostic_reloc.io.params", "agnostic_reloc.io.messages",
                "agnostic_reloc.map.store", "agnostic_reloc.matching.pipeline")


@dataclass
class Check:
    """One line of the doctor's table."""

    component: str
    status: str  # ok | missing | warn
    detail: str  # what was found (or not), one line
    fix: str = ""  # the command (or step) that fixes it; empty when nothing is to be done
    required: bool = False  # missing and required: the doctor fails

    @property
    def fatal(self) -> bool:
        return self.required and self.status == MISSING


def _importable(module: str) -> str | None:
    """None if `module` imports, else one line saying why not."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def _has_real_module(module: str, attribute: str) -> bool:
    """`module` imports and is the real one (a folder named `launch/` in the cwd is an empty namespace package)."""
    try:
        return hasattr(importlib.import_module(module), attribute)
    except Exception:
        return False


# ---------------------------------------------------------------------------------------- the checks
def check_core() -> list[Check]:
    bad = [(m, why) for m in CORE_MODULES if (why := _importable(m))]
    if bad:
        return [Check("agnostic_reloc", MISSING, f"{bad[0][0]} does not import ({bad[0][1]})",
                      "./setup.sh  (or: pip install -r requirements.txt && pip install --no-deps -e .)", True)]
    import agnostic_reloc

    return [Check("agnostic_reloc", OK, f"core imports ({Path(agnostic_reloc.__file__).parent})", "", True)]


def check_torch() -> list[Check]:
    why = _importable("torch")
    if why:
        return [Check("torch", MISSING, why, "./setup.sh  (installs torch==2.13.0, CPU build)", True),
                Check("device", MISSING, "no torch, no device", "", False)]
    import torch

    out = [Check("torch", OK, f"torch {torch.__version__}", "", True)]
    if torch.cuda.is_available():
        out.append(Check("device", OK, f"cuda: {torch.cuda.get_device_name(0)} (fp16 ALIKED and LightGlue)"))
    else:
        cpu = "torch is a CPU build" if torch.version.cuda is None else f"torch for CUDA {torch.version.cuda}, no GPU seen"
        out.append(Check("device", WARN, f"CPU only ({cpu}, {os.cpu_count()} cores): expect seconds per keyframe "
                         f"(~3.4 s at 640x480 on 2 cores), fewer keyframes than ORB-SLAM3 makes when moving",
                         "install a CUDA build of torch into .venv (README: torch, CPU and GPU)"))
    return out


def check_weights() -> list[Check]:
    from ..weights import OFFICIAL, WEIGHTS_DIR_ENV, WeightsError, official_path

    bad = []
    for name in OFFICIAL:
        try:
            official_path(name)
        except WeightsError as exc:
            bad.append((name, str(exc)))
    where = f"${WEIGHTS_DIR_ENV}={os.environ[WEIGHTS_DIR_ENV]}" if os.environ.get(WEIGHTS_DIR_ENV) else "wheels"
    if not bad:
        return [Check("weights", OK, f"{len(OFFICIAL)} official files, sha256 verified ({where})", "", True)]
    # every WeightsError of official_path ends with the pip command that restores the file
    fix = "; ".join(dict.fromkeys(text[text.find("pip install"):] if "pip install" in text else "./setup.sh"
                                  for _, text in bad))
    if os.environ.get(WEIGHTS_DIR_ENV):
        fix = f"copy the official files into ${WEIGHTS_DIR_ENV}, or unset it and use the wheels: {fix}"
    return [Check("weights", MISSING, f"{len(bad)} of {len(OFFICIAL)} official files missing or corrupt "
                  f"({', '.join(n for n, _ in bad)}; {where}): {bad[0][1]}", fix, True)]


def check_configured_weights(engine_conf: dict) -> list[Check]:
    setting = (engine_conf.get("matcher") or {}).get("weights")
    from ..weights import SHIPPED_DIR, WeightsError, load_state_dict, resolve_lightglue

    try:
        path = resolve_lightglue(setting)
        if path is None:
            return [Check("weights (configured)", OK, "official LightGlue weights", "", True)]
        n = len(load_state_dict(path))
    except WeightsError as exc:
        return [Check("weights (configured)", MISSING, str(exc),
                      "fix engine.matcher.weights in the parameter file (official = the official weights)", True)]
    verified = path.parent == SHIPPED_DIR or path.with_name(path.name + ".sha256").is_file()
    checked = "sha256 verified" if verified else "no checksum beside it"
    return [Check("weights (configured)", OK, f"{setting} -> {path}: {n} tensors, {checked}", "", True)]


def check_runtime(engine_conf: dict) -> list[Check]:
    if _importable("torch"):
        return []
    import torch

    from ..inference.backends import (
        BACKENDS,
        RUNTIME_PACKAGES,
        missing_packages,
        resolve_backend,
    )

    name = engine_conf.get("backend", "auto") or "auto"
    device = engine_conf.get("device", "auto") or "auto"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    usable = [b for b in BACKENDS if not missing_packages(b)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            chosen = resolve_backend(name, device)
        except ValueError as exc:
            return [Check("inference runtime", MISSING, str(exc), "set engine.backend to auto", True)]
    detail = f"backend {name} on {device} -> {chosen} (usable here: {', '.join(usable)})"
    if caught:
        pkgs = " ".join(RUNTIME_PACKAGES.get(name if name in RUNTIME_PACKAGES else "openvino", ()))
        return [Check("inference runtime", WARN, f"{detail}; {str(caught[0].message).split('; ')[0]}",
                      f"pip install {pkgs}")]
    return [Check("inference runtime", OK, detail)]


def check_ros(required: bool) -> list[Check]:
    """rclpy and the RMW it loads, probed in a child process: rcl exits the process (code 102) when
    $RMW_IMPLEMENTATION names an RMW it cannot load, so an in-process import could kill the doctor."""
    rmw = os.environ.get("RMW_IMPLEMENTATION") or DEFAULT_RMW
    source = "$RMW_IMPLEMENTATION" if os.environ.get("RMW_IMPLEMENTATION") else "default"
    fix_rclpy = f"pip install -r requirements-ros.txt  (or {ROS_DISTRO_HINT})"
    fix_rmw = ("pip install ros-rmw-fastrtps-cpp" if rmw == DEFAULT_RMW else
               f"install {rmw} (apt install ros-<distro>-{rmw.replace('_', '-')}) or unset RMW_IMPLEMENTATION")
    if importlib.util.find_spec("rclpy") is None:
        return [Check("rclpy", MISSING, "not importable", fix_rclpy, required),
                Check("rmw", MISSING, f"{rmw} ({source}): no rclpy to load it", fix_rclpy, required)]
    probe = ("import os, rclpy; from rclpy.utilities import get_rmw_implementation_identifier as rmw; "
             "print(os.path.dirname(os.path.dirname(rclpy.__file__))); print(rmw())")
    try:
        res = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=120)
        lines, err = res.stdout.split(), res.returncode
    except subprocess.TimeoutExpired:
        lines, err = [], "timeout"
    if err == 0 and len(lines) == 2:
        return [Check("rclpy", OK, f"rclpy ({lines[0]})", "", required),
                Check("rmw", OK, f"{lines[1]} ({source})", "", required)]
    why = (res.stderr.strip().splitlines() or [f"exit code {err}"])[-1] if err != "timeout" else "import timed out"
    why = re.sub(r"^\[\w+\] \[[\d.]+\] \[\w+\]: ", "", why)  # rcl's "[ERROR] [stamp] [rcl]: " prefix
    rmw_problem = "RMW" in why or "rmw" in why
    return [Check("rclpy", WARN if rmw_problem else MISSING, f"import rclpy fails: {why}",
                  "" if rmw_problem else fix_rclpy, required),
            Check("rmw", MISSING, f"{rmw} ({source}) does not load" if rmw_problem else f"{rmw} ({source}): unknown",
                  fix_rmw, required)]


def check_ros_optional() -> list[Check]:
    out = []
    launch_ok = _has_real_module("launch", "LaunchDescription") and _has_real_module("launch_ros", "actions")
    out.append(Check("launch / launch_ros", OK if launch_ok else MISSING,
                     "importable: ros2 launch agnostic_reloc reloc.launch.py" if launch_ok else
                     "not importable (no PyPI wheels): start the node with "
                     "reloc_node --ros-args --params-file config/reloc.yaml",
                     "" if launch_ok else ROS_DISTRO_HINT))
    mf = _has_real_module("message_filters", "TimeSynchronizer")
    out.append(Check("message_filters", OK if mf else MISSING, "used for stamp sync" if mf else
                     "fallback in use: in-package stamp sync (io/sync.py, same semantics)",
                     "" if mf else ROS_DISTRO_HINT))
    cvb = _has_real_module("cv_bridge", "CvBridge")
    out.append(Check("cv_bridge", OK if cvb else MISSING, "importable (the node uses its own codecs anyway)" if cvb
                     else "fallback in use: in-package image codecs (io/contract.py)",
                     "" if cvb else ROS_DISTRO_HINT))
    tf = _has_real_module("tf2_ros", "TransformBroadcaster")
    out.append(Check("tf2_ros", OK if tf else MISSING, "loop correction broadcast on /tf" if tf else
                     "the loop correction is published on ~/correction only, not on /tf",
                     "" if tf else ROS_DISTRO_HINT))
    rviz = shutil.which("rviz2")
    out.append(Check("rviz2", OK if rviz else MISSING, f"{rviz}: ros2 launch agnostic_reloc reloc.launch.py rviz:=true"
                     if rviz else "not installed, nothing to watch the node with on this machine",
                     "" if rviz else "sudo apt install ros-<distro>-rviz2  (on the machine you watch from)"))
    return out


def check_orbslam3() -> list[Check]:
    out = []
    why = _importable("pyorbslam3")
    out.append(Check("pyorbslam3", OK if not why else MISSING, "real ORB-SLAM3 (bridge, compare-orbslam3)" if not why
                     else f"for orbslam3-bridge / compare-orbslam3 ({why})",
                     "" if not why else "pip install -r requirements-orbslam3.txt  (x86-64 Linux)"))
    from ..eval.photos import photo_dir
    from ..inference.backends import cache_dir
    from ..orbslam3.vocabulary import DEFAULT_VOCAB_NAME, read_vocabulary_header

    path = cache_dir() / DEFAULT_VOCAB_NAME
    build = f"agnostic-reloc build-orb-vocabulary {photo_dir()} --out {path}"
    if not path.is_file():
        out.append(Check("ORB vocabulary", MISSING, f"{path} not built yet (orbslam3-bridge builds it on "
                         f"first use, tens of seconds)", build))
        return out
    try:  # a quick check: the header and the first nodes (the whole file takes seconds)
        head = read_vocabulary_header(path, max_nodes=2000)
    except ValueError as exc:
        out.append(Check("ORB vocabulary", MISSING, str(exc), build))
        return out
    out.append(Check("ORB vocabulary", OK, f"{path}: k={head['k']} L={head['L']}, {head['words']} words"))
    return out


def check_disk(folder: str | os.PathLike) -> list[Check]:
    folder = Path(folder).resolve()
    probe = folder
    while not probe.exists() and probe != probe.parent:  # a map folder that does not exist yet
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 1e9
    if free < MIN_FREE_GB:
        return [Check("disk", WARN, f"{free:.1f} GB free at {folder} (< {MIN_FREE_GB:g} GB): a saved map of "
                      f"thousands of keyframes may not fit", "free disk space, or set map_path elsewhere")]
    return [Check("disk", OK, f"{free:.1f} GB free at {folder}")]


def check_photos() -> list[Check]:
    from ..eval.photos import IMAGE_SUFFIXES, photo_dir

    folder = photo_dir()
    n = sum(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()) if folder.is_dir() else 0
    if n:
        return [Check("photos (opencv-doc)", OK, f"{n} images in {folder} (tests, benchmarks, ORB vocabulary)")]
    return [Check("photos (opencv-doc)", MISSING, f"not needed on a robot: no images in {folder} (tests and "
                  f"benchmarks skip without them)", "sudo apt-get install opencv-doc")]


# ---------------------------------------------------------------------------------------- the report
def run_checks(config: str | os.PathLike | None = None, ros: bool = False,
               map_dir: str | os.PathLike | None = None) -> list[Check]:
    """Every check, in table order.

    Args:
        config: the node's parameter file (config/reloc.yaml); its engine weights, backend, device and map_path
            are checked. None: engine defaults.
        ros: rclpy and the RMW are required (else reported, not required).
        map_dir: folder for maps (free disk); default: the folder of the config's map_path, else the cwd.
    """
    checks = check_core()
    core_ok = not checks[0].fatal
    engine_conf, map_path = {}, ""
    if config is not None and core_ok:
        from ..io.params import engine_conf as to_engine_conf
        from ..io.params import load_params

        try:
            params = load_params(config)
            engine_conf, map_path = to_engine_conf(params), str(params.get("map_path") or "")
        except (ValueError, OSError) as exc:
            checks.append(Check("config", MISSING, str(exc), "fix the parameter file (or leave out --config)", True))
    steps: list[Callable[[], list[Check]]] = [check_torch]
    if core_ok:
        steps += [check_weights, lambda: check_configured_weights(engine_conf), lambda: check_runtime(engine_conf)]
    steps += [lambda: check_ros(ros), check_ros_optional]
    if core_ok:
        steps += [check_orbslam3, check_photos]
    steps.append(lambda: check_disk(map_dir or (Path(map_path).parent if map_path else Path.cwd())))
    for step in steps:
        checks += step()
    return checks


def format_table(checks: list[Check]) -> str:
    """The checks as an aligned text table (component, need, status, detail, fix)."""
    rows = [("component", "need", "status", "what was found", "fix")]
    rows += [(c.component, "required" if c.required else "optional", c.status, c.detail, c.fix) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for k, r in enumerate(rows):
        head = "  ".join(v.ljust(w) for v, w in zip(r[:3], widths))
        lines.append(f"{head}  {r[3]}" + (f"\n{' ' * (sum(widths) + 6)}  fix: {r[4]}" if r[4] and k else ""))
    return "\n".join(lines)


def main(config: str | None = None, ros: bool = False, map_dir: str | None = None,
         json_path: str | None = None) -> int:
    """Print the table (and write it as JSON); 1 when a required component is missing, else 0."""
    logging.getLogger("faiss").setLevel(logging.WARNING)  # faiss logs each SIMD build it tries at INFO
    checks = run_checks(config, ros, map_dir)
    print(format_table(checks))
    fatal = [c.component for c in checks if c.fatal]
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps({"ok": not fatal, "checks": [asdict(c) for c in checks]}, indent=1))
    if fatal:
        print(f"\nmissing and required: {', '.join(fatal)} (see the fix lines above)")
        return 1
    warn = [c.component for c in checks if c.status != OK]
    print("\nall required components present" + (f"; optional or degraded: {', '.join(warn)}" if warn else ""))
    return 0
