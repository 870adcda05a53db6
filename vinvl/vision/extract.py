"""``vinvl extract IMAGES OUT --detector DIR``: photos -> the files the ``coco_ir`` loading script reads.

OUT holds the VinVL detector's own output layout (scene_graph_benchmark with
``TEST.OUTPUT_FEATURE True``), which :mod:`vinvl.data` reads as its ``detector`` layout, with or
without a captions file beside it (without one it is a gallery)::

    predictions.tsv     image_id <TAB> {"objects": [{"rect": [x1, y1, x2, y2], "bbox_id": j,
                        "class": name, "conf": score, "attributes": [names], "attr_scores": [scores],
                        "feature": base64 float32[2048]}, ...]}   (one row per extracted image)
    images.hw.tsv       image_id <TAB> [{"height": h, "width": w}]
    predictions.lineidx, images.hw.lineidx   row offsets (the loader would otherwise build them)
    bad_images.jsonl    one {"image_id", "path", "reason"} per skipped file
    extract.json        what was extracted, from what, with which detector; written last

Rows follow the image list's order: a folder's files sorted by their path below the folder, or a
list file's lines. An image's id is its path below the folder without the extension (``cat`` for
``cat.jpg``; ``2024/cat`` in a recursive scan); in a list file, the file name without the
extension, or the id in an optional second tab-separated column. Two files with one id
(``cat.jpg`` and ``cat.png``) are refused before any work, naming both.

Resumable: each rank appends rows to its own shard in ``OUT/.extract/`` and, after each row, a
journal line saying which image ends where. A restarted run truncates its shard to the last
journalled row and skips every journalled image, so a run killed at any moment (SIGKILL
included) continues without duplicate, missing or half-written rows. Under
``python -m paddle.distributed.launch`` rank r takes images r, r+W, r+2W, ...; the last rank to
finish merges the journalled rows in image-list order, so the files are byte for byte those of
one process. The final files are each written to a temporary name and renamed into place; the
shards are removed afterwards (a hidden ``.extract.lock`` stays). Rerunning a finished extraction
does nothing; OUT never mixes two image lists, two detectors or two precisions.

``--precision bf16`` runs the detector's network on Paddle Inference in bfloat16
(:mod:`vinvl.vision.inference`), where the CPU has bf16 instructions; the default ``fp32`` is the
dygraph detector. Speed and fidelity: docs/detector.md.

Bad files (see :mod:`vinvl.vision.image`: not an image, truncated, too large or too small, or a
file name that cannot be an id) are skipped, each named with its reason as it is met and listed
in ``bad_images.jsonl``; their neighbours are extracted as usual. ``--fail_on_bad`` instead checks
every file's header before the detector is loaded and stops at the first bad file, naming it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import paddle
from tqdm.auto import tqdm

from ..assets import resolve_config
from ..data.formats import encode_features, hw_row, prediction_object
from ..errors import UserError
from ..precision import DETECTOR_PRECISIONS, check_precision
from .config import DetectorConfig
from .image import IMAGE_EXTENSIONS, BadImageError, check_header, load_image
from .inference import CALIBRATION_DIR, load_detector, require_calibration

__all__ = [
    "ExtractError",
    "InputNotFoundError",
    "ImageEntry",
    "ExtractSummary",
    "list_images",
    "detector_fingerprint",
    "prediction_json",
    "extract",
]

PREDICTIONS_FILE = "predictions.tsv"
HW_FILE = "images.hw.tsv"
BAD_FILE = "bad_images.jsonl"
SUMMARY_FILE = "extract.json"
WORK_DIR = ".extract"
RUN_FILE = "run.json"  # in WORK_DIR: what the unfinished run extracts (see _run_description)
LOCK_FILE = ".extract.lock"
PREFETCH = 2  # images decoded ahead of the detector (each may be up to PIL's 89.5-megapixel limit)


class ExtractError(UserError, ValueError):
    """A user mistake in what extraction was asked to do (the message says what and where)."""


class InputNotFoundError(FileNotFoundError):
    """IMAGES (a folder or a list file) or the detector directory does not exist."""


@dataclass(frozen=True)
class ImageEntry:
    """One listed image: its id, its path, and why it is bad before it is even read (or None)."""

    image_id: str
    path: str
    listed_as: str  # the path below the folder, or as the list file wrote it (part of the list's digest)
    problem: Optional[str] = None


@dataclass
class ExtractSummary:
    """What a finished extraction holds (``extract.json``)."""

    out_dir: str
    num_listed: int
    num_extracted: int
    bad: List[dict] = field(default_factory=list)
    seconds: float = 0.0
    already_done: bool = False  # out_dir held this finished extraction before the call

    @property
    def num_bad(self) -> int:
        return len(self.bad)


def _id_problem(image_id: str) -> Optional[str]:
    """Why ``image_id`` cannot be a row key of the TSV files (or None)."""
    if not image_id:
        return "empty image id"
    if any(c in image_id for c in "\t\r\n"):
        return f"image id {image_id!r} contains a tab or line break"
    if image_id != image_id.strip():
        return f"image id {image_id!r} starts or ends with blank space"
    try:
        image_id.encode("utf-8")
    except UnicodeEncodeError:
        return f"image id {image_id!r} is not valid UTF-8"
    return None


def _entry(image_id: str, path: str, listed_as: str) -> ImageEntry:
    return ImageEntry(image_id, path, listed_as, _id_problem(image_id))


def _scan_folder(folder: str, recursive: bool) -> List[ImageEntry]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in names:
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder).replace(os.sep, "/")
            found.append(_entry(os.path.splitext(relative)[0], path, relative))
    return sorted(found, key=lambda e: e.listed_as)


def _read_list_file(list_file: str) -> List[ImageEntry]:
    base = os.path.dirname(os.path.abspath(list_file))
    entries = []
    with open(list_file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) > 2:
                raise ExtractError(f"{list_file}: line {number}: expected 'path' or 'path<TAB>image_id', got {len(fields)} fields")
            listed = fields[0]
            image_id = fields[1] if len(fields) == 2 else os.path.splitext(os.path.basename(listed))[0]
            if len(fields) == 2 and _id_problem(image_id):
                raise ExtractError(f"{list_file}: line {number}: {_id_problem(image_id)}")
            entries.append(_entry(image_id, os.path.join(base, listed), listed))
    return entries


def list_images(source: str, recursive: bool = False) -> List[ImageEntry]:
    """The images of a folder (``.jpg``/``.jpeg``/``.png``, sorted; below it too when ``recursive``)
    or of a list file (one path per line, relative to the list file's folder, optionally
    ``<TAB>image_id``), in extraction order. Refuses a missing source, an empty list and ids
    shared by two files, naming them."""
    if os.path.isdir(source):
        entries = _scan_folder(source, recursive)
        what = f"{source}: no {'/'.join(IMAGE_EXTENSIONS)} files" + (" (below it either)" if recursive else " (try --recursive)")
    elif os.path.isfile(source):
        if recursive:
            raise ExtractError(f"--recursive scans a folder, but {source} is a list file")
        entries = _read_list_file(source)
        what = f"{source}: the list names no images"
    else:
        raise InputNotFoundError(f"{source}: no such folder or list file")
    if not entries:
        raise ExtractError(what)
    first: Dict[str, ImageEntry] = {}
    for entry in entries:
        if entry.image_id in first:
            raise ExtractError(
                f"{first[entry.image_id].path} and {entry.path} would both get image id {entry.image_id!r}; "
                "rename one (or give ids in a list file: path<TAB>image_id)"
            )
        first[entry.image_id] = entry
    return entries


def prediction_json(detections) -> str:
    """One image's ``predictions.tsv`` JSON: its objects with rect, class, score, attributes and feature.

    Numbers are written at full float32 precision, so the loader reads back exactly the boxes and
    features the detector returned.
    """
    objects = [
        prediction_object(
            detections.boxes[j], detections.class_names[j], detections.scores[j], bbox_id=j,
            attributes=list(detections.attr_names[j]), attr_scores=[float(v) for v in detections.attr_scores[j]],
            feature=encode_features(detections.features[j]),
        )
        for j in range(len(detections.boxes))
    ]
    return json.dumps({"objects": objects})


# --- resumable shards -------------------------------------------------------------------------


def _read_journal(path: str, shard_size: int) -> Tuple[List[Tuple[int, int, int]], int]:
    """The committed (index, start, end) rows of a journal and the byte length of its valid part.

    A torn last line (no line break yet) and rows pointing past the shard's end are not committed.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], 0
    rows, valid, expected_start = [], 0, 0
    for line in data.split(b"\n")[:-1]:
        try:
            index, start, end = (int(v) for v in line.split(b"\t"))
        except ValueError:
            break
        if start != expected_start or end <= start or end > shard_size:
            break
        rows.append((index, start, end))
        valid += len(line) + 1
        expected_start = end
    return rows, valid


def _write_all(raw, data: bytes) -> None:
    """Write all of ``data`` to an unbuffered file (a raw write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[raw.write(view):]


class ShardWriter:
    """A rank's append-only shard of rows and its journal of committed rows."""

    def __init__(self, work_dir: str, rank: int):
        self.shard_path = os.path.join(work_dir, f"shard-{rank}.tsv")
        self.journal_path = os.path.join(work_dir, f"shard-{rank}.journal")
        self._journal = open(self.journal_path, "ab", buffering=0)
        try:
            fcntl.flock(self._journal, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._journal.close()
            raise ExtractError(f"{self.shard_path}: another process is writing it (the same OUT and rank twice)") from None
        self._shard = open(self.shard_path, "ab", buffering=0)
        rows, valid = _read_journal(self.journal_path, os.path.getsize(self.shard_path))
        end = rows[-1][2] if rows else 0
        # Drop what the last run wrote but did not commit: a half-written row, a torn journal line.
        self._shard.truncate(end)
        self._journal.truncate(valid)
        self._end = end

    def commit(self, index: int, row: bytes) -> None:
        """Append one row, then journal it: a row counts only once its journal line is whole."""
        _write_all(self._shard, row)
        start, self._end = self._end, self._end + len(row)
        _write_all(self._journal, b"%d\t%d\t%d\n" % (index, start, self._end))

    def close(self) -> None:
        self._shard.close()
        self._journal.close()


def _committed(work_dir: str) -> Dict[int, Tuple[str, int, int]]:
    """Image index -> (shard, start, end) of every committed row in every shard of ``work_dir``."""
    done: Dict[int, Tuple[str, int, int]] = {}
    for name in sorted(os.listdir(work_dir)):
        if not (name.startswith("shard-") and name.endswith(".journal")):
            continue
        shard = os.path.join(work_dir, name[: -len(".journal")] + ".tsv")
        size = os.path.getsize(shard) if os.path.exists(shard) else 0
        for index, start, end in _read_journal(os.path.join(work_dir, name), size)[0]:
            done.setdefault(index, (shard, start, end))
    return done


def _ok_row(index: int, image_id: str, size: Tuple[int, int], detections) -> bytes:
    return f"{index}\tok\t{image_id}\t{size[0]}\t{size[1]}\t{prediction_json(detections)}\n".encode("utf-8")


def _bad_row(index: int, entry: ImageEntry, reason: str) -> bytes:
    record = {"image_id": entry.image_id, "path": entry.path, "reason": reason}
    return f"{index}\tbad\t{json.dumps(record, ensure_ascii=True)}\n".encode("utf-8")


# --- the final files --------------------------------------------------------------------------


class _AtomicFile:
    """A file written under a temporary name in its folder and renamed into place on ``commit``."""

    def __init__(self, path: str):
        self.path = path
        self.tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial")
        self.handle = open(self.tmp, "wb")

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())  # on disk before the rename makes it the file
        self.handle.close()
        os.replace(self.tmp, self.path)


def _lineidx_path(tsv_path: str) -> str:
    return os.path.splitext(tsv_path)[0] + ".lineidx"


def _merge(out_dir: str, work_dir: str, entries: Sequence[ImageEntry], summary: dict) -> ExtractSummary:
    """Write the final files from the committed rows, in image-list order, streaming."""
    done = _committed(work_dir)
    predictions = _AtomicFile(os.path.join(out_dir, PREDICTIONS_FILE))
    hw = _AtomicFile(os.path.join(out_dir, HW_FILE))
    pred_idx = _AtomicFile(_lineidx_path(predictions.path))
    hw_idx = _AtomicFile(_lineidx_path(hw.path))
    bad_file = _AtomicFile(os.path.join(out_dir, BAD_FILE))
    handles: Dict[str, object] = {}
    bad, extracted = [], 0
    try:
        for index in range(len(entries)):
            shard, start, end = done[index]
            if shard not in handles:
                handles[shard] = open(shard, "rb")
            handles[shard].seek(start)
            row = handles[shard].read(end - start).decode("utf-8")
            row_index, kind, rest = row.rstrip("\n").split("\t", 2)
            if int(row_index) != index:
                raise RuntimeError(f"{shard}: the row at byte {start} holds image {row_index}, the journal says {index}")
            if kind == "bad":
                record = json.loads(rest)
                bad.append(record)
                bad_file.handle.write((json.dumps(record) + "\n").encode("utf-8"))
                continue
            image_id, height, width, payload = rest.split("\t", 3)
            pred_idx.handle.write(b"%d\n" % predictions.handle.tell())
            predictions.handle.write(f"{image_id}\t{payload}\n".encode("utf-8"))
            hw_idx.handle.write(b"%d\n" % hw.handle.tell())
            hw.handle.write(hw_row(image_id, (height, width)).encode("utf-8"))
            extracted += 1
        for handle in handles.values():
            handle.close()
        for target in (predictions, hw, pred_idx, hw_idx, bad_file):
            target.commit()
    except BaseException:
        for target in (predictions, hw, pred_idx, hw_idx, bad_file):
            target.handle.close()
            if os.path.exists(target.tmp):
                os.remove(target.tmp)
        raise
    summary = dict(summary, num_extracted=extracted, num_bad=len(bad))
    _write_json_atomically(os.path.join(out_dir, SUMMARY_FILE), summary)
    shutil.rmtree(work_dir)
    return ExtractSummary(out_dir, len(entries), extracted, bad)


def _write_json_atomically(path: str, value: dict) -> None:
    tmp = f"{path}.{os.getpid()}.partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- the run ----------------------------------------------------------------------------------


def detector_fingerprint(detector_dir: str, precision: str = "fp32") -> List[List]:
    """Name, size and modification time of each file of the detector directory, and for ``int8``
    of each file of its calibration (what int8 runs: a new calibration is another detector)."""
    folders = [""] + ([CALIBRATION_DIR] if precision == "int8" else [])
    files = []
    for folder in folders:
        directory = os.path.join(detector_dir, folder)
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and not name.startswith("."):
                stat = os.stat(path)
                files.append([os.path.join(folder, name) if folder else name, stat.st_size, stat.st_mtime_ns])
    return files


def _run_description(entries: Sequence[ImageEntry], source: str, detector_dir: str, precision: str, fail_on_bad: bool) -> dict:
    """What makes two runs the same extraction: the image list, the detector's files and precision, the bad-file rule."""
    digest = hashlib.sha1()
    for entry in entries:
        digest.update(f"{entry.image_id}\t{entry.listed_as}\n".encode("utf-8", "surrogateescape"))
    return {
        "images": os.path.abspath(source),
        "num_listed": len(entries),
        "image_list_sha1": digest.hexdigest(),
        "detector": os.path.abspath(detector_dir),
        "detector_files": detector_fingerprint(detector_dir, precision),
        "precision": precision,
        "fail_on_bad": fail_on_bad,
    }


SAME_OUTPUT = ("num_listed", "image_list_sha1", "detector_files", "precision")  # what the final files depend on
# Runs recorded before --precision existed ran the detector in fp32.
_RECORDED_DEFAULTS = {"precision": "fp32"}


def _same_run(recorded: dict, description: dict, keys: Sequence[str] = SAME_OUTPUT + ("fail_on_bad",)) -> bool:
    return all(recorded.get(k, _RECORDED_DEFAULTS.get(k)) == description[k] for k in keys)


def _load_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _finished(out_dir: str, description: dict) -> Optional[ExtractSummary]:
    """The summary of a finished extraction of the same images in ``out_dir`` (None if there is none)."""
    recorded = _load_json(os.path.join(out_dir, SUMMARY_FILE))
    if recorded is None:
        return None
    if not _same_run(recorded, description, SAME_OUTPUT):
        raise ExtractError(
            f"{out_dir} already holds an extraction of other images or with another detector or precision "
            f"({recorded.get('images')}, {recorded.get('detector')}, "
            f"precision {recorded.get('precision', _RECORDED_DEFAULTS['precision'])}); choose a new OUT"
        )
    with open(os.path.join(out_dir, BAD_FILE), encoding="utf-8") as f:
        bad = [json.loads(line) for line in f if line.strip()]
    if bad and description["fail_on_bad"]:
        raise BadImageError(bad[0]["path"], bad[0]["reason"] + f" (skipped by the finished extraction in {out_dir})")
    return ExtractSummary(out_dir, recorded["num_listed"], recorded["num_extracted"], bad, already_done=True)


def _prepare_work_dir(out_dir: str, description: dict, restart: bool) -> str:
    """OUT/.extract for this run: created, or an unfinished run of the same extraction to resume."""
    work_dir = os.path.join(out_dir, WORK_DIR)
    os.makedirs(work_dir, exist_ok=True)
    manifest = os.path.join(work_dir, RUN_FILE)
    recorded = _load_json(manifest)
    if recorded is None:
        _write_json_atomically(manifest, description)
    elif not _same_run(recorded, description):
        how = ("another process is extracting into it (--restart discards it only when none is)" if restart else
               "resume it with the same IMAGES, --detector, --precision and --fail_on_bad, start over with --restart (which "
               "discards it), or choose a new OUT")
        raise ExtractError(
            f"{work_dir} holds an unfinished extraction of other images or with another detector or precision "
            f"({recorded.get('images')}, {recorded.get('detector')}, "
            f"precision {recorded.get('precision', _RECORDED_DEFAULTS['precision'])}, "
            f"fail_on_bad={recorded.get('fail_on_bad')}); {how}"
        )
    return work_dir


def _discard_other_run(lock, out_dir: str, description: dict) -> None:
    """``restart``: remove an unfinished extraction of other images or with another detector from
    OUT/.extract, unless a process holds OUT's lock (a rank of this run that restarted it already,
    or a run of that other extraction still working: :func:`_prepare_work_dir` then refuses)."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return
    try:
        work_dir = os.path.join(out_dir, WORK_DIR)
        recorded = _load_json(os.path.join(work_dir, RUN_FILE))
        if recorded is not None and not _same_run(recorded, description):
            shutil.rmtree(work_dir)
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)


def _drop_empty_run(lock, out_dir: str, work_dir: str, created_out: bool) -> None:
    """After a failure: remove the work folder when no row was committed (nothing to resume, and a
    rerun with other images or another detector must not be refused), and OUT too when this run
    created it; unless another process holds OUT's lock (it may be about to commit)."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return
    if os.path.isdir(work_dir) and not _committed(work_dir):
        shutil.rmtree(work_dir)
        if created_out and os.listdir(out_dir) == [LOCK_FILE]:
            os.remove(os.path.join(out_dir, LOCK_FILE))
            os.rmdir(out_dir)


def _decoded(entries: Sequence[Tuple[int, ImageEntry]]) -> Iterator[Tuple[int, ImageEntry, object]]:
    """(index, entry, RGB array or BadImageError) in order, decoded in a thread ``PREFETCH`` images
    ahead, so decoding overlaps detection (PIL releases the GIL while it decodes)."""

    def decode(entry: ImageEntry):
        if entry.problem:
            return BadImageError(entry.path, entry.problem)
        try:
            return load_image(entry.path)
        except BadImageError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque = deque()
        for index, entry in entries:
            pending.append((index, entry, pool.submit(decode, entry)))
            if len(pending) > PREFETCH:
                done_index, done_entry, future = pending.popleft()
                yield done_index, done_entry, future.result()
        while pending:
            done_index, done_entry, future = pending.popleft()
            yield done_index, done_entry, future.result()


def _check_headers(entries: Iterable[ImageEntry]) -> None:
    """Raise BadImageError for the first file refused before decoding (``--fail_on_bad``)."""
    for entry in entries:
        if entry.problem:
            raise BadImageError(entry.path, entry.problem)
        check_header(entry.path)


def extract(
    images: str,
    out_dir: str,
    detector_dir: str,
    *,
    recursive: bool = False,
    fail_on_bad: bool = False,
    restart: bool = False,
    progress: bool = True,
    precision: str = "fp32",
    detector=None,
) -> Optional[ExtractSummary]:
    """Extract every listed image's detections into ``out_dir`` (see the module docstring).

    Returns the summary of the finished extraction, or None on a rank that finished its share
    while another rank is still working (that rank merges).
    ``restart``: discard an unfinished extraction of other images or with another detector that
    ``out_dir`` holds, instead of refusing it (an unfinished run of this extraction is resumed).
    ``precision``: the detector's (:data:`vinvl.precision.DETECTOR_PRECISIONS`; bf16 runs on
    Paddle Inference, int8 on ONNX Runtime from the detector's calibration; refused where the CPU
    lacks the instructions, or int8 without a current calibration, before ``out_dir`` is touched).
    ``detector``: the detector already loaded from ``detector_dir`` at ``precision`` (loaded here
    when None and there is work left).
    A run that fails before any row is committed leaves nothing to resume (nor ``out_dir``, if it
    created it).
    """
    start_time = time.perf_counter()
    check_precision(precision, supported=DETECTOR_PRECISIONS)
    detector_dir = resolve_config(detector_dir, "--detector", kind="config")
    if not os.path.isdir(detector_dir):
        raise InputNotFoundError(f"{detector_dir}: no such detector directory")
    if detector is None:
        DetectorConfig.from_dir(detector_dir)  # a missing or bad config is refused before OUT is touched
        if precision == "int8":
            require_calibration(detector_dir)  # as is int8 without a current calibration
    entries = list_images(images, recursive)
    description = _run_description(entries, images, detector_dir, precision, fail_on_bad)
    parallel = paddle.distributed.ParallelEnv()  # the ranks paddle.distributed.launch started (0 of 1 without it)
    rank, world = parallel.rank, max(parallel.world_size, 1)
    created_out = not os.path.exists(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, LOCK_FILE), "a+") as lock:
        if restart:
            _discard_other_run(lock, out_dir, description)
        # Shared while working (the work dir must stay), exclusive to merge.
        fcntl.flock(lock, fcntl.LOCK_SH)
        finished = _finished(out_dir, description)
        if finished is not None:
            return finished
        work_dir = _prepare_work_dir(out_dir, description, restart)
        try:
            done = _committed(work_dir)
            mine = [(i, e) for i, e in enumerate(entries) if i % world == rank]
            todo = [(i, e) for i, e in mine if i not in done]
            if len(todo) < len(mine):
                print(f"resuming: {len(mine) - len(todo)} of {len(mine)} images already done")
            if fail_on_bad:
                _check_headers(e for _, e in todo)
            if todo:
                _extract_share(todo, work_dir, rank, world, len(mine), detector or load_detector(detector_dir, precision),
                               fail_on_bad, progress)
        except BaseException:
            _drop_empty_run(lock, out_dir, work_dir, created_out)
            raise
        fcntl.flock(lock, fcntl.LOCK_UN)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(out_dir, SUMMARY_FILE)) or len(_committed(work_dir)) < len(entries):
            return None  # another rank merged, or is still working (the last one to finish merges)
        summary = _merge(out_dir, work_dir, entries, description)
    summary.seconds = time.perf_counter() - start_time
    return summary


def _extract_share(todo, work_dir, rank, world, share_size, detector, fail_on_bad, progress) -> None:
    """Decode, detect and commit this rank's remaining images, one row per image."""
    writer = ShardWriter(work_dir, rank)
    label = "extract" if world == 1 else f"extract (rank {rank}/{world})"
    bar = tqdm(total=share_size, initial=share_size - len(todo), unit="img", desc=label, disable=not progress)
    try:
        for index, entry, decoded in _decoded(todo):
            if isinstance(decoded, BadImageError):
                if fail_on_bad:
                    raise decoded
                bar.write(f"skipped {decoded}", file=sys.stderr)  # stdout stays the command's answer
                writer.commit(index, _bad_row(index, entry, decoded.reason))
            else:
                detections = detector.detect([decoded])[0]
                if len(detections.boxes) == 0:
                    reason = "the detector found no region in it"
                    if fail_on_bad:
                        raise BadImageError(entry.path, reason)
                    writer.commit(index, _bad_row(index, entry, reason))
                else:
                    writer.commit(index, _ok_row(index, entry.image_id, decoded.shape[:2], detections))
            bar.update(1)
    finally:
        bar.close()
        writer.close()
