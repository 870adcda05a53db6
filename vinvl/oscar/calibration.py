"""The int8 calibration stored beside a model: the statically quantized match head and its manifest.

Static int8 fixes every activation scale from a calibration run over pairs of the user's own
gallery (``vinvl calibrate``), where dynamic int8 sets one scale per tensor per batch at run
time (so a pair's margin depends on the batch it is scored in). The calibration lives in
``<model_dir>/int8_calibration/``:

```
match_head.int8.onnx   the match head, encoder MatMuls in QDQ int8 with constant activation scales
manifest.json          weights_sha256 (vinvl.oscar.model_dir.weights_checksum, as a gallery index
                       records it), method, pairs, images, gallery, created (UTC)
```

It is kept apart from the ``inference/`` exports, which are rebuilt whenever the weights change:
a calibration is made from data the export cannot see again, so a calibration for other weights
is refused (:class:`StaleCalibrationError`, naming the manifest) rather than silently rebuilt,
used or dropped. It is written to a temporary directory beside it and moved into place last, so
an interrupted calibration leaves the previous one (or none), never a half-written one.
"""
from __future__ import annotations

import datetime
import json
import os
from typing import Any, Callable, Dict, Optional

from ..errors import UserError
from ..files import replaced_directory
from .model_dir import weights_checksum

__all__ = ["CALIBRATION_DIR", "GRAPH_FILE", "MANIFEST_FILE", "StaleCalibrationError", "calibrated_graph",
           "read_manifest", "write_calibration"]

CALIBRATION_DIR = "int8_calibration"
GRAPH_FILE = "match_head.int8.onnx"
MANIFEST_FILE = "manifest.json"


class StaleCalibrationError(UserError, ValueError):
    """A calibration made for weights other than the model directory's (or the detector directory's:
    the detector's calibration, :mod:`vinvl.vision.calibration`, keeps the same layout)."""


def read_manifest(model_dir: str) -> Optional[Dict[str, Any]]:
    """The manifest of ``model_dir``'s calibration (a model's or a detector's), or None when it has none."""
    path = os.path.join(model_dir, CALIBRATION_DIR, MANIFEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def calibrated_graph(model_dir: str, weights_sha256: Optional[str] = None) -> Optional[str]:
    """The statically quantized graph calibrated for ``model_dir``'s weights, or None when there is
    no calibration; a calibration for other weights raises :class:`StaleCalibrationError`.

    ``weights_sha256`` is the directory's weights checksum when the caller has it already."""
    manifest = read_manifest(model_dir)
    if manifest is None:
        return None
    path = os.path.join(model_dir, CALIBRATION_DIR, MANIFEST_FILE)
    current = weights_sha256 or weights_checksum(model_dir)
    if manifest.get("weights_sha256") != current:
        raise StaleCalibrationError(
            f"{path}: the int8 calibration was made for other weights (sha256 "
            f"{str(manifest.get('weights_sha256'))[:12]}..., the model's are {current[:12]}...); "
            f"run `vinvl calibrate --model_dir {model_dir}` again, or delete {os.path.dirname(path)}"
        )
    return os.path.join(model_dir, CALIBRATION_DIR, GRAPH_FILE)


def write_calibration(model_dir: str, quantize: Callable[[str], None], **fields: Any) -> str:
    """Write ``model_dir``'s calibration: ``quantize(path)`` writes the quantized graph at ``path``;
    the manifest records the weights' checksum, ``fields`` (method, pairs, ...) and the date.
    Replaces an earlier calibration whole; returns the calibration directory."""
    final = os.path.join(model_dir, CALIBRATION_DIR)
    checksum = weights_checksum(model_dir)
    with replaced_directory(final) as work:
        quantize(os.path.join(work, GRAPH_FILE))
        manifest = {
            "weights_sha256": checksum, **fields,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        with open(os.path.join(work, MANIFEST_FILE), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
    return final
