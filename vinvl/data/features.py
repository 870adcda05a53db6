"""Region features read lazily, one image at a time, from the two on-disk layouts.

- :class:`FeatureTSV`: the official ``features.tsv`` (``image_id, num_boxes, base64``) with
  ``imageid2idx.json`` mapping each image id to its row (several ids may map to one row).
- :class:`DetectorPredictions`: the VinVL detector's own output (scene_graph_benchmark with
  ``TEST.OUTPUT_FEATURE True``): ``predictions.tsv`` rows whose objects carry a base64 2048-d
  ``feature``, and image sizes in a ``*.hw.tsv``; the 6 geometry columns are computed here.

Both keep only row offsets in memory and reopen their file after a fork.
"""
from __future__ import annotations

import glob
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np

from .formats import DataError, decode_feature_row, detector_features, parse_hw, parse_prediction
from .tsv import TSVFile

__all__ = ["FeatureTSV", "DetectorPredictions", "read_tags"]


class FeatureTSV:
    """``features.tsv`` + ``imageid2idx.json`` in one folder."""

    def __init__(self, folder: str, cache_dir: Optional[str] = None):
        self.folder = folder
        self.path = os.path.join(folder, "features.tsv")
        index_path = os.path.join(folder, "imageid2idx.json")
        if not os.path.isfile(index_path):
            raise DataError(f"{index_path}: no such file (needed to find each image's row in {self.path})")
        try:
            with open(index_path, encoding="utf-8") as f:
                self.rows: Dict[str, int] = {str(k): int(v) for k, v in json.load(f).items()}
        except (json.JSONDecodeError, ValueError, AttributeError) as exc:
            raise DataError(f"{index_path}: expected a JSON object from image id to row number ({exc})") from exc
        self.tsv = TSVFile(self.path, cache_dir)
        bad = [k for k, r in self.rows.items() if not 0 <= r < len(self.tsv)]
        if bad:
            raise DataError(f"{index_path}: image {bad[0]} points to row {self.rows[bad[0]]}, but {self.path} has {len(self.tsv)} rows")

    def row_of(self, image_id: str) -> int:
        if image_id not in self.rows:
            raise DataError(f"image {image_id} has no features: it is not in {os.path.join(self.folder, 'imageid2idx.json')}")
        return self.rows[image_id]

    def num_boxes(self, row: int) -> int:
        """A row's num_boxes field, read from the row's start only."""
        fields = self.tsv.head(row, 2)
        try:
            return int(fields[1])
        except (IndexError, ValueError) as exc:
            raise DataError(f"{self.path}: row {row}: no integer num_boxes field") from exc

    def read(self, row: int, image_id: Optional[str] = None) -> np.ndarray:
        """``[num_boxes, 2054]`` float32 of one row, checked (and checked to be ``image_id``'s).

        A row is ``image_id``'s when it holds that id, or when ``imageid2idx.json`` maps both
        ``image_id`` and the id the row holds to it: several images may share one row (a gallery of
        duplicates, or a benchmark's gallery larger than its disk), the row stored under one of them.
        """
        found, features = decode_feature_row(self.tsv.seek(row), self.path, row)
        shared = self.rows.get(found) == row and self.rows.get(image_id) == row
        if image_id is not None and found != image_id and not shared:
            raise DataError(f"{self.path}: row {row} holds image {found}, but imageid2idx.json maps image {image_id} to it")
        return features


class DetectorPredictions:
    """The VinVL detector's ``predictions.tsv`` (objects with features) and ``*.hw.tsv`` image sizes."""

    def __init__(self, folder: str, cache_dir: Optional[str] = None):
        self.folder = folder
        self.path = os.path.join(folder, "predictions.tsv")
        if not os.path.isfile(self.path):
            raise DataError(f"{self.path}: no such file")
        hw_files = sorted(glob.glob(os.path.join(folder, "*.hw.tsv")))
        if not hw_files:
            raise DataError(f"{folder}: no *.hw.tsv with the image sizes beside predictions.tsv")
        self.hw_path = hw_files[0]
        self.sizes: Dict[str, Tuple[int, int]] = {}
        for row, fields in TSVFile(self.hw_path, cache_dir):
            image_id, size = parse_hw(fields, self.hw_path, row)
            self.sizes[image_id] = size
        self.tsv = TSVFile(self.path, cache_dir)
        self.rows: Dict[str, int] = {}
        for row in range(len(self.tsv)):
            self.rows[self.tsv.head(row)[0].strip()] = row

    def row_of(self, image_id: str) -> int:
        if image_id not in self.rows:
            raise DataError(f"image {image_id} is not in {self.path}")
        return self.rows[image_id]

    def objects(self, row: int) -> Tuple[str, List[dict]]:
        image_id, objects, _ = parse_prediction(self.tsv.seek(row), self.path, row)
        return image_id, objects

    def read(self, row: int, image_id: Optional[str] = None) -> np.ndarray:
        found, objects = self.objects(row)
        if image_id is not None and found != image_id:
            raise DataError(f"{self.path}: row {row} holds image {found}, expected image {image_id}")
        if found not in self.sizes:
            raise DataError(f"{self.hw_path}: no image size for image {found}")
        return detector_features(objects, self.sizes[found], self.path, found)


def read_tags(predictions_path: str, wanted: Optional[set] = None) -> Dict[str, List[str]]:
    """Image id -> detected class names (in file order) from an official ``predictions.tsv``.

    Streams the file once; keeps only the images in ``wanted`` when it is given. Class names are
    interned: a million images of 30 tags hold one string per class, not 30 million strings.
    """
    if not os.path.isfile(predictions_path):
        raise DataError(f"{predictions_path}: no such file (object tags were asked for)")
    tags: Dict[str, List[str]] = {}
    with open(predictions_path, "rb") as f:
        for row, line in enumerate(f):
            if not line.strip():
                continue
            fields = line.decode("utf-8").rstrip("\r\n").split("\t")
            if wanted is not None and fields[0] not in wanted:
                continue
            image_id, objects, _ = parse_prediction(fields, predictions_path, row)
            tags[image_id] = [sys.intern(obj["class"]) for obj in objects]
    return tags
