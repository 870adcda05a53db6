"""One example per image from the official files: what the ``coco_ir`` loading script yields.

An example holds the image id, its captions, its object tags, how many regions it has, and
where its features are (``feature_file`` + ``feature_row``), so the Arrow cache stays small
(about 100 bytes plus the text per image) and features are read on demand. With
``inline_features`` the ``[num_regions, 2054]`` array is stored in the example instead
(about 8 KB per region: COCO train with 50 regions is then ~46 GB of cache).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

from .features import DetectorPredictions, FeatureTSV, read_tags
from .formats import DataError, find_captions_file, load_captions, load_image_keys
from .layout import split_feature_dir

__all__ = ["ExampleOptions", "iter_examples", "detect_layout", "open_feature_source"]

OFFICIAL = "official"
DETECTOR = "detector"


@dataclass
class ExampleOptions:
    """What the loading script's config says about a split."""

    features_dir: Optional[str] = None
    add_od_labels: bool = True
    eval_img_keys_file: Optional[str] = None
    inline_features: bool = False
    layout: str = "auto"  # "official", "detector" (scene_graph_benchmark output) or "auto"
    lineidx_cache_dir: Optional[str] = None  # where line indexes of read-only data folders go


def detect_layout(data_dir: str, options: ExampleOptions) -> str:
    """``official`` when there is a caption file or a features folder, else ``detector``."""
    if options.layout != "auto":
        if options.layout not in (OFFICIAL, DETECTOR):
            raise ValueError(f"layout must be 'official', 'detector' or 'auto', got {options.layout!r}")
        return options.layout
    folder = options.features_dir or data_dir
    has_detector = os.path.isfile(os.path.join(folder, "predictions.tsv")) and not os.path.isfile(
        os.path.join(folder, "features.tsv")
    )
    return DETECTOR if has_detector and not os.path.isdir(os.path.join(data_dir, "features")) else OFFICIAL


def open_feature_source(path: str, layout: str, lineidx_cache_dir: Optional[str] = None):
    """The reader of a feature file named in an example."""
    folder = os.path.dirname(path)
    return DetectorPredictions(folder, lineidx_cache_dir) if layout == DETECTOR else FeatureTSV(folder, lineidx_cache_dir)


def key_file_path(data_dir: str, options: ExampleOptions) -> Optional[str]:
    """The evaluation key file (relative paths are in ``data_dir``), or None."""
    key_path = options.eval_img_keys_file
    if key_path and not os.path.isabs(key_path):
        key_path = os.path.join(data_dir, key_path)
    return key_path or None


def _select_keys(data_dir: str, available, options: ExampleOptions, source: str) -> List[str]:
    """The image ids of the split: all of ``available`` in order, or the key file's, all checked."""
    key_path = key_file_path(data_dir, options)
    if not key_path:
        return list(available)
    keys = load_image_keys(key_path)
    missing = [k for k in keys if k not in available]
    if missing:
        raise DataError(f"{key_path}: image {missing[0]} is not in {source} ({len(missing)} unknown ids)")
    return keys


def _official_examples(data_dir: str, split: str, options: ExampleOptions) -> Iterator[Tuple[str, dict]]:
    caption_path = find_captions_file(data_dir, split)
    captions = load_captions(caption_path)
    keys = _select_keys(data_dir, captions, options, caption_path)
    folder = split_feature_dir(data_dir, split, options.features_dir)
    features = FeatureTSV(folder, options.lineidx_cache_dir)
    rows = {k: features.row_of(k) for k in keys}  # every captioned image must have features, checked up front
    tags: Dict[str, List[str]] = {}
    if options.add_od_labels:
        tags = read_tags(os.path.join(folder, "predictions.tsv"), set(keys))
        missing = [k for k in keys if k not in tags]
        if missing:
            raise DataError(f"{os.path.join(folder, 'predictions.tsv')}: no row for image {missing[0]}")
    for image_id in keys:
        row = rows[image_id]
        example = {
            "image_id": image_id,
            "captions": captions[image_id],
            "tags": tags.get(image_id, []),
            "feature_file": os.path.abspath(features.path),
            "feature_row": row,
        }
        if options.inline_features:
            array = features.read(row, image_id)
            example["num_regions"] = len(array)
            example["features"] = array
        else:
            example["num_regions"] = features.num_boxes(row)
        yield image_id, example


def _detector_examples(data_dir: str, split: str, options: ExampleOptions) -> Iterator[Tuple[str, dict]]:
    folder = options.features_dir or data_dir
    predictions = DetectorPredictions(folder, options.lineidx_cache_dir)
    try:
        caption_path = find_captions_file(data_dir, split)
    except DataError:  # no captions: a gallery of the detector's images
        caption_path, captions = None, {}
    if caption_path:
        captions = load_captions(caption_path)
        keys = _select_keys(data_dir, captions, options, caption_path)
    else:
        keys = _select_keys(data_dir, predictions.rows, options, predictions.path)
    for image_id in keys:  # every image needs a row and a size, checked before any feature is read
        predictions.row_of(image_id)
        if image_id not in predictions.sizes:
            raise DataError(f"{predictions.hw_path}: no image size for image {image_id}")
    for image_id in keys:
        row = predictions.row_of(image_id)
        _, objects = predictions.objects(row)
        example = {
            "image_id": image_id,
            "captions": captions.get(image_id, []),
            "tags": [o["class"] for o in objects] if options.add_od_labels else [],
            "feature_file": os.path.abspath(predictions.path),
            "feature_row": row,
            "num_regions": len(objects),
        }
        if options.inline_features:
            example["features"] = predictions.read(row, image_id)
        yield image_id, example


def iter_examples(data_dir: str, split: str, options: ExampleOptions) -> Iterator[Tuple[str, dict]]:
    """(key, example) for every image of ``split``; raises DataError before yielding on missing files/ids."""
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: no such data directory")
    if detect_layout(data_dir, options) == DETECTOR:
        return _detector_examples(data_dir, split, options)
    return _official_examples(data_dir, split, options)
