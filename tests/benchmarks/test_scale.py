"""scripts/benchmark_scale.py's parts that decide what it measures: the synthetic gallery it builds
(official layout the loader reads, 10-50 regions per image, images past distinct_images sharing
features.tsv rows), the nprobe rule, and its refusal of a folder in use."""
import numpy as np
import pytest

from vinvl.benchmarks.scale import ScaleBenchmark, choose_nprobe, query_captions, recall_with_ties, write_gallery, written_gallery
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


class FakeIndex:
    """An index whose exact and faiss searches return fixed (scores, rows): ``by_nprobe[nprobe]``."""

    def __init__(self, exact, by_nprobe, nlist):
        self.manifest = {"faiss": {"nlist": nlist}}
        self.exact, self.by_nprobe, self.asked = exact, by_nprobe, []

    def search(self, queries, k, method, nprobe=None):
        if method == "exact":
            return self.exact
        self.asked.append(nprobe)
        return self.by_nprobe[nprobe]


def top(scores, rows):
    return np.array(scores, dtype=np.float32), np.array(rows, dtype=np.int64)


def test_a_faiss_row_tied_with_exacts_kth_score_counts_as_a_hit():
    exact = top([[0.9, 0.5, 0.5]], [[0, 1, 2]])  # rows 1, 2 and 7 all score 0.5: exact kept 1 and 2
    assert recall_with_ties(exact, top([[0.9, 0.5, 0.5]], [[0, 1, 7]])) == pytest.approx(1.0)
    assert recall_with_ties(exact, top([[0.9, 0.5, 0.4]], [[0, 1, 8]])) == pytest.approx(2 / 3)  # 8 scores below the 3rd
    assert recall_with_ties(exact, top([[0.9, 0.5, -np.inf]], [[0, 1, -1]])) == pytest.approx(2 / 3)  # padding is no hit


def test_nprobe_is_the_smallest_power_of_two_reaching_the_recall_target_and_at_most_nlist():
    exact = top([[4, 3, 2, 1], [8, 7, 6, 5]], [[0, 1, 2, 3], [4, 5, 6, 7]])
    by_nprobe = {
        1: top([[4, 0, 0, 0], [8, 0, 0, 0]], [[0, 9, 10, 11], [4, 9, 10, 11]]),
        2: top([[4, 3, 2, 0], [8, 7, 6, 5]], [[0, 1, 2, 9], [4, 5, 6, 7]]),
        4: exact, 6: exact,
    }
    index = FakeIndex(exact, by_nprobe, nlist=6)
    chosen = choose_nprobe(index, np.zeros((2, 3)), 4, target=0.85)
    assert chosen["nprobe"] == 2 and chosen["recall"] == pytest.approx(0.875)
    assert chosen["tried"] == {1: pytest.approx(0.25), 2: pytest.approx(0.875)}
    assert choose_nprobe(index, np.zeros((2, 3)), 4, target=0.95)["nprobe"] == 4 and index.asked[-1] == 4
    capped = FakeIndex(exact, {1: by_nprobe[1], 2: by_nprobe[2]}, nlist=2)
    assert choose_nprobe(capped, np.zeros((2, 3)), 4, target=0.95)["nprobe"] == 2


def test_a_work_dir_in_use_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UsageError, match="--work_dir .*not empty"):
        main(["--num_images", "10", "--work_dir", str(tmp_path)])
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_a_finished_gallery_of_the_same_settings_is_reused_and_no_other(tmp_path):
    settings = ScaleBenchmark(num_images=6, distinct_images=3)
    facts = write_gallery(str(tmp_path / "gallery"), settings)
    assert written_gallery(str(tmp_path / "gallery"), settings) == facts
    assert written_gallery(str(tmp_path / "gallery"), ScaleBenchmark(num_images=6, distinct_images=2)) is None
    with pytest.raises(UsageError, match="--work_dir .*not empty"):  # same folder, other gallery settings
        main(["--num_images", "6", "--distinct_images", "2", "--work_dir", str(tmp_path)])
    (tmp_path / "gallery" / "written.json").unlink()  # a gallery whose writing did not finish
    with pytest.raises(UsageError, match="--work_dir .*not empty"):
        main(["--num_images", "6", "--distinct_images", "3", "--work_dir", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery"]
