"""The official Oscar/VinVL data files: what each one holds and how a row of it is read and checked.

Every reader raises :class:`DataError` naming the file and the row or image id at fault.
Image ids are kept as strings exactly as written (COCO ids as decimal strings, detector keys
such as ``000000522418`` as they are).
"""
from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from ..errors import UserError

__all__ = [
    "APPEARANCE_DIM",
    "FEATURE_DIM",
    "DEFAULT_IMAGE_SIZE",
    "FEATURE_LIMIT",
    "check_feature_values",
    "DataError",
    "find_captions_file",
    "load_captions",
    "load_image_keys",
    "load_caption_index",
    "decode_feature_row",
    "encode_features",
    "feature_row",
    "prediction_object",
    "prediction_row",
    "hw_row",
    "parse_prediction",
    "parse_hw",
    "box_geometry",
    "detector_features",
]

APPEARANCE_DIM = 2048
FEATURE_DIM = APPEARANCE_DIM + 6
# Image size the official code assumes when predictions.tsv holds a bare list of objects.
DEFAULT_IMAGE_SIZE = (600, 800)  # (height, width)
CAPTION_EXTENSIONS = (".pt", ".pd", ".json")
# The largest magnitude a region-feature value may have. VinVL's appearance values are pooled ReLU
# activations (single digits to tens) and the geometry columns are box ratios in [0, 1]; values
# far beyond (1e38 overflows float32 sums inside attention: the scores come out NaN) are an error.
FEATURE_LIMIT = 1e4


class DataError(UserError, ValueError):
    """A data file that does not hold what it should; the message names the file and the row or id."""


def find_captions_file(data_dir: str, split: str) -> str:
    """``{split}_captions.pt`` / ``.pd`` / ``.json`` in ``data_dir``, the first that exists."""
    for ext in CAPTION_EXTENSIONS:
        path = os.path.join(data_dir, f"{split}_captions{ext}")
        if os.path.isfile(path):
            return path
    names = ", ".join(f"{split}_captions{ext}" for ext in CAPTION_EXTENSIONS)
    raise DataError(f"{data_dir}: no caption file for split {split!r} (looked for {names})")


def _load_mapping(path: str) -> Mapping:
    """The dict saved in a caption or index file (.pt through torch_io, .pd through paddle, .json)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    ext = os.path.splitext(path)[1]
    try:
        if ext == ".json":
            with open(path, encoding="utf-8") as f:
                loaded = json.load(f)
        elif ext == ".pd":
            import paddle

            loaded = paddle.load(path)
        else:
            from ..torch_io import load_torch_file

            loaded = load_torch_file(path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    if not isinstance(loaded, Mapping):
        raise DataError(f"{path}: expected a dict from image id to a list, got {type(loaded).__name__}")
    return loaded


def _json_list(value: Any, path: str, image_id: str) -> list:
    """A list stored as is or as a JSON string (the official files use both)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: image {image_id}: malformed JSON ({exc.msg})") from exc
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{path}: image {image_id}: expected a list, got {type(value).__name__}")
    return list(value)


def load_captions(path: str) -> Dict[str, List[str]]:
    """Image id -> its captions, in file order; every image must have at least one non-empty caption."""
    captions = {}
    for key, value in _load_mapping(path).items():
        image_id = str(key)
        caps = _json_list(value, path, image_id)
        if not caps:
            raise DataError(f"{path}: image {image_id} has an empty caption list")
        for j, cap in enumerate(caps):
            if not isinstance(cap, str) or not cap.strip():
                raise DataError(f"{path}: image {image_id}: caption {j} is empty or not a string")
        captions[image_id] = [str(c) for c in caps]
    if not captions:
        raise DataError(f"{path}: holds no images")
    return captions


def load_image_keys(path: str) -> List[str]:
    """The image ids of an evaluation subset (``test_img_keys_1k.tsv``), one per line."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        keys = [line.strip() for line in f if line.strip()]
    if not keys:
        raise DataError(f"{path}: holds no image ids")
    if len(set(keys)) != len(keys):
        raise DataError(f"{path}: lists an image id more than once")
    return keys


def load_caption_index(path: str) -> Dict[str, List[Tuple[str, int]]]:
    """Minival hard negatives: image id -> its candidate (image id, caption number) pairs."""
    index = {}
    for key, value in _load_mapping(path).items():
        image_id = str(key)
        pairs = _json_list(value, path, image_id)
        try:
            index[image_id] = [(str(img), int(cap)) for img, cap in pairs]
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: image {image_id}: expected [image_id, caption_index] pairs") from exc
    return index


def encode_features(features: np.ndarray) -> str:
    """The base64 text of a ``[N, D]`` float32 array, as features.tsv stores it."""
    return base64.b64encode(np.ascontiguousarray(features, dtype="<f4").tobytes()).decode("ascii")


def check_feature_values(values: np.ndarray, where: str) -> None:
    """DataError naming ``where`` unless every value is finite and within :data:`FEATURE_LIMIT`."""
    if not np.isfinite(values).all():
        raise DataError(f"{where}: features contain NaN or Inf")
    if values.size and float(np.abs(values).max()) > FEATURE_LIMIT:
        raise DataError(
            f"{where}: a feature value is {float(np.abs(values).max()):.3g} in magnitude; region features stay "
            f"within {FEATURE_LIMIT:g} (pooled activations and box ratios)"
        )


def feature_row(image_id: str, features: np.ndarray) -> str:
    """One features.tsv row (with its newline): ``image_id <TAB> num_boxes <TAB> base64 float32``."""
    return f"{image_id}\t{len(features)}\t{encode_features(features)}\n"


def prediction_object(rect: Sequence[float], class_name: str, conf: float, **fields: Any) -> Dict[str, Any]:
    """One detected object as predictions.tsv holds it: ``rect`` (x1, y1, x2, y2 in pixels, written
    at full float32 precision so the geometry a reader computes from it equals the geometry columns
    of the region features bit for bit), ``class``, ``conf``, then ``fields`` in the order given
    (``bbox_id``, ``attributes``, ``attr_scores``, ``feature``: base64 of the 2048 appearance floats)."""
    return {"rect": [float(v) for v in rect], "class": class_name, "conf": float(conf), **fields}


def prediction_row(image_id: str, objects: List[Dict[str, Any]], size: Any = None, bare: bool = False) -> str:
    """One predictions.tsv row (with its newline): ``image_id <TAB> JSON``. The JSON is
    ``{"objects": [...]}``, with ``image_h`` / ``image_w`` when ``size`` (height, width) is given,
    or the bare list of objects when ``bare`` (a layout the official loader also reads)."""
    if bare:
        payload: Any = objects
    else:
        payload = {"objects": objects}
        if size is not None:
            payload.update(image_h=int(size[0]), image_w=int(size[1]))
    return f"{image_id}\t{json.dumps(payload)}\n"


def hw_row(image_id: str, size: Sequence[int]) -> str:
    """One images.hw.tsv row (with its newline): ``image_id <TAB> [{"height": h, "width": w}]``."""
    return f"{image_id}\t{json.dumps([{'height': int(size[0]), 'width': int(size[1])}])}\n"


def decode_feature_row(fields: Sequence[str], path: str, row: int, width: int = FEATURE_DIM) -> Tuple[str, np.ndarray]:
    """(image id, ``[num_boxes, width]`` float32) from a ``image_id, num_boxes, base64`` row, checked."""
    where = f"{path}: row {row}"
    if len(fields) != 3:
        raise DataError(f"{where}: expected 3 tab-separated fields (image_id, num_boxes, base64), got {len(fields)}")
    image_id, count, encoded = fields
    where = f"{where} (image {image_id})"
    try:
        num_boxes = int(count)
    except ValueError as exc:
        raise DataError(f"{where}: num_boxes {count!r} is not an integer") from exc
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DataError(f"{where}: bad base64 ({exc})") from exc
    if len(raw) % 4:
        raise DataError(f"{where}: {len(raw)} bytes is not a whole number of float32 values")
    values = np.frombuffer(raw, dtype="<f4")
    if num_boxes <= 0 or values.size != num_boxes * width:
        raise DataError(
            f"{where}: {values.size} float32 values, expected num_boxes*{width} = {num_boxes}*{width}"
        )
    check_feature_values(values, where)
    return image_id, values.reshape(num_boxes, width).astype(np.float32)


def parse_prediction(fields: Sequence[str], path: str, row: int) -> Tuple[str, List[dict], Tuple[int, int]]:
    """(image id, objects, (height, width)) from a predictions.tsv row.

    The JSON is ``{"objects": [...], "image_h", "image_w"}`` or a bare list of objects (then the
    image is taken as 600x800, as the official code does).
    """
    if len(fields) != 2:
        raise DataError(f"{path}: row {row}: expected 2 tab-separated fields (image_id, JSON), got {len(fields)}")
    image_id, text = fields
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: row {row} (image {image_id}): malformed JSON ({exc.msg})") from exc
    if isinstance(parsed, list):
        objects, size = parsed, DEFAULT_IMAGE_SIZE
    elif isinstance(parsed, dict) and isinstance(parsed.get("objects"), list):
        objects = parsed["objects"]
        try:
            size = (int(parsed.get("image_h", DEFAULT_IMAGE_SIZE[0])), int(parsed.get("image_w", DEFAULT_IMAGE_SIZE[1])))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: row {row} (image {image_id}): image_h / image_w are not integers") from exc
    else:
        raise DataError(f"{path}: row {row} (image {image_id}): expected a list of objects or a dict with 'objects'")
    for j, obj in enumerate(objects):
        if not isinstance(obj, dict) or not isinstance(obj.get("class"), str):
            raise DataError(f"{path}: row {row} (image {image_id}): object {j} has no 'class' string")
    return image_id, objects, size


def parse_hw(fields: Sequence[str], path: str, row: int) -> Tuple[str, Tuple[int, int]]:
    """(image key, (height, width)) from a scene_graph_benchmark ``*.hw.tsv`` row."""
    try:
        image_id, text = fields
        info = json.loads(text)
        info = info[0] if isinstance(info, list) else info
        return image_id, (int(info["height"]), int(info["width"]))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise DataError(f"{path}: row {row}: expected image_key<TAB>[{{\"height\": h, \"width\": w}}]") from exc


def box_geometry(rects: np.ndarray, height: int, width: int) -> np.ndarray:
    """The 6 geometry columns of VinVL features: x1/w, y1/h, x2/w, y2/h, box w/w, box h/h."""
    rects = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
    x1, y1, x2, y2 = rects.T
    return np.stack([x1 / width, y1 / height, x2 / width, y2 / height, (x2 - x1) / width, (y2 - y1) / height], axis=1)


def detector_features(objects: Sequence[dict], size: Tuple[int, int], path: str, image_id: str) -> np.ndarray:
    """``[N, 2054]`` features from scene_graph_benchmark objects (base64 2048-d ``feature`` + ``rect``)."""
    if not objects:
        raise DataError(f"{path}: image {image_id} has no detected objects")
    appearance = []
    for j, obj in enumerate(objects):
        try:
            vec = np.frombuffer(base64.b64decode(obj["feature"], validate=True), dtype="<f4")
        except (KeyError, binascii.Error, ValueError) as exc:
            raise DataError(f"{path}: image {image_id}: object {j} has no valid base64 'feature'") from exc
        if vec.size != APPEARANCE_DIM:
            raise DataError(f"{path}: image {image_id}: object {j} feature has {vec.size} values, expected {APPEARANCE_DIM}")
        appearance.append(vec)
    try:
        rects = np.array([obj.get("rect") for obj in objects], dtype=np.float32)
    except (TypeError, ValueError):  # a missing or ragged rect
        rects = None
    if rects is None or rects.shape != (len(objects), 4):
        raise DataError(f"{path}: image {image_id}: every object needs a 4-number 'rect'")
    features = np.concatenate([np.stack(appearance), box_geometry(rects, *size)], axis=1).astype(np.float32)
    check_feature_values(features, f"{path}: image {image_id}")
    return features
