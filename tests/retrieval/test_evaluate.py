"""evaluate_corpus, the ``vinvl eval`` protocols and the benchmark's smoke mode, on a tiny random
model and a small synthetic corpus. The reference for the numbers is the baseline module: every
pair scored alone-in-its-batch with fixed padding and ranked by sorting, an independent path."""
import json
import os

import numpy as np
import pytest

import vinvl
import paddle
from vinvl import OscarConfig, OscarForImageTextRetrieval
from vinvl.commands.cli import main as vinvl_main
from vinvl.data import DataError, load_corpus, write_synthetic_corpus
from vinvl.oscar.model_dir import load_retrieval_model
from vinvl.retrieval import Gallery, RetrievalEngine, evaluate_corpus, fold_metrics, public_names
from vinvl.benchmarks import baseline
from vinvl.retrieval.engine import match_probability
from vinvl.commands.evaluate import main as eval_main

NAMES = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "rsum")
TEST_IMAGES = 10  # test_img_keys_1k.tsv of the synthetic corpus then lists 2 images: 5 folds of 2


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("evaluate")


@pytest.fixture(scope="module")
def corpus_dir(workdir):
    return write_synthetic_corpus(
        str(workdir / "corpus"), {"train": 0, "minival": 6, "val": 0, "test": TEST_IMAGES}, seed=3
    )


@pytest.fixture(scope="module")
def model_dir(workdir):
    """A random tiny model; a wider initialisation than the default spreads the pair scores."""
    paddle.seed(0)
    config = OscarConfig.from_pretrained(os.path.join(os.path.dirname(vinvl.__file__), "..", "model_configs", "tiny"))
    config.initializer_range = 0.1
    path = str(workdir / "model")
    OscarForImageTextRetrieval(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_retrieval_model(model_dir)


@pytest.fixture(scope="module")
def test_corpus(corpus_dir):
    return load_corpus(corpus_dir, "test")


@pytest.fixture(scope="module")
def baseline_scores(loaded, test_corpus):
    """{pair index: score} of every test pair through the baseline pipeline."""
    model, processor = loaded
    return baseline.score_pairs(model, processor, Gallery.from_corpus(test_corpus))


def baseline_matrix(gallery, results):
    return np.array([results[i] for i in range(gallery.num_images * gallery.num_captions)]).reshape(
        gallery.num_images, gallery.num_captions
    )


def test_exhaustive_metrics_equal_the_baseline(loaded, test_corpus, baseline_scores):
    model, processor = loaded
    gallery = Gallery.from_corpus(test_corpus)
    reference = baseline_matrix(gallery, baseline_scores)
    engine = RetrievalEngine(model, processor, batch_size=7, progress=False).exhaustive(gallery)
    noise = np.abs(match_probability(engine.i2t) - reference).max()  # the engine scores logit margins
    assert noise < 1e-6  # dynamic vs fixed padding, shared vs per-pair region projection
    # Ranks cannot depend on that noise: in each query, every wrong answer's score is further
    # from the ground truth's than that (the engine ranks by margin, the baseline by probability).
    c2i = gallery.caption_to_image
    own = c2i[None, :] == np.arange(gallery.num_images)[:, None]
    best_own = np.where(own, reference, -np.inf).max(axis=1)
    i2t_gaps = np.abs(reference - best_own[:, None])[~own]
    t2i_gaps = np.abs(reference - reference[c2i, np.arange(gallery.num_captions)][None, :])[~own]
    assert min(i2t_gaps.min(), t2i_gaps.min()) > 4 * noise
    metrics = evaluate_corpus(model, processor, test_corpus, batch_size=7, progress=False)
    expected = baseline.baseline_metrics(gallery, baseline_scores)
    assert set(metrics) == set(NAMES) | {"pairs_scored"}
    for name in NAMES:
        assert metrics[name] == pytest.approx(expected[name]), name
    assert metrics["pairs_scored"] == gallery.num_images * gallery.num_captions
    assert 0 < metrics["rsum"] < 600


def test_two_stage_covering_everything_equals_exhaustive_and_small_k_scores_fewer(loaded, test_corpus):
    model, processor = loaded
    exhaustive = evaluate_corpus(model, processor, test_corpus, progress=False)
    full = evaluate_corpus(model, processor, test_corpus, first_stage="contrastive", top_k=10_000, progress=False)
    assert full == exhaustive
    small = evaluate_corpus(model, processor, test_corpus, first_stage="contrastive", top_k=2, progress=False)
    # each image's 2 captions and each caption's 2 images: at most I*2 + C*2 pairs
    assert small["pairs_scored"] <= TEST_IMAGES * 2 + TEST_IMAGES * 5 * 2 < exhaustive["pairs_scored"]
    assert set(small) == set(exhaustive)


def test_minival_reranks_each_image_against_its_caption_index(loaded, corpus_dir):
    model, processor = loaded
    corpus = load_corpus(corpus_dir, "minival")
    assert corpus.caption_index is not None
    metrics = evaluate_corpus(model, processor, corpus, progress=False)
    assert set(metrics) == {"i2t_r1", "i2t_r5", "i2t_r10", "rsum", "pairs_scored"}
    assert metrics["rsum"] == pytest.approx(metrics["i2t_r1"] + metrics["i2t_r5"] + metrics["i2t_r10"])
    # Reference: each image's 20 listed captions scored by the baseline, ranked by sorting.
    gallery = Gallery.from_corpus(corpus)
    ranks = []
    for image, row in enumerate(gallery.candidates):
        indices = [image * gallery.num_captions + int(c) for c in row]
        scored = baseline.score_pairs(model, processor, gallery, indices)
        order = sorted(range(len(row)), key=lambda j: -scored[indices[j]])
        ranks.append(next(r for r, j in enumerate(order) if gallery.caption_to_image[row[j]] == image))
    for k in (1, 5, 10):
        assert metrics[f"i2t_r{k}"] == pytest.approx(100.0 * np.mean(np.array(ranks) < k))
    assert metrics["pairs_scored"] == gallery.candidates.size  # 20 distinct candidates per image
    full = evaluate_corpus(model, processor, corpus, use_caption_index=False, progress=False)
    assert set(full) == set(NAMES) | {"pairs_scored"}
    assert full["pairs_scored"] == gallery.num_images * gallery.num_captions


def test_evaluate_corpus_rejects_bad_settings(loaded, test_corpus):
    model, processor = loaded
    with pytest.raises(ValueError, match="first_stage must be one of"):
        evaluate_corpus(model, processor, test_corpus, first_stage="two_stage", progress=False)
    with pytest.raises(ValueError, match="top_k"):
        evaluate_corpus(model, processor, test_corpus, first_stage="contrastive", top_k=0, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_corpus(model, processor, test_corpus, batch_size=0, progress=False)


def _eval(model_dir, corpus_dir, out_dir, *extra):
    return eval_main(["--model_dir", model_dir, "--data_dir", corpus_dir, "--output_dir", str(out_dir), "--no_progress", *extra])


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_eval_coco1k_folds_subset_and_ranked_results(model_dir, corpus_dir, test_corpus, baseline_scores, workdir):
    out = workdir / "coco1k"
    report = _eval(model_dir, corpus_dir, out, "--protocol", "coco1k", "--batch_size", "16")
    with open(out / "metrics.json") as f:
        written = json.load(f)
    assert written["results"] == report["results"]
    assert written["fold_size"] == 2 and written["num_images"] == TEST_IMAGES
    # Only the 5 diagonal 2 x 10 blocks are scored; the official subset (the first 2 keys) is fold 0.
    assert written["pairs_scored"] == 5 * 2 * 10
    gallery = Gallery.from_corpus(test_corpus)
    matrix = baseline_matrix(gallery, baseline_scores)
    expected = public_names(fold_metrics(matrix, gallery.caption_to_image, num_folds=5))
    for name in NAMES:
        assert written["results"]["1k_5fold"][name] == pytest.approx(expected[name]), name
    subset = written["results"]["1k_subset"]
    first_fold = baseline.baseline_metrics(gallery.subset([0, 1]), baseline_scores_of_subset(gallery, baseline_scores, [0, 1]))
    for name in NAMES:
        assert subset[name] == pytest.approx(first_fold[name]), name

    image_queries = _read_jsonl(out / "ranked_i2t.jsonl")
    caption_queries = _read_jsonl(out / "ranked_t2i.jsonl")
    assert [q["image_id"] for q in image_queries] == gallery.image_ids[:2]
    assert len(caption_queries) == 10  # the subset's 2 images x 5 captions
    top = image_queries[0]["top_captions"]
    assert len(top) == 10 and [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    assert top[0]["caption"] in gallery.captions_of(gallery.image_ids.index(top[0]["image_id"]))
    assert all(len(q["top_images"]) == 2 for q in caption_queries)
    assert subset["i2t_r1"] == pytest.approx(100 * np.mean([q["gt_rank"] < 1 for q in image_queries]))
    assert subset["t2i_r1"] == pytest.approx(100 * np.mean([q["gt_rank"] < 1 for q in caption_queries]))


def baseline_scores_of_subset(gallery, results, images):
    """The baseline's {pair index: score} re-indexed to the sub-gallery of ``images``."""
    sub = gallery.subset(images)
    columns = [c for c in range(gallery.num_captions) if gallery.caption_to_image[c] in images]
    return {
        i * sub.num_captions + j: results[image * gallery.num_captions + column]
        for i, image in enumerate(images)
        for j, column in enumerate(columns)
    }


def test_eval_coco5k_through_the_vinvl_command(model_dir, corpus_dir, loaded, test_corpus, workdir, capsys):
    out = workdir / "coco5k"
    vinvl_main(["eval", "--model_dir", model_dir, "--data_dir", corpus_dir, "--protocol", "coco5k",
                "--output_dir", str(out), "--no_progress"])
    assert "rsum" in capsys.readouterr().out
    with open(out / "metrics.json") as f:
        written = json.load(f)
    assert set(written["results"]) == {"5k", "1k_5fold", "1k_subset"}
    assert written["pairs_scored"] == TEST_IMAGES * TEST_IMAGES * 5
    model, processor = loaded
    whole = evaluate_corpus(model, processor, test_corpus, progress=False)
    for name in NAMES:
        assert written["results"]["5k"][name] == pytest.approx(whole[name]), name
    assert len(_read_jsonl(out / "ranked_i2t.jsonl")) == TEST_IMAGES
    assert len(_read_jsonl(out / "ranked_t2i.jsonl")) == TEST_IMAGES * 5


def test_eval_custom_key_file_in_two_stage_mode(model_dir, corpus_dir, test_corpus, workdir):
    keys = workdir / "my_keys.tsv"
    keys.write_text("".join(f"{i}\n" for i in test_corpus.image_ids[3:7]))
    out = workdir / "keys"
    report = _eval(model_dir, corpus_dir, out, "--protocol", "keys", "--eval_img_keys_file", str(keys),
                   "--first_stage", "contrastive", "--candidates", "2")
    assert report["num_images"] == 4 and report["num_captions"] == 20
    assert set(report["results"]) == {"keys"}
    assert report["pairs_scored"] < 4 * 20
    image_queries = _read_jsonl(out / "ranked_i2t.jsonl")
    assert [q["image_id"] for q in image_queries] == test_corpus.image_ids[3:7]
    assert all(len(q["top_captions"]) >= 2 for q in image_queries)  # its top 2, plus captions that chose it


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (["--split", "nope"], ValueError, "unknown split"),
        (["--protocol", "keys"], ValueError, "eval_img_keys_file"),
        (["--eval_img_keys_file", "test_img_keys.tsv"], ValueError, "eval_img_keys_file"),
        (["--protocol", "keys", "--eval_img_keys_file", "no_such_keys.tsv"], DataError, "no such file"),
        (["--fold_size", "3"], ValueError, "equal folds"),
        (["--candidates", "0"], ValueError, "candidates"),
        (["--top_k", "2"], ValueError, "--top_k is gone: use --candidates"),
        (["--batch_size", "-1"], ValueError, "batch_size"),
        (["--mode", "two_stage"], ValueError, "--mode is gone: use --first_stage"),
    ],
)
def test_eval_bad_input_fails_clearly(model_dir, corpus_dir, workdir, extra, error, message):
    with pytest.raises(error, match=message):
        _eval(model_dir, corpus_dir, workdir / "bad", *extra)


def test_eval_key_file_naming_unknown_images_and_missing_dirs(model_dir, corpus_dir, workdir):
    keys = workdir / "unknown_keys.tsv"
    keys.write_text("500000\n123456789\n")
    with pytest.raises(DataError, match="123456789"):
        _eval(model_dir, corpus_dir, workdir / "bad", "--protocol", "keys", "--eval_img_keys_file", str(keys))
    with pytest.raises(FileNotFoundError, match="data_dir"):
        _eval(model_dir, str(workdir / "nowhere"), workdir / "bad")
    with pytest.raises(FileNotFoundError, match="no weights"):
        _eval(os.path.join(os.path.dirname(vinvl.__file__), "..", "model_configs", "tiny"), corpus_dir, workdir / "bad")


def test_benchmark_smoke_mode_prints_its_ratio_lines(tmp_path, capsys, caplog):
    from vinvl.commands.benchmark import main as benchmark_main

    with caplog.at_level("WARNING", logger="vinvl.retrieval.first_stage"):
        report = benchmark_main(["--work_dir", str(tmp_path), "--num_images", "8", "--train_steps", "0",
                                 "--baseline_pairs", "40", "--cpu_probe_images", "0", "--matmul_size", "256",
                                 "--coverage_ks", "2,64", "--candidates", "3", "--no_progress"])
    out = capsys.readouterr().out
    for prefix in ("(1) exhaustive vs baseline throughput", "(2) two-stage, first stage tags (k=3)", "R@K change",
                   "coverage at k=2", "coverage at k=64", "(3) scoring FLOP/s", "(4) peak memory"):
        assert prefix in out, prefix
    # An untrained model (random init records no trained heads): no contrastive first stage, said once.
    assert "contrastive" not in report["coverage"] and "not trained" in caplog.text
    paths = report["paths"]
    assert set(paths) == {"exhaustive", "two_stage_tags", "baseline", "baseline_ranking"}
    assert paths["exhaustive"]["pairs"] == 8 * 40 and paths["baseline"]["pairs"] == 40
    assert paths["two_stage_tags"]["pairs"] < paths["exhaustive"]["pairs"]
    coverage = report["coverage"]["tags"]
    assert sorted(coverage) == [2, 3, 64]
    assert coverage[64] == {"i2t_top1": 1.0, "t2i_top1": 1.0, "i2t_top10": 1.0, "t2i_top10": 1.0}  # k covers all
    assert all(0.0 <= v <= 1.0 for values in coverage.values() for v in values.values())
    # The baseline pads every pair to 70 + 70, so it runs more FLOPs per pair than the engine.
    per_pair = {name: paths[name]["flops"] / paths[name]["pairs"] for name in ("exhaustive", "baseline")}
    assert per_pair["baseline"] > per_pair["exhaustive"] > 0
    assert paths["baseline_ranking"]["metrics"]["rsum"] == pytest.approx(paths["exhaustive"]["metrics"]["rsum"])
    with open(tmp_path / "benchmark.json") as f:
        assert json.load(f)["lines"] == report["lines"]


@pytest.mark.parametrize("bad", ["8,,16", "", "8,x", "0,4", "-2"])
def test_benchmarks_refuse_malformed_k_lists(bad, capsys):
    """Both benchmarks parse their k lists with one rule: positive integers, no empty piece."""
    from vinvl.commands.benchmark import build_parser as retrieval_parser
    from vinvl.commands.benchmark_first_stage import build_parser as first_stage_parser

    assert retrieval_parser().parse_args(["--coverage_ks", "8,16"]).coverage_ks == (8, 16)
    assert first_stage_parser().parse_args(["--ks", "4,64"]).ks == (4, 64)
    for parser, flag in ((retrieval_parser(), "--coverage_ks"), (first_stage_parser(), "--ks")):
        with pytest.raises(SystemExit):
            parser.parse_args([flag, bad])
        assert "positive integers" in capsys.readouterr().err
