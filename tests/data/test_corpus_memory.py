"""Memory: a corpus whose features.tsv is a few hundred MB is loaded and streamed image by image
with bounded RSS growth (the reader keeps row offsets only, never the file or past rows), and
built with inline features without holding more than a small batch of rows."""
import base64
import json
import os
import shutil
import threading

import numpy as np
import psutil
import pytest

from vinvl.data import FEATURE_DIM, load_coco_ir, load_corpus, write_synthetic_corpus

NUM_IMAGES = 560
NUM_BOXES = 50  # as the VinVL COCO features: ~548 KB of base64 per row, ~300 MB in all
RSS_BOUND = 60 * 2**20


def _row_features(base: np.ndarray, i: int) -> np.ndarray:
    return base + np.float32(i)


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    """The official files, written directly (numpy + base64); no features.lineidx, so the loader
    also has to index the big file in one streaming pass."""
    tmp_path = tmp_path_factory.mktemp("memory")
    folder = tmp_path / "corpus" / "features" / "test"
    folder.mkdir(parents=True)
    base = np.random.default_rng(0).random((NUM_BOXES, FEATURE_DIM), dtype=np.float32)
    ids = [str(600000 + i) for i in range(NUM_IMAGES)]
    objects = json.dumps({"objects": [{"class": "dog", "rect": [0, 0, 1, 1]}] * 3, "image_h": 480, "image_w": 640})
    with open(folder / "features.tsv", "wb") as feats, open(folder / "predictions.tsv", "w") as preds:
        for i, image_id in enumerate(ids):
            encoded = base64.b64encode(_row_features(base, i).tobytes())
            feats.write(b"%s\t%d\t%s\n" % (image_id.encode(), NUM_BOXES, encoded))
            preds.write(f"{image_id}\t{objects}\n")
    with open(folder / "imageid2idx.json", "w") as f:
        json.dump({image_id: i for i, image_id in enumerate(ids)}, f)
    with open(tmp_path / "corpus" / "test_captions.json", "w") as f:
        json.dump({image_id: [f"a dog number {i}"] for i, image_id in enumerate(ids)}, f)
    yield str(tmp_path / "corpus"), base
    shutil.rmtree(tmp_path)  # do not keep 300 MB in pytest's retained tmp dirs


def warm_up(tmp_path):
    """Import and exercise the loading machinery (datasets, the script module) on a tiny corpus."""
    tiny = write_synthetic_corpus(str(tmp_path / "tiny"), {"train": 0, "minival": 0, "val": 0, "test": 2})
    load_corpus(tiny, "test", cache_dir=str(tmp_path / "cache")).features(0)
    load_coco_ir(tiny, "test", inline_features=True, cache_dir=str(tmp_path / "cache"))


@pytest.mark.slow
def test_streaming_a_large_feature_file_keeps_rss_bounded(big_corpus, tmp_path):
    out, base = big_corpus
    size = os.path.getsize(os.path.join(out, "features", "test", "features.tsv"))
    assert size > 250 * 2**20
    decoded_total = NUM_IMAGES * NUM_BOXES * FEATURE_DIM * 4
    assert decoded_total > 3 * RSS_BOUND  # holding the features would break the bound several times over

    warm_up(tmp_path)
    process = psutil.Process()
    start = process.memory_info().rss
    corpus = load_corpus(out, "test", cache_dir=str(tmp_path / "cache"))
    assert len(corpus) == NUM_IMAGES
    assert os.path.isfile(os.path.join(out, "features", "test", "features.lineidx"))
    peak = process.memory_info().rss
    for i in range(NUM_IMAGES):
        features = corpus.features(i)
        assert features.shape == (NUM_BOXES, FEATURE_DIM)
        if i % 7 == 0:
            assert features.tobytes() == _row_features(base, i).tobytes()
        peak = max(peak, process.memory_info().rss)
    growth = peak - start
    assert growth < RSS_BOUND, f"RSS grew by {growth / 2**20:.0f} MB while streaming {size / 2**20:.0f} MB"


@pytest.mark.slow
def test_building_with_inline_features_keeps_rss_bounded(big_corpus, tmp_path):
    """Inline features go through the Arrow writer a few rows at a time (a batch of 256 such
    rows peaked at ~400 MB here)."""
    out, base = big_corpus
    warm_up(tmp_path)
    process = psutil.Process()
    start = process.memory_info().rss
    peak, done = [start], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            done.wait(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        dataset = load_coco_ir(out, "test", inline_features=True, cache_dir=str(tmp_path / "cache"))
    finally:
        done.set()
        watcher.join()
    growth = peak[0] - start
    assert growth < RSS_BOUND, f"RSS grew by {growth / 2**20:.0f} MB while building inline features"
    rows = dataset.with_format("numpy")
    for i in (0, 281, NUM_IMAGES - 1):
        assert rows[i]["features"].tobytes() == _row_features(base, i).tobytes()
    shutil.rmtree(tmp_path / "cache")
