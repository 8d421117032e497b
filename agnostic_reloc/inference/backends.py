"""Inference runtimes for the frozen networks: choice of backend, graph export and the export cache.

A network (or a piece of it) is exported once from its local weights to ONNX with dynamic sizes
and cached in a folder named by the hash of everything the graph depends on:

    <cache_dir>/graphs/<name>-<digest>/
        manifest.json         key (model name, weights sha256, torch/kornia/runtime versions) + sha256 per file
        <stem>.onnx           the graphs; OpenVINO and ONNX Runtime both compile ONNX directly

A folder whose manifest or checksums do not match is rebuilt (one log line). Folders are built
under a temporary name and renamed into place, so a crash or a concurrent process never leaves a
half-written graph behind. The runtimes run on CPU in float32 (the result equals torch's fp32 to
~1e-5); on CUDA the networks stay in torch (fp16 there).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

logger = logging.getLogger("agnostic_reloc")

BACKENDS = ("torch", "openvino", "onnxruntime")
AUTO_ORDER = ("openvino", "onnxruntime")  # backend='auto' on CPU: OpenVINO first (LightGlue ~2x ONNX Runtime)
RUNTIME_PACKAGES = {  # backend -> modules it needs (export goes through ONNX, hence `onnx` for both)
    "openvino": ("openvino", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
}
GRAPH_FORMAT = 4  # bump when the export code changes what a cached graph contains
OPSET = 17  # ONNX opset of the exported graphs

default_runtime_conf = {
    "backend": "auto",  # auto | torch | openvino | onnxruntime (auto: openvino > onnxruntime > torch on CPU)
    "threads": None,  # runtime intra-op threads per call; None: torch.get_num_threads() (one knob for the process)
    "precision": "f32",  # openvino CPU precision: f32 (equals torch) | bf16 (faster on AMX CPUs, ~1e-2 off)
    "cache_dir": None,  # exported graphs; None: $AGNOSTIC_RELOC_CACHE, else ~/.cache/agnostic_reloc
}


# ---------------------------------------------------------------------- backend choice
def cache_dir(folder: str | os.PathLike | None = None) -> Path:
    """The package's cache folder: `folder`, else $AGNOSTIC_RELOC_CACHE, else ~/.cache/agnostic_reloc."""
    return Path(folder or os.environ.get("AGNOSTIC_RELOC_CACHE") or Path.home() / ".cache" / "agnostic_reloc")


def missing_packages(backend: str) -> list[str]:
    """Modules that `backend` needs but that cannot be imported here (empty: the backend is usable)."""
    missing = []
    for module in RUNTIME_PACKAGES.get(backend, ()):
        try:
            importlib.import_module(module)
        except ImportError:  # also a broken install, or a module blocked with sys.modules[name] = None
            missing.append(module)
    return missing


def resolve_backend(name: str = "auto", device: str | torch.device = "cpu", order: Sequence[str] = AUTO_ORDER) -> str:
    """The backend that will run: `name` if usable on `device`, else torch with one warning.

    Args:
        name: auto | torch | openvino | onnxruntime.
        device: where the torch model lives; the runtimes are used on CPU only.
        order: what `auto` tries on CPU, first usable wins (a network measured fastest in torch lists torch).
    Returns:
        One of BACKENDS.
    """
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown inference backend '{name}'; choose from auto, {', '.join(BACKENDS)}")
    device = torch.device(device)
    if device.type != "cpu":
        if name not in ("auto", "torch"):
            warnings.warn(f"inference backend '{name}' runs on CPU only; using torch on {device}",
                          RuntimeWarning, stacklevel=2)
        return "torch"
    if name == "torch":
        return "torch"
    candidates = tuple(order) if name == "auto" else (name,)
    for backend in candidates:
        if backend == "torch" or not missing_packages(backend):
            return backend
    hint = " ".join(RUNTIME_PACKAGES[candidates[0]])
    what = "no CPU inference runtime is installed" if name == "auto" else \
        f"inference backend '{name}' needs {', '.join(missing_packages(name))}, which is not installed"
    warnings.warn(f"{what}; running the networks in torch (slower on CPU). Fix: pip install {hint}",
                  RuntimeWarning, stacklevel=2)
    return "torch"


def stage_threads(threads: int = 0) -> int:
    """Intra-op threads of each engine stage: `threads`, or 0 for half the cores this process may use (at least
    one). The keyframe stage and the loop stage run side by side (loop.worker, loop.runner), so together they use
    every core; one stage with all cores measured slower (2 cores: 199 + 317 ms a keyframe in turn vs 277 | 302
    ms side by side with one thread each)."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: half the cores), got {threads}")
    if threads:
        return int(threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, cores // 2)


@contextmanager
def intra_op_threads(n: int):
    """torch's intra-op threads of the calling thread for a block, then its previous count again (OpenMP keeps
    the count per thread, so other threads keep theirs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def runtime_threads(threads: int | None) -> int:
    """Intra-op threads of a runtime: `threads`, or torch's setting when None."""
    return int(threads) if threads else torch.get_num_threads()


def runtime_version(backend: str) -> str:
    return importlib.import_module(backend).__version__


# ---------------------------------------------------------------------- cache
def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's weights (names, dtypes, shapes and values of its state dict).

    Hashing the loaded tensors rather than a file keys a graph by what it computes: official or
    fine-tuned checkpoints, renamed copies and in-memory edits are all told apart correctly.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def graph_key(name: str, module: torch.nn.Module, backend: str) -> dict:
    """Everything an exported graph depends on: the cache key of `module` exported as `name` for `backend`."""
    import kornia

    return {"name": name, "format": GRAPH_FORMAT, "opset": OPSET, "weights_sha256": weights_digest(module),
            "torch": torch.__version__, "kornia": kornia.__version__,
            "backend": backend, "runtime": runtime_version(backend)}


def graph_folder(key: dict, folder: str | os.PathLike | None = None) -> Path:
    """Cache folder of the graph with `key` (it may not exist yet)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir(folder) / "graphs" / f"{key['name']}-{digest}"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_graph_folder(path: Path, key: dict) -> str | None:
    """Why the cached folder cannot be used (None: it is complete and intact)."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable manifest: {type(exc).__name__}"
    if manifest.get("key") != key:
        return "stale: built for another key"
    for file, digest in manifest.get("files", {}).items():
        if not (path / file).is_file():
            return f"{file} is missing"
        if _file_sha256(path / file) != digest:
            return f"{file} is corrupt (checksum mismatch)"
    return None


def cached_graph(key: dict, build: Callable[[Path], None], folder: str | os.PathLike | None = None) -> Path:
    """Folder holding the graph for `key`, built by `build(tmp_folder)` unless a valid copy is cached.

    `build` writes the graph files into the folder it is given; they are checksummed into
    manifest.json and the folder is renamed into place atomically.
    """
    target = graph_folder(key, folder)
    if target.exists():
        reason = check_graph_folder(target, key)
        if reason is None:
            return target
        logger.warning("Rebuilding the cached graph %s (%s).", target, reason)
    else:
        logger.info("Exporting %s for %s to %s (once; cached afterwards).", key["name"], key["backend"], target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        files = {p.name: _file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / "manifest.json").write_text(json.dumps({"key": key, "files": files}, indent=1, sort_keys=True))
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process renamed its copy into place first: use it if it is intact
            if check_graph_folder(target, key) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------- export
def export_onnx(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path,
                input_names: Sequence[str], output_names: Sequence[str], dynamic_axes: dict) -> None:
    """TorchScript-based ONNX export of `module` (in eval mode, fp32, CPU) with the given dynamic axes.

    The legacy exporter is used because it needs only the `onnx` package (the torch.export-based
    one needs onnxscript too) and it keeps shape arithmetic dynamic.
    """
    modes = {m: m.training for m in module.modules()}
    module.eval()  # export what inference runs; the modes of the (shared) modules are restored below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation and tracer chatter; results are tested instead
            torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=OPSET,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
    finally:
        for m, training in modes.items():
            m.training = training


# ---------------------------------------------------------------------- compiled graphs
_ov_core = None


class CompiledGraph:
    """An exported graph compiled for one runtime on CPU: numpy arrays in, numpy arrays out.

    Thread-safe, and calls from several threads run side by side, each with `threads` threads: OpenVINO takes a
    compiled copy that no other call is using (compiling one more, ~0.1 s a graph, the first time more calls run
    at once than copies exist; single calls ran ~7 % slower on one copy compiled for two streams); ONNX Runtime
    sessions take concurrent calls. Outputs are copies the caller owns.
    """

    def __init__(self, path: Path, backend: str, threads: int, precision: str = "f32") -> None:
        self.path, self.backend = path, backend
        self.threads, self.precision = threads, precision
        self._lock = threading.Lock()
        if backend == "openvino":
            global _ov_core
            import openvino as ov

            if _ov_core is None:
                _ov_core = ov.Core()
            self._model = _ov_core.read_model(str(path))
            self._free = [self._compile()]  # (compiled model, infer request) not in use now
        elif backend == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            # no busy-waiting between ops: on a robot the spare cycles belong to tracking and mapping
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.input_names = [i.name for i in self.session.get_inputs()]
        else:
            raise ValueError(f"no compiled graphs for backend '{backend}'")

    def _compile(self):
        compiled = _ov_core.compile_model(self._model, "CPU", {
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": self.precision,  # the default is bf16 on AMX CPUs: ~1e-2 off torch
            "PERFORMANCE_HINT": "LATENCY",  # one stream: a call gets every thread of its copy
            # no pinning: pinned, two copies' threads shared one core (two calls at once took 2x as long each)
            # and competed with torch's threads there
            "ENABLE_CPU_PINNING": False,
        })
        return compiled, compiled.create_infer_request()

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        inputs = tuple(np.ascontiguousarray(x, dtype=np.float32) for x in inputs)
        if self.backend == "onnxruntime":
            return self.session.run(None, dict(zip(self.input_names, inputs)))
        with self._lock:
            slot = self._free.pop() if self._free else None
        if slot is None:  # another call runs on every copy: one more copy (kept for later)
            slot = self._compile()
        compiled, request = slot
        try:
            request.infer(inputs)
            return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]
        finally:
            with self._lock:
                self._free.append(slot)


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """fp32 CPU contiguous numpy view (no copy when x already is one)."""
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


def load_graphs(name: str, module: torch.nn.Module, stems: Sequence[str], export: Callable[[Path], None],
                backend: str, conf: dict) -> list[CompiledGraph] | None:
    """Export (once, cached) and compile the graphs `stems` of `module` for `backend`.

    Args:
        name: graph family in the cache, e.g. 'aliked-n16-dense'.
        module: the torch module whose weights the graphs hold (hashed into the cache key).
        stems: graph names; `export(folder)` must write `<stem>.onnx` for each into `folder`.
        backend: openvino | onnxruntime.
        conf: runtime conf (see default_runtime_conf).
    Returns:
        One CompiledGraph per stem, or None (with one warning) when export or compilation failed,
        so that the caller keeps running in torch.
    """
    try:
        folder = cached_graph(graph_key(name, module, backend), export, conf["cache_dir"])
        threads = runtime_threads(conf["threads"])
        return [CompiledGraph(folder / f"{stem}.onnx", backend, threads, conf["precision"]) for stem in stems]
    except Exception as exc:  # a robot keeps running in torch rather than stopping on an export problem
        first = str(exc).splitlines()[0] if str(exc) else ""
        warnings.warn(f"could not build the {backend} graph '{name}' ({type(exc).__name__}: {first}); "
                      f"running it in torch", RuntimeWarning, stacklevel=3)
        return None


def compile_module(name: str, module: torch.nn.Module, stems: Sequence[str], export: Callable[[Path], None],
                   conf: dict, auto_order: Sequence[str] = AUTO_ORDER) -> tuple[str, list[CompiledGraph] | None]:
    """(backend that will run, its graphs or None for torch) for a module on its own device and dtype.

    The runtimes run the fp32 module on CPU; an export or compile failure falls back to torch (one warning).
    `auto_order`: what backend 'auto' tries on CPU for this module (see resolve_backend).
    """
    param = next(module.parameters())
    backend = resolve_backend(conf["backend"], param.device, auto_order)
    if backend == "torch":
        return backend, None
    if param.dtype != torch.float32:
        raise ValueError(f"the {backend} backend runs fp32 networks; got {param.dtype}")
    graphs = load_graphs(name, module, stems, export, backend, conf)
    return (backend, graphs) if graphs is not None else ("torch", None)
