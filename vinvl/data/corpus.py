"""RetrievalCorpus: one split as the trainer, the engine and Taskflow use it.

Built from the ``coco_ir`` loading script's examples (captions, tags, feature locations) plus
the minival hard-negative index; region features stay on disk and are read per image.
"""
from __future__ import annotations

import hashlib
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .examples import ExampleOptions, detect_layout, key_file_path, open_feature_source
from .formats import DataError, load_caption_index
from .layout import CAPTION_INDEX_FILE

__all__ = ["RetrievalCorpus", "load_coco_ir", "load_corpus", "COCO_IR_SCRIPT"]

COCO_IR_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "coco_ir.py")
# What the loading script reads (captions, key files, indexes, TSVs); not the .lineidx it may build.
_INPUT_SUFFIXES = (".pt", ".pd", ".json", ".tsv")


class RetrievalCorpus:
    """Images of one split with their captions, tags and lazily read region features.

    ``image_ids``, ``captions`` (per image, file order) and ``tags`` (per image) are plain lists;
    ``features(i)`` reads image ``i``'s ``[num_regions, 2054]`` float32 from disk, checked.
    ``caption_index`` is the minival top-20 index (image id -> (image id, caption number)) or None.
    """

    def __init__(
        self,
        image_ids: Sequence[str],
        captions: Sequence[Sequence[str]],
        tags: Sequence[Sequence[str]],
        feature_files: Sequence[str],
        feature_rows: Sequence[int],
        layout: str = "official",
        caption_index: Optional[Dict[str, List[Tuple[str, int]]]] = None,
        lineidx_cache_dir: Optional[str] = None,
    ):
        self.image_ids = [str(i) for i in image_ids]
        self.captions = [list(c) for c in captions]
        self.tags = [list(t) for t in tags]
        self.caption_index = caption_index
        self.layout = layout
        self.lineidx_cache_dir = lineidx_cache_dir
        files = sorted(set(feature_files))
        self._file_of = np.array([files.index(f) for f in feature_files], dtype=np.int32) if len(files) > 1 else None
        self._files = files
        self._rows = np.asarray(feature_rows, dtype=np.int64)
        self._sources: Dict[int, object] = {}
        self._index = {image_id: i for i, image_id in enumerate(self.image_ids)}

    def __len__(self) -> int:
        return len(self.image_ids)

    def index_of(self, image_id: str) -> int:
        if str(image_id) not in self._index:
            raise KeyError(f"image {image_id!r} is not in this corpus")
        return self._index[str(image_id)]

    def _source(self, i: int):
        file_number = 0 if self._file_of is None else int(self._file_of[i])
        if file_number not in self._sources:
            self._sources[file_number] = open_feature_source(
                self._files[file_number], self.layout, self.lineidx_cache_dir
            )
        return self._sources[file_number]

    def features(self, i: int) -> np.ndarray:
        """Image ``i``'s region features ``[num_regions, 2054]`` float32."""
        return self._source(i).read(int(self._rows[i]), self.image_ids[i])

    @classmethod
    def from_dataset(
        cls, dataset, layout: str = "official", caption_index=None, lineidx_cache_dir: Optional[str] = None
    ) -> "RetrievalCorpus":
        """From the examples of the ``coco_ir`` loading script (a ``datasets.Dataset``)."""
        columns = dataset.select_columns(["image_id", "captions", "tags", "feature_file", "feature_row"]).to_dict()
        return cls(
            columns["image_id"],
            columns["captions"],
            columns["tags"],
            columns["feature_file"],
            columns["feature_row"],
            layout=layout,
            caption_index=caption_index,
            lineidx_cache_dir=lineidx_cache_dir,
        )


def data_fingerprint(paths: Sequence[Optional[str]], skip: Optional[str] = None) -> str:
    """A digest of the path, size and mtime of every input file under ``paths`` (folders or files).

    It keys the datasets cache on the data itself, not only on ``data_dir``: without it an edited
    caption file or a corpus regenerated in the same folder would be served from the old cache.
    """
    skip = os.path.abspath(skip) if skip else None
    files = set()
    for top in filter(None, paths):
        top = os.path.abspath(top)
        if os.path.isfile(top):
            files.add(top)
            continue
        for root, dirs, names in os.walk(top):
            dirs[:] = [d for d in dirs if not d.startswith(".") and os.path.join(root, d) != skip]
            files.update(os.path.join(root, n) for n in names if n.endswith(_INPUT_SUFFIXES) and not n.startswith("."))
    digest = hashlib.sha1()
    for path in sorted(files):
        stat = os.stat(path)
        digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _lineidx_cache_dir(cache_dir: Optional[str]) -> Optional[str]:
    return os.path.join(cache_dir, "vinvl_lineidx") if cache_dir else None


def load_coco_ir(
    data_dir: str,
    split: str,
    *,
    features_dir: Optional[str] = None,
    add_od_labels: bool = True,
    eval_img_keys_file: Optional[str] = None,
    inline_features: bool = False,
    layout: str = "auto",
    cache_dir: Optional[str] = None,
):
    """``split`` of a coco_ir folder as a ``datasets.Dataset`` through the loading script."""
    # paddlenlp replaces datasets.load_dataset with a wrapper that forces trust_remote_code;
    # the original function keeps this call the same with or without paddlenlp imported.
    from datasets.exceptions import DatasetGenerationError
    from datasets.load import load_dataset

    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: no such data directory")
    options = ExampleOptions(features_dir=features_dir, eval_img_keys_file=eval_img_keys_file)
    fingerprint = data_fingerprint([data_dir, features_dir, key_file_path(data_dir, options)], skip=cache_dir)
    try:
        return load_dataset(
            COCO_IR_SCRIPT,
            data_dir=os.path.abspath(data_dir),
            split=split,
            trust_remote_code=True,
            cache_dir=cache_dir,
            features_dir=os.path.abspath(features_dir) if features_dir else None,
            add_od_labels=add_od_labels,
            eval_img_keys_file=eval_img_keys_file,
            inline_features=inline_features,
            layout=layout,
            splits=(split,),
            lineidx_cache_dir=_lineidx_cache_dir(cache_dir),
            data_fingerprint=fingerprint,
        )
    except DatasetGenerationError as exc:
        # datasets wraps the reader's error; the reader's own message names the file and row.
        if isinstance(exc.__cause__, DataError):
            raise exc.__cause__ from None
        raise


def load_corpus(
    data_dir: str,
    split: str,
    *,
    features_dir: Optional[str] = None,
    add_od_labels: bool = True,
    eval_img_keys_file: Optional[str] = None,
    use_caption_index: bool = True,
    layout: str = "auto",
    cache_dir: Optional[str] = None,
) -> RetrievalCorpus:
    """``split`` as a :class:`RetrievalCorpus`; minival also gets its top-20 index when the file exists."""
    dataset = load_coco_ir(
        data_dir,
        split,
        features_dir=features_dir,
        add_od_labels=add_od_labels,
        eval_img_keys_file=eval_img_keys_file,
        layout=layout,
        cache_dir=cache_dir,
    )
    index_path = os.path.join(data_dir, CAPTION_INDEX_FILE)
    caption_index = None
    if split == "minival" and use_caption_index and os.path.isfile(index_path):
        caption_index = load_caption_index(index_path)
    resolved = detect_layout(data_dir, ExampleOptions(features_dir=features_dir, layout=layout))
    return RetrievalCorpus.from_dataset(
        dataset, layout=resolved, caption_index=caption_index, lineidx_cache_dir=_lineidx_cache_dir(cache_dir)
    )


