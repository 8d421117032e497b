"""DBoW2 ORB vocabularies in ORB-SLAM3's text format, built from real photos.

ORB-SLAM3 needs a vocabulary (its ORBvoc.txt) for loop closing and relocalization; the pip wheel
`pyorbslam3` cannot download it here, so we build one from the ORB descriptors of real photos.

File format (what TemplatedVocabulary::loadFromTextFile reads):

    line 1      "k L scoring weighting"          here "k L 0 0": L1-norm scoring, TF-IDF weighting
    line i+1    "parent is_leaf d0 ... d31 w"    node i = 1, 2, ... in breadth-first order (root 0 implied)

d0..d31 are the 32 bytes of the 256-bit descriptor (decimal), is_leaf is 1 for words, w is the word's
idf = ln(N_images / n_images_with_word) (0 for inner nodes). Parents precede their children. The file
must NOT end with a newline: the loader loops on `!eof()` and would read one more, empty, garbage node.

Tree: hierarchical k-medians on Hamming distance as in DBoW2 (k-means++ seeding, bitwise-majority
centroids), branching `k`, depth `levels`; a node whose descriptors have at most k distinct values gets
one child word per distinct descriptor. Every descriptor is routed exactly as DBoW2's `transform` routes
it (nearest child, first on ties), so the idf counts are those ORB-SLAM3 would see; empty clusters are
dropped. Distances are exact popcounts of packed 64-bit words (no multi-threaded BLAS: its threads thrash
on busy cores). Writing goes to `path + ".tmp-<pid>"`, is fsynced and `os.replace`d over `path`.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from pathlib import Path

import numpy as np

DESC_BYTES = 32  # ORB: 256 bits
SCORING_L1 = 0  # DBoW2 ScoringType L1_NORM (as ORBvoc.txt)
WEIGHTING_TF_IDF = 0  # DBoW2 WeightingType TF_IDF (as ORBvoc.txt)
KMEANS_ITERS = 10  # max k-medians iterations per node (stops earlier when assignments are stable)
DEFAULT_VOCAB_NAME = "orbvoc_opencvdoc_k10_L5.txt"
_TOKENS = 2 + DESC_BYTES + 1  # parent, is_leaf, 32 bytes, weight
_BYTE_STR = [str(i) for i in range(256)]
_BYTE_SET = frozenset(_BYTE_STR)


def _check_params(k: int, levels: int, n_features: int) -> None:
    if int(k) != k or not 2 <= k <= 20:
        raise ValueError(f"k (branching factor) must be an integer in [2, 20] (ORB-SLAM3 loads k <= 20), got {k}")
    if int(levels) != levels or not 1 <= levels <= 10:
        raise ValueError(f"levels must be an integer in [1, 10] (ORB-SLAM3 loads L <= 10), got {levels}")
    if int(n_features) != n_features or n_features < 1:
        raise ValueError(f"n_features must be a positive integer, got {n_features}")


def orb_features(path: str | os.PathLike, n_features: int = 2000) -> np.ndarray:
    """ORB-SLAM3-like ORB descriptors of one image file: [N x 32] uint8 (N <= n_features).

    Keypoints from `detect(image, "orb")` (8 levels x 1.2, FAST 20 topped up at 7, Harris ranking),
    rBRIEF descriptors at them from `orb_descriptors`. ValueError if the file is missing or unreadable.
    """
    from agnostic_reloc.features.detectors import detect
    from agnostic_reloc.io.image import load_image
    from agnostic_reloc.matching.hamming import orb_descriptors

    image = load_image(path)
    desc, valid = orb_descriptors(image, detect(image, "orb", n_features))
    return np.ascontiguousarray(desc[valid])


_PC8 = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1).astype(np.uint8)
_PC16 = (_PC8[:, None] + _PC8[None, :]).reshape(-1)  # popcount of every uint16 (hi * 256 + lo)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of uint64 rows [..., 4] (one 256-bit descriptor each) summed over the last axis, int32."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).sum(-1, dtype=np.int32)
    return _PC16[x.view(np.uint16)].sum(-1, dtype=np.int32)


def _hamming(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Hamming distances [n x m] between packed descriptors X [n x 4] and C [m x 4] (uint64 words)."""
    return _popcount(X[:, None, :] ^ C[None, :, :])


def _majority(bits: np.ndarray, assign: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Bitwise majority of each cluster: (packed centroids [m' x 4] uint64, ids of the m' non-empty clusters).

    `bits` [n x 256] float32 0/1. Small nodes use a one-hot product (below OpenBLAS's threading threshold),
    big ones per-cluster sums: no multi-threaded BLAS call, whose threads thrash on busy cores.
    """
    count = np.bincount(assign, minlength=m)
    used = np.flatnonzero(count)
    if len(bits) * m <= 1000:
        onehot = (assign[None, :] == used[:, None]).astype(np.float32)
        ones = onehot @ bits
    else:
        ones = np.stack([bits[assign == c].sum(0) for c in used])
    major = 2 * ones >= count[used, None]  # ties -> 1, as DBoW2's FORB::meanValue
    return np.packbits(major, axis=1).view(np.uint64), used


def _kmedians(X: np.ndarray, bits: np.ndarray, k: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary k-medians of n descriptors (packed X [n x 4] uint64, bits [n x 256] float32 0/1).

    Returns (centroids C [m x 4] uint64, assign [n], Hamming distance to C[assign] [n]), m <= k, no empty
    cluster, `assign` against the returned C (nearest, first on ties: DBoW2's routing). k-means++ seeding
    on Hamming distance (a duplicate of a seed is never picked), bitwise-majority centroids. Exact integer
    arithmetic throughout and no BLAS (whose threads thrash on busy cores for these many small products).
    """
    n = len(X)
    seeds = [int(rng.integers(n))]
    dmin = _popcount(X ^ X[seeds[0]])
    for _ in range(1, k):
        w = np.cumsum(dmin.astype(np.float64) ** 2)
        if w[-1] <= 0:
            break
        seeds.append(int(min(np.searchsorted(w, rng.random() * w[-1], side="right"), n - 1)))
        dmin = np.minimum(dmin, _popcount(X ^ X[seeds[-1]]))
    C = X[seeds]
    D = _hamming(X, C)
    assign = np.argmin(D, axis=1)
    for _ in range(KMEANS_ITERS):
        major, used = _majority(bits, assign, len(C))
        C = C.copy()
        C[used] = major  # an emptied cluster keeps its old centroid
        D = _hamming(X, C)
        new = np.argmin(D, axis=1)
        stable = np.array_equal(new, assign)
        assign = new
        if stable:
            break
    dist = D[np.arange(n), assign]
    used = np.flatnonzero(np.bincount(assign, minlength=len(C)))
    if len(used) < len(C):  # drop empty clusters, keeping order (DBoW2 routes to the first nearest child)
        C = C[used]
        assign = np.searchsorted(used, assign)
    return C, assign, dist


def _build_tree(desc: np.ndarray, k: int, levels: int, seed: int):
    """Hierarchical k-medians: (parent [M], is_leaf [M], node desc [M x 32] uint8, leaf of each descriptor [N]).

    Node 0 is the root; ids are breadth-first, so parent[i] < i.
    """
    rng = np.random.default_rng(seed)
    desc = np.ascontiguousarray(desc, dtype=np.uint8)
    packed = desc.view(np.uint64)  # [N x 4]
    bits = np.unpackbits(desc, axis=1)  # [N x 256] uint8
    parent, is_leaf, node_words = [-1], [False], [np.zeros(DESC_BYTES // 8, np.uint64)]
    leaf_of = np.full(len(desc), -1, np.int64)
    queue = deque([(0, 0, np.arange(len(desc)))])  # (node id, depth, descriptor indices)
    while queue:
        nid, depth, idx = queue.popleft()
        X = packed[idx]
        if len(idx) <= k:  # one child word per distinct descriptor
            first = np.argmax((X[:, None, :] == X[None, :, :]).all(-1), axis=1)  # first identical row
            uniq = np.flatnonzero(first == np.arange(len(idx)))
            C, assign, dist = X[uniq], np.searchsorted(uniq, first), np.zeros(len(idx), np.int32)
        else:
            C, assign, dist = _kmedians(X, bits[idx].astype(np.float32), k, rng)
        for c in range(len(C)):
            sel = assign == c
            members = idx[sel]
            child = len(parent)
            leaf = depth + 1 >= levels or dist[sel].max() == 0  # all members equal the centroid: a word
            parent.append(nid)
            is_leaf.append(leaf)
            node_words.append(C[c])
            if leaf:
                leaf_of[members] = child
            else:
                queue.append((child, depth + 1, members))
    node_desc = np.ascontiguousarray(np.asarray(node_words, np.uint64)).view(np.uint8)  # [M x 32]
    return np.asarray(parent, np.int64), np.asarray(is_leaf, bool), node_desc, leaf_of


def _idf(n_nodes: int, leaf_of: np.ndarray, image_of: np.ndarray, n_images: int) -> np.ndarray:
    """Per-node weight: ln(n_images / images containing the word) for leaves, 0 elsewhere."""
    pairs = np.unique(leaf_of * n_images + image_of)
    n_i = np.bincount(pairs // n_images, minlength=n_nodes)
    weight = np.zeros(n_nodes, np.float64)
    hit = n_i > 0
    weight[hit] = np.log(n_images / n_i[hit])
    return weight


def _write_atomic(out: Path, text: str) -> None:
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="ascii", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _format(k: int, levels: int, parent, is_leaf, node_desc, weight) -> str:
    lines = [f"{k} {levels} {SCORING_L1} {WEIGHTING_TF_IDF}"]
    for i in range(1, len(parent)):
        d = " ".join(map(_BYTE_STR.__getitem__, node_desc[i].tolist()))
        w = format(float(weight[i]), ".10g") if is_leaf[i] else "0"
        lines.append(f"{parent[i]} {int(is_leaf[i])} {d} {w}")
    return "\n".join(lines)  # no trailing newline (see module doc)


def build_vocabulary(images: list[str | os.PathLike], out: str | os.PathLike, k: int = 10, levels: int = 5,
                     n_features: int = 2000, seed: int = 0, progress: bool = True) -> dict:
    """Build a DBoW2 ORB vocabulary from image files and write it to `out` (ORB-SLAM3 text format).

    Args:
        images: image files; unreadable ones, and ones without any ORB feature, are skipped and counted.
        out: the vocabulary file to write (atomically; parent folders are created).
        k: branching factor (2..20); levels: tree depth (1..10); at most k**levels words.
        n_features: ORB features per image.
        seed: seed of the k-means++ seeding; the same inputs and seed give the same file.
        progress: tqdm bar over the images.
    Returns:
        {"words", "nodes" (without the root), "images" (used), "skipped", "descriptors", "k", "levels",
        "seconds", "path"}.
    Raises:
        ValueError: bad parameters, no usable image, or fewer than k descriptors in all.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    _check_params(k, levels, n_features)
    k, levels, n_features = int(k), int(levels), int(n_features)
    images = [Path(p) for p in images]
    if not images:
        raise ValueError("build_vocabulary needs at least one image, got an empty list")
    out = Path(out)
    descs, skipped = [], 0
    for path in tqdm(images, desc="ORB features", unit="img", disable=not progress):
        try:
            d = orb_features(path, n_features)
        except ValueError:
            skipped += 1
            continue
        if len(d) == 0:
            skipped += 1
            continue
        descs.append(d)
    if not descs:
        raise ValueError(f"no usable image among {len(images)} (all unreadable or without ORB features); "
                         f"cannot build {out}")
    n_desc = sum(len(d) for d in descs)
    if n_desc < k:
        raise ValueError(f"only {n_desc} ORB descriptors in {len(descs)} image(s), need at least k={k} "
                         f"to build {out}")
    desc = np.concatenate(descs)
    image_of = np.repeat(np.arange(len(descs)), [len(d) for d in descs])
    parent, is_leaf, node_desc, leaf_of = _build_tree(desc, k, levels, seed)
    weight = _idf(len(parent), leaf_of, image_of, len(descs))
    text = _format(k, levels, parent, is_leaf, node_desc, weight)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out, text)
    return {"words": int(is_leaf.sum()), "nodes": len(parent) - 1, "images": len(descs), "skipped": skipped,
            "descriptors": int(n_desc), "k": k, "levels": levels,
            "seconds": round(time.perf_counter() - t0, 3), "path": str(out)}


def read_vocabulary_header(path: str | os.PathLike, max_nodes: int | None = None) -> dict:
    """Validate a DBoW2 ORB text vocabulary and return {"k", "L", "scoring", "weighting", "nodes", "words"}.

    Checks the whole file (ORB-SLAM3 itself barely does, and crashes on bad files): the header's ranges,
    35 tokens per node line, 0 <= parent < own id, parents are inner nodes, inner nodes have children,
    bytes in 0..255, finite non-negative weights, depth <= L, no empty line and no trailing newline.
    `nodes` excludes the root. A single trailing newline is accepted (files written elsewhere may end with one;
    ours never do). max_nodes: validate only the first this many node lines (a quick check for large files
    such as the official 1M-word ORBvoc.txt; the counts then cover the whole file, the child checks do not).
    Raises ValueError naming the file and the problem.
    """
    path = Path(path)

    def bad(problem: str) -> ValueError:
        return ValueError(f"{path} is not a DBoW2 ORB text vocabulary: {problem}")

    if not path.is_file():
        raise ValueError(f"vocabulary file {path} does not exist")
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise bad("not an ASCII text file") from None
    if not text:
        raise bad("the file is empty")
    lines = text.split("\n")
    head = lines[0].split()
    if len(head) != 4 or not all(t.lstrip("-").isdigit() for t in head):
        raise bad(f"line 1 must be 'k L scoring weighting' (4 integers), got {lines[0][:80]!r}")
    k, L, scoring, weighting = map(int, head)
    if not 2 <= k <= 20 or not 1 <= L <= 10 or not 0 <= scoring <= 5 or not 0 <= weighting <= 3:
        raise bad(f"header k={k} L={L} scoring={scoring} weighting={weighting} out of range "
                  f"(k 2..20, L 1..10, scoring 0..5, weighting 0..3)")
    if len(lines) < 2:
        raise bad("no node lines after the header")
    if lines[-1] == "" and len(lines) > 2:
        lines.pop()
    if lines[-1] == "":
        raise bad("empty last line")
    n = len(lines) - 1
    if max_nodes is not None and n > max_nodes:
        words = sum(1 for line in lines[1:] if line[line.find(" ") + 1:line.find(" ") + 2] == "1")
        _check_lines(lines[: max_nodes + 1], L, bad, check_children=False)
        return {"k": k, "L": L, "scoring": scoring, "weighting": weighting, "nodes": n, "words": words}
    return {"k": k, "L": L, "scoring": scoring, "weighting": weighting, "nodes": n,
            "words": _check_lines(lines, L, bad)}


def _check_lines(lines: list[str], L: int, bad, check_children: bool = True) -> int:
    """Validate node lines (lines[0] is the header); returns the number of words."""
    n = len(lines) - 1
    leaf = np.zeros(n + 1, bool)
    depth = np.zeros(n + 1, np.int64)
    has_child = np.zeros(n + 1, bool)
    for nid in range(1, n + 1):
        toks = lines[nid].split()
        where = f"line {nid + 1} (node {nid})"
        if len(toks) != _TOKENS:
            raise bad(f"{where} has {len(toks)} tokens, expected {_TOKENS} (parent is_leaf 32 bytes weight)")
        p, flag = toks[0], toks[1]
        if not p.isdigit() or int(p) >= nid:
            raise bad(f"{where}: parent id {p!r} must be an integer in [0, {nid - 1}]")
        p = int(p)
        if flag not in ("0", "1"):
            raise bad(f"{where}: is_leaf must be 0 or 1, got {flag!r}")
        if leaf[p]:
            raise bad(f"{where}: its parent {p} is a leaf (word)")
        if not all(t in _BYTE_SET for t in toks[2:2 + DESC_BYTES]):
            raise bad(f"{where}: descriptor bytes must be integers in 0..255")
        try:
            w = float(toks[-1])
        except ValueError:
            raise bad(f"{where}: weight {toks[-1]!r} is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise bad(f"{where}: weight {w} must be finite and >= 0")
        leaf[nid] = flag == "1"
        depth[nid] = depth[p] + 1
        has_child[p] = True
        if depth[nid] > L:
            raise bad(f"{where}: depth {depth[nid]} exceeds L={L}")
    childless = np.flatnonzero(~leaf & ~has_child)
    if check_children and len(childless):
        raise bad(f"inner node {childless[0]} has no children" if childless[0] else "the root has no children")
    return int(leaf.sum())


def vocabulary_images() -> list[Path]:
    """Every image file in the photo folder (opencv-doc, or $AGNOSTIC_RELOC_PHOTOS), sorted by name.

    Unlike `list_photos`, nothing is filtered out: drawings and the chessboard series add descriptors too.
    Raises PhotosMissing if the folder is absent or holds no image file.
    """
    from agnostic_reloc.eval.photos import IMAGE_SUFFIXES, PhotosMissing, photo_dir

    folder = photo_dir()
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: p.name) if folder.is_dir() else []
    if not files:
        raise PhotosMissing(f"no image files in {folder}: run `apt-get install opencv-doc` "
                            f"(or point AGNOSTIC_RELOC_PHOTOS at a folder of photos)")
    return files


def default_vocabulary(cache_dir: str | os.PathLike | None = None) -> Path:
    """The vocabulary from all opencv-doc photos with the defaults (k=10, L=5, 2000 features, seed 0).

    Cached as `cache_dir` (else $AGNOSTIC_RELOC_CACHE, else ~/.cache/agnostic_reloc) /
    DEFAULT_VOCAB_NAME; built on first use (tens of seconds), rebuilt if the cached file fails
    `read_vocabulary_header`. Raises PhotosMissing without the photos.
    """
    folder = Path(cache_dir or os.environ.get("AGNOSTIC_RELOC_CACHE") or Path.home() / ".cache" / "agnostic_reloc")
    path = folder / DEFAULT_VOCAB_NAME
    if path.is_file():
        try:
            read_vocabulary_header(path)
            return path
        except ValueError:
            pass
    build_vocabulary(vocabulary_images(), path)
    return path
