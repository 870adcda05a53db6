"""RetrievalCorpus.features from forked DataLoader-style workers.

A file handle inherited through fork shares its offset with the parent and every sibling, so
concurrent seek + read pairs would interleave and return other rows' bytes. Each process must
open its own handle; then every worker reads exactly what was written, and so does the parent.
"""
import multiprocessing

import pytest

from vinvl.data import load_corpus, write_synthetic_corpus
from vinvl.data.synthetic import SceneGenerator, generate_split

NUM_IMAGES = 240
WORKERS = 4
_inherited = {}


def _read(rows):
    """In a forked worker: each row's feature bytes, read through the corpus inherited from the parent."""
    corpus = _inherited["corpus"]
    return [(i, corpus.features(i).tobytes()) for i in rows for _ in range(3)]


@pytest.mark.slow
def test_forked_workers_read_exactly_what_was_written(tmp_path):
    out = write_synthetic_corpus(str(tmp_path / "corpus"), {"train": NUM_IMAGES}, seed=2)
    truth = {i: im.features.tobytes() for i, im in enumerate(generate_split(SceneGenerator(seed=2), "train", NUM_IMAGES, 2))}
    corpus = load_corpus(out, "train", add_od_labels=False, cache_dir=str(tmp_path / "cache"))
    assert corpus.features(0).tobytes() == truth[0]  # the parent's handle is open before the fork
    _inherited["corpus"] = corpus
    try:
        with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
            results = pool.map(_read, [list(range(k, NUM_IMAGES, WORKERS)) for k in range(WORKERS)])
    finally:
        _inherited.clear()
    read = [item for chunk in results for item in chunk]
    assert len(read) == 3 * NUM_IMAGES
    wrong = [i for i, data in read if data != truth[i]]
    assert not wrong, f"{len(wrong)} reads returned other bytes (first: row {wrong[0]})"
    assert corpus.features(7).tobytes() == truth[7]  # the parent still reads correctly afterwards
