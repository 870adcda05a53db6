"""Photos as retrieval queries and galleries: the detector between a photo and the Taskflow.

An *image source* is a photo file (a ``pathlib.Path``, or a string ending in ``.jpg``, ``.jpeg``
or ``.png``), a PIL image, or an ``HxWx3`` uint8 RGB array. :class:`ImageQueries` turns each
image-source query (or ``{"image": source, ...}``) into the ``{"features", "tags"}`` query the
Taskflow already answers: the detector's 2054-d region rows and its class names, exactly what
``vinvl extract`` writes for the photo and the ``coco_ir`` loading script reads back.

:func:`photo_gallery` makes a gallery of a folder of photos with :func:`vinvl.vision.extract.extract`
and caches the result. The cache lives in ``<cache root>/<folder key>/<state key>/``: the root is
``~/.cache/vinvl/photo_galleries`` unless given; the folder key is a digest of the folder's
absolute path; the state key is a digest of (path below the folder, size, ``mtime_ns``) of every
photo, of the detector directory's files (name, size, ``mtime_ns``) and of the detector's precision.
A folder whose photos are added, removed, replaced or touched, or another detector or precision,
gets a new state key and is extracted
again; the folder's older states are then deleted. An interrupted extraction resumes. Clearing
the cache is deleting the root (or one folder key below it); nothing else refers to it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from ..assets import resolve_config
from ..data import load_corpus
from ..errors import UserError
from ..precision import DETECTOR_PRECISIONS, check_precision
from ..vision.extract import SUMMARY_FILE, ExtractError, InputNotFoundError, detector_fingerprint, extract, list_images
from ..vision.image import IMAGE_EXTENSIONS, BadImageError, check_header, load_image

__all__ = [
    "PhotoError",
    "DEFAULT_CACHE_ROOT",
    "ImageQueries",
    "PhotoGallery",
    "is_image_source",
    "photo_gallery",
    "gallery_cache_dir",
    "check_detector_dir",
    "resolve_detector",
    "detections_query",
]

logger = logging.getLogger(__name__)

DEFAULT_CACHE_ROOT = os.path.join(os.path.expanduser("~"), ".cache", "vinvl", "photo_galleries")
LOADER_CACHE = ".loader_cache"  # the coco_ir loader's own caches, kept inside the gallery's cache


class PhotoError(UserError, ValueError):
    """A photo query or photo gallery that cannot be answered; the message names the query or option."""


def is_image_source(query: Any) -> bool:
    """Whether ``query`` is a photo (file path, PIL image or array) rather than a caption or a dict.

    A string is a photo path when it is one line ending in an image extension; any other string
    stays a caption.
    """
    if isinstance(query, (Image.Image, np.ndarray, os.PathLike)):
        return True
    return isinstance(query, str) and "\n" not in query and query.lower().endswith(IMAGE_EXTENSIONS)


def _missing_detector(what: str) -> PhotoError:
    return PhotoError(
        f"{what} needs a detector to turn photos into region features and tags: pass "
        "detector_path=<detector directory> to Taskflow (vinvl retrieve: --detector DIR), e.g. a "
        "vinvl-detector-x152c4 directory with weights from vinvl convert-detector"
    )


def check_detector_dir(detector_path: str, precision: str = "fp32") -> None:
    """Refuse a ``detector_path`` that is not a detector directory, or at int8 one without a current
    calibration (:func:`vinvl.vision.inference.require_calibration`), naming it, before any work."""
    if not os.path.isfile(os.path.join(detector_path, "config.json")):
        raise FileNotFoundError(f"detector_path={detector_path!r} is not a detector directory: it has no config.json")
    if precision == "int8":
        from ..vision.inference import require_calibration  # imports paddle

        require_calibration(detector_path)


def resolve_detector(detector_path: Optional[str], precision: str = "fp32") -> Optional[str]:
    """The detector directory ``detector_path`` names (a directory, or a shipped detector config's
    name; None stays None), checked at ``precision`` against the CPU and, at int8, for a current
    calibration: refused, naming what is wrong, before any model or photo is loaded."""
    check_precision(precision, supported=DETECTOR_PRECISIONS)
    if detector_path is None:
        return None
    path = resolve_config(detector_path, "detector_path=", kind="config")
    check_detector_dir(path, precision)
    return path


def detections_query(detections) -> Dict[str, Any]:
    """The ``{"features", "tags"}`` query of one image's detections (its region rows and class names)."""
    return {"features": detections.region_features(), "tags": list(detections.class_names)}


class ImageQueries:
    """Turns photo queries into ``{"features", "tags"}`` queries with a detector loaded on first use.

    ``detector_precision``: ``fp32`` (the dygraph detector), ``bf16`` (Paddle Inference) or ``int8``
    (ONNX Runtime, from the detector's calibration; :mod:`vinvl.vision.inference`), checked against
    the CPU here, before any photo is read.
    """

    def __init__(self, detector_path: Optional[str] = None, detector_precision: str = "fp32"):
        self.detector_path = resolve_detector(detector_path, detector_precision)
        self.precision = detector_precision
        self._detector = None

    @property
    def detector(self):
        """The detector of ``detector_path`` at the precision asked for (loaded once)."""
        if self.detector_path is None:
            raise _missing_detector("a photo")
        if self._detector is None:
            from ..vision.inference import load_detector

            self._detector = load_detector(self.detector_path, self.precision)
        return self._detector

    def resolve(self, queries: Sequence[Any]) -> List[Any]:
        """``queries`` with every photo replaced by its ``{"features", "tags"}`` query; others unchanged.

        Every photo is checked (a detector is given, the file exists and has a readable header)
        before the first one is detected.
        """
        photos = {}
        for position, query in enumerate(queries):
            source = self._source_of(query, position)
            if source is not None:
                if self.detector_path is None:
                    raise _missing_detector(f"query {position} (a photo: {_name(source)})")
                if isinstance(source, (str, os.PathLike)):
                    try:
                        check_header(source)
                    except BadImageError as exc:
                        raise PhotoError(f"query {position}: {exc}") from exc
                photos[position] = source
        resolved = list(queries)
        for position, source in photos.items():
            try:
                detections = self.detector.detect([load_image(source)])[0]
            except BadImageError as exc:
                raise PhotoError(f"query {position}: {exc}") from exc
            if len(detections) == 0:
                raise PhotoError(f"query {position}: the detector found no region in {_name(source)}")
            query = resolved[position]
            extra = {k: v for k, v in query.items() if k != "image"} if isinstance(query, dict) else {}
            resolved[position] = {**detections_query(detections), **extra}
        return resolved

    @staticmethod
    def _source_of(query: Any, position: int) -> Optional[Any]:
        """The photo a query asks about (a bare source or ``{"image": source, ...}``), else None."""
        if is_image_source(query):
            return query
        if isinstance(query, dict) and "image" in query:
            clash = {"image_id", "features", "tags"} & set(query)
            if clash:
                raise PhotoError(f"query {position}: give 'image' or {sorted(clash)}, not both")
            if not is_image_source(query["image"]) and not isinstance(query["image"], str):
                raise PhotoError(f"query {position}: 'image' must be a file path, a PIL image or an HxWx3 uint8 array")
            return query["image"]
        return None


def _name(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, Image.Image):
        return f"a PIL image {source.width}x{source.height}"
    return f"an array of shape {list(np.shape(source))}"


@dataclass
class PhotoGallery:
    """A folder's photos as a gallery: ids (file names without extension), tags, features by index."""

    cache_dir: str  # the extraction (predictions.tsv, images.hw.tsv, bad_images.jsonl, extract.json)
    image_ids: List[str]
    tags: List[List[str]]
    features: Any  # features(i) -> [R, 2054] float32, read from the cache on demand
    bad: List[dict]  # photos skipped, each {"image_id", "path", "reason"}


def _digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True).encode("utf-8", "surrogateescape")).hexdigest()


def gallery_cache_dir(folder: str, detector_path: str, cache_root: Optional[str] = None, precision: str = "fp32") -> str:
    """Where the gallery of ``folder`` in its current state, with this detector at ``precision``, is cached."""
    photos = []
    for entry in list_images(folder):
        stat = os.stat(entry.path)
        photos.append([entry.listed_as, stat.st_size, stat.st_mtime_ns])
    state = {"photos": photos, "detector": detector_fingerprint(detector_path, precision)}
    if precision != "fp32":  # fp32 galleries keep the keys they had before the precision existed
        state["precision"] = precision
    state = _digest(state)
    folder_key = _digest(os.path.abspath(folder))[:16]
    return os.path.join(cache_root or DEFAULT_CACHE_ROOT, folder_key, state[:24])


def photo_gallery(
    folder: str,
    queries: ImageQueries,
    cache_root: Optional[str] = None,
    progress: bool = True,
) -> PhotoGallery:
    """The gallery of the photos in ``folder`` (not its subfolders), extracted with ``queries``'
    detector unless the cache holds this state of the folder (see the module docstring).
    ``folder`` may also be a list file, as ``vinvl extract`` reads it."""
    if queries.detector_path is None:
        raise _missing_detector(f"gallery_images={folder!r}")
    try:
        cache_dir = gallery_cache_dir(folder, queries.detector_path, cache_root, queries.precision)
        finished = os.path.isfile(os.path.join(cache_dir, SUMMARY_FILE))
        summary = extract(
            folder, cache_dir, queries.detector_path, progress=progress, precision=queries.precision,
            detector=None if finished else queries.detector,
        )
    except (ExtractError, InputNotFoundError) as exc:
        raise PhotoError(f"gallery_images={folder!r}: {exc}") from exc
    _drop_older_states(cache_dir)
    if summary.bad:
        logger.warning(  # one line on the command line (no warnings' source line)
            f"gallery_images={folder!r}: {summary.num_bad} photo{'s' if summary.num_bad != 1 else ''} skipped (listed in "
            f"{os.path.join(cache_dir, 'bad_images.jsonl')}), e.g. {summary.bad[0]['path']}: {summary.bad[0]['reason']}"
        )
    if summary.num_extracted == 0:
        raise PhotoError(f"gallery_images={folder!r}: no photo could be extracted")
    corpus = load_corpus(cache_dir, "test", cache_dir=os.path.join(cache_dir, LOADER_CACHE))
    return PhotoGallery(cache_dir, list(corpus.image_ids), [list(t) for t in corpus.tags], corpus.features, summary.bad)


def _drop_older_states(cache_dir: str) -> None:
    """Delete the cached extractions of earlier states of the same folder (they can no longer be hit)."""
    folder_dir = os.path.dirname(cache_dir)
    for name in os.listdir(folder_dir):
        path = os.path.join(folder_dir, name)
        if path != cache_dir and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
