"""Benchmark: per-stage latency and homography accuracy (AUC@3/5/10 px) of the matching pipelines.

Prints tables, writes `bench.json` and PNG plots into the output folder. Speed is measured here,
never in tests. Run: `agnostic-reloc bench --out bench_out`.
"""

from __future__ import annotations

import json
import logging
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..eval.homography_pairs import HomographyPair, make_pairs
from ..eval.metrics import homography_corner_error, pose_auc
from ..eval.photos import list_photos
from ..features.aliked_sparse import pad_to_multiple
from ..features.detectors import detect
from ..features.suppression import suppress
from ..geometry import estimate_homography
from ..matching.lightglue import LightGlueMatcher
from ..matching.pipeline import PairPipeline

logger = logging.getLogger(__name__)

AUC_THRESHOLDS = (3, 5, 10)
PAIR_CONF = {"difficulty_range": (0.5, 1.0)}  # hard pairs only: every pair gets at least half the max distortion

# The homography-accuracy grid: name -> pipeline conf. ORB (ORB-SLAM3-like) gets every lever;
# every other detector runs with the classic matcher and LightGlue at its own keypoints.
LEVERS = {
    "orb / ORB desc / Hamming NN": dict(detector="orb", matcher="nn"),
    "aliked / ALIKED / LightGlue": dict(detector="aliked", matcher="lightglue", sampling="full", filter_threshold=0.1),
    "orb / ALIKED full-res / LightGlue": dict(detector="orb", matcher="lightglue", sampling="full", filter_threshold=0.1),
    "orb / ALIKED octave / LightGlue": dict(detector="orb", matcher="lightglue", sampling="octave", filter_threshold=0.1),
    "orb / octave / LightGlue f0.01": dict(detector="orb", matcher="lightglue", filter_threshold=0.01),
    "orb / octave / radius NMS 3px / LightGlue": dict(detector="orb", matcher="lightglue", suppression="radius", filter_threshold=0.1),
    "orb / octave / octave<=3 / LightGlue": dict(detector="orb", matcher="lightglue", suppression="octave", filter_threshold=0.1),
    "orb / octave / fused LG+Hamming": dict(detector="orb", matcher="fused", filter_threshold=0.1),
    "orb / octave / fused f0.01": dict(detector="orb", matcher="fused", filter_threshold=0.01),
    "orb / octave levels 0,2,4,6 / LightGlue": dict(detector="orb", matcher="lightglue", filter_threshold=0.1,
                                                     octave_levels=(0, 2, 4, 6)),
    "orb / levels 0,2,4,6 / LightGlue f0.01": dict(detector="orb", matcher="lightglue", filter_threshold=0.01,
                                                    octave_levels=(0, 2, 4, 6)),
    "orb / levels 0,2,4,6 / fused f0.01": dict(detector="orb", matcher="fused", filter_threshold=0.01,
                                                octave_levels=(0, 2, 4, 6)),
    "orb-ss / ALIKED / LightGlue": dict(detector="orb-ss", matcher="lightglue", filter_threshold=0.1),
    "orb-ss / ORB desc / Hamming NN": dict(detector="orb-ss", matcher="nn"),
}
for _det in ("sift", "akaze", "gftt", "disk"):
    LEVERS[f"{_det} / ALIKED / LightGlue"] = dict(detector=_det, matcher="lightglue", filter_threshold=0.1)
    LEVERS[f"{_det} / ORB desc / Hamming NN"] = dict(detector=_det, matcher="nn")


def machine_info(device: torch.device) -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    try:
        import os

        info["cores"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------------------- accuracy
def evaluate_homography(pairs: list[HomographyPair], variants: dict[str, dict], device: str = "auto",
                        threshold: float = 3.0) -> dict:
    """AUC@3/5/10 of the corner error per variant; keypoints and features are cached across variants."""
    pipes = {name: PairPipeline(device=device, **conf) for name, conf in variants.items()}
    errors = {name: [] for name in variants}
    n_matches = {name: [] for name in variants}
    for pair in tqdm(pairs, desc="homography pairs"):
        kp_cache: dict = {}
        feat_cache: dict = {}
        for name, pipe in pipes.items():
            c = pipe.conf
            fkey = tuple((k, str(v)) for k, v in sorted(c.items())
                         if k not in ("filter_threshold", "depth_confidence", "width_confidence", "nn_ratio"))
            feats = feat_cache.get(fkey)
            if feats is None:
                kps = []
                for im in (pair.image0, pair.image1):
                    key = (c["detector"], c["max_keypoints"], id(im))
                    if key not in kp_cache:
                        kp_cache[key] = pipe.keypoints(im)
                    kps.append(kp_cache[key])
                feats = feat_cache[fkey] = (pipe.extract(pair.image0, kps[0]), pipe.extract(pair.image1, kps[1]))
            f0, f1 = feats
            matches, _ = pipe.match_features(f0, f1)
            n_matches[name].append(len(matches))
            err = float("inf")
            if len(matches) >= 4:
                res = estimate_homography(f0.keypoints.xy[matches[:, 0]], f1.keypoints.xy[matches[:, 1]], threshold)
                if res.success:
                    err = homography_corner_error(res.model, pair.H_0to1, pair.image0.shape[1::-1])
            errors[name].append(err)
    table = {}
    for name in variants:
        auc = pose_auc(errors[name], AUC_THRESHOLDS)
        table[name] = {f"AUC@{t}": round(a, 1) for t, a in zip(AUC_THRESHOLDS, auc)}
        table[name]["matches_median"] = float(np.median(n_matches[name]))
        table[name]["errors"] = [round(e, 3) if np.isfinite(e) else None for e in errors[name]]
    return table


# ---------------------------------------------------------------------------- latency
def _timeit(fn, repeat: int, device: torch.device) -> float:
    """Median wall time in ms over `repeat` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t))
    return float(np.median(times))


def measure_latency(image0: np.ndarray, image1: np.ndarray, device: str = "auto", repeat: int = 5,
                    keypoint_counts=(1000, 2000), backend: str = "torch") -> dict:
    """Per-stage latency at the image size given (640x480 in the benchmark) on one inference backend."""
    pipe = PairPipeline(detector="orb", device=device, backend=backend)
    dev = pipe.aliked.device
    out: dict = {}
    for n in keypoint_counts:
        k0 = detect(image0, "orb", n)
        k1 = detect(image1, "orb", n)
        row: dict = {"keypoints": len(k0)}
        ex = pipe.aliked
        row["detect_orb"] = _timeit(lambda: detect(image0, "orb", n), repeat, dev)
        from ..io.image import to_tensor

        t_img = to_tensor([image0], dev)
        row["dense_map"] = _timeit(lambda: ex.dense_maps(t_img), repeat, dev)
        fmap, _ = ex.dense_maps(t_img)
        xy = [torch.from_numpy(k0.xy)]
        row["sample"] = _timeit(lambda: ex.sample(fmap, xy), repeat, dev)
        row["backbone"] = _timeit(lambda: ex.backbone(pad_to_multiple(t_img)[0]), repeat, dev)
        row["sample_sparse"] = _timeit(lambda: ex.sample_sparse(t_img, xy), repeat, dev)  # backbone included
        row["describe_full"] = _timeit(lambda: ex.describe([image0], [k0], sampling="full"), repeat, dev)
        row["describe_octave"] = _timeit(lambda: ex.describe([image0], [k0], sampling="octave"), repeat, dev)
        row["suppress_radius"] = _timeit(lambda: suppress(k0, "radius", radius=3.0), repeat, dev)
        d0 = ex.describe([image0], [k0])[0]
        d1 = ex.describe([image1], [k1])[0]
        q = {"keypoints": k0.xy, "descriptors": d0, "image_size": image0.shape[1::-1]}
        c = {"keypoints": k1.xy, "descriptors": d1, "image_size": image1.shape[1::-1]}
        for label, conf in (("adaptive", {}), ("full", {"depth_confidence": -1, "width_confidence": -1})):
            m = LightGlueMatcher(device=device, backend=backend, **conf)
            row[f"lightglue_pair_{label}"] = _timeit(lambda: m.match(q, [c]), repeat, dev)
            for k in (5, 10):
                if label == "full" and k == 10 and dev.type == "cpu":
                    continue  # slow and adds nothing over K=5 on CPU
                r = max(1, repeat // 2)
                row[f"lightglue_K{k}_{label}_sequential"] = _timeit(
                    lambda: LightGlueMatcher.match(_with_batch(m, False), q, [c] * k), r, dev)
                row[f"lightglue_K{k}_{label}_batched"] = _timeit(
                    lambda: LightGlueMatcher.match(_with_batch(m, True), q, [c] * k), r, dev)
            m.conf["batch"] = "auto"
        res = pipe.matcher.match(q, [c])[0].matches.numpy()
        p0, p1 = k0.xy[res[:, 0]], k1.xy[res[:, 1]]
        row["ransac_homography"] = _timeit(lambda: estimate_homography(p0, p1, 3.0), repeat, dev)

        def loop_check(k=5):
            d = ex.describe([image0], [k0])[0]
            qq = {**q, "descriptors": d}
            for pm in pipe.matcher.match(qq, [c] * k):
                mm = pm.matches.numpy()
                if len(mm) >= 4:
                    estimate_homography(k0.xy[mm[:, 0]], k1.xy[mm[:, 1]], 3.0)

        row["loop_check_K5_end_to_end"] = _timeit(loop_check, max(1, repeat // 2), dev)
        out[n] = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if dev.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return out


def backend_agreement(image0: np.ndarray, image1: np.ndarray, backend: str, n: int = 1000) -> dict:
    """How an accelerated backend agrees with torch fp32: descriptor max |diff| and identical LightGlue matches."""
    k0, k1 = detect(image0, "orb", n), detect(image1, "orb", n)
    out = {}
    for name in ("torch", backend):
        pipe = PairPipeline(detector="orb", device="cpu", backend=name, matcher="lightglue")
        d0 = pipe.aliked.describe([image0], [k0])[0]
        d1 = pipe.aliked.describe([image1], [k1])[0]
        q = {"keypoints": k0.xy, "descriptors": d0, "image_size": image0.shape[1::-1]}
        c = {"keypoints": k1.xy, "descriptors": d1, "image_size": image1.shape[1::-1]}
        m = pipe.matcher.match(q, [c])[0].matches.numpy()
        out[name] = (d0.cpu().numpy(), {tuple(x) for x in m.tolist()})
    (da, ma), (db, mb) = out["torch"], out[backend]
    return {"descriptor_max_abs_diff": float(np.abs(da - db).max()),
            "matches_identical": round(len(ma & mb) / max(len(ma | mb), 1), 4), "matches_torch": len(ma)}


def _with_batch(matcher: LightGlueMatcher, batch: bool) -> LightGlueMatcher:
    matcher.conf["batch"] = batch
    return matcher


def check_half_precision(image0: np.ndarray, image1: np.ndarray) -> dict | None:
    """On CUDA: fp16 vs fp32 descriptors and matches (agreement), None elsewhere."""
    if not torch.cuda.is_available():
        return None
    from ..features.aliked import AlikedExtractor

    k0, k1 = detect(image0, "orb", 1000), detect(image1, "orb", 1000)
    out = {}
    res = {}
    for half in (False, True):
        ex = AlikedExtractor(device="cuda", half=half)
        d0, d1 = ex.describe([image0, image1], [k0, k1])
        m = LightGlueMatcher(device="cuda", half=half)
        pm = m.match({"keypoints": k0.xy, "descriptors": d0, "image_size": image0.shape[1::-1]},
                     [{"keypoints": k1.xy, "descriptors": d1, "image_size": image1.shape[1::-1]}])[0]
        res[half] = (d0, set(map(tuple, pm.matches.tolist())))
    out["descriptor_cosine_min"] = float((res[True][0] * res[False][0]).sum(-1).min())
    a, b = res[True][1], res[False][1]
    out["match_iou"] = len(a & b) / max(1, len(a | b))
    return out


def print_table(title: str, rows: dict[str, dict], columns: list[str]) -> str:
    width = max(len(r) for r in rows) + 2
    lines = [title, "| " + "method".ljust(width) + " | " + " | ".join(columns) + " |",
             "|" + "-" * (width + 2) + "|" + "|".join("-" * (len(c) + 2) for c in columns) + "|"]
    for name, row in rows.items():
        lines.append("| " + name.ljust(width) + " | " +
                     " | ".join(str(row.get(c, "")).rjust(len(c)) for c in columns) + " |")
    text = "\n".join(lines)
    print(text)
    return text


def main(out: str = "bench_out", n_pairs: int = 34, device: str = "auto", latency: bool = True,
         accuracy: bool = True, quick: bool = False, seed: int = 0, variants: dict | None = None,
         backends: list[str] | None = None) -> dict:
    """Run the benchmark and write `out/bench.json` (+ `out/homography_auc.png`).

    backends: inference backends to time (default: torch and every installed CPU runtime; CUDA: torch).
    """
    from ..inference.backends import BACKENDS, missing_packages
    from ..features.aliked import resolve_device

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    photos = list_photos()
    n_pairs = min(n_pairs, 4) if quick else n_pairs
    pairs = make_pairs(photos, n_pairs, seed=seed, conf=PAIR_CONF)
    result: dict = {"machine": machine_info(dev), "n_pairs": len(pairs), "seed": seed,
                    "pairs": [p.name for p in pairs]}
    if latency:
        if backends is None:
            backends = ["torch"] if dev.type == "cuda" else [b for b in BACKENDS if not missing_packages(b)]
        result["latency_ms"], result["agreement_with_torch"] = {}, {}
        im0, im1 = pairs[0].image0, pairs[0].image1
        for backend in backends:
            lat = measure_latency(im0, im1, device, repeat=2 if quick else 5,
                                  keypoint_counts=(1000,) if quick else (1000, 2000), backend=backend)
            result["latency_ms"][backend] = lat
            if backend != "torch":
                result["agreement_with_torch"][backend] = backend_agreement(im0, im1, backend)
        half = check_half_precision(im0, im1)
        if half is not None:
            result["fp16_vs_fp32"] = half
        counts = [n for n in result["latency_ms"][backends[0]] if not isinstance(n, str)]
        for n in counts:
            stages = [k for k in result["latency_ms"][backends[0]][n] if k != "keypoints"]
            print_table(f"\nLatency (ms, median) at {im0.shape[1]}x{im0.shape[0]}, {n} ORB keypoints, {dev}",
                        {s: {b: result["latency_ms"][b][n][s] for b in backends} for s in stages}, backends)
        for b, agr in result["agreement_with_torch"].items():
            print(f"{b} vs torch fp32: descriptors max |diff| {agr['descriptor_max_abs_diff']:.2e}, "
                  f"{100 * agr['matches_identical']:.1f}% identical matches ({agr['matches_torch']} matches)")
    if accuracy:
        table = evaluate_homography(pairs, variants or LEVERS, device)
        result["homography_auc"] = table
        print_table(f"\nHomography AUC on {len(pairs)} hard pairs (seed {seed}), poselib LO-RANSAC 3 px",
                    table, [f"AUC@{t}" for t in AUC_THRESHOLDS] + ["matches_median"])
        try:
            from ..eval.viz import plot_bars

            plot_bars({k: {c: v[c] for c in v if c.startswith("AUC")} for k, v in table.items()},
                      out_dir / "homography_auc.png", title=f"Homography AUC, {len(pairs)} hard pairs",
                      ylabel="AUC (%)")
        except Exception as exc:  # a plot must not lose the numbers
            logger.warning("plot failed: %s", exc)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out_dir / 'bench.json'}")
    return result
