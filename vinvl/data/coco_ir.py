"""HuggingFace ``datasets`` loading script for the official Oscar/VinVL COCO retrieval files.

    datasets.load_dataset("vinvl/data/coco_ir.py", data_dir="coco_ir", split="test",
                          trust_remote_code=True, eval_img_keys_file="test_img_keys_1k.tsv")

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
from vinvl.data.formats import FEATURE_DIM
from vinvl.data.layout import SPLITS


@dataclass
class CocoIRConfig(datasets.BuilderConfig):
    """Options of the loading script (passed as keyword arguments to ``load_dataset``)."""

    features_dir: Optional[str] = None
    add_od_labels: bool = True
    eval_img_keys_file: Optional[str] = None
    inline_features: bool = False
    layout: str = "auto"
    splits: Optional[Tuple[str, ...]] = None  # prepare only these splits (default: all four)


class CocoIR(datasets.GeneratorBasedBuilder):
    """COCO image-text retrieval with VinVL region features and object tags."""

    BUILDER_CONFIG_CLASS = CocoIRConfig
    BUILDER_CONFIGS = [CocoIRConfig(name="default")]
    DEFAULT_WRITER_BATCH_SIZE = 256

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
            raise ValueError("coco_ir needs data_dir=<the coco_ir folder>")
        splits = self.config.splits or SPLITS
        unknown = [s for s in splits if s not in SPLITS]
        if unknown:
            raise ValueError(f"unknown split {unknown[0]!r}; the splits are {SPLITS}")
        return [datasets.SplitGenerator(name=s, gen_kwargs={"split": s}) for s in splits]

    def _generate_examples(self, split: str):
        options = ExampleOptions(
            features_dir=self.config.features_dir,
            add_od_labels=self.config.add_od_labels,
            eval_img_keys_file=self.config.eval_img_keys_file,
            inline_features=self.config.inline_features,
            layout=self.config.layout,
        )
        yield from iter_examples(self.config.data_dir, split, options)
