"""The scale path measured end to end: a caption typed against a large gallery, over HTTP.

1. **Gallery.** A synthetic data directory of ``num_images`` images in the official coco_ir layout
   (``features.tsv`` + ``imageid2idx.json``, ``predictions.tsv`` tags, five captions per image), each
   image 10-50 regions of 2054 floats (2048 non-negative appearance values, 6 box-geometry columns)
   as real VinVL features have. ``features.tsv`` holds ``distinct_images`` rows; ``imageid2idx.json``
   points image ``i`` at row ``i % distinct_images``, so images past the first ``distinct_images``
   share rows (their tags and captions are their own rows of ``predictions.tsv`` and the captions
   file): 1M images fit a disk that could not hold 1M rows (330 GB). Every image still goes through
   the build's embedding forward and is read from its row at query time. Tags are VinVL
   class names drawn with a Zipf-like frequency (some words are in many images, as "man" and "table"
   are), and captions name some of an image's tags.
2. **Build.** ``vinvl index build`` in a subprocess, twice: without a faiss file (the exact first
   stage) and with ``--faiss``. Wall time, peak resident memory of the build's processes (sampled
   with psutil every ``RSS_SAMPLE_SECONDS``) and the index's size on disk.
3. **nprobe.** In process, over the faiss index's own embeddings, the smallest power of two whose
   faiss top-k (k = ``candidates``) reaches ``recall_target`` against the exact top-k of the query
   captions' embeddings, a faiss row tied with exact's k-th score counting as a hit
   (:func:`recall_with_ties`).
4. **Breakdown.** In process, :meth:`vinvl.query.Retriever.answer_timed` per query, one at a time:
   median seconds of the first stage, the feature reads and the scoring; HTTP is the served median
   latency (one client) less the in-process median total.
5. **Serving.** ``vinvl serve`` over each index (:class:`vinvl.serving.client.ServerProcess`,
   127.0.0.1 only) and 1, 4, 16 client threads, each on a kept-alive
   :class:`~vinvl.serving.client.Connection`, sending one caption per request for at most
   ``requests_per_client`` requests or ``seconds`` (whichever ends first): p50 / p95 / p99 latency,
   requests per second, and replies that were not a 200 with ``top_k`` images (counted as errors).

First stages: ``exact`` (contrastive, exact search), ``faiss`` (contrastive, faiss IVF with the chosen
nprobe) and ``tags`` (BM25 over the tags), each re-ranking ``candidates`` (16) with the match head.
Image -> captions (``{"image_id"}`` queries of gallery images over its five captions per image):
``exact`` (contrastive, exact search over the caption embeddings: the index has no faiss index of
captions) and ``tags`` (BM25 over the captions' words, queried with the image's tags).
The model is the tiny config with random weights whose heads count as trained: timings are the
model's, the answers' quality is not measured here.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import psutil

from ..data.formats import APPEARANCE_DIM, box_geometry, encode_features, prediction_object, prediction_row
from ..serving.client import Connection, ServerProcess, free_port, tree_rss_mb, vinvl_serve_command
from .measure import TINY_CONFIG

__all__ = ["ScaleBenchmark", "write_gallery", "run_benchmark", "format_tables", "tags_first_stage", "format_tags_first_stage"]

SPLIT = "test"
CAPTIONS_PER_IMAGE = 5
RSS_SAMPLE_SECONDS = 0.1
REQUEST_TIMEOUT = 60.0
FIRST_REQUEST_TIMEOUT = 1800.0  # the first tags query builds the BM25 index: minutes at 100K images
IMAGE_SIZE = (480, 640)  # (height, width) of every synthetic image
TAG_CLASSES = 400  # how many VinVL classes the tags are drawn from
TEMPLATES = ("a {0} next to a {1}", "a photo of a {0} and a {1}", "the {0} is beside a {1} and a {2}", "a {0} with a {1}", "an image showing a {0}")


@dataclass(frozen=True)
class ScaleBenchmark:
    """Settings (see the module docstring)."""

    num_images: int = 10_000
    min_regions: int = 10
    max_regions: int = 50
    distinct_images: int = 10_000
    queries: int = 64
    candidates: int = 16
    top_k: int = 5
    clients: Tuple[int, ...] = (1, 4, 16)
    requests_per_client: int = 200
    seconds: float = 30.0
    recall_target: float = 0.95
    seed: int = 0
    builds: Tuple[str, ...] = ("exact", "faiss")  # which indexes `vinvl index build` makes

    def gallery_settings(self) -> Dict[str, int]:
        """The settings a written gallery depends on (a gallery written with equal ones is reused)."""
        return {
            "num_images": self.num_images, "min_regions": self.min_regions, "max_regions": self.max_regions,
            "distinct_images": self.distinct_images, "seed": self.seed,
        }


# ----- the gallery ------------------------------------------------------------------------------


def _class_names() -> List[str]:
    from ..assets import LABELMAP_PATH

    with open(LABELMAP_PATH, encoding="utf-8") as f:
        labels = json.load(f)["label_to_idx"]
    return sorted(labels, key=labels.get)[:TAG_CLASSES]


def _regions(rng: np.random.Generator, count: int) -> Tuple[np.ndarray, np.ndarray]:
    """(``[count, 2054]`` float32: sparse non-negative appearance values, as pooled ReLU activations, and
    box geometry; ``[count, 4]`` boxes in pixels)."""
    appearance = rng.exponential(0.6, (count, APPEARANCE_DIM)).astype(np.float32)
    appearance[rng.random((count, APPEARANCE_DIM)) < 0.5] = 0.0
    height, width = IMAGE_SIZE
    x1, y1 = rng.uniform(0, width * 0.7, count), rng.uniform(0, height * 0.7, count)
    x2 = np.minimum(width, x1 + rng.uniform(16, width * 0.5, count))
    y2 = np.minimum(height, y1 + rng.uniform(16, height * 0.5, count))
    rects = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    return np.concatenate([appearance, box_geometry(rects, height, width)], axis=1), rects


GALLERY_STAMP = "written.json"  # in the gallery folder, last: the settings it was written with and its facts


def written_gallery(data_dir: str, settings: ScaleBenchmark) -> Optional[Dict[str, Any]]:
    """The facts of a gallery that :func:`write_gallery` finished in ``data_dir`` with the same gallery
    settings, or None: a 1M gallery takes many minutes to write, and a run may reuse it."""
    try:
        with open(os.path.join(data_dir, GALLERY_STAMP), encoding="utf-8") as f:
            stamp = json.load(f)
    except FileNotFoundError:
        return None
    return stamp["facts"] if stamp["settings"] == settings.gallery_settings() else None


def write_gallery(data_dir: str, settings: ScaleBenchmark) -> Dict[str, Any]:
    """Write the synthetic gallery (streaming: one image in memory at a time); returns its size facts
    and writes them, with the settings, to :data:`GALLERY_STAMP` once every file is complete."""
    start = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    names = _class_names()
    weights = 1.0 / np.arange(1, len(names) + 1)  # Zipf-like: a few tags are everywhere
    weights /= weights.sum()
    folder = os.path.join(data_dir, "features", SPLIT)
    os.makedirs(folder, exist_ok=True)
    captions: Dict[str, List[str]] = {}
    row_of: Dict[str, int] = {}
    objects_of: List[Tuple[List[dict], int]] = []  # per distinct image: (objects, region count)
    regions_total = 0
    with open(os.path.join(folder, "features.tsv"), "w", encoding="ascii") as feats, open(
        os.path.join(folder, "predictions.tsv"), "w", encoding="utf-8"
    ) as preds:
        for row in range(settings.num_images):
            image_id = str(1_000_000 + row)
            if row < settings.distinct_images:
                count = int(rng.integers(settings.min_regions, settings.max_regions + 1))
                features, rects = _regions(rng, count)
                classes = rng.choice(len(names), size=count, p=weights)
                objects = [prediction_object(r, names[c], 0.9) for r, c in zip(rects, classes)]
                objects_of.append((objects, count))
                feats.write(f"{image_id}\t{count}\t{encode_features(features)}\n")
            objects, count = objects_of[row % settings.distinct_images]
            regions_total += count
            preds.write(prediction_row(image_id, objects, IMAGE_SIZE))
            tags = sorted({o["class"] for o in objects})
            captions[image_id] = [
                TEMPLATES[k].format(*(tags[int(i)] for i in rng.integers(0, len(tags), 3))) for k in range(CAPTIONS_PER_IMAGE)
            ]
            row_of[image_id] = row % settings.distinct_images  # images past distinct_images share a row
    with open(os.path.join(folder, "imageid2idx.json"), "w") as f:
        json.dump(row_of, f)
    with open(os.path.join(data_dir, f"{SPLIT}_captions.json"), "w", encoding="utf-8") as f:
        json.dump(captions, f)
    facts = {
        "images": settings.num_images, "regions_mean": regions_total / settings.num_images, "disk_gb": _disk_gb(data_dir),
        "write_seconds": time.perf_counter() - start,
    }
    with open(os.path.join(data_dir, GALLERY_STAMP), "w", encoding="utf-8") as f:
        json.dump({"settings": settings.gallery_settings(), "facts": facts}, f)
    return facts


def _disk_gb(path: str) -> float:
    total = 0
    for folder, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(folder, name)) for name in files)
    return total / 2**30


def query_captions(data_dir: str, count: int, seed: int) -> List[str]:
    """``count`` captions of random gallery images (one each): what a user types about a photo they have."""
    with open(os.path.join(data_dir, f"{SPLIT}_captions.json"), encoding="utf-8") as f:
        captions = json.load(f)
    ids = sorted(captions)
    rng = np.random.default_rng([seed, 1])
    return [captions[ids[int(i)]][0] for i in rng.choice(len(ids), size=min(count, len(ids)), replace=False)]


def query_image_ids(data_dir: str, count: int, seed: int) -> List[str]:
    """``count`` random gallery images: image -> captions queries (``{"image_id": ...}``)."""
    with open(os.path.join(data_dir, f"{SPLIT}_captions.json"), encoding="utf-8") as f:
        ids = sorted(json.load(f))
    rng = np.random.default_rng([seed, 3])
    return [ids[int(i)] for i in rng.choice(len(ids), size=min(count, len(ids)), replace=False)]


# ----- the build --------------------------------------------------------------------------------


def build(index_dir: str, model_dir: str, data_dir: str, use_faiss: bool, log_path: str) -> Dict[str, float]:
    """``vinvl index build`` in a subprocess: wall seconds, peak RSS (MB, all its processes) and disk (GB)."""
    command = [
        sys.executable, "-m", "vinvl.commands.cli", "index", "build", index_dir, "--model_dir", model_dir,
        "--gallery_dir", data_dir, "--split", SPLIT, *(["--faiss"] if use_faiss else []),
    ]
    start = time.perf_counter()
    cpu_before = _children_cpu_seconds()
    peak = 0.0
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        while process.poll() is None:
            try:
                peak = max(peak, tree_rss_mb(process.pid))
            except psutil.NoSuchProcess:  # it ended between poll and the sample
                pass
            time.sleep(RSS_SAMPLE_SECONDS)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            raise RuntimeError(f"vinvl index build exited with {process.returncode}:\n{f.read()[-3000:]}")
    cpu_seconds = _children_cpu_seconds() - cpu_before
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_mb": peak, "disk_gb": _disk_gb(index_dir)}


def _children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children: a build's CPU time, which a shared
    machine's load changes far less than its wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _save_tiny_model(model_dir: str, seed: int) -> str:
    """The tiny config with random weights, its match and contrastive heads recorded as trained."""
    import paddle

    from ..oscar import OscarConfig, OscarForImageTextRetrieval

    paddle.seed(seed)
    config = OscarConfig.from_pretrained(TINY_CONFIG)
    config.trained_heads = ["match", "contrastive"]
    OscarForImageTextRetrieval(config).save_pretrained(model_dir)
    return model_dir


# ----- in process: nprobe and the breakdown -----------------------------------------------------


TIE_TOLERANCE = 1e-5  # scores this close to exact's k-th are tied with it (faiss and numpy sum in different orders)


def embed_captions(retriever, index, captions: Sequence[str]) -> np.ndarray:
    """``[Q, E]`` caption-only embeddings of ``captions``, as the contrastive first stage makes them."""
    from ..retrieval import Gallery

    return retriever.engine.embed_captions(Gallery.for_queries(["_"], [[]], [index.features(0)], list(captions)))


def recall_with_ties(exact: Tuple[np.ndarray, np.ndarray], found: Tuple[np.ndarray, np.ndarray]) -> float:
    """Mean over queries of the share of exact's top-k that ``found`` (faiss' top-k) matches, where a
    found row is a hit when exact's top-k holds it *or* its score equals (within ``TIE_TOLERANCE``)
    or beats exact's k-th score: among images tied at the k-th score, exact search keeps some and
    faiss may keep others, and either answer is as right as the other."""
    exact_scores, exact_rows = exact
    found_scores, found_rows = found
    hits = []
    for q in range(len(exact_rows)):
        truth = set(exact_rows[q].tolist())
        kth = float(exact_scores[q][-1])
        hit = [row in truth or score >= kth - TIE_TOLERANCE for row, score in zip(found_rows[q].tolist(), found_scores[q].tolist()) if row >= 0]
        hits.append(sum(hit) / len(truth))
    return float(np.mean(hits))


def choose_nprobe(index, queries: np.ndarray, candidates: int, target: float) -> Dict[str, Any]:
    """The smallest power of two (up to the index's nlist) whose faiss top-``candidates`` reach
    :func:`recall_with_ties` >= ``target`` against the exact search of the same embeddings."""
    nlist = int(index.manifest["faiss"]["nlist"])
    exact = index.search(queries, candidates, method="exact")
    tried = {}
    nprobe = 1
    while True:
        recall = recall_with_ties(exact, index.search(queries, candidates, method="faiss", nprobe=nprobe))
        tried[nprobe] = recall
        if recall >= target or nprobe >= nlist:
            return {"nprobe": nprobe, "recall": recall, "tried": tried, "nlist": nlist}
        nprobe = min(2 * nprobe, nlist)


def breakdown(retriever, queries: Sequence[Any], options: Dict[str, Any], passes: int = 2) -> Dict[str, float]:
    """Median milliseconds per stage of one query answered at a time (after one warm-up answer).

    Each query is timed ``passes`` times and its fastest pass kept: the machine is shared, and a
    pass slowed by another process's burst says nothing about the query path."""
    first = retriever.answer_timed(queries[0], **options)[1]["total"]
    rows = []
    for query in queries:
        timed = [retriever.answer_timed(query, **options)[1] for _ in range(passes)]
        rows.append(min(timed, key=lambda t: t["total"]))
    return {**{name: 1000 * float(np.median([r[name] for r in rows])) for name in rows[0]}, "first_call": 1000 * first}


# ----- the tags first stage alone, at any size ------------------------------------------------


def tags_first_stage(num_documents: int, settings: ScaleBenchmark, tokenized_sample: int = 10_000) -> Dict[str, float]:
    """The tags first stage alone over ``num_documents`` images of the benchmark's tag distribution:
    what a served gallery pays on its first tags query (the images' tag words, then the BM25 index
    built from them, with the process's RSS growth) and per caption after (median ms, one at a time).

    Tokenizing every image's tags (:func:`~vinvl.retrieval.first_stage.tag_words`) is timed on
    ``tokenized_sample`` images and scaled to ``num_documents``; the index itself is built from the
    same words made per class name once (the words of space-joined tags are the joined words of each
    tag), so a million images need no hour of tokenizing here."""
    from ..oscar.model_dir import load_tokenizer
    from ..retrieval.first_stage import BM25Index, tag_words, words_of

    tokenizer = load_tokenizer("")  # the packaged vocabulary
    rng = np.random.default_rng([settings.seed, 2])
    names = _class_names()
    weights = 1.0 / np.arange(1, len(names) + 1)
    counts = rng.integers(settings.min_regions, settings.max_regions + 1, num_documents)
    classes = np.split(rng.choice(len(names), size=int(counts.sum()), p=weights / weights.sum()), np.cumsum(counts)[:-1])
    sample = classes[:tokenized_sample]
    start = time.perf_counter()
    sample_words = [tag_words(tokenizer, [names[c] for c in doc]) for doc in sample]
    tokenize_seconds = (time.perf_counter() - start) * num_documents / len(sample)
    per_class = [tag_words(tokenizer, [name]) for name in names]
    documents = [[w for c in doc for w in per_class[c]] for doc in classes]
    if documents[: len(sample)] != sample_words:
        raise RuntimeError("the words made per class name differ from the tokenized tags: the index would not be the served one")
    rss_before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    index = BM25Index(documents)
    build_seconds = time.perf_counter() - start
    rss_growth = (psutil.Process().memory_info().rss - rss_before) / 2**20
    del documents, sample_words
    captions = [
        TEMPLATES[q % len(TEMPLATES)].format(*(names[int(c)] for c in rng.choice(classes[int(rng.integers(num_documents))], 3)))
        for q in range(settings.queries)
    ]
    times = []
    for caption in captions:
        words = [words_of(tokenizer, caption)]
        start = time.perf_counter()
        index.search(words, settings.candidates)
        times.append(time.perf_counter() - start)
    return {
        "documents": num_documents,
        "tokenize_s_estimated": tokenize_seconds,
        "bm25_build_s": build_seconds,
        "bm25_rss_growth_mb": rss_growth,
        "search_p50_ms": 1000 * float(np.median(times)),
        "search_p99_ms": 1000 * float(np.percentile(times, 99)),
    }


def format_tags_first_stage(rows: Sequence[Dict[str, float]]) -> str:
    lines = [
        "| images | tokenizing tags s (estimated) | BM25 build s | RSS growth MB | search p50 ms | search p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['documents']:,} | {r['tokenize_s_estimated']:.1f} | {r['bm25_build_s']:.1f} | {r['bm25_rss_growth_mb']:.0f} | "
            f"{r['search_p50_ms']:.2f} | {r['search_p99_ms']:.2f} |"
        )
    return "\n".join(lines)


# ----- over HTTP --------------------------------------------------------------------------------


def _client(port: int, bodies: List[bytes], offset: int, requests: int, top_k: int, deadline: float, out: Dict[str, list]) -> None:
    connection = Connection(port, timeout=REQUEST_TIMEOUT)
    latencies, errors = [], 0
    try:
        for n in range(requests):
            if time.perf_counter() >= deadline:
                break
            body = bodies[(offset + n) % len(bodies)]
            start = time.perf_counter()
            status, raw = connection.post_raw(body)
            latencies.append(time.perf_counter() - start)
            answer = json.loads(raw)["result"][0] if status == 200 else {}
            if len(answer.get("images", answer.get("captions", []))) != top_k:
                errors += 1
    except OSError as exc:  # the connection failed: the run is void, load() says so
        out["failures"].append(f"client {offset // 7}: {exc!r}")
    finally:
        connection.close()
    out["latencies"].extend(latencies)  # list.extend is atomic under the GIL
    out["errors"].append(errors)


def load(port: int, bodies: List[bytes], clients: int, requests: int, seconds: float, top_k: int) -> Dict[str, float]:
    """``clients`` threads sending ``bodies`` round-robin, each at most ``requests`` of them and for at
    most ``seconds``; latency percentiles (ms) and requests/s."""
    out: Dict[str, list] = {"latencies": [], "errors": [], "failures": []}
    start = time.perf_counter()
    deadline = start + seconds
    threads = [
        threading.Thread(target=_client, args=(port, bodies, c * 7, requests, top_k, deadline, out), daemon=True)
        for c in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 2 * REQUEST_TIMEOUT)
    elapsed = time.perf_counter() - start
    if out["failures"] or any(thread.is_alive() for thread in threads):
        raise RuntimeError(f"{clients} clients on port {port}: {out['failures'] or 'a client did not finish'}")
    ms = 1000 * np.asarray(out["latencies"])
    return {
        "clients": clients,
        "requests": len(ms),
        "errors": int(sum(out["errors"])),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "requests_per_s": len(ms) / elapsed,
    }


def _bodies(queries: Sequence[Any], parameters: Dict[str, Any]) -> List[bytes]:
    return [json.dumps({"data": q, "parameters": parameters}).encode() for q in queries]


def serve_and_load(
    index_dir: str, model_dir: str, queries: Sequence[Any], parameters: Dict[str, Any], settings: ScaleBenchmark, log_path: str
) -> Dict[str, Any]:
    """Start ``vinvl serve`` over the index, run every client count with ``queries`` (captions, or
    ``{"image_id"}`` queries), stop it; with its RSS."""
    port = free_port()
    command = vinvl_serve_command(index_dir, port, extra=["--model_dir", model_dir])
    bodies = _bodies(queries, parameters)
    with ServerProcess(command, port, log_path) as server:
        connection = Connection(port, timeout=FIRST_REQUEST_TIMEOUT)
        start = time.perf_counter()
        status, _ = connection.post_raw(bodies[0])  # the first query after start pays what the gallery builds lazily
        first_request_s = time.perf_counter() - start
        connection.close()
        if status != 200:
            raise RuntimeError(f"the first request got status {status}; see {log_path}")
        load(port, bodies, 1, 4, settings.seconds, settings.top_k)  # warm-up
        runs = [load(port, bodies, c, settings.requests_per_client, settings.seconds, settings.top_k) for c in settings.clients]
        rss = tree_rss_mb(server.pid)
    return {"runs": runs, "server_rss_mb": rss, "first_request_s": first_request_s}


# ----- the whole path ---------------------------------------------------------------------------


def run_benchmark(settings: ScaleBenchmark, work_dir: str) -> Dict[str, Any]:
    """Gallery, builds, nprobe, breakdown and HTTP load (see the module docstring); the report."""
    from ..index.store import GalleryIndex
    from ..query import Retriever

    report: Dict[str, Any] = {"settings": asdict(settings), "load_before": os.getloadavg()[0], "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    data_dir, model_dir = os.path.join(work_dir, "gallery"), os.path.join(work_dir, "model")
    indexes = {name: os.path.join(work_dir, f"index-{name}") for name in settings.builds}
    reused = written_gallery(data_dir, settings)
    report["gallery"] = {**reused, "reused": True} if reused else write_gallery(data_dir, settings)
    if not os.path.isdir(model_dir):
        _save_tiny_model(model_dir, settings.seed)
    _progress("gallery", report["gallery"])
    report["build"] = {}
    for name, path in indexes.items():
        report["build"][name] = build(path, model_dir, data_dir, name == "faiss", os.path.join(work_dir, f"build-{name}.log"))
        _progress(f"build {name}", report["build"][name])
    captions = query_captions(data_dir, settings.queries, settings.seed)
    retrievers = {name: Retriever(model_dir, first_stage="contrastive") for name in indexes}
    for name, retriever in retrievers.items():
        retriever.use_index(indexes[name])
    common = {"top_k": settings.top_k, "candidates": settings.candidates}
    images = [{"image_id": i} for i in query_image_ids(data_dir, settings.queries, settings.seed)]
    stages = {}  # name -> (index, queries, request parameters)
    if "exact" in indexes:
        stages["exact"] = ("exact", captions, {**common, "first_stage": "contrastive"})
    if "faiss" in indexes:
        with GalleryIndex.open(indexes["faiss"]) as index:
            queries = embed_captions(retrievers["faiss"], index, captions)
            report["nprobe"] = choose_nprobe(index, queries, settings.candidates, settings.recall_target)
        _progress("nprobe", report["nprobe"])
        stages["faiss"] = ("faiss", captions, {**common, "first_stage": "contrastive", "nprobe": report["nprobe"]["nprobe"]})
    plain = "exact" if "exact" in indexes else "faiss"  # tags and image -> captions do not use the faiss file
    stages["tags"] = (plain, captions, {**common, "first_stage": "tags"})
    stages["image->captions exact"] = (plain, images, {**common, "first_stage": "contrastive"})
    stages["image->captions tags"] = (plain, images, {**common, "first_stage": "tags"})
    report["breakdown_ms"] = {name: breakdown(retrievers[ix], queries, params) for name, (ix, queries, params) in stages.items()}
    _progress("breakdown ms", report["breakdown_ms"])
    for retriever in retrievers.values():
        retriever.gallery.close()
    del retrievers
    report["http"] = {}
    for name, (ix, queries, params) in stages.items():
        log = os.path.join(work_dir, f"serve-{name.replace('->', '-to-').replace(' ', '-')}.log")
        report["http"][name] = serve_and_load(indexes[ix], model_dir, queries, params, settings, log)
        _progress(f"http {name}", report["http"][name])
    for name, row in report["breakdown_ms"].items():
        row["http_p50"] = report["http"][name]["runs"][0]["p50_ms"]
        row["http_overhead"] = row["http_p50"] - row["total"]
    report["load_after"] = os.getloadavg()[0]
    return report


def _progress(phase: str, result: Any) -> None:
    """One line on stderr per finished phase, so a long run's results are seen as they come."""
    print(f"[{time.strftime('%H:%M:%S')}] {phase}: {json.dumps(result)}", file=sys.stderr, flush=True)


def format_tables(report: Dict[str, Any]) -> str:
    """The report as markdown tables: build, nprobe, HTTP load and the per-query breakdown."""
    s, g = report["settings"], report["gallery"]
    written = "written earlier" if g.get("reused") else "written"
    lines = [
        f"{s['num_images']} images ({g['regions_mean']:.1f} regions of 2054 floats per image on average, "
        f"{s['min_regions']}-{s['max_regions']}; the images share {s['distinct_images']} feature rows), "
        f"gallery {g['disk_gb']:.2f} GB {written} in {g['write_seconds']:.0f} s; tiny model; started {report['started']}; "
        f"load average {report['load_before']:.2f} -> {report['load_after']:.2f}",
        "",
        "| index build | wall s | CPU s | peak RSS MB | index on disk GB |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["build"].items():
        lines.append(f"| {name} | {row['seconds']:.1f} | {row['cpu_seconds']:.1f} | {row['peak_rss_mb']:.0f} | {row['disk_gb']:.3f} |")
    if "nprobe" in report:
        n = report["nprobe"]
        tried = ", ".join(f"{p}: {r:.3f}" for p, r in n["tried"].items())
        lines += [
            "",
            f"faiss nprobe {n['nprobe']} of {n['nlist']} lists: recall@{s['candidates']} against exact {n['recall']:.3f} "
            f"(tried {tried}; {s['queries']} captions)",
        ]
    lines += [
        "",
        "| first stage | clients | requests | errors | p50 ms | p95 ms | p99 ms | requests/s | server RSS MB | first request s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, served in report["http"].items():
        for run in served["runs"]:
            lines.append(
                f"| {name} | {run['clients']} | {run['requests']} | {run['errors']} | {run['p50_ms']:.1f} | {run['p95_ms']:.1f} | "
                f"{run['p99_ms']:.1f} | {run['requests_per_s']:.1f} | {served['server_rss_mb']:.0f} | {served['first_request_s']:.2f} |"
            )
    lines += [
        "",
        "| first stage | first stage ms | feature reads ms | scoring ms | in process total ms | HTTP p50 ms | HTTP and service ms | first call ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["breakdown_ms"].items():
        lines.append(
            f"| {name} | {row['first_stage']:.2f} | {row['feature_reads']:.2f} | {row['scoring']:.2f} | {row['total']:.2f} | "
            f"{row['http_p50']:.1f} | {row['http_overhead']:.1f} | {row['first_call']:.0f} |"
        )
    return "\n".join(lines)
