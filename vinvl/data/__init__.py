"""Data: the official Oscar/VinVL COCO retrieval files, a synthetic corpus in the same format,
and the training pairs built from them."""
from .corpus import COCO_IR_SCRIPT, RetrievalCorpus, load_coco_ir, load_corpus
from .formats import FEATURE_DIM, DataError
from .synthetic import write_synthetic_corpus

__all__ = [
    "COCO_IR_SCRIPT",
    "DataError",
    "FEATURE_DIM",
    "RetrievalCorpus",
    "load_coco_ir",
    "load_corpus",
    "write_synthetic_corpus",
]
