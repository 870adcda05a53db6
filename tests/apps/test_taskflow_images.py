"""Photos in the Taskflow and ``vinvl retrieve``: a photo query (file, PIL image, array) and a
gallery from a folder of photos give exactly the results of the same detector output passed in
directly as ``{"features", "tags"}`` / ``gallery=``; the folder's extraction is cached, reused
and redone when a photo changes; a missing detector is named. The reference features are the
detector run directly in the test: ``detect(load_image(path))[0].region_features()`` and its class
names. Model and detector are the tiny configs (random weights: the test is about plumbing, and
the scores still differ from photo to photo, which the tests check so a mix-up would show)."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import vinvl  # noqa: F401  (registers the task)
from paddlenlp import Taskflow

from vinvl.data import write_synthetic_corpus
from vinvl.commands.cli import main as cli_main
from vinvl.commands.retrieve import main as retrieve_main
from vinvl.errors import UsageError
from vinvl.precision import cpu_flags
from vinvl.vision.calibration import calibrate_detector
from vinvl.vision.detector import VinVLDetector
from vinvl.vision.inference import InferenceDetector
from vinvl.vision.image import load_image
from vinvl.query.photos import is_image_source

from support.paths import PHOTO_DIR, REPO, TINY_DETECTOR as DETECTOR, TINY_MODEL
from support.precision import assert_bf16_regions, refuse_missing_instructions
from support.realdata import GALLERY_PHOTOS, OTHER_PHOTO, QUERY_PHOTO, read_captions
from support.tinymodel import assert_same_answers, derive

TOP_K = 3
needs_bf16 = pytest.mark.skipif(not {"avx512_bf16", "amx_bf16"} & cpu_flags(), reason="this CPU has no bf16 instructions")
needs_int8 = pytest.mark.skipif(not {"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags(), reason="this CPU has no int8 instructions")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny config with random weights, saved once so every Taskflow loads the same weights."""
    return derive(TINY_MODEL, str(tmp_path_factory.mktemp("images") / "model"), trained_heads=[])


@pytest.fixture(scope="module")
def detector():
    return VinVLDetector.from_pretrained(DETECTOR)


def direct(detector, path):
    """The ``{"features", "tags"}`` query of a photo, from the detector run directly."""
    detections = detector.detect([load_image(path)])[0]
    return {"features": detections.region_features(), "tags": list(detections.class_names)}


def captions_gallery(detector):
    """Three photos with real COCO captions, from features passed in directly."""
    captions = read_captions()
    queries = [direct(detector, os.path.join(PHOTO_DIR, name)) for name in GALLERY_PHOTOS]
    return {
        "image_ids": [os.path.splitext(n)[0] for n in GALLERY_PHOTOS],
        "features": [q["features"] for q in queries],
        "tags": [q["tags"] for q in queries],
        "captions": [captions[5 * i : 5 * i + 3] for i in range(len(GALLERY_PHOTOS))],
    }


def make(model_dir, **options):
    return Taskflow("image_text_retrieval", task_path=model_dir, top_k=TOP_K, first_stage="exhaustive", **options)


@pytest.fixture(scope="module")
def with_detector(model_dir, detector):
    return make(model_dir, detector_path=DETECTOR, gallery=captions_gallery(detector))


def test_a_photo_query_is_answered_as_its_detector_output(with_detector, detector):
    expected = with_detector(direct(detector, QUERY_PHOTO))
    assert len(expected[0]["captions"]) == TOP_K
    assert with_detector(QUERY_PHOTO) == expected
    assert with_detector(pathlib.Path(QUERY_PHOTO)) == expected
    assert with_detector({"image": QUERY_PHOTO}) == expected
    # a different photo is answered differently, so a mixed-up photo would be caught above
    assert with_detector(OTHER_PHOTO) != expected


def test_a_pil_image_and_an_array_are_answered_as_the_file(with_detector):
    expected = with_detector(QUERY_PHOTO)
    with Image.open(QUERY_PHOTO) as image:
        image.load()
        assert with_detector(image) == expected
        assert with_detector(np.asarray(image.convert("RGB"))) == expected


def test_a_photo_pair_and_a_mixed_list(with_detector, detector):
    caption = read_captions()[0]
    pair = with_detector({"image": QUERY_PHOTO, "caption": caption})
    assert pair == with_detector({**direct(detector, QUERY_PHOTO), "caption": caption})
    mixed = with_detector([caption, QUERY_PHOTO, {"image_id": "COCO_val2014_000000045057"}])
    assert_same_answers(mixed[1], with_detector(QUERY_PHOTO)[0])
    assert_same_answers(mixed[0], with_detector(caption)[0])
    assert_same_answers(mixed[2], with_detector({"image_id": "COCO_val2014_000000045057"})[0])


def test_which_strings_are_photos():
    assert is_image_source("photos/cat.JPG") and is_image_source("dog.png") and is_image_source(pathlib.Path("x"))
    assert not is_image_source("a dog catching a frisbee") and not is_image_source("a photo of a dog.\nmore.jpg")


def photo_folder(root):
    folder = root / "photos"
    folder.mkdir()
    for name in GALLERY_PHOTOS:
        shutil.copy(os.path.join(PHOTO_DIR, name), folder / name)
    return folder


def cached_states(cache_root):
    """The cached extraction directories below ``cache_root`` (one per folder key and state)."""
    return sorted(str(p.parent) for p in pathlib.Path(cache_root).glob("*/*/extract.json"))


def text_queries():
    return [c for i, c in enumerate(read_captions()) if i % 9 == 0][:4]


def test_a_photo_folder_gallery_answers_as_its_features_passed_directly(model_dir, detector, tmp_path):
    folder = photo_folder(tmp_path)
    photos = make(model_dir, detector_path=DETECTOR, gallery_images=str(folder), gallery_cache_dir=str(tmp_path / "cache"))
    gallery = captions_gallery(detector)
    gallery.pop("captions")
    answers = photos(text_queries())
    assert answers == make(model_dir, gallery=gallery)(text_queries())
    assert [len(a["images"]) for a in answers] == [TOP_K] * len(answers)


@pytest.mark.slow
def test_the_folder_is_extracted_once_and_again_when_a_photo_changes(model_dir, detector, tmp_path):
    folder = photo_folder(tmp_path)
    cache = tmp_path / "cache"
    settings = dict(detector_path=DETECTOR, gallery_images=str(folder), gallery_cache_dir=str(cache))
    first = make(model_dir, **settings)
    (state,) = cached_states(cache)
    files = sorted(pathlib.Path(state).glob("*.tsv")) + [pathlib.Path(state) / "extract.json"]
    stamps = [f.stat().st_mtime_ns for f in files]
    answers = first(text_queries())

    again = make(model_dir, **settings)
    assert cached_states(cache) == [state]
    assert [f.stat().st_mtime_ns for f in files] == stamps  # nothing rewritten
    assert again.task_instance.retriever.photos._detector is None  # a cache hit never loads the detector
    assert again(text_queries()) == answers

    changed = folder / GALLERY_PHOTOS[1]
    shutil.copy(OTHER_PHOTO, changed)  # same name, another photo
    redone = make(model_dir, **settings)
    (new_state,) = cached_states(cache)  # the old state is gone
    assert new_state != state
    gallery = captions_gallery(detector)
    gallery.pop("captions")
    replaced = direct(detector, OTHER_PHOTO)
    gallery["features"][1], gallery["tags"][1] = replaced["features"], replaced["tags"]
    assert redone(text_queries()) == make(model_dir, gallery=gallery)(text_queries())
    assert redone(text_queries()) != answers

    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))  # touched only
    make(model_dir, **settings)
    (touched_state,) = cached_states(cache)
    assert touched_state != new_state


def test_without_a_detector_a_photo_says_which_option_is_missing(model_dir, detector, tmp_path):
    plain = make(model_dir, gallery=captions_gallery(detector))
    for query in (QUERY_PHOTO, pathlib.Path(QUERY_PHOTO), {"image": QUERY_PHOTO}, np.zeros((32, 32, 3), np.uint8)):
        with pytest.raises(ValueError, match="detector_path=") as error:
            plain(query)
        assert "query 0" in str(error.value)
    with pytest.raises(ValueError, match="gallery_images=.*detector_path="):
        make(model_dir, gallery_images=str(photo_folder(tmp_path)))
    with pytest.raises(FileNotFoundError, match="detector_path='nowhere'"):
        make(model_dir, detector_path="nowhere")
    with pytest.raises(ValueError, match="give one of .*gallery_images="):
        make(model_dir, detector_path=DETECTOR, gallery_images=PHOTO_DIR, gallery=captions_gallery(detector))


def test_a_bad_photo_is_named_before_any_photo_is_detected(with_detector, tmp_path):
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match=f"query 1: {missing}: no such file"):
        with_detector([QUERY_PHOTO, missing])
    with pytest.raises(ValueError, match="query 0: give 'image' or \\['features'\\]"):
        with_detector({"image": QUERY_PHOTO, "features": np.zeros((1, 2054), np.float32)})


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "vinvl.commands.cli", "retrieve", *args], capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_vinvl_retrieve_image(model_dir, detector, tmp_path):
    corpus = str(tmp_path / "corpus")
    write_synthetic_corpus(corpus, {"test": 4}, seed=3)
    done = run_cli("--model_dir", model_dir, "--data_dir", corpus, "--image", QUERY_PHOTO, "--detector", DETECTOR,
                   "--top_k", str(TOP_K), "--first_stage", "exhaustive")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout[done.stdout.index("[\n"):])
    assert printed[0].pop("photo") == QUERY_PHOTO  # the answer names its photo
    assert_same_up_to_rounding(printed, make(model_dir, gallery_dir=corpus)(direct(detector, QUERY_PHOTO)))


def test_vinvl_retrieve_answers_in_the_command_lines_order_and_notes_a_cut_caption(model_dir, detector, tmp_path, capsys):
    corpus = str(tmp_path / "corpus")
    write_synthetic_corpus(corpus, {"test": 4}, seed=3)
    long_caption = " ".join(["a dog on a red couch next to a window"] * 10)  # far past the tiny model's 38 tokens
    answers = retrieve_main([
        "--model_dir", model_dir, "--data_dir", corpus, "--detector", DETECTOR, "--top_k", "2",
        "--image", QUERY_PHOTO, "--text", long_caption, "--image_id", "500001", "--text", "a cat",
    ])
    assert [a.get("photo") for a in answers] == [QUERY_PHOTO, None, None, None]
    assert [a.get("caption") for a in answers[1:]] == [long_caption, None, "a cat"]
    assert answers[2]["image_id"] == "500001"
    assert answers[1]["truncated"]["kept"] == 38 and answers[1]["truncated"]["tokens"] > 38
    assert "truncated" not in answers[3]
    notes = [line for line in capsys.readouterr().err.splitlines() if "vinvl retrieve: note:" in line]
    assert notes == [f"vinvl retrieve: note: query 1's caption has {answers[1]['truncated']['tokens']} tokens; the model "
                     "reads the first 38 (its text length), so later words do not count"]


def assert_same_up_to_rounding(printed, expected):
    """The same answers, scores up to float32 rounding: the CLI detected the photo in another
    process, whose kernels may round differently from this one's after other detector runs here."""
    assert len(printed) == len(expected)
    for got, want in zip(printed, expected):
        assert got.keys() == want.keys() and got["image_id"] == want["image_id"]
        assert [(c["caption"], c["image_id"]) for c in got["captions"]] == [(c["caption"], c["image_id"]) for c in want["captions"]]
        for key in ("score", "margin"):
            np.testing.assert_allclose([c[key] for c in got["captions"]], [c[key] for c in want["captions"]], rtol=1e-4, atol=1e-6)


def user_error(capsys, *argv):
    """The one error line ``vinvl retrieve`` prints for ``argv`` (status 2, as every user error)."""
    assert cli_main(["retrieve", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("vinvl retrieve: error: ") == 1, err
    return err.strip().splitlines()[-1]


def test_vinvl_retrieve_names_what_a_photo_query_is_missing(model_dir, capsys, tmp_path):
    corpus = str(tmp_path / "corpus")
    write_synthetic_corpus(corpus, {"test": 2}, seed=3)
    model = ["--model_dir", model_dir]
    assert "--image needs --detector DIR" in user_error(capsys, *model, "--data_dir", corpus, "--image", QUERY_PHOTO)
    assert "--gallery_images needs --detector DIR" in user_error(capsys, *model, "--gallery_images", PHOTO_DIR, "--text", "a dog")
    assert "a --gallery_images gallery has none: use --data_dir" in user_error(
        capsys, *model, "--gallery_images", PHOTO_DIR, "--image", QUERY_PHOTO, "--detector", DETECTOR)
    missing = str(tmp_path / "nowhere.jpg")
    assert f"query 0: {missing}: no such file" in user_error(
        capsys, *model, "--data_dir", corpus, "--image", missing, "--detector", DETECTOR)
    assert "--detector nowhere: no such file or directory, nor the name of a shipped config" in user_error(
        capsys, *model, "--data_dir", corpus, "--image", QUERY_PHOTO, "--detector", "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"gallery_images={str(empty)!r}" in user_error(
        capsys, *model, "--gallery_images", str(empty), "--text", "a dog", "--detector", DETECTOR,
        "--gallery_cache_dir", str(tmp_path / "cache"))


@pytest.mark.slow
def test_vinvl_retrieve_text_over_a_photo_folder(model_dir, detector, tmp_path, capsys):
    folder = photo_folder(tmp_path)
    caption = text_queries()[0]
    retrieve_main(["--model_dir", model_dir, "--gallery_images", str(folder), "--detector", DETECTOR, "--text", caption,
                   "--gallery_cache_dir", str(tmp_path / "cache"), "--top_k", str(TOP_K), "--first_stage", "exhaustive"])
    out = capsys.readouterr().out
    printed = json.loads(out[out.index("[\n"):])
    gallery = captions_gallery(detector)
    gallery.pop("captions")
    assert printed == make(model_dir, gallery=gallery)(caption)


# ----- detector_precision ---------------------------------------------------------------------------


def photo_margins(answers):
    return np.array([c["margin"] for c in answers[0]["captions"]])


@pytest.fixture(scope="module")
def with_bf16_detector(model_dir, detector):
    return make(model_dir, detector_path=DETECTOR, detector_precision="bf16", gallery=captions_gallery(detector))


@needs_bf16
def test_detector_precision_bf16_detects_photo_queries_on_paddle_inference(with_bf16_detector, with_detector):
    """The Taskflow's photo queries go through the bf16 detector (Paddle Inference): its regions are
    near the fp32 detector's and not equal to them, and the photo is answered from them."""
    answers = with_bf16_detector(QUERY_PHOTO)
    photos = with_bf16_detector.task_instance.retriever.photos
    assert isinstance(photos.detector, InferenceDetector) and photos.detector.precision == "bf16"
    assert len(answers[0]["captions"]) == TOP_K
    bf16_query = with_bf16_detector.task_instance.retriever.parse(QUERY_PHOTO)[0]
    fp32_query = with_detector.task_instance.retriever.parse(QUERY_PHOTO)[0]
    assert_bf16_regions(bf16_query.features, fp32_query.features)
    assert answers == with_bf16_detector(bf16_query)  # answered from exactly those regions
    assert not np.allclose(photo_margins(answers), photo_margins(with_detector(QUERY_PHOTO)), rtol=1e-6, atol=0)


@needs_bf16
def test_vinvl_retrieve_detector_precision_answers_as_the_bf16_taskflow(model_dir, detector, tmp_path, capsys):
    corpus = str(tmp_path / "corpus")
    write_synthetic_corpus(corpus, {"test": 4}, seed=3)
    flags = ["--model_dir", model_dir, "--data_dir", corpus, "--image", QUERY_PHOTO, "--detector", DETECTOR,
             "--top_k", str(TOP_K), "--first_stage", "exhaustive"]
    printed = retrieve_main([*flags, "--detector_precision", "bf16"])
    capsys.readouterr()
    assert printed[0].pop("photo") == QUERY_PHOTO
    bf16 = make(model_dir, gallery_dir=corpus, detector_path=DETECTOR, detector_precision="bf16")(QUERY_PHOTO)
    assert_same_up_to_rounding(printed, bf16)
    fp32 = retrieve_main(flags)
    assert not np.allclose(photo_margins(printed), photo_margins(fp32), rtol=1e-6, atol=0)


def test_a_detector_precision_the_cpu_lacks_is_refused_before_the_model_loads(model_dir, monkeypatch):
    refuse_missing_instructions(monkeypatch)
    monkeypatch.setattr("vinvl.apps.taskflow.load_retrieval_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(UsageError, match="precision 'bf16' needs a CPU with one of the instructions amx_bf16, avx512_bf16"):
        make(model_dir, detector_path=DETECTOR, detector_precision="bf16")
    with pytest.raises(UsageError, match="precision 'int8' needs a CPU with one of the instructions"):
        make(model_dir, detector_path=DETECTOR, detector_precision="int8")
    with pytest.raises(UsageError, match="precision must be one of fp32, bf16, int8, got 'fp16'"):
        make(model_dir, detector_path=DETECTOR, detector_precision="fp16")


@needs_int8
def test_detector_precision_int8_needs_a_calibration_and_then_detects_photo_queries_on_onnx_runtime(
    model_dir, with_detector, tmp_path, monkeypatch, detector
):
    fp32_detector, detector = detector, str(tmp_path / "detector")
    shutil.copytree(DETECTOR, detector)
    with monkeypatch.context() as patched:
        patched.setattr("vinvl.apps.taskflow.load_retrieval_model", lambda *a, **k: pytest.fail("the model was loaded"))
        with pytest.raises(UsageError, match="has no int8 calibration .*vinvl calibrate-detector"):
            make(model_dir, detector_path=detector, detector_precision="int8")
    calibrate_detector(detector, [os.path.join(PHOTO_DIR, name) for name in GALLERY_PHOTOS[:2]], "two photos", progress=False)
    with_int8 = make(model_dir, detector_path=detector, detector_precision="int8", gallery=captions_gallery(fp32_detector))
    answers = with_int8(QUERY_PHOTO)
    photos = with_int8.task_instance.retriever.photos
    assert isinstance(photos.detector, InferenceDetector) and photos.detector.precision == "int8"
    assert len(answers[0]["captions"]) == TOP_K
    int8_rows = with_int8.task_instance.retriever.parse(QUERY_PHOTO)[0].features
    fp32_rows = with_detector.task_instance.retriever.parse(QUERY_PHOTO)[0].features
    assert int8_rows.shape != fp32_rows.shape or not np.allclose(int8_rows, fp32_rows, rtol=1e-4, atol=0)  # int8's own regions
    assert answers == with_int8(with_int8.task_instance.retriever.parse(QUERY_PHOTO)[0])  # answered from exactly those


def test_vinvl_retrieve_refuses_a_detector_precision_in_one_line_before_the_model_loads(model_dir, capsys, tmp_path, monkeypatch):
    corpus = str(tmp_path / "corpus")
    write_synthetic_corpus(corpus, {"test": 2}, seed=3)
    flags = ["--model_dir", model_dir, "--data_dir", corpus, "--image", QUERY_PHOTO, "--detector", DETECTOR]
    refuse_missing_instructions(monkeypatch)
    monkeypatch.setattr("vinvl.apps.taskflow.load_retrieval_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert "--detector_precision bf16: precision 'bf16' needs a CPU with one of the instructions amx_bf16, avx512_bf16" in user_error(
        capsys, *flags, "--detector_precision", "bf16")
    assert "--detector_precision: invalid choice: 'fp16' (choose from 'fp32', 'bf16', 'int8')" in user_error(
        capsys, *flags, "--detector_precision", "fp16")
    assert "--detector_precision int8: precision 'int8' needs a CPU with one of the instructions" in user_error(
        capsys, *flags, "--detector_precision", "int8")
    assert "--detector_precision bf16 is the precision of --detector, and none is given" in user_error(
        capsys, "--model_dir", model_dir, "--data_dir", corpus, "--text", "a dog", "--detector_precision", "bf16")
