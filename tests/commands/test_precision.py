"""``--precision`` of ``vinvl retrieve``, ``vinvl eval`` and ``vinvl serve``: in each command's help;
bf16 and int8 answer within their documented tolerance of the same command at fp32, and measurably
apart from it (a command that silently ran fp32 fails); a precision the machine lacks (simulated
CPU flags, no GPU) is refused in one line with status 2 before any model loads or exports.

The model is the wide-drawn tiny model of support.precision (random weights, no trained heads: the
first stage is exhaustive, so every pair's margin is compared)."""
import json
import os

import numpy as np
import pytest

import vinvl.apps.taskflow  # noqa: F401  (its load_retrieval_model is replaced below)

from vinvl.commands import evaluate, extract, retrieve, serve
from vinvl.data import load_corpus, write_synthetic_corpus
from vinvl.index import GallerySource, build_index
from vinvl.oscar import inference
from vinvl.serving.client import ServerProcess, free_port, get_json, post_json, vinvl_serve_command

from support.commands import assert_user_error, vinvl_here
from support.precision import (
    assert_within_tolerance, refuse_missing_instructions, save_wide_model, skip_unless_supported,
)

NUM_IMAGES = 10  # 50 captions
EVERY = "60"  # --top_k above the gallery's size: every image / caption answered


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model_dir, data_dir, index, two caption queries)."""
    root = tmp_path_factory.mktemp("command_precision")
    corpus = str(root / "corpus")
    write_synthetic_corpus(corpus, {"train": 0, "minival": 0, "val": 0, "test": NUM_IMAGES}, seed=6)
    model_dir = save_wide_model(root / "model")
    index = str(root / "index")
    build_index(index, model_dir, [GallerySource(corpus, "test")], progress=False)
    captions = load_corpus(corpus, "test").captions
    return model_dir, corpus, index, [captions[1][0], captions[6][2]]


def margins_of(answers):
    """{(query position, answered item): margin} of caption and image answers."""
    found = {}
    for position, answer in enumerate(answers):
        for item in answer.get("images", []):
            found[(position, item["image_id"])] = item["margin"]
        for item in answer.get("captions", []):
            found[(position, item["caption"])] = item["margin"]
    return found


def assert_same_pairs_within_tolerance(low, reference, precision):
    assert low.keys() == reference.keys() and reference
    keys = sorted(reference, key=str)
    values = [reference[k] for k in keys]
    assert_within_tolerance([low[k] for k in keys], values, precision, np.std(values))


def run_retrieve(capfd, tmp_path, setup, precision):
    model_dir, corpus, _, captions = setup
    done = vinvl_here(capfd, tmp_path, "retrieve", "--model_dir", model_dir, "--data_dir", corpus,
                      "--text", captions[0], "--text", captions[1], "--image_id", "500003", "--top_k", EVERY,
                      "--precision", precision)
    assert done.returncode == 0, done.stderr[-2000:]
    return margins_of(json.loads(done.stdout))


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_retrieve_within_the_precisions_tolerance(capfd, tmp_path, setup, precision):
    skip_unless_supported(precision)
    low = run_retrieve(capfd, tmp_path, setup, precision)
    assert_same_pairs_within_tolerance(low, run_retrieve(capfd, tmp_path, setup, "fp32"), precision)


def run_eval(capfd, tmp_path, setup, precision, *options):
    """{(caption query, image): margin} of every pair, from the ranked results, and the metrics."""
    model_dir, corpus, _, _ = setup
    out = str(tmp_path / f"eval-{precision}-{'-'.join(options)}")
    done = vinvl_here(capfd, tmp_path, "eval", "--model_dir", model_dir, "--data_dir", corpus, "--protocol", "all",
                      "--output_dir", out, "--no_progress", "--precision", precision, *options)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(os.path.join(out, "ranked_t2i.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    margins = {(q, item["image_id"]): item["margin"] for q, row in enumerate(rows) for item in row["top_images"]}
    assert len(margins) == NUM_IMAGES * NUM_IMAGES * 5  # every pair listed: 10 images per caption
    with open(os.path.join(out, "metrics.json")) as f:
        return margins, json.load(f)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_eval_within_the_precisions_tolerance(capfd, tmp_path, setup, precision):
    skip_unless_supported(precision)
    low, report = run_eval(capfd, tmp_path, setup, precision, "--rescore_top", "0")  # the scorer alone
    reference, _ = run_eval(capfd, tmp_path, setup, "fp32")
    assert report["precision"] == precision and report["pairs_rescored"] == 0
    assert_same_pairs_within_tolerance(low, reference, precision)


def test_eval_rescores_each_querys_top_pairs_at_fp32(capfd, tmp_path, setup):
    """``--rescore_top 2``: the pairs among each caption's 2 best images or each image's 2 best
    captions at int8 take fp32's margins; every other pair keeps its int8 margin."""
    skip_unless_supported("int8")
    low, _ = run_eval(capfd, tmp_path, setup, "int8", "--rescore_top", "0")
    reference, _ = run_eval(capfd, tmp_path, setup, "fp32")
    rescored, report = run_eval(capfd, tmp_path, setup, "int8", "--rescore_top", "2")
    images = sorted({image for _, image in low})
    matrix = np.array([[low[(q, image)] for image in images] for q in range(NUM_IMAGES * 5)])  # [caption, image]
    chosen = np.zeros(matrix.shape, dtype=bool)
    np.put_along_axis(chosen, np.argsort(-matrix, axis=1, kind="stable")[:, :2], True, axis=1)
    np.put_along_axis(chosen, np.argsort(-matrix, axis=0, kind="stable")[:2], True, axis=0)
    assert report["rescore_top"] == 2 and report["pairs_rescored"] == chosen.sum() < chosen.size
    for (q, image), margin in rescored.items():
        expected = reference if chosen[q, images.index(image)] else low
        assert margin == pytest.approx(expected[(q, image)], abs=1e-4), (q, image)


def test_rescore_top_is_refused_at_fp32_and_below_zero(capfd, tmp_path, setup):
    model_dir, corpus, _, _ = setup
    for precision, value, message in (("fp32", "5", "--rescore_top goes with --precision"),
                                      ("int8", "-1", "--rescore_top must be 0 or more")):
        done = vinvl_here(capfd, tmp_path, "eval", "--model_dir", model_dir, "--data_dir", corpus,
                          "--precision", precision, "--rescore_top", value)
        assert_user_error(done, "vinvl eval", message)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_serve_within_the_precisions_tolerance(capfd, tmp_path, setup, precision):
    skip_unless_supported(precision)
    model_dir, _, index, captions = setup
    queries = captions + [{"image_id": "500003"}]
    flags = ["--top_k", EVERY, "--first_stage", "exhaustive"]
    answers = {}
    for run in ("fp32", precision):
        port = free_port()
        with ServerProcess(vinvl_serve_command(index, port, extra=flags + ["--precision", run]), port,
                           str(tmp_path / f"server-{run}.log")):
            status, health = get_json(port)
            assert status == 200 and health["precision"] == run
            status, answer = post_json(port, {"data": queries}, timeout=120.0)
            assert status == 200, answer
            answers[run] = margins_of(answer["result"])
    assert_same_pairs_within_tolerance(answers[precision], answers["fp32"], precision)


def command_lines(setup, tmp_path):
    model_dir, corpus, index, captions = setup
    return {
        "retrieve": ["retrieve", "--model_dir", model_dir, "--data_dir", corpus, "--text", captions[0]],
        "eval": ["eval", "--model_dir", model_dir, "--data_dir", corpus, "--output_dir", str(tmp_path / "out")],
        "serve": ["serve", "--index", index, "--port", str(free_port())],
    }


@pytest.mark.parametrize("command", ["retrieve", "eval", "serve"])
@pytest.mark.parametrize("precision,missing", [("bf16", "avx512_bf16"), ("int8", "avx512_vnni"), ("fp16", "GPU")])
def test_a_precision_the_machine_lacks_is_refused_before_the_model_loads(
    capfd, tmp_path, monkeypatch, setup, command, precision, missing
):
    model_dir = setup[0]
    refuse_missing_instructions(monkeypatch)
    for module in ("vinvl.oscar.model_dir", "vinvl.apps.taskflow"):
        monkeypatch.setattr(f"{module}.load_retrieval_model", lambda *a, **k: pytest.fail("the model was loaded"))
    before = os.path.exists(os.path.join(model_dir, inference.EXPORT_DIR))
    done = vinvl_here(capfd, tmp_path, *command_lines(setup, tmp_path)[command], "--precision", precision)
    assert_user_error(done, f"vinvl {command}", f"--precision {precision}", missing)
    assert os.path.exists(os.path.join(model_dir, inference.EXPORT_DIR)) == before
    assert not os.path.exists(str(tmp_path / "out"))


@pytest.mark.parametrize("module", [retrieve, evaluate, serve])
def test_precision_is_in_each_commands_help(module):
    text = " ".join(module.build_parser().format_help().split())
    assert "--precision {fp32,bf16,int8,fp16}" in text and "(default: fp32)" in text


@pytest.mark.parametrize("module,option", [(retrieve, "--detector_precision"), (serve, "--detector_precision"), (extract, "--precision")])
def test_the_detectors_precision_is_in_each_commands_help_with_one_text(module, option):
    """One option text for the detector's precision (vinvl.commands.options), under each command's name for it."""
    text = " ".join(module.build_parser().format_help().split())
    assert f"{option} {{fp32,bf16,int8}} the detector's precision: fp32 (dygraph), bf16 (Paddle Inference with oneDNN" in text
    assert "(default: fp32)" in text
