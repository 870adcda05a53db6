"""Benchmark of the gallery index at scale: open cost, exact and faiss first-stage latency, faiss recall.

For each gallery size it writes a synthetic index (real index files, written with the same
column writers as ``vinvl index build``; the embeddings are synthetic: L2-normalised points
around ``--clusters`` random centres, the structure real embeddings have), then measures

- opening it in a fresh process (``import vinvl`` done, no model loaded): wall time and the
  growth of the process' RSS (and of its anonymous, non-file-backed part),
- exact top-k over the memory-mapped embeddings and faiss IVF-Flat search: latency per single
  query (median) and per batch of queries,
- faiss recall@k against exact top-k on the same queries (from the same distribution).

Run with ``python scripts/benchmark_index.py`` (:mod:`vinvl.commands.benchmark_index`); it prints a
table and deletes what it wrote.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..index import ivf as ann
from ..index.store import GalleryIndex, write_columns, write_manifest
from ..index.versions import VersionedDir

__all__ = ["write_synthetic_index", "measure_open", "run_benchmark", "format_table"]

_WRITE_CHUNK = 65536


def _clustered(rng: np.random.Generator, centres: np.ndarray, count: int, spread: float) -> np.ndarray:
    points = centres[rng.integers(0, len(centres), count)] + spread * rng.standard_normal((count, centres.shape[1]))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def write_synthetic_index(
    out: str, num_images: int, dim: int, centres: np.ndarray, spread: float, seed: int, nlist: Optional[int]
) -> str:
    """An index of ``num_images`` synthetic images (ids, tags, embeddings, faiss IVF-Flat) at ``out``."""
    rng = np.random.default_rng(seed)
    versions = VersionedDir(out)
    with versions.writer(), versions.staging() as folder:
        image_ids = [f"synthetic-{i:07d}" for i in range(num_images)]
        tags = [["tag%d" % (i % 97), "tag%d" % (i % 89)] for i in range(num_images)]
        write_columns(folder, image_ids, tags, np.full(num_images, -1, np.int32), np.zeros(num_images, np.int64))
        embeddings = np.lib.format.open_memmap(os.path.join(folder, "embeddings.npy"), mode="w+", dtype=np.float32, shape=(num_images, dim))
        for lo in range(0, num_images, _WRITE_CHUNK):
            hi = min(lo + _WRITE_CHUNK, num_images)
            embeddings[lo:hi] = _clustered(rng, centres, hi - lo, spread)
        embeddings.flush()
        index = ann.build_ivf_flat(embeddings, nlist=nlist, progress=True)
        ann.save(index, os.path.join(folder, ann.FAISS_FILE))
        write_manifest(
            folder,
            num_images=num_images,
            model={"weights_sha256": "synthetic", "model_dir": None, "trained_heads": ["contrastive"], "contrastive_dim": dim},
            first_stages=["contrastive", "tags"],
            embeddings={"file": "embeddings.npy", "dim": dim},
            faiss={"kind": "ivf_flat", "file": ann.FAISS_FILE, "nlist": int(index.nlist), "trained_on": num_images},
            feature_files=[],
            sources=[{"synthetic": True, "num_images": num_images, "seed": seed}],
        )
        del embeddings
        return versions.commit(folder)


def _rss_mb() -> Dict[str, float]:
    """This process' resident memory and its anonymous part (not backed by a mapped file), in MB."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                fields[key] = int(value.split()[0]) / 1024
    return {"rss": fields["VmRSS"], "anon": fields["RssAnon"]}


def _open_probe(path: str, queue) -> None:
    """In a fresh process: open the index, touch one id, its tags and its lookup; report time and memory."""
    import vinvl  # noqa: F401  (what a serving process has loaded before the index)

    before = _rss_mb()
    start = time.perf_counter()
    index = GalleryIndex.open(path)
    opened = time.perf_counter() - start
    middle = index.num_images // 2
    lookup_ok = index.find(index.image_id(middle)) == middle and len(index.tags(middle)) == 2
    first_query = time.perf_counter()
    index.search(np.ones((1, index.embeddings.shape[1]), np.float32) / np.sqrt(index.embeddings.shape[1]), 10, method="faiss")
    faiss_open = time.perf_counter() - first_query
    after = _rss_mb()
    queue.put(
        {
            "open_s": opened,
            "open_and_faiss_query_s": opened + faiss_open,
            "rss_growth_mb": after["rss"] - before["rss"],
            "anon_growth_mb": after["anon"] - before["anon"],
            "lookup_ok": lookup_ok,
        }
    )


def measure_open(path: str) -> dict:
    """Open cost of the index at ``path``, measured in a fresh (spawned) process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_open_probe, args=(path, queue))
    process.start()
    result = queue.get(timeout=600)
    process.join()
    return result


def _latency(search, queries: np.ndarray, batch: int) -> Dict[str, float]:
    singles = []
    for q in queries[:10]:
        start = time.perf_counter()
        search(q[None])
        singles.append(time.perf_counter() - start)
    start = time.perf_counter()
    search(queries[:batch])
    return {"single_ms": 1000 * float(np.median(singles)), "batch_ms": 1000 * (time.perf_counter() - start)}


def run_benchmark(
    sizes: Sequence[int], dim: int, k: int, num_queries: int, nprobes: Sequence[int], root: str, clusters: int,
    spread: float, max_nlist: int, seed: int = 0,
) -> List[dict]:
    """One row per gallery size (and nprobe), each printed as JSON as it is measured. ``root`` is a
    scratch folder: every index written there is deleted after its row, and ``root`` at the end."""
    ann.require_faiss()
    os.makedirs(root, exist_ok=True)
    try:
        return _rows(sizes, dim, k, num_queries, nprobes, root, clusters, spread, max_nlist, seed)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _rows(
    sizes: Sequence[int], dim: int, k: int, num_queries: int, nprobes: Sequence[int], root: str, clusters: int,
    spread: float, max_nlist: int, seed: int,
) -> List[dict]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    queries = _clustered(rng, centres, num_queries, spread)
    rows = []
    for size in sizes:
        out = os.path.join(root, f"index-{size}")
        try:
            start = time.perf_counter()
            write_synthetic_index(out, size, dim, centres, spread, seed + 1, min(ann.default_nlist(size), max_nlist))
            build_s = time.perf_counter() - start
            disk_mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs) / 2**20
            opened = measure_open(out)
            with GalleryIndex.open(out) as index:
                exact_scores, exact = index.search(queries, k)
                exact_latency = _latency(lambda q: index.search(q, k), queries, num_queries)
                for nprobe in nprobes:
                    _, approx = index.search(queries, k, method="faiss", nprobe=nprobe)
                    recall = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact)]))
                    rows.append(
                        {
                            "images": size,
                            "disk_mb": disk_mb,
                            "write_and_faiss_build_s": build_s,
                            "nlist": int(index.manifest["faiss"]["nlist"]),
                            "nprobe": nprobe,
                            **opened,
                            "exact": exact_latency,
                            "faiss": _latency(lambda q: index.search(q, k, method="faiss", nprobe=nprobe), queries, num_queries),
                            f"recall@{k}": recall,
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return rows


def format_table(rows: Sequence[dict], k: int, batch: int) -> str:
    """The measured rows as a Markdown table."""
    lines = [
        f"| images | disk MB | open s | open RSS +MB (anon) | exact 1 query ms | exact {batch} queries ms | nlist / nprobe "
        f"| faiss 1 query ms | faiss {batch} queries ms | faiss recall@{k} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['images']:,} | {r['disk_mb']:.0f} | {r['open_s']:.3f} | {r['rss_growth_mb']:.1f} ({r['anon_growth_mb']:.1f}) "
            f"| {r['exact']['single_ms']:.1f} | {r['exact']['batch_ms']:.0f} | {r['nlist']} / {r['nprobe']} "
            f"| {r['faiss']['single_ms']:.2f} | {r['faiss']['batch_ms']:.1f} | {r[f'recall@{k}']:.3f} |"
        )
    return "\n".join(lines)
