"""Retrieval and map-store scaling on synthetic data: RetrievalIndex build time, query latency, recall@10
vs exact search and RAM at 1k/10k/100k keyframes, plus the RAM of a memory-mapped KeyframeMap
extrapolated to 100k keyframes x 1000 keypoints.

Synthetic unit vectors (i.i.d. Gaussian, normalised) are the hardest case for HNSW (no cluster structure); dim 256 = global_descriptor_dim(128);
queries are noisy copies of stored vectors (a revisit). Usage:

    python benchmarks/retrieval_scaling.py --out bench_out [--sizes 1000 10000 100000] [--map-keyframes 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from agnostic_reloc.loop.retrieval import RetrievalIndex, global_descriptor_dim  # noqa: E402


def rss_bytes(kind: str = "VmRSS") -> int:
    """Resident memory of this process (bytes) from /proc/self/status: VmRSS (all), RssAnon (heap,
    not file backed) or RssFile (resident pages of mapped files: page cache, reclaimable)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(kind + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{kind} not found in /proc/self/status")


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench_index(n: int, dim: int, n_queries: int, conf: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = unit_vectors(rng, n, dim)
    picks = rng.choice(n, n_queries, replace=n_queries > n)
    q = x[picks] + 0.3 / np.sqrt(dim) * rng.standard_normal((n_queries, dim), dtype=np.float32)
    stamps = np.arange(n, dtype=np.float64)
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    index = RetrievalIndex(dim=dim, **conf)
    index.add_batch(range(n), x, stamps)
    build_s = time.perf_counter() - t0
    rss1 = rss_bytes()
    exact = RetrievalIndex(dim=dim, exact_below=10**12)
    exact.add_batch(range(n), x)
    for v in q[:5]:  # warm-up
        index.search(v, 10)
    lat, lat_excl, recall, top1 = [], [], [], []
    for v, pick in zip(q, picks):
        t = time.perf_counter()
        res = index.search(v, 10)
        lat.append(time.perf_counter() - t)
        t = time.perf_counter()
        index.search(v, 10, stamp=float(pick), window=50.0)  # temporal exclusion of +-50 neighbours
        lat_excl.append(time.perf_counter() - t)
        truth = {i for i, _ in exact.search(v, 10)}
        recall.append(len(truth & {i for i, _ in res}) / 10)
        top1.append(bool(res) and res[0][0] == pick)
    lat_ms, lat_excl_ms = np.array(lat) * 1e3, np.array(lat_excl) * 1e3
    return {
        "n": n, "dim": dim, "mode": index.mode, "build_s": build_s,
        "query_p50_ms": float(np.percentile(lat_ms, 50)), "query_p90_ms": float(np.percentile(lat_ms, 90)),
        "query_excl_p50_ms": float(np.percentile(lat_excl_ms, 50)),
        "query_excl_p90_ms": float(np.percentile(lat_excl_ms, 90)),
        "recall_at_10": float(np.mean(recall)), "top1_self": float(np.mean(top1)),
        "rss_delta_mb": (rss1 - rss0) / 2**20, "index_memory_mb": index.memory_bytes() / 2**20,
    }


# ---------------------------------------------------------------------------------------------------- map RAM
def build_map_file(path: str, n_kf: int, n_kp: int, desc_dim: int, seed: int = 0) -> None:
    from agnostic_reloc.features.keypoints import Keypoints
    from agnostic_reloc.map.store import KeyframeMap
    from agnostic_reloc.types import Keyframe

    rng = np.random.default_rng(seed)
    g_dim = global_descriptor_dim(desc_dim)
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    m = KeyframeMap()
    for i in range(n_kf):
        kp = Keypoints(rng.uniform([0, 0], [639, 479], (n_kp, 2)), rng.integers(0, 8, n_kp),
                       rng.random(n_kp, np.float32), rng.uniform(0, 360, n_kp), np.full(n_kp, 12.0))
        T = np.eye(4)
        T[:3, 3] = rng.normal(size=3)
        g = unit_vectors(rng, 1, g_dim)[0]
        m.add(Keyframe(
            id=i, stamp=0.1 * i, keypoints=kp, T_map_cam=T, K=K, image_size=(640, 480),
            map_points=rng.standard_normal((n_kp, 3), dtype=np.float32),
            map_point_ids=rng.integers(0, 10**7, n_kp), kept=np.arange(n_kp),
            descriptors=rng.standard_normal((n_kp, desc_dim), dtype=np.float32).astype(np.float16),
            global_desc=g))
        if len(m) == 500 or i == n_kf - 1:  # keep this process small: flush to disk in parts
            if os.path.exists(path):
                old = KeyframeMap.load(path)
                for kf in m:
                    old.add(kf)
                m = old
            m.save(path)
            m = KeyframeMap()


def measure_map(path: str) -> dict:
    """Run in a fresh process: RSS before/after loading `path` with mmap and doing typical accesses."""
    import gc

    from agnostic_reloc.map.store import KeyframeMap

    gc.collect()
    anon0, file0 = rss_bytes("RssAnon"), rss_bytes("RssFile")
    t = time.perf_counter()
    m = KeyframeMap.load(path, mmap=True)
    load_s = time.perf_counter() - t
    anon_load = rss_bytes("RssAnon")
    ids, g = m.global_descriptors()
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for kid in rng.choice(ids, 50):  # what a verification step touches: descriptors + map points
        kf = m.get(int(kid))
        float(np.asarray(kf.descriptors, np.float32).sum()) + float(np.nansum(kf.map_points))
    get_ms = (time.perf_counter() - t) / 50 * 1e3
    gc.collect()
    return {"n_keyframes": len(m), "load_s": load_s, "anon_rss_after_load_mb": (anon_load - anon0) / 2**20,
            "anon_rss_after_50_gets_mb": (rss_bytes("RssAnon") - anon0) / 2**20,
            "file_rss_after_50_gets_mb": (rss_bytes("RssFile") - file0) / 2**20,
            "memory_bytes_mb": m.memory_bytes() / 2**20,
            "get_and_touch_ms": get_ms, "file_mb": os.path.getsize(path) / 2**20}


def bench_map(n_kf: int, n_kp: int, desc_dim: int, target: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "map.agrl")
        t = time.perf_counter()
        build_map_file(path, n_kf, n_kp, desc_dim)
        save_s = time.perf_counter() - t
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--measure-map", path],
                             check=True, capture_output=True, text=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
    scale = target / n_kf
    res.update({
        "keypoints_per_keyframe": n_kp, "build_and_save_s": save_s, "extrapolated_to": target,
        "extrapolated_anon_rss_mb": res["anon_rss_after_load_mb"] * scale,
        "extrapolated_memory_bytes_mb": res["memory_bytes_mb"] * scale,
        "extrapolated_file_gb": res["file_mb"] * scale / 1024,
        "note": "linear extrapolation of the anonymous (non file-backed) RSS that a fresh process gains by an "
                "mmap load; pages of the file touched by reads are page cache (reclaimable, file_rss), "
                "which grows with the keyframes actually read, not with the map size",
    })
    return res


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["n"] for r in results]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(n, [r["query_p50_ms"] for r in results], "o-", label="p50")
    ax.plot(n, [r["query_p90_ms"] for r in results], "s--", label="p90")
    ax.plot(n, [r["query_excl_p90_ms"] for r in results], "^:", label="p90, +-50 s temporal exclusion")
    for r in results:
        ax.annotate(r["mode"], (r["n"], r["query_p90_ms"]), textcoords="offset points", xytext=(4, 4))
    ax.axhline(10, color="r", lw=0.8, label="10 ms budget")
    ax.set_xscale("log")
    ax.set_xlabel("keyframes in the index")
    ax.set_ylabel("query latency (ms)")
    ax.set_title(f"RetrievalIndex top-10, dim {results[0]['dim']}, 1 thread")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_out", help="output folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000], help="index sizes")
    parser.add_argument("--dim", type=int, default=global_descriptor_dim(128), help="global descriptor dim")
    parser.add_argument("--queries", type=int, default=200, help="queries per size")
    parser.add_argument("--map-keyframes", type=int, default=2000, help="keyframes in the map-RAM test (0: skip)")
    parser.add_argument("--map-keypoints", type=int, default=1000, help="keypoints per keyframe in the map test")
    parser.add_argument("--map-target", type=int, default=100000, help="extrapolate map RAM to this many keyframes")
    parser.add_argument("--measure-map", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_map:
        print(json.dumps(measure_map(args.measure_map)))
        return
    os.makedirs(args.out, exist_ok=True)
    results = []
    print(f"{'n':>7} {'mode':>5} {'build s':>8} {'p50 ms':>7} {'p90 ms':>7} {'p90 excl':>8} "
          f"{'recall@10':>9} {'top1':>5} {'RSS MB':>7}")
    for n in args.sizes:
        r = bench_index(n, args.dim, args.queries, {})
        results.append(r)
        print(f"{n:>7} {r['mode']:>5} {r['build_s']:>8.2f} {r['query_p50_ms']:>7.2f} {r['query_p90_ms']:>7.2f} "
              f"{r['query_excl_p90_ms']:>8.2f} {r['recall_at_10']:>9.3f} {r['top1_self']:>5.2f} "
              f"{r['rss_delta_mb']:>7.1f}", flush=True)
    report = {"index": results, "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    if args.map_keyframes > 0:
        mres = bench_map(args.map_keyframes, args.map_keypoints, 128, args.map_target)
        report["map"] = mres
        print(f"\nKeyframeMap, {mres['n_keyframes']} keyframes x {args.map_keypoints} keypoints, mmap load: "
              f"file {mres['file_mb']:.0f} MB, load {mres['load_s']:.2f} s, anonymous RSS +{mres['anon_rss_after_load_mb']:.1f}"
              f" MB after load (+{mres['anon_rss_after_50_gets_mb']:.1f} MB after 50 random reads; file pages "
              f"+{mres['file_rss_after_50_gets_mb']:.1f} MB), memory_bytes() "
              f"{mres['memory_bytes_mb']:.1f} MB, get+touch {mres['get_and_touch_ms']:.2f} ms")
        print(f"  linear extrapolation to {args.map_target} keyframes: anonymous RSS ~{mres['extrapolated_anon_rss_mb']:.0f} MB "
              f"(memory_bytes() ~{mres['extrapolated_memory_bytes_mb']:.0f} MB), file ~"
              f"{mres['extrapolated_file_gb']:.1f} GB on disk")
    with open(os.path.join(args.out, "retrieval_scaling.json"), "w") as f:
        json.dump(report, f, indent=2)
    plot(results, os.path.join(args.out, "retrieval_scaling.png"))
    print(f"\nwrote {args.out}/retrieval_scaling.json and retrieval_scaling.png")


if __name__ == "__main__":
    main()
