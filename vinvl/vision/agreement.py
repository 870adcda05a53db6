"""How far one detector run is from a reference run on the same photos: the fidelity gate of a
lower precision (boxes matched at IoU > 0.99, same class, same attributes, feature error).

Each reference box is matched to the other run's box of highest IoU (+1 pixel convention, as the
detector's own NMS); a box counts as matched above :data:`MATCH_IOU`. Classes, attributes (set
and order) and features are compared on matched boxes only. A feature's error is relative to the
reference feature's largest magnitude: ``max |a - b| / max |a|``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence

import numpy as np

from .boxes import pairwise_iou
from .structures import Detections

__all__ = ["MATCH_IOU", "Agreement", "compare_detections"]

MATCH_IOU = 0.99


@dataclass
class Agreement:
    """Counts over all photos, and the relative feature error of every matched box."""

    reference_boxes: int = 0
    other_boxes: int = 0
    matched: int = 0
    same_class: int = 0
    same_attributes: int = 0
    feature_errors: List[float] = field(default_factory=list)

    @property
    def all_matched(self) -> bool:
        """Every reference box matched, with no extra box on the other side, classes and attributes equal."""
        counts = (self.other_boxes, self.matched, self.same_class, self.same_attributes)
        return all(count == self.reference_boxes for count in counts)

    def worst_feature_error(self) -> float:
        return max(self.feature_errors, default=0.0)

    def median_feature_error(self) -> float:
        return float(np.median(self.feature_errors)) if self.feature_errors else 0.0

    def summary(self) -> str:
        """One line: ``matched 245/245 boxes (245 found), same class 245, same attributes 245, feature
        error worst 6.2e-07 / median 3.3e-07``."""
        return (
            f"matched {self.matched}/{self.reference_boxes} boxes ({self.other_boxes} found), same class "
            f"{self.same_class}, same attributes {self.same_attributes}, feature error worst "
            f"{self.worst_feature_error():.1e} / median {self.median_feature_error():.1e}"
        )


def compare_detections(reference: Sequence[Detections], other: Sequence[Detections]) -> Agreement:
    """The :class:`Agreement` of ``other`` with ``reference``, photo by photo (same order)."""
    if len(reference) != len(other):
        raise ValueError(f"{len(reference)} reference results but {len(other)} to compare")
    agreement = Agreement()
    for ref, oth in zip(reference, other):
        agreement.reference_boxes += len(ref.boxes)
        agreement.other_boxes += len(oth.boxes)
        if len(ref.boxes) == 0 or len(oth.boxes) == 0:
            continue
        iou = pairwise_iou(ref.boxes, oth.boxes)
        best = iou.argmax(axis=1)
        for i in np.flatnonzero(iou[np.arange(len(best)), best] > MATCH_IOU):
            j = best[i]
            agreement.matched += 1
            agreement.same_class += int(ref.labels[i] == oth.labels[j])
            agreement.same_attributes += int(np.array_equal(ref.attr_labels[i], oth.attr_labels[j]))
            scale = float(np.abs(ref.features[i]).max()) or 1.0
            agreement.feature_errors.append(float(np.abs(ref.features[i] - oth.features[j]).max()) / scale)
    return agreement
