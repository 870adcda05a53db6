"""The detector's int8: its graphs on ONNX Runtime, the convolutions quantized at activation scales
calibrated on the user's own photos (``vinvl calibrate-detector``), stored beside the detector.

The calibration runs the fp32 detector (Paddle Inference, :mod:`vinvl.vision.inference`) on the
photos and keeps what each of its graphs is fed: the normalised pixels the body sees, the res4
features and proposals (in chunks, as detection runs them) the box head sees. ONNX Runtime's
static quantizer then fixes each convolution's input scale from those feeds (min-max), weights
int8 per output channel, in QDQ form. It lives in ``<detector_dir>/int8_calibration/``:

```
body.int8.onnx      backbone + RPN head, every convolution int8
box_head.int8.onnx  RoIAlign + res5 head (convolutions int8) + class and box predictors (fp32)
attribute.onnx      the attribute head, fp32 (two small Linears: quantizing them would save nothing)
manifest.json       detector_sha256 (vinvl.vision.inference.detector_checksum: config and weights),
                    method, photos, source, created (UTC)
```

The detector's int8 is static only: without a calibration it is refused, naming the command that
makes one (ONNX Runtime's dynamic quantization of convolutions ran the X152-C4 body 4x slower than
fp32; docs/detector.md). Made from photos the export cannot see again, a calibration is never rebuilt
silently: one made for another config or other weights is refused
(:class:`vinvl.oscar.calibration.StaleCalibrationError`, naming the manifest). It is written to a
temporary directory beside it and moved into place last, so an interrupted calibration leaves
the previous one (or none).
"""
from __future__ import annotations

import datetime
import json
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from ..assets import CONFIGS_DIR
from ..errors import UsageError
from ..files import replaced_directory
from ..onnx_runtime import int8_packages, paddle_to_onnx, stdout_silenced, warnings_silenced
from ..oscar.calibration import MANIFEST_FILE
from .extract import list_images
from .image import check_header, load_image
from .inference import CALIBRATION_DIR, GRAPH_FILES, InferenceDetector, detector_checksum, load_detector

__all__ = ["check_calibratable", "sample_photos", "calibrate_detector"]

_QUANTIZED = ("body", "box_head")
METHOD = "min-max, QDQ, convolutions: uint8 activations, int8 weights per output channel"


def check_calibratable(path: str) -> None:
    """Refuse a detector config shipped inside the package: a calibration is written into the
    detector's directory, and the package's must not change."""
    shipped = os.path.realpath(CONFIGS_DIR)
    if os.path.commonpath([os.path.realpath(path), shipped]) == shipped:
        raise UsageError(
            f"{path} is a config shipped inside the package, which a calibration must not write into; "
            "copy its folder to one of your own and calibrate that"
        )


def sample_photos(images: str, count: int, seed: int = 0, recursive: bool = False) -> List[str]:
    """The paths of ``count`` photos drawn at random (``seed``) from the folder or list file ``images``
    (read as ``vinvl extract`` reads it; all of them when it lists fewer), in listed order. Each
    one's header is checked first, so a bad file is named before the detector loads."""
    entries = list_images(images, recursive)
    chosen = np.sort(np.random.default_rng(seed).permutation(len(entries))[:count])
    photos = [entries[i] for i in chosen]
    for entry in photos:
        check_header(entry.path)
    return [entry.path for entry in photos]


def _recorded_feeds(
    path: str, photos: Sequence[str], progress: bool
) -> Tuple[InferenceDetector, Dict[str, List[tuple]]]:
    """The fp32 detector on Paddle Inference, and what its body and box head were fed detecting ``photos``."""
    detector = load_detector(path, "fp32", runtime="inference")
    feeds: Dict[str, List[tuple]] = {name: [] for name in _QUANTIZED}
    graphs = dict(detector.graphs)

    def recording(name: str):
        def run(*arrays: np.ndarray) -> List[np.ndarray]:
            feeds[name].append(arrays)
            return graphs[name](*arrays)
        return run

    detector.graphs.update({name: recording(name) for name in _QUANTIZED})
    for photo in tqdm(photos, desc="detect (fp32)", unit="photo", disable=not progress):
        detector.detect([load_image(photo)])
    detector.graphs.update(graphs)
    return detector, feeds


def _quantize(source: str, target: str, feeds: List[tuple], desc: str, progress: bool) -> None:
    """Static int8 of every Conv of the fp32 ONNX model ``source`` at ``target``, their activation
    scales the min-max of ``feeds`` (input tuples in the graph's input order). The Convs' outputs
    are quantized too: ONNX Runtime then runs each as one int8 convolution; with fp32 outputs the
    X152-C4 body ran 3.5x slower (docs/detector.md)."""
    onnx, _, quantization = int8_packages()
    names = [i.name for i in onnx.load(source).graph.input]

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(tqdm(feeds, desc=desc, unit="run", disable=not progress))

        def get_next(self):
            feed = next(self._feeds, None)
            return None if feed is None else {name: np.ascontiguousarray(a) for name, a in zip(names, feed)}

    with stdout_silenced(), warnings_silenced():  # the quantizer's advice on pre-processing
        quantization.quantize_static(
            source, target, Reader(), quant_format=quantization.QuantFormat.QDQ, op_types_to_quantize=["Conv"],
            per_channel=True, activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8, calibrate_method=quantization.CalibrationMethod.MinMax,
        )


def calibrate_detector(path: str, photos: Sequence[str], source: str, progress: bool = True) -> str:
    """Calibrate int8 for the detector directory ``path`` on the photo files ``photos`` (the module
    doc); ``source`` says in the manifest where they came from. Replaces an earlier calibration
    whole; returns the calibration directory."""
    int8_packages()
    if not photos:
        raise UsageError("a detector calibration needs at least one photo")
    check_calibratable(path)
    checksum = detector_checksum(path)
    detector, feeds = _recorded_feeds(path, photos, progress)
    with replaced_directory(os.path.join(path, CALIBRATION_DIR)) as work:
        for name in GRAPH_FILES:
            if name not in detector.graphs:
                continue  # a detector without an attribute head
            prefix = os.path.join(detector.export_dir, name)
            if name not in _QUANTIZED:
                paddle_to_onnx(prefix, os.path.join(work, GRAPH_FILES[name]))
                continue
            fp32 = os.path.join(work, name + ".fp32.onnx")
            paddle_to_onnx(prefix, fp32)
            _quantize(fp32, os.path.join(work, GRAPH_FILES[name]), feeds[name], f"calibrate {name}", progress)
            os.remove(fp32)
        manifest = {
            "detector_sha256": checksum, "method": METHOD, "photos": len(photos), "source": source,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        with open(os.path.join(work, MANIFEST_FILE), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
    return os.path.join(path, CALIBRATION_DIR)
