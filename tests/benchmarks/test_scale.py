"""scripts/benchmark_scale.py's parts that decide what it measures: the synthetic gallery it builds
(official layout the loader reads, 10-50 regions per image, images past distinct_images sharing
features.tsv rows), the nprobe rule, and its refusal of a folder in use."""
import numpy as np
import pytest

from vinvl.benchmarks.scale import ScaleBenchmark, choose_nprobe, query_captions, write_gallery
from vinvl.commands.benchmark_scale import main
from vinvl.data import load_corpus
from vinvl.data.formats import FEATURE_DIM
from vinvl.errors import UsageError


def test_the_gallery_is_official_coco_ir_with_realistic_region_counts_and_shared_rows(tmp_path):
    settings = ScaleBenchmark(num_images=12, min_regions=10, max_regions=50, distinct_images=5)
    facts = write_gallery(str(tmp_path), settings)
    corpus = load_corpus(str(tmp_path), "test")
    assert len(corpus.image_ids) == 12 and len(set(corpus.image_ids)) == 12
    features = [corpus.features(i) for i in range(12)]
    counts = [len(f) for f in features]
    assert all(10 <= c <= 50 for c in counts) and len(set(counts[:5])) > 1
    assert facts["regions_mean"] == pytest.approx(np.mean(counts))
    assert all(f.shape[1] == FEATURE_DIM and (f[:, :2048] >= 0).all() for f in features)
    with open(tmp_path / "features" / "test" / "features.tsv") as f:
        assert len(f.readlines()) == 5  # one row per distinct image: later images share them
    for i in range(5, 12):  # a later image repeats a distinct one's regions and tags, under its own id
        np.testing.assert_array_equal(features[i], features[i % 5])
        assert corpus.tags[i] == corpus.tags[i % 5]
    assert not np.array_equal(features[0][:10], features[1][:10])
    assert all(len(c) == 5 for c in corpus.captions)
    # captions name the image's tags, so the tags first stage has words to match
    assert all(any(tag in caption for tag in set(tags)) for caption_list, tags in zip(corpus.captions, corpus.tags) for caption in caption_list)
    assert len(query_captions(str(tmp_path), 4, seed=0)) == 4


class Proposing:
    """A retriever whose answers list fixed ids per caption: ``by_nprobe[nprobe]`` (None: the exact one)."""

    def __init__(self, by_nprobe):
        self.by_nprobe, self.asked = by_nprobe, []

    def answer(self, captions, top_k, candidates, first_stage, nprobe=None):
        self.asked.append(nprobe)
        return [{"images": [{"image_id": i} for i in ids]} for ids in self.by_nprobe[nprobe]]


def test_nprobe_is_the_smallest_power_of_two_reaching_the_recall_target_and_at_most_nlist():
    exact = Proposing({None: [["a", "b", "c", "d"], ["e", "f", "g", "h"]]})
    faiss = Proposing({1: [["a", "x", "y", "z"], ["e", "x", "y", "z"]], 2: [["a", "b", "c", "z"], ["e", "f", "g", "h"]],
                       4: [["a", "b", "c", "d"], ["e", "f", "g", "h"]], 6: [["a", "b", "c", "d"], ["e", "f", "g", "h"]]})
    chosen = choose_nprobe(exact, faiss, ["q1", "q2"], 4, target=0.85, nlist=6)
    assert chosen["nprobe"] == 2 and chosen["recall"] == pytest.approx(0.875)
    assert chosen["tried"] == {1: pytest.approx(0.25), 2: pytest.approx(0.875)}
    strict = choose_nprobe(exact, faiss, ["q1", "q2"], 4, target=0.95, nlist=6)
    assert strict["nprobe"] == 4 and faiss.asked[-1] == 4
    assert choose_nprobe(exact, Proposing({1: faiss.by_nprobe[1], 2: faiss.by_nprobe[2]}), ["q1", "q2"], 4, 0.95, nlist=2)["nprobe"] == 2


def test_a_work_dir_in_use_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UsageError, match="--work_dir .*not empty"):
        main(["--num_images", "10", "--work_dir", str(tmp_path)])
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
