"""`vinvl extract` with the real tiny detector on real COCO photos: the loading script reads back
exactly what the detector returned; a run killed with SIGKILL and resumed, and two ranks under
paddle.distributed.launch, give byte for byte the files of one uninterrupted process; bad files
are skipped and reported (or fail the run with --fail_on_bad) without losing a good neighbour."""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from vinvl.data import load_coco_ir, load_corpus
from vinvl.data.tsv import build_lineidx
from vinvl.commands.evaluate import main as eval_main
from vinvl.commands.train import main as train_main
from vinvl.vision.detector import VinVLDetector
from vinvl.vision.extract import (
    BAD_FILE,
    HW_FILE,
    PREDICTIONS_FILE,
    SUMMARY_FILE,
    WORK_DIR,
    ExtractError,
    InputNotFoundError,
    extract,
    list_images,
)
from vinvl import precision as precision_module
from vinvl.commands.extract import main
from vinvl.precision import cpu_flags
from vinvl.vision.calibration import calibrate_detector
from vinvl.vision.image import BadImageError, load_image

from support.commands import assert_user_error, launch_two_ranks, vinvl_here
from support.images import bad_files, jpeg_bytes, odd_good_files
from support.paths import CAPTIONS_FILE as CAPTIONS, PHOTO_DIR, TINY_DETECTOR as DETECTOR_DIR, TINY_MODEL

# Three of the shipped photos keep these tests small (the folder holds ten, for the demo).
PHOTOS = ["COCO_val2014_000000045057.jpg", "COCO_val2014_000000317441.jpg", "COCO_val2014_000000415746.jpg"]
TRUNCATED = "COCO_val2014_000000100000.jpg"  # sorts second: a bad file between good ones


def _env():
    # vinvl set OMP_NUM_THREADS in this process when importing; the subprocesses inherit the same
    # thread count, so their float results are bitwise those of this process.
    return {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}


def _cli(*args, **kwargs):
    command = [sys.executable, "-m", "vinvl.commands.cli", "extract", *args, "--detector", DETECTOR_DIR, "--no_progress"]
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300, **kwargs)


def _files(out_dir):
    """Every file the extraction leaves in out_dir (its lock file aside), by name -> bytes."""
    names = sorted(n for n in os.listdir(out_dir) if n != ".extract.lock")
    assert WORK_DIR not in names, "the work folder was not removed"
    return {n: open(os.path.join(out_dir, n), "rb").read() for n in names}


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """The three COCO photos and, sorted between them, a truncated copy of one."""
    folder = tmp_path_factory.mktemp("photos") / "photos"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copy(os.path.join(PHOTO_DIR, name), folder / name)
    data = open(os.path.join(PHOTO_DIR, PHOTOS[0]), "rb").read()
    (folder / TRUNCATED).write_bytes(data[: len(data) // 3])
    return str(folder)


@pytest.fixture(scope="module")
def reference(photo_folder, tmp_path_factory):
    """One uninterrupted single-process `vinvl extract` run: its OUT folder."""
    out = str(tmp_path_factory.mktemp("reference") / "out")
    done = _cli(photo_folder, out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "extracted 3 of 4 images" in done.stdout
    return out


@pytest.fixture(scope="module")
def detector():
    return VinVLDetector.from_pretrained(DETECTOR_DIR)


def close(actual: np.ndarray, desired: np.ndarray) -> None:
    """Equal up to float32 rounding: the extraction ran in another process, whose kernels may round
    differently from this one's (seen after other detector tests ran here: 3.5e-5 on features of ~50)."""
    np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-5)


def test_the_loading_script_reads_what_the_detector_returned(reference, photo_folder, detector, tmp_path):
    ids = [os.path.splitext(n)[0] for n in PHOTOS]
    expected = {i: detector.detect([load_image(os.path.join(photo_folder, n))])[0] for i, n in zip(ids, PHOTOS)}
    corpus = load_corpus(reference, "test", cache_dir=str(tmp_path / "cache"))
    assert corpus.image_ids == ids
    for i, image_id in enumerate(ids):
        detections = expected[image_id]
        assert len(detections.boxes) > 0
        assert corpus.tags[i] == detections.class_names
        close(corpus.features(i), detections.region_features())
    inline = load_coco_ir(reference, "test", inline_features=True, cache_dir=str(tmp_path / "cache")).with_format("numpy")
    np.testing.assert_array_equal(inline[1]["features"], corpus.features(1))
    # The rest of each object: scores, boxes and attributes exactly as returned.
    with open(os.path.join(reference, PREDICTIONS_FILE), encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    assert [r[0] for r in rows] == ids
    for image_id, text in rows:
        objects, detections = json.loads(text)["objects"], expected[image_id]
        close(np.array([o["rect"] for o in objects], np.float32), detections.boxes)
        close(np.array([o["conf"] for o in objects], np.float32), detections.scores)
        assert [o["attributes"] for o in objects] == detections.attr_names
        for o, scores in zip(objects, detections.attr_scores):
            close(np.array(o["attr_scores"], np.float32), scores)
    with open(os.path.join(reference, HW_FILE), encoding="utf-8") as f:
        sizes = {k: json.loads(v)[0] for k, v in (line.rstrip("\n").split("\t") for line in f)}
    for image_id, name in zip(ids, PHOTOS):
        width, height = Image.open(os.path.join(photo_folder, name)).size
        assert sizes[image_id] == {"height": height, "width": width}
    for tsv in (PREDICTIONS_FILE, HW_FILE):  # the line indexes written beside them are the loader's own
        written = os.path.join(reference, os.path.splitext(tsv)[0] + ".lineidx")
        built = build_lineidx(os.path.join(reference, tsv), str(tmp_path / f"{tsv}.lineidx"))
        assert open(written, "rb").read() == open(built, "rb").read()
    with open(os.path.join(reference, BAD_FILE), encoding="utf-8") as f:
        (bad,) = [json.loads(line) for line in f]
    assert bad["image_id"] == os.path.splitext(TRUNCATED)[0] and "truncated" in bad["reason"]


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_files(reference, photo_folder, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "vinvl.commands.cli", "extract", photo_folder, str(out), "--detector", DETECTOR_DIR, "--no_progress"]
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / WORK_DIR / "shard-0.journal"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / SUMMARY_FILE).exists() and not (out / PREDICTIONS_FILE).exists()
    committed = journal.read_bytes().count(b"\n")
    assert 1 <= committed < 4
    # What a kill in the middle of a write leaves: half a row in the shard, half a journal line.
    with open(out / WORK_DIR / "shard-0.tsv", "ab") as f:
        f.write(b"%d\tok\tCOCO_val2014_000000999999\t480\t640\t{\"objects\": [{\"rect\": [1.0, " % committed)
    with open(journal, "ab") as f:
        f.write(b"%d\t12" % committed)

    resumed = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming: {committed} of 4 images already done" in resumed.stdout
    assert _files(str(out)) == _files(reference)


@pytest.mark.slow
def test_two_ranks_under_the_launcher_equal_one_process(reference, photo_folder, tmp_path):
    launcher = tmp_path / "vinvl_cli.py"
    launcher.write_text("import sys\nfrom vinvl.commands.cli import main\nsys.exit(main())\n")
    out, logs = tmp_path / "out", tmp_path / "logs"
    command = [launcher, "extract", photo_folder, out, "--detector", DETECTOR_DIR]
    worker_logs = launch_two_ranks(command, tmp_path, logs, _env(), timeout=300)
    for rank, text in enumerate(worker_logs):  # each rank did its half: images rank, rank + 2
        assert f"extract (rank {rank}/2): 100%" in text and "2/2" in text, text[-2000:]
    assert _files(str(out)) == _files(reference)


def test_bad_files_are_skipped_and_reported_and_odd_ones_converted(detector, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in PHOTOS[:2]:
        shutil.copy(os.path.join(PHOTO_DIR, name), folder / name)
    for name, (data, _) in {**bad_files(), **odd_good_files()}.items():
        (folder / name).write_bytes(data)
    out = tmp_path / "out"
    summary = extract(str(folder), str(out), DETECTOR_DIR, detector=detector, progress=False)

    good = sorted([os.path.splitext(n)[0] for n in PHOTOS[:2]] + [os.path.splitext(n)[0] for n in odd_good_files()])
    bad = sorted(os.path.splitext(n)[0] for n in bad_files())
    assert summary.num_extracted == len(good) and summary.num_listed == len(good) + len(bad)
    with open(out / PREDICTIONS_FILE, encoding="utf-8") as f:
        rows = {line.split("\t", 1)[0]: line for line in f}
    assert list(rows) == good  # in file-name order, every good file kept
    alone = tmp_path / "alone"  # the same photos without bad neighbours, extracted in this process too
    alone.mkdir()
    for name in PHOTOS[:2]:
        shutil.copy(os.path.join(PHOTO_DIR, name), alone / name)
    extract(str(alone), str(tmp_path / "alone_out"), DETECTOR_DIR, detector=detector, progress=False)
    with open(tmp_path / "alone_out" / PREDICTIONS_FILE, encoding="utf-8") as f:
        reference_rows = {line.split("\t", 1)[0]: line for line in f}
    for name in PHOTOS[:2]:  # the photos' rows are the same as in a run without bad neighbours
        assert rows[os.path.splitext(name)[0]] == reference_rows[os.path.splitext(name)[0]]
    with open(out / BAD_FILE, encoding="utf-8") as f:
        reported = [json.loads(line) for line in f]
    assert [r["image_id"] for r in reported] == bad
    for record in reported:
        name = os.path.basename(record["path"])
        assert record["path"] == str(folder / name) and bad_files()[name][1] in record["reason"]
    with open(out / HW_FILE, encoding="utf-8") as f:
        sizes = {k: json.loads(v)[0] for k, v in (line.rstrip("\n").split("\t") for line in f)}
    assert sizes["rotated"] == {"height": 80, "width": 30}  # stored 30x80, EXIF orientation 6: upright 80x30
    corpus = load_corpus(str(out), "test", cache_dir=str(tmp_path / "cache"))
    assert corpus.image_ids == good and all(corpus.features(i).shape[1] == 2054 for i in range(len(good)))


@pytest.mark.slow
def test_fail_on_bad_exits_non_zero_naming_the_file_before_detecting(photo_folder, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(photo_folder, folder)
    os.remove(folder / TRUNCATED)
    (folder / "notes.jpg").write_bytes(b"shopping list: milk, eggs\n")
    out = tmp_path / "out"
    done = _cli(str(folder), str(out), "--fail_on_bad")
    assert done.returncode != 0
    assert f"{folder / 'notes.jpg'}: not an image" in done.stderr
    assert not (out / PREDICTIONS_FILE).exists()
    assert not (out / WORK_DIR / "shard-0.tsv").exists()  # refused from the headers, before any detection


def test_fail_on_bad_stops_at_data_found_bad_while_decoding(photo_folder, detector, tmp_path):
    """A truncated file passes the header check; the run stops when it is decoded, naming it, with
    the rows before it committed and no final file written."""
    out = tmp_path / "out"
    with pytest.raises(BadImageError) as info:
        extract(photo_folder, str(out), DETECTOR_DIR, detector=detector, progress=False, fail_on_bad=True)
    assert info.value.source == os.path.join(photo_folder, TRUNCATED) and "truncated" in str(info.value)
    assert not (out / PREDICTIONS_FILE).exists()
    assert (out / WORK_DIR / "shard-0.journal").read_bytes().count(b"\n") == 1  # the image before it


def test_a_finished_extraction_is_not_redone_and_not_mixed_with_another(reference, photo_folder, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = _files(str(out))
    summary = main([photo_folder, str(out), "--detector", DETECTOR_DIR, "--no_progress"])
    assert (summary.num_listed, summary.num_extracted, summary.num_bad) == (4, 3, 1)
    assert _files(str(out)) == before
    with pytest.raises(BadImageError, match="truncated"):  # the finished run skipped a bad file
        main([photo_folder, str(out), "--detector", DETECTOR_DIR, "--fail_on_bad"])
    with pytest.raises(ExtractError, match="already holds an extraction of other images"):
        main([PHOTO_DIR, str(out), "--detector", DETECTOR_DIR])
    unfinished = tmp_path / "unfinished"
    (unfinished / WORK_DIR).mkdir(parents=True)
    (unfinished / WORK_DIR / "run.json").write_text(json.dumps({"images": "elsewhere", "num_listed": 7}))
    with pytest.raises(ExtractError, match="unfinished extraction of other images"):
        main([photo_folder, str(unfinished), "--detector", DETECTOR_DIR])


def test_image_ids_from_file_names(tmp_path):
    photo = jpeg_bytes(Image.new("RGB", (32, 32)))
    for path in ("b.jpg", "a.PNG", "sub/c.jpeg", "sub/deeper/d.jpg", ".hidden.jpg", "notes.txt", ".cache/e.jpg"):
        (tmp_path / "root" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "root" / path).write_bytes(photo)
    root = str(tmp_path / "root")
    assert [e.image_id for e in list_images(root)] == ["a", "b"]
    entries = list_images(root, recursive=True)
    assert [e.image_id for e in entries] == ["a", "b", "sub/c", "sub/deeper/d"]
    assert entries[2].path == os.path.join(root, "sub", "c.jpeg")

    (tmp_path / "root" / "sub" / "c.png").write_bytes(photo)  # same id as sub/c.jpeg
    with pytest.raises(ExtractError, match=r"c\.jpeg and .*c\.png would both get image id 'sub/c'"):
        list_images(root, recursive=True)

    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "tab\there.jpg").write_bytes(photo)
    (tmp_path / "odd" / "fine.jpg").write_bytes(photo)
    odd = list_images(str(tmp_path / "odd"))
    assert [e.problem is None for e in odd] == [True, False] and "tab" in odd[1].problem

    listing = tmp_path / "list.txt"
    listing.write_text("root/b.jpg\n\nroot/sub/deeper/d.jpg\t000000123\n/abs/elsewhere/x.jpg\n")
    entries = list_images(str(listing))
    assert [(e.image_id, e.path) for e in entries] == [
        ("b", str(tmp_path / "root" / "b.jpg")),
        ("000000123", str(tmp_path / "root" / "sub" / "deeper" / "d.jpg")),
        ("x", "/abs/elsewhere/x.jpg"),
    ]
    listing.write_text("root/b.jpg\nother/b.png\n")
    with pytest.raises(ExtractError, match="would both get image id 'b'"):
        list_images(str(listing))
    listing.write_text("root/b.jpg\tb\textra\n")
    with pytest.raises(ExtractError, match="line 1"):
        list_images(str(listing))
    with pytest.raises(InputNotFoundError, match="no such folder or list file"):
        list_images(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExtractError, match="no .jpg/.jpeg/.png files"):
        list_images(str(tmp_path / "empty"))


def _captions_by_image_id():
    """The COCO captions of coco_minitest by image id (the photo's file name without extension)."""
    captions = {}
    with open(CAPTIONS, encoding="utf-8") as f:
        for block in f.read().split("\n\n"):
            lines = [line.strip() for line in block.strip().splitlines() if line.strip()]
            if lines:
                captions[os.path.splitext(os.path.basename(lines[0]))[0]] = lines[1:]
    return captions


def test_train_and_eval_run_on_the_extracted_folder(reference, tmp_path):
    """The extracted folder plus caption files written beside it is a corpus `vinvl train` and
    `vinvl eval` take as it is."""
    data = tmp_path / "data"
    shutil.copytree(reference, data)
    ids = [os.path.splitext(n)[0] for n in PHOTOS]
    captions = {i: c for i, c in _captions_by_image_id().items() if i in ids}
    assert sorted(captions) == ids
    for split in ("train", "test"):
        (data / f"{split}_captions.json").write_text(json.dumps(captions))
    model = str(tmp_path / "model")
    train = train_main([
        "--model_name_or_path", TINY_MODEL, "--data_dir", str(data), "--output_dir", model, "--do_train", "true",
        "--per_device_train_batch_size", "4", "--max_steps", "3", "--logging_steps", "1", "--save_strategy", "no",
        "--evaluation_strategy", "no", "--disable_tqdm", "true", "--report_to", "none", "--seed", "1",
    ])
    assert np.isfinite(train["train_loss"]) and os.path.isfile(os.path.join(model, "model.safetensors"))
    report = eval_main(["--model_dir", model, "--data_dir", str(data), "--split", "test", "--fold_size", "3",
                        "--no_progress", "--output_dir", str(tmp_path / "eval")])
    assert report["num_images"] == 3 and report["num_captions"] == sum(len(c) for c in captions.values())
    metrics = report["results"]["1k_5fold"]
    assert all(0 <= metrics[k] <= 100 for k in ("i2t_r1", "t2i_r1")) and metrics["i2t_r10"] == 100


def test_a_second_process_on_the_same_shard_is_refused(photo_folder, detector, tmp_path):
    """Two runs writing one OUT as the same rank would interleave rows: the second is refused."""
    out = tmp_path / "out"
    (out / WORK_DIR).mkdir(parents=True)
    with open(out / WORK_DIR / "shard-0.journal", "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running extraction holds
        with pytest.raises(ExtractError, match="another process is writing it"):
            extract(photo_folder, str(out), DETECTOR_DIR, detector=detector, progress=False)
    assert not (out / WORK_DIR / "shard-0.tsv").exists()


@pytest.mark.skipif(not {"avx512_bf16", "amx_bf16"} & cpu_flags(), reason="this CPU has no bf16 instructions")
def test_bf16_extraction_is_recorded_apart_from_fp32_and_not_mixed_with_it(reference, photo_folder, tmp_path):
    out = str(tmp_path / "bf16")
    summary = main([photo_folder, out, "--detector", DETECTOR_DIR, "--precision", "bf16", "--no_progress"])
    assert (summary.num_extracted, summary.num_bad) == (3, 1)
    assert json.load(open(os.path.join(out, SUMMARY_FILE)))["precision"] == "bf16"
    fp32 = load_corpus(reference, "test", cache_dir=str(tmp_path / "cache32"))
    bf16 = load_corpus(out, "test", cache_dir=str(tmp_path / "cache16"))
    assert bf16.image_ids == fp32.image_ids
    differs = []
    for i in range(len(fp32.image_ids)):  # bf16's own run, not fp32's (its fidelity: tests/vision/test_inference.py)
        a, b = fp32.features(i), bf16.features(i)
        if a.shape == b.shape:
            differs.append(np.abs(a - b).max() > 1e-3 * np.abs(a).max())
    assert differs and all(differs)
    with pytest.raises(ExtractError, match="precision bf16"):  # OUT holds bf16 features: fp32 may not resume or reuse it
        main([photo_folder, out, "--detector", DETECTOR_DIR, "--no_progress"])


@pytest.mark.skipif(not {"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags(), reason="this CPU has no int8 instructions")
def test_int8_extraction_runs_the_calibration_and_a_new_calibration_is_another_detector(reference, photo_folder, tmp_path):
    detector = str(tmp_path / "detector")
    shutil.copytree(DETECTOR_DIR, detector)
    photos = [os.path.join(PHOTO_DIR, name) for name in PHOTOS]
    calibrate_detector(detector, photos[:2], "two photos", progress=False)
    out = str(tmp_path / "int8")
    args = [photo_folder, out, "--detector", detector, "--precision", "int8", "--no_progress"]
    summary = main(args)
    assert (summary.num_extracted, summary.num_bad) == (3, 1)
    fp32 = load_corpus(reference, "test", cache_dir=str(tmp_path / "cache32"))
    int8 = load_corpus(out, "test", cache_dir=str(tmp_path / "cache8"))
    assert int8.image_ids == fp32.image_ids
    differs = [  # int8's own run, not fp32's (its fidelity: tests/vision/test_calibration.py)
        np.abs(a - b).max() > 1e-3 * np.abs(a).max()
        for a, b in ((fp32.features(i), int8.features(i)) for i in range(len(fp32.image_ids)))
        if a.shape == b.shape
    ]
    assert differs and all(differs)
    assert main(args).already_done  # the same calibration: the same extraction
    calibrate_detector(detector, photos[1:], "two other photos", progress=False)
    with pytest.raises(ExtractError, match="another"):  # a new calibration computes other features
        main(args)


def test_an_extraction_recorded_before_precision_existed_counts_as_fp32(reference, photo_folder, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    recorded = json.load(open(out / SUMMARY_FILE))
    del recorded["precision"]
    (out / SUMMARY_FILE).write_text(json.dumps(recorded))
    before = _files(str(out))
    summary = main([photo_folder, str(out), "--detector", DETECTOR_DIR, "--no_progress"])
    assert summary.already_done and _files(str(out)) == before


def test_a_precision_the_cpu_lacks_is_refused_before_out_is_made(photo_folder, tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    done = vinvl_here(capfd, tmp_path, "extract", photo_folder, "out", "--detector", DETECTOR_DIR, "--precision", "bf16")
    assert_user_error(done, "vinvl extract", "precision 'bf16' needs a CPU with one of the instructions amx_bf16, avx512_bf16")
    assert not (tmp_path / "out").exists()
