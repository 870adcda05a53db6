"""A tiny model trained in the test session (40 steps, both objectives) on a synthetic corpus,
stand-ins for the checkpoints users bring: a converted one (trained match head, contrastive heads
fresh) and a saturating one (every logit scaled up), and the tiny config with seeded random weights."""
import shutil

import numpy as np
import vinvl  # noqa: F401  (CPU runtime defaults before paddle)
import paddle

from vinvl import OscarConfig, OscarForImageTextRetrieval
from vinvl.data import load_corpus, write_synthetic_corpus
from vinvl.oscar.model_dir import load_retrieval_model
from vinvl.retrieval import Gallery, RetrievalEngine
from vinvl.commands.train import main as train_main

from support.paths import TINY_MODEL


class TinyModels:
    """``train_tiny`` with the training shared across a test session.

    The synthetic writer draws each split from its own seeded stream, so the train split (all that
    training reads) depends on the corpus seed alone, not on the test split's size: every module that
    asks for the same seed gets the same weights. Each seed is trained once, into ``cache_dir``; each
    call writes its own corpus and gets its own copy of the model, so a test may change its copy."""

    def __init__(self, cache_dir):
        self.cache_dir, self.trained = cache_dir, {}

    def __call__(self, root, test_images: int, seed: int = 5):
        """(model_dir, corpus_dir) under ``root``: the tiny config trained for 40 steps on a synthetic
        corpus with ``test_images`` test images; its config records both heads as trained."""
        corpus = str(root / "corpus")
        write_synthetic_corpus(corpus, {"train": 48, "minival": 8, "val": 8, "test": test_images}, seed=seed)
        if seed not in self.trained:
            self.trained[seed] = _train(corpus, str(self.cache_dir / f"seed{seed}"))
        model_dir = str(root / "model")
        shutil.copytree(self.trained[seed], model_dir)
        return model_dir, corpus


def _train(corpus: str, model_dir: str) -> str:
    flags = {
        "model_name_or_path": TINY_MODEL,
        "data_dir": corpus,
        "output_dir": model_dir,
        "do_train": "true",
        "max_steps": "40",
        "per_device_train_batch_size": "12",
        "learning_rate": "1e-3",
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": "true",
        "seed": "1",
    }
    train_main([t for k, v in flags.items() for t in (f"--{k}", v)])
    derive(model_dir, model_dir, trained_heads=["match", "contrastive"])  # what it was trained on
    return model_dir


def derive(model_dir: str, out_dir: str, trained_heads=None, reset_contrastive: bool = False, logit_scale: float = 1.0):
    """A copy of ``model_dir`` (tokenizer files included) with ``trained_heads`` recorded, optionally
    with the contrastive projections re-drawn at random (as a conversion leaves them) and the
    match classifier scaled by ``logit_scale`` (so probabilities saturate); returns ``out_dir``."""
    if out_dir != model_dir:
        shutil.copytree(model_dir, out_dir)
    model, _ = load_retrieval_model(model_dir)
    if reset_contrastive:
        rng = np.random.default_rng(11)
        for layer in (model.text_proj, model.image_proj):
            layer.weight.set_value(rng.normal(0, 0.02, layer.weight.shape).astype(np.float32))
            layer.bias.set_value(np.zeros(layer.bias.shape, np.float32))
    if logit_scale != 1.0:
        for param in model.classifier.parameters():
            param.set_value(param * paddle.to_tensor(logit_scale, dtype=param.dtype))
    model.config.trained_heads = trained_heads
    model.save_pretrained(out_dir)
    return out_dir


def in_memory_gallery(corpus_dir: str, splits):
    """The images of ``splits`` (in order, region features read into memory) as Taskflow's ``gallery=``:
    the in-memory twin of a gallery index built from the same splits."""
    corpora = [load_corpus(corpus_dir, s) for s in splits]
    return {
        "image_ids": [i for c in corpora for i in c.image_ids],
        "features": [c.features(i) for c in corpora for i in range(len(c))],
        "tags": [t for c in corpora for t in c.tags],
        "captions": [p for c in corpora for p in c.captions],
    }


def assert_same_answers(actual, expected, tolerance=1e-5):
    """Assert two Taskflow / retriever answers agree: the same items in the same order, and scores
    and margins equal to ``tolerance`` (a batch of queries runs the same forwards as single
    queries, but a different batch shape may change the float rounding)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), (actual, expected)
        for key in expected:
            assert_same_answers(actual[key], expected[key], tolerance)
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), (actual, expected)
        for a, e in zip(actual, expected):
            assert_same_answers(a, e, tolerance)
    elif isinstance(expected, float):
        assert abs(actual - expected) <= tolerance, (actual, expected)
    else:
        assert actual == expected


def save_random_model(path, trained_heads, seed: int) -> str:
    """The tiny config with random weights drawn after ``paddle.seed(seed)``, saved to ``path``,
    recording which heads count as trained; returns the directory."""
    paddle.seed(seed)
    config = OscarConfig.from_pretrained(TINY_MODEL)
    config.trained_heads = trained_heads
    OscarForImageTextRetrieval(config).save_pretrained(str(path))
    return str(path)


def caption_embeddings(model_dir: str, captions) -> np.ndarray:
    """Caption-only embeddings through the engine (the query side of the first stage)."""
    model, processor = load_retrieval_model(model_dir)
    placeholder = [np.zeros((1, 2054), np.float32)]
    gallery = Gallery.for_queries(["q"], [[]], placeholder, captions)
    return RetrievalEngine(model, processor, progress=False).embed_captions(gallery)
