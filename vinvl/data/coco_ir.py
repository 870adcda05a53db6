"""HuggingFace ``datasets`` loading script for the official Oscar/VinVL COCO retrieval files.

    datasets.load_dataset("vinvl/data/coco_ir.py", data_dir="coco_ir", split="test",
                          trust_remote_code=True, splits=("test",),
                          eval_img_keys_file="test_img_keys_1k.tsv")

Without ``splits`` every split that has a caption file in ``data_dir`` is prepared (a key file
then needs ``splits``: it names the images of one split). Once paddlenlp is imported,
``datasets.load_dataset`` is paddlenlp's wrapper, which passes ``trust_remote_code=True``
itself (passing it again is a TypeError); ``datasets.load.load_dataset`` is the original.
Prefer :func:`vinvl.data.load_coco_ir`: it also keys the cache on the files' sizes and
modification times, so an edited or regenerated corpus is not served from a stale cache.

One example per image: ``image_id``, ``captions``, ``tags`` (the detector's object classes),
``num_regions``, and where its region features are (``feature_file``, ``feature_row``); with
``inline_features=True`` also ``features`` (``[num_regions, 2054]`` float32). Also reads the
VinVL detector's own output (``predictions.tsv`` with per-object features + ``*.hw.tsv``) so
a gallery can be built from your own photos. The file layout is described in
:mod:`vinvl.data.layout`; the readers live in :mod:`vinvl.data`.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import datasets

from vinvl.data.examples import ExampleOptions, iter_examples
from vinvl.data.formats import FEATURE_DIM, DataError, find_captions_file
from vinvl.data.layout import SPLITS


@dataclass
class CocoIRConfig(datasets.BuilderConfig):
    """Options of the loading script (passed as keyword arguments to ``load_dataset``)."""

    features_dir: Optional[str] = None
    add_od_labels: bool = True
    eval_img_keys_file: Optional[str] = None
    inline_features: bool = False
    layout: str = "auto"
    splits: Optional[Tuple[str, ...]] = None  # prepare only these (default: those with a caption file)
    lineidx_cache_dir: Optional[str] = None  # line indexes of read-only data folders go here
    data_fingerprint: Optional[str] = None  # sizes + mtimes of the input files (set by load_coco_ir)


class CocoIR(datasets.GeneratorBasedBuilder):
    """COCO image-text retrieval with VinVL region features and object tags."""

    BUILDER_CONFIG_CLASS = CocoIRConfig
    BUILDER_CONFIGS = [CocoIRConfig(name="default")]
    DEFAULT_WRITER_BATCH_SIZE = 256
    # Examples held before each Arrow write when they carry their features (~400 KB each with 50
    # regions): 256 of them peaked at ~400 MB; 16 keep it near 25 MB at the same speed.
    INLINE_WRITER_BATCH_SIZE = 16

    def __init__(self, *args, writer_batch_size: Optional[int] = None, **kwargs):
        super().__init__(*args, writer_batch_size=writer_batch_size, **kwargs)
        if writer_batch_size is None and self.config.inline_features:
            self._writer_batch_size = self.INLINE_WRITER_BATCH_SIZE

    def _info(self) -> datasets.DatasetInfo:
        features = {
            "image_id": datasets.Value("string"),
            "captions": datasets.Sequence(datasets.Value("string")),
            "tags": datasets.Sequence(datasets.Value("string")),
            "num_regions": datasets.Value("int32"),
            "feature_file": datasets.Value("string"),
            "feature_row": datasets.Value("int64"),
        }
        if self.config.inline_features:
            features["features"] = datasets.Array2D(shape=(None, FEATURE_DIM), dtype="float32")
        return datasets.DatasetInfo(
            description=__doc__,
            features=datasets.Features(features),
            homepage="https://github.com/microsoft/Oscar",
        )

    def _split_generators(self, dl_manager):
        if not self.config.data_dir:
            raise DataError("coco_ir needs data_dir=<the coco_ir folder>")
        splits = self.config.splits or self._splits_with_captions()
        unknown = [s for s in splits if s not in SPLITS]
        if unknown:
            raise DataError(f"unknown split {unknown[0]!r}; the splits are {SPLITS}")
        if self.config.eval_img_keys_file and len(splits) > 1:
            raise DataError(
                f"eval_img_keys_file names the images of one split, but splits {tuple(splits)} would be "
                "prepared: pass splits=(the split,) as well"
            )
        return [datasets.SplitGenerator(name=s, gen_kwargs={"split": s}) for s in splits]

    def _splits_with_captions(self) -> Tuple[str, ...]:
        """The splits whose caption file is in data_dir (``test`` alone if there is none: a gallery)."""
        found = []
        for split in SPLITS:
            try:
                find_captions_file(self.config.data_dir, split)
                found.append(split)
            except DataError:
                pass
        return tuple(found) or ("test",)

    def _generate_examples(self, split: str):
        options = ExampleOptions(
            features_dir=self.config.features_dir,
            add_od_labels=self.config.add_od_labels,
            eval_img_keys_file=self.config.eval_img_keys_file,
            inline_features=self.config.inline_features,
            layout=self.config.layout,
            lineidx_cache_dir=self.config.lineidx_cache_dir,
        )
        yield from iter_examples(self.config.data_dir, split, options)
