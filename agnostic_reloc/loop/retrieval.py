"""Image retrieval for loop closing / relocalization: a global descriptor pooled from the local ALIKED
features (no extra network) and a faiss index (exact inner product, HNSW past a size threshold).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterable

import faiss
import numpy as np

_BUILD_THREADS = faiss.omp_get_max_threads()  # faiss's default (all cores), used for index builds


@contextmanager
def omp_threads(n: int):
    """faiss's OpenMP threads for a block, then the caller's setting again. faiss and torch share one OpenMP
    runtime, whose thread count is per calling thread: left set, a search would run the caller's ALIKED and
    LightGlue on faiss's count (measured: a query's description 190 -> 310 ms at 2 threads)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(n))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)

GLOBAL_DEFAULT_CONF = {
    "pooling": "maxmin",  # maxmin: per-dim max and -min, standardised; mean: signed-power mean pooling
    "grid": (0, 0),  # (columns, rows) of a spatial grid pooled in addition to the whole image; (0, 0): none
    "grid_weight": 0.5,  # weight of each grid cell block relative to the whole-image block
    "power": 0.5,  # "mean" pooling: signed power normalisation of each block (0.5 = signed square root)
    "descriptor_dim": 128,  # local descriptor dim D, used only when `descriptors` is empty and 1-D
}
POOLINGS = ("maxmin", "mean")


def global_descriptor_dim(descriptor_dim: int = 128, conf: dict | None = None) -> int:
    """Length G of global_descriptor() for local descriptors of dim D (256 with the defaults)."""
    conf = {**GLOBAL_DEFAULT_CONF, **(conf or {})}
    gx, gy = conf["grid"]
    per_block = 2 * descriptor_dim if conf["pooling"] == "maxmin" else descriptor_dim
    return per_block * (1 + gx * gy)


def _pool(desc: np.ndarray, conf: dict) -> np.ndarray:
    """One block [D'] from descriptors [m x D], m >= 1, before the block weighting."""
    if conf["pooling"] == "maxmin":
        v = np.concatenate([desc.max(0), -desc.min(0)]).astype(np.float64)
        v -= v.mean()  # the common level of maxima (similar for every image) would dominate the cosine
    else:
        v = desc.mean(0, dtype=np.float64)
        v = np.sign(v) * np.abs(v) ** conf["power"]
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def global_descriptor(descriptors, xy, image_size: tuple[int, int], conf: dict | None = None) -> np.ndarray:
    """Codebook-free global descriptor pooled from the local features of one image (no extra network).

    "maxmin" (default): per-dimension max and (negated) min over all descriptors, centred (minus its own
    mean) and L2-normalised: on overlapping crops of real photos it separated same-place from
    different-place pairs much better than mean pooling (benchmarks in the retrieval report). "mean":
    signed-power mean pooling. With a grid, each cell is pooled the same way, weighted by `grid_weight`
    (empty cells are zero) and concatenated after the whole-image block.

    Args:
        descriptors: [M x D] float local descriptors (ALIKED, L2-normalised); numpy or torch.
        xy: [M x 2] pixel coordinates (x right, y down) of the descriptors.
        image_size: (W, H) pixels.
        conf: overrides of GLOBAL_DEFAULT_CONF.
    Returns:
        [G] float32 (G = global_descriptor_dim(D, conf)), unit norm, or all zeros when M == 0 (no
        features: it scores 0 against everything).
    """
    conf = {**GLOBAL_DEFAULT_CONF, **(conf or {})}
    unknown = set(conf) - set(GLOBAL_DEFAULT_CONF)
    if unknown:
        raise ValueError(f"unknown global descriptor options: {sorted(unknown)}")
    if conf["pooling"] not in POOLINGS:
        raise ValueError(f"unknown pooling '{conf['pooling']}'; choose from {POOLINGS}")
    desc, pts = _numpy(descriptors, np.float32), _numpy(xy, np.float32)
    if desc.ndim == 1 and desc.size == 0:
        desc = desc.reshape(0, int(conf["descriptor_dim"]))
    if desc.ndim != 2:
        raise ValueError(f"descriptors must be [M x D], got shape {desc.shape}")
    m, d = desc.shape
    if pts.size == 0 and m == 0:
        pts = pts.reshape(0, 2)
    if pts.shape != (m, 2):
        raise ValueError(f"xy must be [M x 2] with M={m} (one per descriptor), got shape {pts.shape}")
    w, h = (float(v) for v in image_size)
    if not (w > 0 and h > 0):
        raise ValueError(f"image_size must be positive (W, H), got {image_size}")
    gx, gy = (int(v) for v in conf["grid"])
    block = global_descriptor_dim(d, {**conf, "grid": (0, 0)})
    out = np.zeros((1 + gx * gy, block), np.float64)
    if m == 0:
        return out.reshape(-1).astype(np.float32)
    if not np.isfinite(desc).all():
        raise ValueError("descriptors contain non-finite values")
    out[0] = _pool(desc, conf)
    if gx * gy:
        cx = np.clip((pts[:, 0] / w * gx).astype(np.int64), 0, gx - 1)
        cy = np.clip((pts[:, 1] / h * gy).astype(np.int64), 0, gy - 1)
        cell = cy * gx + cx
        for c in range(gx * gy):
            mask = cell == c
            if mask.any():
                out[1 + c] = conf["grid_weight"] * _pool(desc[mask], conf)
    out = out.reshape(-1)
    n = np.linalg.norm(out)
    return (out / n if n > 0 else out).astype(np.float32)


def _numpy(x, dtype) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=dtype)


class RetrievalIndex:
    """Global descriptors by keyframe id, searchable by inner product (cosine for unit vectors).

    Exact search (faiss IndexFlatIP) up to `exact_below` entries, then HNSW (rebuilt once when the size
    crosses the threshold). Removal is lazy: removed entries are filtered from results and the index is
    compacted when they exceed `compact_fraction`. Thread-safe.
    """

    default_conf = {
        "dim": 256,  # vector dim G (global_descriptor_dim(128) = 256 for ALIKED with the default pooling)
        "exact_below": 20000,  # exact IndexFlatIP while the index holds fewer entries than this
        "hnsw_m": 32,  # HNSW graph degree (memory ~ 8 * hnsw_m bytes per entry on top of the vectors)
        "ef_construction": 64,  # HNSW build-time beam width
        "ef_search": 64,  # HNSW query-time beam width (raised to the number of candidates fetched)
        "search_margin": 16,  # extra candidates fetched beyond k before filtering exclusions
        "compact_fraction": 0.25,  # rebuild when removed entries exceed this fraction of the index
        "normalize": True,  # L2-normalise vectors on add and search
        "threads": 1,  # faiss OpenMP threads (1: a query never competes with the SLAM for cores)
    }

    def __init__(self, **conf) -> None:
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(f"unknown RetrievalIndex options: {sorted(unknown)}")
        self.conf = {**self.default_conf, **conf}
        if int(self.conf["dim"]) <= 0:
            raise ValueError(f"dim must be positive, got {self.conf['dim']}")
        self.dim = int(self.conf["dim"])
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self._index: faiss.Index = faiss.IndexFlatIP(self.dim)
        self._hnsw = False
        self._labels = np.zeros(0, np.int64)  # faiss label -> id
        self._stamps = np.zeros(0, np.float64)  # faiss label -> stamp (s), NaN when unknown
        self._alive = np.zeros(0, bool)  # faiss label -> not removed
        self._label_of: dict[int, int] = {}  # id -> faiss label

    # ------------------------------------------------------------------ content
    @property
    def mode(self) -> str:
        """'exact' or 'hnsw'."""
        return "hnsw" if self._hnsw else "exact"

    def __len__(self) -> int:
        with self._lock:
            return len(self._label_of)

    def __contains__(self, kid: object) -> bool:
        with self._lock:
            return kid in self._label_of

    def _prepare(self, vecs) -> np.ndarray:
        v = np.ascontiguousarray(_numpy(vecs, np.float32).reshape(-1, self.dim) if np.size(vecs) else
                                 np.zeros((0, self.dim), np.float32))
        if not np.isfinite(v).all():
            raise ValueError("retrieval vectors must be finite")
        if self.conf["normalize"] and len(v):
            n = np.linalg.norm(v, axis=1, keepdims=True)
            v = v / np.where(n > 0, n, 1.0)
        return np.ascontiguousarray(v, np.float32)

    def add(self, kid: int, vec, stamp: float = float("nan")) -> None:
        """Add vector [dim] for keyframe `kid` (ValueError on a duplicate id); stamp in seconds."""
        self.add_batch([kid], np.asarray(_numpy(vec, np.float32)).reshape(1, -1), [stamp])

    def add_batch(self, ids: Iterable[int], vecs, stamps: Iterable[float] | None = None) -> None:
        """Add vectors [N x dim] for keyframes `ids` [N] (stamps [N] seconds, optional)."""
        ids = [int(i) for i in ids]
        v = _numpy(vecs, np.float32)
        if v.ndim != 2 or v.shape != (len(ids), self.dim):
            raise ValueError(f"vectors must be [{len(ids)} x {self.dim}], got shape {v.shape}")
        st = np.full(len(ids), np.nan) if stamps is None else np.asarray(list(stamps), np.float64)
        if len(st) != len(ids):
            raise ValueError(f"{len(st)} stamps for {len(ids)} ids")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in one add_batch")
        v = self._prepare(v)
        with self._lock:
            dup = [i for i in ids if i in self._label_of]
            if dup:
                raise ValueError(f"ids already in the retrieval index: {dup[:5]}")
            start = len(self._labels)
            if not self._hnsw and start + len(ids) >= self.conf["exact_below"]:
                self._labels = np.concatenate([self._labels, np.asarray(ids, np.int64)])
                self._stamps = np.concatenate([self._stamps, st])
                self._alive = np.concatenate([self._alive, np.ones(len(ids), bool)])
                vectors = np.concatenate([self._vectors(), v])
                self._build(vectors)
            else:
                self._index.add(v)
                self._labels = np.concatenate([self._labels, np.asarray(ids, np.int64)])
                self._stamps = np.concatenate([self._stamps, st])
                self._alive = np.concatenate([self._alive, np.ones(len(ids), bool)])
            for j, kid in enumerate(ids):
                self._label_of[kid] = start + j

    def _vectors(self) -> np.ndarray:
        n = self._index.ntotal
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        return self._index.reconstruct_n(0, n)

    def _build(self, vectors: np.ndarray) -> None:
        """New faiss index over `vectors` (labels 0..N-1, same order as self._labels)."""
        if len(vectors) >= self.conf["exact_below"]:
            index = faiss.IndexHNSWFlat(self.dim, int(self.conf["hnsw_m"]), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(self.conf["ef_construction"])
            index.hnsw.efSearch = int(self.conf["ef_search"])
            self._hnsw = True
        else:
            index = faiss.IndexFlatIP(self.dim)
            self._hnsw = False
        with omp_threads(_BUILD_THREADS):  # building may use all cores
            index.add(np.ascontiguousarray(vectors, np.float32))
        self._index = index

    def remove(self, kid: int) -> None:
        """Remove keyframe `kid` (KeyError if absent); compaction happens lazily."""
        with self._lock:
            label = self._label_of.pop(int(kid), None)
            if label is None:
                raise KeyError(f"keyframe {kid} is not in the retrieval index")
            self._alive[label] = False
            dead = len(self._alive) - len(self._label_of)
            if dead > self.conf["compact_fraction"] * max(1, len(self._alive)):
                self._compact()

    def _compact(self) -> None:
        keep = np.flatnonzero(self._alive)
        vectors = self._vectors()[keep]
        self._labels, self._stamps, self._alive = self._labels[keep], self._stamps[keep], self._alive[keep]
        self._label_of = {int(k): i for i, k in enumerate(self._labels.tolist())}
        self._build(vectors)

    def rebuild(self, ids: Iterable[int], vecs, stamps: Iterable[float] | None = None) -> None:
        """Replace the whole content by vectors [N x dim] for `ids` (e.g. from KeyframeMap.global_descriptors())."""
        with self._lock:
            self._reset()
            ids = [int(i) for i in ids]
            if len(ids) >= self.conf["exact_below"]:
                v = _numpy(vecs, np.float32)
                if v.shape != (len(ids), self.dim):
                    raise ValueError(f"vectors must be [{len(ids)} x {self.dim}], got shape {v.shape}")
                if len(set(ids)) != len(ids):
                    raise ValueError("duplicate ids in rebuild")
                st = np.full(len(ids), np.nan) if stamps is None else np.asarray(list(stamps), np.float64)
                self._labels, self._stamps = np.asarray(ids, np.int64), st
                self._alive = np.ones(len(ids), bool)
                self._label_of = {k: i for i, k in enumerate(ids)}
                self._build(self._prepare(v))
            else:
                self.add_batch(ids, vecs, stamps)

    # ------------------------------------------------------------------ search
    def search(self, vec, k: int = 10, exclude: set[int] | Callable[[int], bool] | None = None,
               stamp: float | None = None, window: float = 0.0, covisible: Iterable[int] | None = None,
               query_id: int | None = None, min_id_gap: int = 0) -> list[tuple[int, float]]:
        """Top-k allowed candidates for query vector [dim], best first, as (id, score).

        Args:
            exclude: ids to skip, or a predicate id -> True to skip.
            stamp, window: skip entries whose stamp is within `window` seconds of the query stamp
                (entries without a stamp are kept).
            covisible: further ids to skip (e.g. the query keyframe's covisible keyframes).
            query_id, min_id_gap: skip ids with |id - query_id| < min_id_gap.
        Fetches k + margin candidates and doubles the fetch until k survive the filters or the index
        is exhausted.
        """
        if k <= 0:
            return []
        q = self._prepare(np.asarray(_numpy(vec, np.float32)).reshape(1, -1))
        skip_set = set(covisible or ())
        pred = None
        if callable(exclude):
            pred = exclude
        elif exclude is not None:
            skip_set |= set(int(i) for i in exclude)
        with self._lock:
            n = self._index.ntotal
            if n == 0:
                return []
            fetch = min(n, k + int(self.conf["search_margin"]) + len(skip_set) + (n - len(self._label_of)))
            with omp_threads(self.conf["threads"]):
                return self._search(q, k, fetch, n, skip_set, pred, stamp, window, query_id, min_id_gap)

    def _search(self, q, k, fetch, n, skip_set, pred, stamp, window, query_id, min_id_gap) -> list[tuple[int, float]]:
        """`search` under the lock: fetch, filter, and fetch more until k survive or the index is exhausted."""
        while True:
            if self._hnsw:
                params = faiss.SearchParametersHNSW()
                params.efSearch = max(int(self.conf["ef_search"]), fetch)
                scores, labels = self._index.search(q, fetch, params=params)
            else:
                scores, labels = self._index.search(q, fetch)
            scores, labels = scores[0], labels[0]
            ok = labels >= 0
            scores, labels = scores[ok], labels[ok]
            keep = self._alive[labels]
            ids = self._labels[labels]
            if stamp is not None and window > 0:
                near = np.abs(self._stamps[labels] - float(stamp)) < window  # NaN stamps compare False
                keep &= ~near
            if query_id is not None and min_id_gap > 0:
                keep &= np.abs(ids - int(query_id)) >= min_id_gap
            out = []
            for kid, s, kp in zip(ids.tolist(), scores.tolist(), keep.tolist()):
                if kp and kid not in skip_set and not (pred is not None and pred(kid)):
                    out.append((kid, float(s)))
                    if len(out) == k:
                        return out
            if fetch >= n:
                return out
            fetch = min(n, fetch * 2)

    def memory_bytes(self) -> int:
        """Approximate RAM of the index in bytes (vectors + graph + bookkeeping)."""
        with self._lock:
            n = self._index.ntotal
            graph = n * int(self.conf["hnsw_m"]) * 2 * 4 * 1.1 if self._hnsw else 0
            return int(n * self.dim * 4 + graph + n * (8 + 8 + 1) + 100 * len(self._label_of))
