"""Fine-tune LightGlue to be detector-agnostic (arXiv 2602.08430 recipe).

Starts from the official ALIKED (or DISK) LightGlue; the descriptor network stays frozen (eval mode, no
gradients: descriptors are computed by the dataset under no_grad) and only LightGlue trains. Recipe defaults:
Adam, lr 5e-5 constant for `decay_start` epochs then exponential decay per epoch, early exit disabled (no
confidence-head loss), nearby keypoints removed at training time (radius NMS in the dataset).

Distributed: launched by `torchrun`, every process trains on its shard (DistributedSampler) and DDP averages the
gradients (gloo on CPU, nccl on CUDA); only rank 0 writes checkpoints and TensorBoard logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..conf import merge_conf
from ..matching.lightglue import build_network
from . import losses as losses_mod
from .data import build_dataset, collate
from .forward import forward_train

logger = logging.getLogger("agnostic_reloc.train")

default_conf = {
    "seed": 0,  # seeds python, numpy, torch and the data order
    "model": {
        "features": "aliked",  # official LightGlue to start from: aliked | disk (its descriptor net stays frozen)
        "weights": None,  # start from a fine-tuned checkpoint instead of the official weights
    },
    "data": {"name": "homography", "batch_size": 4, "num_workers": 0},  # see data.build_dataset
    "loss": {},  # see losses.default_conf (gamma, balancing, train_confidence, confidence_weight)
    "train": {
        "epochs": 10,  # epochs to run
        "steps_per_epoch": None,  # optimizer steps per epoch (None: the whole dataset once)
        "max_steps": None,  # stop after this many steps in total (None: epochs * steps_per_epoch)
        "optimizer": "adam",  # adam | adamw
        "lr": 5e-5,  # learning rate (paper: 5e-5)
        "weight_decay": 0.0,  # AdamW / Adam weight decay
        "decay_start": 5,  # epochs at constant lr before the exponential decay (paper: 5)
        "decay_factor": 0.7943,  # lr multiplier per epoch after decay_start (10 ** -0.1: /10 every 10 epochs)
        "grad_clip": 1.0,  # max gradient norm (0 = off)
        "amp": True,  # mixed precision: float16 autocast + GradScaler on CUDA, bfloat16 autocast on CPU
        "device": "auto",  # cpu | cuda | auto
        "checkpoint_every": 500,  # steps between checkpoints (one is always written at the end)
        "keep_checkpoints": 3,  # numbered checkpoints kept (checkpoint_last.pth is always kept)
        "log_every": 10,  # steps between TensorBoard scalars
        "resume": False,  # continue from out_dir/checkpoint_last.pth (step count, optimizer, scheduler, rng)
        "match_threshold": 0.1,  # score threshold of the batch recall / precision metrics
    },
}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN / inf; training stopped and the last good checkpoint was kept."""


class TrainModel(torch.nn.Module):
    """LightGlue wrapped so that DDP sees one forward: padded batch -> forward_train outputs."""

    def __init__(self, net: torch.nn.Module, confidence: bool) -> None:
        super().__init__()
        self.net = net
        self.confidence = confidence

    def forward(self, batch: dict) -> dict:
        return forward_train(self.net, batch, confidence=self.confidence)


def _dist_info() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _device(name: str, local_rank: int) -> torch.device:
    from ..features.aliked import resolve_device

    dev = resolve_device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank if torch.cuda.device_count() > local_rank else 0)
    return dev


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written checkpoint


def lr_lambda(decay_start: int, decay_factor: float):
    """Scheduler factor per epoch: 1 for epochs < decay_start, then decay_factor ** (epoch - decay_start + 1)."""
    return lambda epoch: 1.0 if epoch < decay_start else decay_factor ** (epoch - decay_start + 1)


class _SkipSampler(torch.utils.data.Sampler):
    """The indices of `sampler` from position `start` (to resume inside an epoch)."""

    def __init__(self, sampler, start: int) -> None:
        self.sampler, self.start = sampler, start

    def __iter__(self):
        return iter(list(self.sampler)[self.start:])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.start)


def train(conf: dict, out_dir: str | os.PathLike, photos: list | None = None) -> dict:
    """Train; returns {step, epoch, checkpoint, losses (per step, this rank), skipped, seen (sample names), model}.

    conf: see `default_conf` (a YAML file loaded as a dict). out_dir: checkpoints (checkpoint_XXXXXX.pth,
    checkpoint_last.pth), TensorBoard logs (tb/) and the resolved config.yaml.
    """
    conf = dict(conf or {})
    data = {**default_conf["data"], **(conf.pop("data", None) or {})}  # the rest is checked by build_dataset
    conf = {**merge_conf(default_conf, conf, "trainer conf keys", free=("loss",)), "data": data}  # loss: losses.py
    tc = conf["train"]
    out_dir = Path(out_dir)
    rank, world, local_rank = _dist_info()
    distributed = world > 1
    device = _device(tc["device"], local_rank)
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")  # env:// from torchrun
    if device.type == "cuda":
        torch.cuda.set_device(device)
    is_main = rank == 0
    random.seed(conf["seed"] + rank)
    np.random.seed(conf["seed"] + rank)
    torch.manual_seed(conf["seed"])  # same init everywhere (weights come from a file anyway)

    dconf = dict(conf["data"])
    batch_size, num_workers = int(dconf.pop("batch_size", 4)), int(dconf.pop("num_workers", 0))
    kconf = dict(dconf.get("keypoints") or {})
    kconf.setdefault("device", "cpu" if num_workers > 0 else str(device))
    aliked_for = {"aliked": "aliked-n16", "disk": None}[conf["model"]["features"]]
    if aliked_for and kconf.setdefault("aliked_model", aliked_for) not in ("aliked-n16", "aliked-n16rot"):
        logger.warning("LightGlue '%s' was trained on aliked-n16 descriptors; training on %s descriptors",
                       conf["model"]["features"], kconf["aliked_model"])
    if conf["model"]["features"] == "disk":
        raise ValueError("model.features disk needs DISK descriptors at arbitrary keypoints, which this package "
                         "does not sample; use aliked (ALIKED descriptors, frozen)")
    dconf["keypoints"] = kconf
    dataset = build_dataset(dconf, photos)

    net = build_network(conf["model"]["features"], conf["model"]["weights"]).to(device).train()
    loss_fn = losses_mod.LightGlueLoss(conf["loss"])
    confidence = bool(loss_fn.conf["train_confidence"])
    net.token_confidence.requires_grad_(confidence)  # unused parameters would stall DDP
    model: torch.nn.Module = TrainModel(net, confidence)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in net.parameters() if p.requires_grad]
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(tc["optimizer"])
    if opt_cls is None:
        raise ValueError(f"train.optimizer must be adam or adamw, got {tc['optimizer']!r}")
    optimizer = opt_cls(params, lr=float(tc["lr"]), weight_decay=float(tc["weight_decay"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(int(tc["decay_start"]), float(tc["decay_factor"])))
    use_amp = bool(tc["amp"]) and device.type == "cuda"
    # bfloat16 on CPU: float32's exponent range, so no loss scaling; 2.2x faster steps on our AMX CPU
    cpu_bf16 = bool(tc["amp"]) and device.type == "cpu"
    amp_dtype = torch.float16 if use_amp else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    if distributed:
        sampler = torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=True, seed=conf["seed"],
                                                      drop_last=True)
    else:
        sampler = None
    per_rank = len(sampler) if sampler is not None else len(dataset)
    steps_per_epoch = int(tc["steps_per_epoch"] or max(1, per_rank // batch_size))
    max_steps = int(tc["max_steps"] or tc["epochs"] * steps_per_epoch)

    step = 0
    elapsed = 0.0  # training wall time of earlier runs (resume), for the weights card
    last_ckpt = out_dir / "checkpoint_last.pth"
    if tc["resume"]:
        if not last_ckpt.is_file():
            raise FileNotFoundError(f"train.resume is set but {last_ckpt} does not exist")
        ckpt = torch.load(last_ckpt, map_location="cpu", weights_only=True)
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if use_amp and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        step = int(ckpt["step"])
        elapsed = float(ckpt.get("elapsed_s", 0.0))
        rng = ckpt.get("rng")
        if rng and rng.get("rank") == rank:
            _set_rng_state(rng)
        logger.info("resumed from %s at step %d", last_ckpt, step)

    writer = None
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        import yaml

        (out_dir / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"))

    def checkpoint() -> Path | None:
        if not is_main:
            return None
        state = {"model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict() if use_amp else {}, "step": step, "epoch": step // steps_per_epoch,
                 "conf": conf, "rng": {**_rng_state(), "rank": rank},
                 "elapsed_s": elapsed + time.monotonic() - started, "device": str(device), "world_size": world}
        path = out_dir / f"checkpoint_{step:06d}.pth"
        _save(state, path)
        _save(state, last_ckpt)
        numbered = sorted(out_dir.glob("checkpoint_[0-9]*.pth"))
        for old in numbered[:max(0, len(numbered) - int(tc["keep_checkpoints"]))]:
            old.unlink()
        logger.info("checkpoint %s", path)
        return path

    history: list[float] = []
    seen: list[str] = []
    skipped = 0
    started = time.monotonic()
    bar = tqdm(total=max_steps, initial=step, desc="train", disable=not is_main, dynamic_ncols=True)
    try:
        while step < max_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            dataset.set_epoch(epoch)
            if sampler is not None:
                sampler.set_epoch(epoch)
                base = sampler
            else:
                g = torch.Generator().manual_seed(conf["seed"] * 100003 + epoch)
                base = torch.utils.data.RandomSampler(dataset, generator=g)
            loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                                 sampler=_SkipSampler(base, offset * batch_size), collate_fn=collate,
                                                 drop_last=False)
            for batch in loader:
                if step >= max_steps or step // steps_per_epoch != epoch:
                    break
                usable = batch is not None and not batch.get("empty")
                if batch is not None:
                    skipped += batch["n_skipped"]
                if distributed:  # every rank must take part in every step: skip it together if one has no data
                    flag = torch.tensor([float(usable)], device=device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                    usable = bool(flag.item())
                if not usable:
                    logger.warning("a batch had no usable sample: %s", (batch or {}).get("skip_reasons", [])[:2])
                    continue
                seen += batch["name"]
                tensors = {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp or cpu_bf16):
                    pred = model(tensors)
                out = loss_fn(pred, tensors["gt_matches0"], tensors["gt_matches1"])
                loss = out["total"]
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"loss is {loss.item()} at step {step} (samples {batch['name']}, detectors {batch['detector']}); "
                        f"training stopped, last good checkpoint kept: "
                        f"{last_ckpt if last_ckpt.is_file() else 'none written yet'}")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if tc["grad_clip"]:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, float(tc["grad_clip"]))
                scaler.step(optimizer)
                scaler.update()
                step += 1
                history.append(float(loss.item()))
                if is_main:
                    bar.update(1)
                    bar.set_postfix(loss=f"{history[-1]:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
                    if writer is not None and (step % int(tc["log_every"]) == 0 or step == 1):
                        met = losses_mod.match_metrics(pred["log_assignment"][-1], tensors["gt_matches0"],
                                                       pred["mask0"], pred["mask1"], float(tc["match_threshold"]))
                        writer.add_scalar("loss/total", history[-1], step)
                        for i, v in enumerate(out["nll_layers"].tolist()):
                            writer.add_scalar(f"loss/nll_layer{i}", v, step)
                        if "confidence" in out:
                            writer.add_scalar("loss/confidence", float(out["confidence"]), step)
                        writer.add_scalar("lr", optimizer.param_groups[0]["lr"], step)
                        writer.add_scalar("match/recall", met["recall"], step)
                        writer.add_scalar("match/precision", met["precision"], step)
                        writer.add_scalar("data/skipped", skipped, step)
                if step % steps_per_epoch == 0:
                    scheduler.step()  # per-epoch schedule
                if step % int(tc["checkpoint_every"]) == 0 and step < max_steps:
                    checkpoint()
        final = checkpoint()
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if skipped:
        logger.warning("%d bad samples were skipped on rank %d", skipped, rank)
    return {"step": step, "epoch": step // steps_per_epoch, "checkpoint": final, "losses": history,
            "skipped": skipped, "seen": seen, "model": net}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def export_weights(ckpt: str | os.PathLike, out: str | os.PathLike, half: bool = True,
                   card: dict | None = None) -> tuple[Path, str]:
    """Write the LightGlue state dict of a training checkpoint (float16 if `half`), `<out>.sha256` and a card.

    The card `<out stem>.json` holds the sha256, the training config, step and wall time of the checkpoint, the
    commit of this code, and `card` (e.g. the evaluation); with it the file is shippable weights
    (`weights.resolve_lightglue`). Returns (path, sha256). The file loads with `LightGlueMatcher(weights=path)`.
    """
    from ..weights import load_state_dict, sha256

    raw = torch.load(ckpt, map_location="cpu", weights_only=True) if Path(ckpt).is_file() else {}
    meta = raw if isinstance(raw, dict) and "model" in raw else {}
    state = load_state_dict(ckpt)  # accepts a checkpoint dict ('model' entry) or a plain state dict
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save({k: v.contiguous() for k, v in state.items()}, out)
    digest = sha256(out)
    out.with_name(out.name + ".sha256").write_text(f"{digest}  {out.name}\n")
    info = {"file": out.name, "sha256": digest, "dtype": "float16" if half else "float32",
            "features": (meta.get("conf") or {}).get("model", {}).get("features", "aliked"),
            "step": meta.get("step"), "epoch": meta.get("epoch"), "train_wall_s": meta.get("elapsed_s"),
            "train_device": meta.get("device"), "commit": _git_commit(), "config": meta.get("conf"), **(card or {})}
    out.with_suffix(".json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    return out, digest


def param_digest(net: torch.nn.Module) -> str:
    """sha256 over all parameters (to compare replicas)."""
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()
