"""A synthetic COCO retrieval corpus in exactly the official on-disk format, learnable by design.

Each image is a scene of a few objects drawn from the real VinVL vocabulary (a subset of its
1594 classes and 524 attributes). A region feature is its class prototype plus an attribute
component plus noise, followed by the box geometry of a real-looking box; the tags are what a
noisy detector would report (objects missed, false positives added); five captions per image
mention some of its objects, with attributes and varied templates, so a caption usually
matches several images by any single word and only its image by all of them.

The result is deterministic from the seed. ``vinvl make-synthetic`` (:mod:`vinvl.commands.make_synthetic`)
and ``scripts/make_synthetic_coco.py`` call :func:`write_synthetic_corpus`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..assets import LABELMAP_PATH
from ..errors import UsageError
from .formats import (
    APPEARANCE_DIM,
    box_geometry,
    encode_features,
    feature_row,
    hw_row,
    prediction_object,
    prediction_row,
)
from .layout import CAPTION_INDEX_FILE, SPLITS

__all__ = ["SyntheticImage", "SceneGenerator", "generate_split", "right_answers", "write_synthetic_corpus"]

IMAGE_SIZES = ((480, 640), (640, 480), (427, 640), (500, 500), (480, 480))  # (height, width)
TEMPLATES = (
    "a {0} next to a {1}",
    "a photo of a {0} and a {1}",
    "there is a {0} near the {1} in this picture",
    "the {0} is beside a {1} and a {2}",
    "a {0} with a {1}",
    "an image showing a {0}",
    "close up of a {0} by a {1}",
    "a {0}, a {1} and a {2} in one scene",
    "someone left a {0} close to the {1}",
    "view of a {0} and some {1}",
)
# Attributes a caption writer would use (all in the VinVL attribute vocabulary).
VISUAL_ATTRIBUTES = (
    "white", "black", "blue", "green", "red", "brown", "yellow", "orange", "gray", "pink", "purple",
    "silver", "small", "large", "tall", "wooden", "metal", "plastic", "glass", "striped", "round", "dark", "bright", "old",
)
Named = Tuple[str, Optional[str]]  # (class, attribute or None)
SPLIT_OFFSETS = {"train": 100000, "minival": 400000, "val": 300000, "test": 500000}
CAPTIONS_PER_IMAGE = 5


@dataclass
class SyntheticImage:
    """One generated image: what the files will hold for it."""

    image_id: str
    captions: List[str]
    tags: List[str]
    features: np.ndarray  # [num_detections, 2054] float32
    rects: np.ndarray  # [num_detections, 4] x1, y1, x2, y2 in pixels
    confidences: np.ndarray  # [num_detections]
    size: Tuple[int, int]  # (height, width)
    objects: List[Named]  # the scene: every object (detected or not) as (class, attribute or None)
    caption_objects: List[List[Named]]  # per caption, the objects it names (attribute None: not named)


class SceneGenerator:
    """Class/attribute prototypes over a subset of the VinVL vocabulary, and scenes built from them."""

    def __init__(self, seed: int = 0, num_classes: int = 60, num_attributes: int = 16, noise: float = 0.35):
        with open(LABELMAP_PATH, encoding="utf-8") as f:
            labelmap = json.load(f)
        rng = np.random.default_rng([seed, 0])
        common = sorted(labelmap["object_count"], key=lambda c: -labelmap["object_count"][c])[:400]
        common = [c for c in common if c.isalpha()]  # one-word names keep captions readable
        self.classes = sorted(rng.choice(common, size=min(num_classes, len(common)), replace=False).tolist())
        attributes = [a for a in VISUAL_ATTRIBUTES if a in labelmap["attribute_to_idx"]]
        self.attributes = sorted(rng.choice(attributes, size=min(num_attributes, len(attributes)), replace=False).tolist())
        # Non-negative, sparse-ish appearance vectors, like pooled ReLU detector features.
        self.class_protos = np.maximum(rng.normal(0, 1.0, (len(self.classes), APPEARANCE_DIM)), 0).astype(np.float32) * 2
        self.attr_protos = np.maximum(rng.normal(0, 1.0, (len(self.attributes), APPEARANCE_DIM)), 0).astype(np.float32)
        self.class_weights = 1.0 / np.arange(1, len(self.classes) + 1) ** 0.6  # a mild long tail
        self.class_weights /= self.class_weights.sum()
        self.noise = noise

    def _box(self, rng: np.random.Generator, size: Tuple[int, int]) -> np.ndarray:
        height, width = size
        bw, bh = rng.uniform(0.15, 0.7) * width, rng.uniform(0.15, 0.7) * height
        x1, y1 = rng.uniform(0, width - bw), rng.uniform(0, height - bh)
        return np.array([x1, y1, x1 + bw, y1 + bh], dtype=np.float32)

    def _region(self, rng: np.random.Generator, cls: int, attr: int, rect: np.ndarray, size) -> np.ndarray:
        appearance = self.class_protos[cls] + (0.6 * self.attr_protos[attr] if attr >= 0 else 0)
        appearance = np.maximum(appearance + rng.normal(0, self.noise, APPEARANCE_DIM), 0)
        return np.concatenate([appearance, box_geometry(rect, *size)[0]]).astype(np.float32)

    def _caption(self, rng: np.random.Generator, names: List[Named]) -> Tuple[str, List[Named]]:
        """A caption naming some of ``names`` (the scene's objects as a writer names them), and those."""
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        slots = template.count("{")
        picks = [names[int(i)] for i in rng.choice(len(names), size=slots, replace=len(names) < slots)]
        text = template.format(*(f"{attr} {cls}" if attr else cls for cls, attr in picks))
        words = text.split()
        text = " ".join("an" if w == "a" and n[:1] in "aeiou" else w for w, n in zip(words, words[1:] + [""]))
        return text, picks

    def image(self, image_id: str, rng: np.random.Generator) -> SyntheticImage:
        size = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
        num_objects = int(rng.integers(3, 8))
        classes = rng.choice(len(self.classes), size=num_objects, replace=False, p=self.class_weights)
        attrs = np.where(rng.random(num_objects) < 0.6, rng.integers(len(self.attributes), size=num_objects), -1)
        rects = [self._box(rng, size) for _ in range(num_objects)]
        # The detector: misses some objects, adds false positives.
        detected = [i for i in range(num_objects) if rng.random() > 0.12] or [0]
        regions = [(int(classes[i]), int(attrs[i]), rects[i]) for i in detected]
        for _ in range(int(rng.integers(0, 3))):
            regions.append((int(rng.integers(len(self.classes))), -1, self._box(rng, size)))
        order = rng.permutation(len(regions))
        regions = [regions[i] for i in order]
        features = np.stack([self._region(rng, c, a, r, size) for c, a, r in regions])
        objects = [(self.classes[c], self.attributes[a] if a >= 0 else None) for c, a in zip(classes, attrs)]
        # A caption writer names an object's attribute 70% of the time.
        names = [(cls, attr if attr is not None and rng.random() < 0.7 else None) for cls, attr in objects]
        captions = [self._caption(rng, names) for _ in range(CAPTIONS_PER_IMAGE)]
        return SyntheticImage(
            image_id=image_id,
            captions=[text for text, _ in captions],
            tags=[self.classes[c] for c, _, _ in regions],
            features=features,
            rects=np.stack([r for _, _, r in regions]),
            confidences=rng.uniform(0.3, 0.99, len(regions)).astype(np.float32),
            size=size,
            objects=objects,
            caption_objects=[named for _, named in captions],
        )


def generate_split(generator: SceneGenerator, split: str, num_images: int, seed: int, string_ids: bool = False) -> Iterator[SyntheticImage]:
    """The images of one split, streamed (ids are COCO-like ints, or zero-padded strings)."""
    rng = np.random.default_rng([seed, SPLITS.index(split) + 1])
    for i in range(num_images):
        number = SPLIT_OFFSETS[split] + i
        yield generator.image(f"{number:012d}" if string_ids else str(number), rng)


def right_answers(images: Sequence[SyntheticImage]) -> np.ndarray:
    """``[I, C]`` bool: True where caption ``c`` (the images' captions in order) is a right answer
    for image ``i``: every object it names is in the scene, with the attribute where it names one.

    A caption usually names objects of several images, so a query has a set of right answers
    (its own caption or image among them), known by construction; retrieval metrics on real data
    only know the own one.
    """
    # Which images hold each class (key (class, None)) and each (class, attribute) object; the
    # column order is immaterial.
    keys = {key for image in images for cls, attr in image.objects for key in ((cls, None), (cls, attr))}
    column = {key: j for j, key in enumerate(keys)}
    holds = np.zeros((len(images), len(keys)), dtype=bool)
    for i, image in enumerate(images):
        for cls, attr in image.objects:
            holds[i, column[(cls, None)]] = holds[i, column[(cls, attr)]] = True
    named = [caption for image in images for caption in image.caption_objects]
    right = np.ones((len(images), len(named)), dtype=bool)
    for c, caption in enumerate(named):  # a caption names objects of its own image, so every key exists
        for key in caption:
            right[:, c] &= holds[:, column[key]]
    return right


def _objects(image: SyntheticImage, with_features: bool) -> List[dict]:
    objects = []
    for j, (cls, rect, conf) in enumerate(zip(image.tags, image.rects, image.confidences)):
        feature = {"feature": encode_features(image.features[j, :APPEARANCE_DIM])} if with_features else {}
        objects.append(prediction_object(rect, cls, round(float(conf), 4), **feature))
    return objects


def _save_mapping(mapping: Mapping, path: str, fmt: str) -> None:
    if fmt == "pt":
        from ..torch_io import save_torch_file

        save_torch_file(dict(mapping), path)
    elif fmt == "pd":
        import paddle

        paddle.save(dict(mapping), path)
    elif fmt == "json":
        with open(path, "w", encoding="utf-8") as f:
            json.dump({str(k): v for k, v in mapping.items()}, f)
    else:
        raise ValueError(f"captions_format must be 'pt', 'pd' or 'json', got {fmt!r}")


def _write_official_split(images: Iterator[SyntheticImage], folder: str, predictions_format: str, write_lineidx: bool):
    """features.tsv (+ lineidx), imageid2idx.json, predictions.tsv; returns the images' captions and tags."""
    os.makedirs(folder, exist_ok=True)
    captions, tags, row_of = {}, {}, {}
    with open(os.path.join(folder, "features.tsv"), "wb") as feats, open(
        os.path.join(folder, "predictions.tsv"), "w", encoding="utf-8"
    ) as preds:
        offsets = []
        for row, image in enumerate(images):
            offsets.append(feats.tell())
            feats.write(feature_row(image.image_id, image.features).encode())
            objects = _objects(image, with_features=False)
            preds.write(prediction_row(image.image_id, objects, image.size, bare=predictions_format == "list"))
            captions[image.image_id], tags[image.image_id], row_of[image.image_id] = image.captions, image.tags, row
    if write_lineidx:
        with open(os.path.join(folder, "features.lineidx"), "w") as f:
            f.writelines(f"{o}\n" for o in offsets)
    with open(os.path.join(folder, "imageid2idx.json"), "w") as f:
        json.dump(row_of, f)
    return captions, tags


def _write_detector_split(images: Iterator[SyntheticImage], folder: str) -> Dict[str, List[str]]:
    """scene_graph_benchmark output: predictions.tsv with per-object features, and a .hw.tsv."""
    captions = {}
    with open(os.path.join(folder, "predictions.tsv"), "w", encoding="utf-8") as preds, open(
        os.path.join(folder, "images.hw.tsv"), "w", encoding="utf-8"
    ) as hw:
        for image in images:
            preds.write(prediction_row(image.image_id, _objects(image, with_features=True)))
            hw.write(hw_row(image.image_id, image.size))
            captions[image.image_id] = image.captions
    return captions


def _hard_negative_index(captions: Dict[str, List[str]], tags: Dict[str, List[str]], rng: np.random.Generator) -> Dict:
    """Per minival image 20 candidates: its own captions, then captions of images sharing its tags."""
    ids = list(captions)
    index = {}
    for image_id in ids:
        own = [[int(image_id), j] for j in range(len(captions[image_id]))]
        mine = set(tags[image_id])
        others = sorted((i for i in ids if i != image_id), key=lambda i: -len(mine & set(tags[i])))
        negatives = [[int(i), int(rng.integers(len(captions[i])))] for i in others[: 20 - len(own)]]
        index[int(image_id)] = json.dumps(own + negatives)
    return index


def write_synthetic_corpus(
    out_dir: str,
    num_images: Union[int, Mapping[str, int]] = 200,
    seed: int = 0,
    *,
    captions_format: str = "pt",
    captions_as_json: bool = True,
    predictions_format: str = "dict",
    write_lineidx: bool = True,
    layout: str = "official",
    num_classes: int = 60,
) -> str:
    """Write a synthetic corpus to ``out_dir`` (created atomically; it must not exist yet).

    Args:
        num_images: per split (``{"train": 500, "minival": 50, "val": 50, "test": 100}``) or one
            number for every split.
        captions_format: ``pt`` (torch.save, as the official files), ``pd`` (paddle.save, as the
            Paddle port) or ``json``; ``captions_as_json`` stores each list as a JSON string.
        predictions_format: ``dict`` (``{"objects", "image_h", "image_w"}``) or ``list`` (bare objects).
        write_lineidx: also write ``features.lineidx`` (the loader builds it when missing).
        layout: ``official``, or ``detector`` for the VinVL detector's own output (one folder,
            ``predictions.tsv`` with per-object features + ``images.hw.tsv``, string image keys;
            only the splits asked for, captions in ``{split}_captions.*``).
    """
    counts = {s: num_images for s in SPLITS} if isinstance(num_images, int) else dict(num_images)
    unknown = [s for s in counts if s not in SPLITS]
    if unknown:
        raise UsageError(f"unknown split {unknown[0]!r}; the splits are {SPLITS}")
    if any(n < 0 for n in counts.values()):
        raise UsageError(f"image counts must be >= 0, got {counts}")
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new directory")
    if captions_format not in ("pt", "pd", "json"):
        raise UsageError(f"captions_format must be 'pt', 'pd' or 'json', got {captions_format!r}")
    if predictions_format not in ("dict", "list"):
        raise UsageError(f"predictions_format must be 'dict' or 'list', got {predictions_format!r}")
    if layout not in ("official", "detector"):
        raise UsageError(f"layout must be 'official' or 'detector', got {layout!r}")
    if layout == "detector" and sum(1 for n in counts.values() if n) != 1:
        raise UsageError("the detector layout holds one folder of images: give images for exactly one split")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".synthetic-", dir=parent)
    try:
        generator = SceneGenerator(seed=seed, num_classes=num_classes)
        for split, count in counts.items():
            if count == 0:
                continue
            images = generate_split(generator, split, count, seed, string_ids=layout == "detector")
            if layout == "detector":
                captions = _write_detector_split(images, tmp)
                key = str
            else:
                captions, tags = _write_official_split(
                    images, os.path.join(tmp, "features", split), predictions_format, write_lineidx
                )
                key = int
                if split == "test":
                    keys = list(captions)
                    with open(os.path.join(tmp, "test_img_keys.tsv"), "w") as f:
                        f.writelines(f"{k}\n" for k in keys)
                    with open(os.path.join(tmp, "test_img_keys_1k.tsv"), "w") as f:
                        f.writelines(f"{k}\n" for k in keys[: min(1000, max(len(keys) // 5, 1))])
                if split == "minival":
                    index = _hard_negative_index(captions, tags, np.random.default_rng([seed, 99]))
                    _save_mapping(index, os.path.join(tmp, CAPTION_INDEX_FILE), "pt")
            stored = {key(k): (json.dumps(v) if captions_as_json else v) for k, v in captions.items()}
            _save_mapping(stored, os.path.join(tmp, f"{split}_captions.{captions_format}"), captions_format)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private (0700); the corpus is ordinary data
        if os.path.exists(out_dir):
            os.rmdir(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
