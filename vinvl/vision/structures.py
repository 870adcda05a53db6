"""What the detector returns for one image (the contract with extraction, see docs/architecture.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from ..data.formats import box_geometry


@dataclass
class Detections:
    """The detections of one image, in original-image pixel coordinates, best score first.

    ``labels`` index the VinVL label map (1..num_classes-1; 0 is background and never returned).
    ``attr_labels``/``attr_scores``/``attr_names`` hold, per box, the attributes whose score cleared
    the attribute threshold, best first (possibly none). ``features`` are the res5 head's pooled
    box features (2048-d for VinVL).
    """

    image_size: Tuple[int, int]  # (height, width) of the decoded image
    boxes: np.ndarray  # [N, 4] float32 x1, y1, x2, y2
    scores: np.ndarray  # [N] float32
    labels: np.ndarray  # [N] int64
    class_names: List[str]
    attr_labels: List[np.ndarray]
    attr_scores: List[np.ndarray]
    attr_names: List[List[str]]
    features: np.ndarray  # [N, D] float32

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def region_features(self) -> np.ndarray:
        """``[N, D + 6]`` float32: features then the 6 geometry columns the retrieval model reads."""
        height, width = self.image_size
        geometry = box_geometry(self.boxes, height, width)
        return np.concatenate([self.features, geometry], axis=1).astype(np.float32)
