"""The coco_ir loading script, load_coco_ir and load_corpus on synthetic corpora in every on-disk
variant, and on broken inputs.

"What was written" is regenerated independently from the seed with SceneGenerator /
generate_split (deterministic), or read from the raw files with json / base64 / numpy; loaded
ids, caption order, tags and feature bytes must equal it exactly. Every load uses a cache_dir
under tmp_path.
"""
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

import vinvl
from vinvl.data import COCO_IR_SCRIPT, DataError, FEATURE_DIM, load_coco_ir, load_corpus, write_synthetic_corpus
from vinvl.data.formats import box_geometry
from vinvl.data.layout import split_feature_dir
from vinvl.data.synthetic import SceneGenerator, generate_split

SEED = 7
REPO = os.path.dirname(os.path.dirname(os.path.abspath(vinvl.__file__)))


def truth(split, count, seed=SEED, string_ids=False):
    """The images the writer wrote for ``split``, regenerated from the seed."""
    return list(generate_split(SceneGenerator(seed=seed), split, count, seed, string_ids))


def write(tmp_path, counts=None, name="corpus", **kwargs):
    counts = counts or {"train": 0, "minival": 0, "val": 0, "test": 6}
    return write_synthetic_corpus(str(tmp_path / name), counts, seed=SEED, **kwargs)


def assert_corpus_equals(corpus, images, with_tags=True):
    assert corpus.image_ids == [im.image_id for im in images]
    assert corpus.captions == [im.captions for im in images]
    assert corpus.tags == ([im.tags for im in images] if with_tags else [[] for _ in images])
    for i, image in enumerate(images):
        features = corpus.features(i)
        assert features.dtype == np.float32 and features.shape == (len(image.tags), FEATURE_DIM)
        assert features.tobytes() == image.features.tobytes(), f"image {image.image_id}"


def files_state(folder):
    """Every file under ``folder`` with its size, mtime and content hash: to see nothing changed."""
    state = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                state[os.path.relpath(path, folder)] = (os.path.getsize(path), os.stat(path).st_mtime_ns, hash(f.read()))
    return state


def assert_cache_clean(cache):
    """No finished dataset and no half-written one in a datasets cache dir."""
    for root, dirs, names in os.walk(cache):
        assert not [d for d in dirs if d.endswith(".incomplete")], f"leftover incomplete dir in {root}"
        assert "dataset_info.json" not in names, f"a finished dataset in {root}"
        assert not [n for n in names if n.endswith(".arrow")], f"arrow data in {root}"


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("captions_format", ["pt", "pd", "json"])
@pytest.mark.parametrize("captions_as_json", [True, False], ids=["json-strings", "lists"])
def test_round_trip_caption_formats(tmp_path, captions_format, captions_as_json):
    out = write(tmp_path, captions_format=captions_format, captions_as_json=captions_as_json)
    path = os.path.join(out, f"test_captions.{captions_format}")
    if captions_format == "json":
        with open(path) as f:
            raw = json.load(f)
    elif captions_format == "pd":
        import paddle

        raw = paddle.load(path)
    else:
        import torch

        raw = torch.load(path, weights_only=True)
    assert all(isinstance(v, str) == captions_as_json for v in raw.values())  # the variant really is on disk
    corpus = load_corpus(out, "test", cache_dir=str(tmp_path / "cache"))
    assert_corpus_equals(corpus, truth("test", 6))


@pytest.mark.parametrize("inline", [False, True], ids=["lazy", "inline"])
@pytest.mark.parametrize("write_lineidx", [True, False], ids=["lineidx", "no-lineidx"])
@pytest.mark.parametrize("predictions_format", ["dict", "list"])
def test_round_trip_feature_variants(tmp_path, predictions_format, write_lineidx, inline):
    out = write(tmp_path, predictions_format=predictions_format, write_lineidx=write_lineidx)
    folder = os.path.join(out, "features", "test")
    before = files_state(out)
    images = truth("test", 6)
    with open(os.path.join(folder, "predictions.tsv")) as f:
        first = json.loads(f.readline().split("\t")[1])
    assert isinstance(first, list if predictions_format == "list" else dict)

    dataset = load_coco_ir(out, "test", inline_features=inline, cache_dir=str(tmp_path / "cache"))
    assert dataset["image_id"] == [im.image_id for im in images]
    assert dataset["captions"] == [im.captions for im in images]
    assert dataset["tags"] == [im.tags for im in images]
    assert dataset["num_regions"] == [len(im.tags) for im in images]
    with open(os.path.join(folder, "imageid2idx.json")) as f:
        row_of = json.load(f)
    assert dataset["feature_row"] == [row_of[im.image_id] for im in images]
    if inline:
        rows = dataset.with_format("numpy")
        for i, image in enumerate(images):
            array = rows[i]["features"]
            assert array.dtype == np.float32 and array.tobytes() == image.features.tobytes()
    else:
        assert "features" not in dataset.column_names
        assert_corpus_equals(load_corpus(out, "test", cache_dir=str(tmp_path / "cache")), images)

    after = files_state(out)
    if write_lineidx:
        assert after == before  # the user's files, features.lineidx included, are untouched
    else:
        # The missing index was built once, beside features.tsv (a writable folder).
        assert set(after) - set(before) == {os.path.join("features", "test", "features.lineidx")}
        assert {k: v for k, v in after.items() if k in before} == before
        offsets, position = [], 0
        with open(os.path.join(folder, "features.tsv"), "rb") as f:
            for line in f:
                offsets.append(position)
                position += len(line)
        with open(os.path.join(folder, "features.lineidx")) as f:
            assert [int(x) for x in f] == offsets


def test_bare_list_predictions_keep_the_written_geometry(tmp_path):
    """With bare-list predictions the image size is taken as 600x800, but features.tsv geometry is
    read as written (from the real size), never recomputed."""
    out = write(tmp_path, predictions_format="list")
    corpus = load_corpus(out, "test", cache_dir=str(tmp_path / "cache"))
    image = truth("test", 6)[0]
    assert image.size != (600, 800)
    assert corpus.features(0)[:, -6:].tobytes() == box_geometry(image.rects, *image.size).tobytes()


def test_all_splits_and_the_minival_index(tmp_path):
    counts = {"train": 4, "minival": 5, "val": 3, "test": 5}
    out = write(tmp_path, counts)
    cache = str(tmp_path / "cache")
    for split, count in counts.items():
        corpus = load_corpus(out, split, cache_dir=cache)
        assert_corpus_equals(corpus, truth(split, count))
        assert (corpus.caption_index is None) == (split != "minival")
    import torch

    raw = torch.load(os.path.join(out, "minival_caption_indexs_top20.pt"), weights_only=True)
    expected = {str(k): [(str(i), int(c)) for i, c in json.loads(v)] for k, v in raw.items()}
    minival = load_corpus(out, "minival", cache_dir=cache)
    assert minival.caption_index == expected
    assert set(minival.caption_index) == set(minival.image_ids)
    assert load_corpus(out, "minival", use_caption_index=False, cache_dir=cache).caption_index is None


def test_add_od_labels_false_gives_no_tags(tmp_path):
    out = write(tmp_path)
    os.remove(os.path.join(out, "features", "test", "predictions.tsv"))  # not needed then
    corpus = load_corpus(out, "test", add_od_labels=False, cache_dir=str(tmp_path / "cache"))
    assert_corpus_equals(corpus, truth("test", 6), with_tags=False)


def test_features_dir_and_minival_reading_val_features(tmp_path):
    out = write(tmp_path, {"train": 0, "minival": 3, "val": 3, "test": 3})
    moved = str(tmp_path / "elsewhere")
    shutil.move(os.path.join(out, "features"), moved)
    corpus = load_corpus(out, "val", features_dir=moved, cache_dir=str(tmp_path / "cache"))
    assert_corpus_equals(corpus, truth("val", 3))
    # minival without a folder of its own reads val's (minival is a subset of COCO val).
    shutil.rmtree(os.path.join(moved, "minival"))
    assert split_feature_dir(out, "minival", moved) == os.path.join(moved, "val")
    # One folder for everything: features_dir itself holds features.tsv.
    single = os.path.join(moved, "val")
    assert split_feature_dir(out, "test", single) == single
    with pytest.raises(DataError, match="no features.tsv for split 'test'"):
        split_feature_dir(out, "test", str(tmp_path / "empty"))


def test_flat_folder_features_beside_the_captions(tmp_path):
    """The download unpacked into one folder: features.tsv, predictions.tsv, ... beside test_captions.pt."""
    out = write(tmp_path)
    for name in os.listdir(os.path.join(out, "features", "test")):
        shutil.move(os.path.join(out, "features", "test", name), out)
    shutil.rmtree(os.path.join(out, "features"))
    assert split_feature_dir(out, "test") == out
    corpus = load_corpus(out, "test", cache_dir=str(tmp_path / "cache"))
    assert_corpus_equals(corpus, truth("test", 6))
    # With features_dir given, only features_dir is searched, and the error names every place looked in.
    empty = str(tmp_path / "empty")
    with pytest.raises(DataError, match=re.escape(f"looked in {empty}/test, {empty}")):
        split_feature_dir(out, "test", empty)
    os.remove(os.path.join(out, "features.tsv"))
    features_root = os.path.join(out, "features")
    with pytest.raises(DataError, match=re.escape(f"looked in {features_root}/test, {features_root}, {out}")):
        split_feature_dir(out, "test")


@pytest.mark.parametrize("key_file", ["test_img_keys_1k.tsv", "test_img_keys.tsv", "custom"])
def test_eval_img_keys_file_selects_and_orders(tmp_path, key_file):
    out = write(tmp_path, {"train": 0, "minival": 0, "val": 0, "test": 10})
    images = truth("test", 10)
    if key_file == "custom":  # an absolute path outside data_dir, in an order of its own
        wanted = [images[i] for i in (7, 2, 9, 0)]
        key_file = str(tmp_path / "my_keys.tsv")
        with open(key_file, "w") as f:
            f.writelines(f"{im.image_id}\n" for im in wanted)
    else:
        wanted = images[:2] if key_file.endswith("1k.tsv") else images  # 1K-style: the first fifth
    corpus = load_corpus(out, "test", eval_img_keys_file=key_file, cache_dir=str(tmp_path / "cache"))
    assert_corpus_equals(corpus, wanted)


# ---------------------------------------------------------------- the detector layout


def detector_reference(folder):
    """image key -> [N, 2054] from the raw detector files: base64 appearance + geometry of rect/hw."""
    with open(os.path.join(folder, "images.hw.tsv")) as f:
        sizes = {k: json.loads(v)[0] for k, v in (line.rstrip("\n").split("\t") for line in f)}
    out = {}
    with open(os.path.join(folder, "predictions.tsv")) as f:
        for line in f:
            key, text = line.rstrip("\n").split("\t")
            objects = json.loads(text)["objects"]
            appearance = np.stack([np.frombuffer(base64.b64decode(o["feature"]), dtype=np.float32) for o in objects])
            rects = np.array([o["rect"] for o in objects], dtype=np.float32)
            geometry = box_geometry(rects, sizes[key]["height"], sizes[key]["width"])
            out[key] = np.concatenate([appearance, geometry], axis=1)
    return out


@pytest.mark.parametrize("inline", [False, True], ids=["lazy", "inline"])
def test_detector_layout_round_trip(tmp_path, inline):
    out = write(tmp_path, {"test": 5}, layout="detector")
    assert sorted(os.listdir(out)) == ["images.hw.tsv", "predictions.tsv", "test_captions.pt"]
    images = truth("test", 5, string_ids=True)
    assert images[0].image_id == "000000500000"
    reference = detector_reference(out)
    dataset = load_coco_ir(out, "test", inline_features=inline, cache_dir=str(tmp_path / "cache"))
    assert dataset["image_id"] == [im.image_id for im in images]
    assert dataset["num_regions"] == [len(im.tags) for im in images]
    if inline:
        for i, image in enumerate(images):
            assert dataset.with_format("numpy")[i]["features"].tobytes() == image.features.tobytes()
    corpus = load_corpus(out, "test", cache_dir=str(tmp_path / "cache"))
    assert corpus.layout == "detector"
    assert_corpus_equals(corpus, images)  # appearance and geometry bit for bit
    for i, image in enumerate(images):
        assert corpus.features(i).tobytes() == reference[image.image_id].tobytes()


def test_detector_layout_without_captions_is_a_gallery(tmp_path):
    out = write(tmp_path, {"test": 4}, layout="detector")
    os.remove(os.path.join(out, "test_captions.pt"))
    images = truth("test", 4, string_ids=True)
    corpus = load_corpus(out, "test", cache_dir=str(tmp_path / "cache"))
    assert corpus.image_ids == [im.image_id for im in images]
    assert corpus.captions == [[] for _ in images]
    assert corpus.tags == [im.tags for im in images]
    assert corpus.features(3).tobytes() == images[3].features.tobytes()


# ---------------------------------------------------------------- read-only data, the cache


def test_read_only_data_dir(tmp_path, monkeypatch):
    """No features.lineidx and a read-only folder: the index is built in the cache, nothing is
    written to the data, and the features are still exact."""
    out = write(tmp_path, write_lineidx=False)
    before = files_state(out)
    cache = tmp_path / "cache"
    for root, dirs, names in os.walk(out):
        for name in names:
            os.chmod(os.path.join(root, name), 0o444)
        os.chmod(root, 0o555)
    if os.geteuid() == 0:  # permissions do not stop root: report the data folders as not writable
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, m: False if os.path.abspath(p).startswith(out) else real_access(p, m)
        )
    try:
        corpus = load_corpus(out, "test", cache_dir=str(cache))
        assert_corpus_equals(corpus, truth("test", 6))
        assert files_state(out) == before
        built = [os.path.join(r, n) for r, _, ns in os.walk(cache) for n in ns if n.endswith(".lineidx")]
        assert len(built) == 1, "the line index goes under the cache_dir given to load_corpus"
    finally:
        for root, dirs, names in os.walk(out):
            os.chmod(root, 0o755)


def test_changed_files_are_not_served_from_a_stale_cache(tmp_path):
    """Editing a data file after a load (a fixed caption, a regenerated corpus) is seen by the next load."""
    out = write(tmp_path, captions_format="json")
    cache = str(tmp_path / "cache")
    assert load_corpus(out, "test", cache_dir=cache).captions[0] == truth("test", 6)[0].captions
    path = os.path.join(out, "test_captions.json")
    with open(path) as f:
        captions = json.load(f)
    captions[next(iter(captions))] = json.dumps(["a corrected caption"])
    with open(path, "w") as f:
        json.dump(captions, f)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_corpus(out, "test", cache_dir=cache).captions[0] == ["a corrected caption"]
    # Regenerated with another seed in the same place.
    shutil.rmtree(out)
    write_synthetic_corpus(out, {"train": 0, "minival": 0, "val": 0, "test": 6}, seed=SEED + 1)
    assert_corpus_equals(load_corpus(out, "test", cache_dir=cache), truth("test", 6, seed=SEED + 1))


# ---------------------------------------------------------------- the script through datasets itself


def test_script_through_datasets_load_dataset(tmp_path):
    from datasets.load import load_dataset  # the original; paddlenlp rebinds datasets.load_dataset

    counts = {"train": 2, "minival": 2, "val": 0, "test": 10}
    out = write(tmp_path, counts)
    kwargs = dict(data_dir=out, trust_remote_code=True, cache_dir=str(tmp_path / "cache"))
    # Every split with a caption file is prepared (val has none here).
    everything = load_dataset(COCO_IR_SCRIPT, **kwargs)
    assert sorted(everything) == ["minival", "test", "train"]
    for split in everything:
        assert everything[split]["image_id"] == [im.image_id for im in truth(split, counts[split])]
    # A key file names the images of one split: it needs splits=.
    with pytest.raises(ValueError, match="pass splits="):
        load_dataset(COCO_IR_SCRIPT, split="test", eval_img_keys_file="test_img_keys_1k.tsv", **kwargs)
    dataset = load_dataset(
        COCO_IR_SCRIPT, split="test", splits=("test",), eval_img_keys_file="test_img_keys_1k.tsv", **kwargs
    )
    images = truth("test", 10)[:2]
    assert dataset["image_id"] == [im.image_id for im in images]
    assert dataset["captions"] == [im.captions for im in images]
    assert dataset["tags"] == [im.tags for im in images]


def test_paddlenlp_rebinds_datasets_load_dataset(tmp_path):
    """Documented finding: importing paddlenlp replaces ``datasets.load_dataset`` with a wrapper
    that passes trust_remote_code=True itself, so passing it again is a TypeError; the wrapper
    works without it, and ``datasets.load.load_dataset`` (what load_coco_ir uses) is untouched."""
    import datasets
    import datasets.load
    import paddlenlp  # noqa: F401

    assert datasets.load_dataset is not datasets.load.load_dataset
    out = write(tmp_path)
    kwargs = dict(data_dir=out, split="test", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(TypeError, match="trust_remote_code"):
        datasets.load_dataset(COCO_IR_SCRIPT, trust_remote_code=True, **kwargs)
    assert datasets.load_dataset(COCO_IR_SCRIPT, **kwargs)["image_id"] == [im.image_id for im in truth("test", 6)]


@pytest.fixture(scope="module", autouse=True)
def plain_call(tmp_path_factory):
    """A fresh process (nothing imported but datasets) making the documented call as written.

    Started when the module starts, so its ~10 s of imports overlap the other tests."""
    tmp = tmp_path_factory.mktemp("plain")
    out = write_synthetic_corpus(str(tmp / "corpus"), {"train": 0, "minival": 0, "val": 0, "test": 6}, seed=SEED)
    code = textwrap.dedent(
        f"""
        import json, sys
        import datasets
        assert "paddlenlp" not in sys.modules
        ds = datasets.load_dataset({COCO_IR_SCRIPT!r}, data_dir={out!r}, split="test",
                                   trust_remote_code=True, cache_dir={str(tmp / 'cache')!r})
        print(json.dumps(ds["image_id"]))
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.mark.slow
def test_plain_datasets_call_before_paddlenlp_is_imported(plain_call):
    stdout, stderr = plain_call.communicate(timeout=180)
    assert plain_call.returncode == 0, stderr[-2000:]
    assert json.loads(stdout.strip().splitlines()[-1]) == [im.image_id for im in truth("test", 6)]


# ---------------------------------------------------------------- bad input

BAD_ROW = 2  # image 500002 of the test split


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A small corpus with JSON captions (easy to edit); each test works on a copy."""
    return write_synthetic_corpus(
        str(tmp_path_factory.mktemp("pristine") / "corpus"), {"train": 0, "minival": 0, "val": 0, "test": 6},
        seed=SEED, captions_format="json", captions_as_json=False,
    )


@pytest.fixture
def broken(tmp_path, pristine):
    out = str(tmp_path / "corpus")
    shutil.copytree(pristine, out)
    return out


def feature_folder(out):
    return os.path.join(out, "features", "test")


def rewrite_feature_row(out, row, change):
    """Replace one features.tsv row by change(fields) (a string); drop the now stale lineidx."""
    path = os.path.join(feature_folder(out), "features.tsv")
    with open(path) as f:
        lines = f.read().split("\n")[:-1]
    lines[row] = change(lines[row].split("\t"))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.remove(os.path.join(feature_folder(out), "features.lineidx"))


def edit_json(path, change):
    with open(path) as f:
        data = json.load(f)
    change(data)
    with open(path, "w") as f:
        json.dump(data, f)


def load_error(out, tmp_path, **kwargs):
    """The DataError a load raises; the (fresh) cache it was given holds nothing afterwards."""
    cache = tempfile.mkdtemp(prefix="cache-", dir=str(tmp_path))
    with pytest.raises(DataError) as info:
        load_coco_ir(out, "test", cache_dir=cache, **kwargs)
    assert_cache_clean(cache)
    return str(info.value)


def _encode_with(value):
    def change(fields):
        array = np.frombuffer(base64.b64decode(fields[2]), dtype=np.float32).copy()
        array[len(array) // 2] = value
        return "\t".join([fields[0], fields[1], base64.b64encode(array.tobytes()).decode()])

    return change


BAD_ROWS = {
    # name: (change, message, caught while building the lazy dataset?)
    # lazy loading reads num_boxes from the row's start, so this one is caught while building
    "missing-field": (lambda f: "\t".join([f[0], f[2]]), "expected 3 tab-separated fields|no integer num_boxes", True),
    "bad-base64": (lambda f: "\t".join([f[0], f[1], f[2][:40] + "*" + f[2][41:]]), "bad base64", False),
    "wrong-length": (lambda f: "\t".join([f[0], str(int(f[1]) + 1), f[2]]), r"expected num_boxes\*2054", False),
    "nan": (_encode_with(np.nan), "NaN or Inf", False),
    "inf": (_encode_with(np.inf), "NaN or Inf", False),
}


@pytest.mark.parametrize("inline", [False, True], ids=["lazy", "inline"])
@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_feature_rows(broken, tmp_path, case, inline):
    change, message, at_build = BAD_ROWS[case]
    rewrite_feature_row(broken, BAD_ROW, change)
    features_tsv = os.path.join(feature_folder(broken), "features.tsv")
    if inline or at_build:
        error = load_error(broken, tmp_path, inline_features=inline)
        assert features_tsv in error and f"row {BAD_ROW}" in error
        assert re.search(message, error)
        return
    # Lazy: the dataset holds no features; the row is checked when it is read.
    corpus = load_corpus(broken, "test", cache_dir=str(tmp_path / "cache"))
    images = truth("test", 6)
    with pytest.raises(DataError, match=message) as info:
        corpus.features(BAD_ROW)
    assert f"{features_tsv}: row {BAD_ROW} (image {images[BAD_ROW].image_id})" in str(info.value)
    assert corpus.features(BAD_ROW + 1).tobytes() == images[BAD_ROW + 1].features.tobytes()


@pytest.mark.parametrize("inline", [False, True], ids=["lazy", "inline"])
def test_truncated_file(broken, tmp_path, inline):
    """An interrupted copy: the last row stops in the middle of its base64 (no line break)."""
    path = os.path.join(feature_folder(broken), "features.tsv")
    with open(path, "rb+") as f:
        f.truncate(os.path.getsize(path) - 1001)
    os.remove(os.path.join(feature_folder(broken), "features.lineidx"))
    if inline:
        error = load_error(broken, tmp_path, inline_features=True)
    else:
        corpus = load_corpus(broken, "test", cache_dir=str(tmp_path / "cache"))
        with pytest.raises(DataError) as info:
            corpus.features(5)
        error = str(info.value)
    assert f"{path}: row 5 (image 500005)" in error
    assert "bad base64" in error or "float32 values" in error


def test_imageid2idx_pointing_at_another_images_row(broken, tmp_path):
    index = os.path.join(feature_folder(broken), "imageid2idx.json")
    edit_json(index, lambda d: d.update({"500000": d["500001"], "500001": d["500000"]}))
    corpus = load_corpus(broken, "test", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match="row 1 holds image 500001, but imageid2idx.json maps image 500000 to it"):
        corpus.features(0)
    assert load_error(broken, tmp_path, inline_features=True).endswith("maps image 500000 to it")


@pytest.mark.parametrize("inline", [False, True], ids=["lazy", "inline"])
def test_captioned_image_without_features_fails_before_reading_features(broken, tmp_path, monkeypatch, inline):
    edit_json(os.path.join(broken, "test_captions.json"), lambda d: d.update({"999999": ["a lonely caption"]}))
    import vinvl.data.features as features_module

    decoded = []
    real = features_module.decode_feature_row
    monkeypatch.setattr(features_module, "decode_feature_row", lambda *a, **k: decoded.append(1) or real(*a, **k))
    error = load_error(broken, tmp_path, inline_features=inline)
    assert "image 999999 has no features" in error
    assert os.path.join(feature_folder(broken), "imageid2idx.json") in error
    assert decoded == []  # found before any feature row was read


def test_empty_caption_list(broken, tmp_path):
    edit_json(os.path.join(broken, "test_captions.json"), lambda d: d.update({"500003": []}))
    error = load_error(broken, tmp_path)
    assert error == f"{os.path.join(broken, 'test_captions.json')}: image 500003 has an empty caption list"


def test_malformed_prediction_row(broken, tmp_path):
    path = os.path.join(feature_folder(broken), "predictions.tsv")
    with open(path) as f:
        lines = f.readlines()
    lines[3] = lines[3][: len(lines[3]) // 2] + "\n"
    with open(path, "w") as f:
        f.writelines(lines)
    error = load_error(broken, tmp_path)
    assert error.startswith(f"{path}: row 3 (image 500003): malformed JSON")
    # Without tags predictions.tsv is not read at all.
    assert len(load_coco_ir(broken, "test", add_od_labels=False, cache_dir=str(tmp_path / "ok"))) == 6


def test_key_file_naming_unknown_images(broken, tmp_path):
    with open(os.path.join(broken, "keys.tsv"), "w") as f:
        f.write("500001\n123456\n")
    error = load_error(broken, tmp_path, eval_img_keys_file="keys.tsv")
    assert error.startswith(f"{os.path.join(broken, 'keys.tsv')}: image 123456 is not in")


@pytest.mark.parametrize(
    "missing, message",
    [
        ("test_captions.json", "no caption file for split 'test'"),
        ("features/test/imageid2idx.json", "imageid2idx.json: no such file"),
        ("features/test/predictions.tsv", "predictions.tsv: no such file"),
        ("features/test/features.tsv", "no features.tsv for split 'test'"),
        ("test_img_keys_1k.tsv", "test_img_keys_1k.tsv: no such file"),
    ],
)
def test_missing_files(broken, tmp_path, missing, message):
    os.remove(os.path.join(broken, missing))
    error = load_error(broken, tmp_path, eval_img_keys_file="test_img_keys_1k.tsv")
    assert message in error
    assert broken in error


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match="no such data directory"):
        load_corpus(str(tmp_path / "nowhere"), "test", cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def test_detector_layout_errors(tmp_path):
    out = write(tmp_path, {"test": 3}, layout="detector")
    with open(os.path.join(out, "predictions.tsv")) as f:
        lines = f.readlines()
    with open(os.path.join(out, "images.hw.tsv")) as f:
        hw = f.readlines()
    with open(os.path.join(out, "images.hw.tsv"), "w") as f:
        f.writelines(hw[:2])  # image 000000500002 has no size
    error = load_error(out, tmp_path)
    assert "images.hw.tsv" in error and "000000500002" in error
    with open(os.path.join(out, "images.hw.tsv"), "w") as f:
        f.writelines(hw)
    objects = json.loads(lines[1].split("\t")[1])
    objects["objects"][0]["feature"] = base64.b64encode(np.zeros(2047, dtype=np.float32).tobytes()).decode()
    lines[1] = f"000000500001\t{json.dumps(objects)}\n"
    with open(os.path.join(out, "predictions.tsv"), "w") as f:
        f.writelines(lines)
    corpus = load_corpus(out, "test", cache_dir=str(tmp_path / "cache2"))
    with pytest.raises(DataError, match="predictions.tsv: image 000000500001: object 0 feature has 2047 values"):
        corpus.features(1)
    assert "000000500001" in load_error(out, tmp_path, inline_features=True)
