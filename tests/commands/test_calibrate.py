"""``vinvl calibrate``: static int8 calibrated from a data directory or a gallery index, its manifest
printed and stored beside the model; the commands then run it at ``--precision int8`` and refuse
it, in one line with status 2 naming its manifest, once the weights have changed; bad input is
refused before anything is written."""
import json
import os
import shutil

import pytest

from vinvl.data import write_synthetic_corpus
from vinvl.index import GallerySource, build_index
from vinvl.oscar import calibration as stored
from vinvl.oscar.model_dir import weights_checksum

from support.commands import assert_user_error, run, vinvl_cmd, vinvl_here
from support.precision import save_wide_model, skip_unless_supported
from support.tinymodel import derive

NUM_IMAGES = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model_dir, data_dir, index)."""
    skip_unless_supported("int8")
    root = tmp_path_factory.mktemp("calibrate")
    corpus = str(root / "corpus")
    write_synthetic_corpus(corpus, {"train": 0, "minival": 0, "val": 0, "test": NUM_IMAGES}, seed=6)
    model_dir = save_wide_model(root / "model")
    index = str(root / "index")
    build_index(index, model_dir, [GallerySource(corpus, "test")], progress=False)
    return model_dir, corpus, index


def test_calibrate_from_a_data_directory_then_stale_weights_refused(tmp_path, setup):
    """In a new interpreter, as a user runs it: the manifest on stdout and beside the model; after the
    weights change, ``vinvl retrieve --precision int8`` exits 2 naming the manifest."""
    model_dir, corpus, _ = setup
    own = derive(model_dir, str(tmp_path / "model"))
    done = run(vinvl_cmd("calibrate", "--model_dir", own, "--gallery_dir", corpus, "--pairs", "64"), tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout)
    assert printed == stored.read_manifest(own)
    assert printed["weights_sha256"] == weights_checksum(own) and printed["pairs"] == 64
    assert os.path.isfile(os.path.join(own, stored.CALIBRATION_DIR, stored.GRAPH_FILE))
    derive(own, own, logit_scale=3.0)
    done = run(vinvl_cmd("retrieve", "--model_dir", own, "--data_dir", corpus, "--text", "a dog", "--precision", "int8"),
               tmp_path)
    assert_user_error(done, "vinvl retrieve", os.path.join(stored.CALIBRATION_DIR, stored.MANIFEST_FILE), "vinvl calibrate")


def test_calibrate_from_an_index(capfd, tmp_path, setup):
    model_dir, _, index = setup
    own = derive(model_dir, str(tmp_path / "model"))
    done = vinvl_here(capfd, tmp_path, "calibrate", "--model_dir", own, "--index", index, "--pairs", "32")
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = stored.read_manifest(own)
    assert manifest["images"] == NUM_IMAGES and manifest["gallery"].endswith("(index)")
    assert manifest["weights_sha256"] == weights_checksum(own)


def test_eval_refuses_a_stale_calibration(capfd, tmp_path, setup):
    model_dir, corpus, _ = setup
    own = derive(model_dir, str(tmp_path / "model"))
    assert vinvl_here(capfd, tmp_path, "calibrate", "--model_dir", own, "--gallery_dir", corpus, "--pairs", "32").returncode == 0
    derive(own, own, logit_scale=2.0)
    done = vinvl_here(capfd, tmp_path, "eval", "--model_dir", own, "--data_dir", corpus, "--output_dir",
                      str(tmp_path / "out"), "--no_progress", "--precision", "int8")
    assert_user_error(done, "vinvl eval", stored.MANIFEST_FILE, "other weights")
    assert not os.path.exists(tmp_path / "out" / "metrics.json")


@pytest.mark.parametrize("flags,fragment", [
    (["--model_dir", "CONFIG_ONLY"], "no saved weights"),
    (["--pairs", "0"], "--pairs must be positive"),
    (["--model_dir", "missing-model"], "--model_dir missing-model"),
    (["--gallery_dir", "missing-gallery"], "--gallery_dir missing-gallery"),
    (["--split", "val", "--index", "INDEX"], "--split"),
])
def test_bad_input_refused_before_anything_is_written(capfd, tmp_path, setup, flags, fragment):
    model_dir, corpus, index = setup
    own = derive(model_dir, str(tmp_path / "model"))
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(os.path.join(own, "config.json"), config_only)
    given = {"--model_dir": own, "--gallery_dir": corpus}
    for flag, value in zip(flags[::2], flags[1::2]):
        given.pop("--gallery_dir" if flag == "--index" else "", None)
        given[flag] = {"INDEX": index, "CONFIG_ONLY": str(config_only)}.get(value, value)
    args = [token for pair in given.items() for token in pair]
    done = vinvl_here(capfd, tmp_path, "calibrate", *args)
    assert_user_error(done, "vinvl calibrate", fragment)
    for directory in (own, config_only):
        assert not [name for name in os.listdir(directory) if "calibration" in name]
