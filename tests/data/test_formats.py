"""The official Oscar/VinVL file formats: the row readers of vinvl.data.formats, the TSV line
index, and compatibility of the synthetic writer's files with the official readers' conventions
(torch.load(weights_only=True), int image id -> JSON string captions, imageid2idx + lineidx seeks).

The reference here is independent: files are read back with json / base64 / numpy / torch
directly, and compared with the generator's own images (SceneGenerator is deterministic).
"""
import base64
import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch

from vinvl.data import DataError, FEATURE_DIM, write_synthetic_corpus
from vinvl.data.formats import (
    DEFAULT_IMAGE_SIZE,
    box_geometry,
    decode_feature_row,
    detector_features,
    encode_features,
    load_captions,
    load_caption_index,
    load_image_keys,
    parse_hw,
    parse_prediction,
)
from vinvl.data.synthetic import SceneGenerator, generate_split
from vinvl.data.tsv import TSVFile, build_lineidx, index_fits, lineidx_path_for
from vinvl.torch_io import load_torch_file, read_torch_file, save_torch_file

COUNTS = {"train": 3, "minival": 4, "val": 3, "test": 6}
SEED = 5


def truth(split, count=None, seed=SEED, string_ids=False):
    """The images the writer wrote for ``split``, regenerated from the seed."""
    return list(generate_split(SceneGenerator(seed=seed), split, count or COUNTS[split], seed, string_ids))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_synthetic_corpus(str(tmp_path_factory.mktemp("formats") / "corpus"), COUNTS, seed=SEED)


def official_features(folder, image_id):
    """One image's features the way the official code reads them: imageid2idx -> lineidx -> seek."""
    with open(os.path.join(folder, "imageid2idx.json")) as f:
        row = json.load(f)[str(image_id)]
    with open(os.path.join(folder, "features.lineidx")) as f:
        offsets = [int(line) for line in f]
    with open(os.path.join(folder, "features.tsv"), "rb") as f:
        f.seek(offsets[row])
        fields = f.readline().decode().rstrip("\n").split("\t")
    assert fields[0] == str(image_id)
    return np.frombuffer(base64.b64decode(fields[-1]), dtype=np.float32).reshape(int(fields[1]), -1)


# ---------------------------------------------------------------- official readers' conventions


@pytest.mark.parametrize("split", sorted(COUNTS))
def test_official_readers_read_the_synthetic_files(corpus, split):
    """Captions via torch.load(weights_only=True) as int id -> JSON string; features via
    imageid2idx + lineidx, bit for bit; predictions.tsv as the official dict rows."""
    images = truth(split)
    captions = torch.load(os.path.join(corpus, f"{split}_captions.pt"), weights_only=True)
    assert list(captions) == [int(im.image_id) for im in images]
    assert all(isinstance(v, str) for v in captions.values())
    folder = os.path.join(corpus, "features", split)
    with open(os.path.join(folder, "predictions.tsv")) as f:
        predictions = dict(line.rstrip("\n").split("\t") for line in f)
    for image in images:
        assert json.loads(captions[int(image.image_id)]) == image.captions
        loaded = official_features(folder, image.image_id)
        assert loaded.shape == (len(image.tags), FEATURE_DIM)
        assert loaded.tobytes() == image.features.tobytes()
        row = json.loads(predictions[image.image_id])
        assert [o["class"] for o in row["objects"]] == image.tags
        assert (row["image_h"], row["image_w"]) == image.size
        # The geometry columns are the box geometry of the written rect in the real image size.
        rects = np.array([o["rect"] for o in row["objects"]], dtype=np.float32)
        assert loaded[:, -6:].tobytes() == box_geometry(rects, *image.size).tobytes()


def test_official_key_files_and_minival_index(corpus):
    ids = [im.image_id for im in truth("test")]
    with open(os.path.join(corpus, "test_img_keys.tsv")) as f:
        assert [line.strip() for line in f] == ids
    index = torch.load(os.path.join(corpus, "minival_caption_indexs_top20.pt"), weights_only=True)
    minival = [int(im.image_id) for im in truth("minival")]
    assert sorted(index) == minival
    for image_id, value in index.items():
        pairs = json.loads(value)
        assert pairs[:5] == [[image_id, j] for j in range(5)]
        assert all(img in minival and 0 <= cap < 5 for img, cap in pairs)
    assert load_caption_index(os.path.join(corpus, "minival_caption_indexs_top20.pt"))[str(minival[0])][0] == (
        str(minival[0]),
        0,
    )


@pytest.mark.parametrize("writer", ["torch", "legacy"])
def test_caption_pt_written_with_or_without_torch_reads_with_torch_load(tmp_path, monkeypatch, writer):
    """The torch-free writer's legacy format and torch's zip format both pass
    torch.load(weights_only=True), and both read back without torch."""
    if writer == "legacy":
        monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    out = write_synthetic_corpus(str(tmp_path / "c"), {"train": 0, "minival": 3, "val": 0, "test": 2}, seed=1)
    monkeypatch.undo()
    path = os.path.join(out, "test_captions.pt")
    with open(path, "rb") as f:
        is_zip = f.read(2) == b"PK"
    assert is_zip == (writer == "torch")
    images = truth("test", 2, seed=1)
    expected = {int(im.image_id): json.dumps(im.captions) for im in images}
    assert torch.load(path, weights_only=True) == expected
    assert read_torch_file(path) == expected  # the restricted reader, torch never involved
    monkeypatch.setitem(sys.modules, "torch", None)
    assert load_torch_file(path) == expected
    assert load_captions(path) == {im.image_id: im.captions for im in images}
    index_path = os.path.join(out, "minival_caption_indexs_top20.pt")
    monkeypatch.undo()
    assert read_torch_file(index_path) == torch.load(index_path, weights_only=True)


def test_torch_free_writer_round_trips_lists_and_strings(tmp_path, monkeypatch):
    obj = {1: ["a cat", "a dog"], 2: json.dumps(["x"]), 300000: []}
    monkeypatch.setitem(sys.modules, "torch", None)
    save_torch_file(obj, str(tmp_path / "legacy.pt"))
    monkeypatch.undo()
    assert torch.load(str(tmp_path / "legacy.pt"), weights_only=True) == obj


# ---------------------------------------------------------------- caption / key / index readers


@pytest.mark.parametrize("ext", ["pt", "pd", "json"])
def test_load_captions_accepts_lists_and_json_strings(tmp_path, ext):
    mapping = {57870: ["a man riding a horse", "a horse"], 384029: json.dumps(["two dogs play"])}
    path = str(tmp_path / f"x_captions.{ext}")
    if ext == "pt":
        torch.save(mapping, path)
    elif ext == "pd":
        import paddle

        paddle.save(mapping, path)
    else:
        with open(path, "w") as f:
            json.dump({str(k): v for k, v in mapping.items()}, f)
    assert load_captions(path) == {"57870": ["a man riding a horse", "a horse"], "384029": ["two dogs play"]}


@pytest.mark.parametrize(
    "value, message",
    [([], "image 7 has an empty caption list"), (["ok", ""], "image 7: caption 1 is empty"),
     ("[not json", "image 7: malformed JSON"), (json.dumps({"a": 1}), "image 7: expected a list")],
)
def test_load_captions_rejects(tmp_path, value, message):
    path = str(tmp_path / "test_captions.json")
    with open(path, "w") as f:
        json.dump({"5": ["fine"], "7": value}, f)
    with pytest.raises(DataError, match=message) as info:
        load_captions(path)
    assert path in str(info.value)


def test_load_captions_missing_and_unreadable(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_captions(str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="cannot be read") as info:
        load_captions(str(bad))
    assert str(bad) in str(info.value)
    torch.save([1, 2], str(tmp_path / "list.pt"))
    with pytest.raises(DataError, match="expected a dict"):
        load_captions(str(tmp_path / "list.pt"))


def test_load_image_keys(tmp_path):
    path = tmp_path / "keys.tsv"
    path.write_text("3\n1\n\n2\n")
    assert load_image_keys(str(path)) == ["3", "1", "2"]
    path.write_text("3\n1\n3\n")
    with pytest.raises(DataError, match="more than once"):
        load_image_keys(str(path))
    path.write_text("\n")
    with pytest.raises(DataError, match="no image ids"):
        load_image_keys(str(path))


# ---------------------------------------------------------------- feature rows


def _row(features, image_id="123", num_boxes=None):
    return [image_id, str(len(features) if num_boxes is None else num_boxes), encode_features(features)]


def test_decode_feature_row_is_bit_exact():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, FEATURE_DIM)).astype(np.float32)
    features[0, 0] = -0.0
    image_id, decoded = decode_feature_row(_row(features), "f.tsv", 0)
    assert image_id == "123" and decoded.dtype == np.float32
    assert decoded.tobytes() == features.tobytes()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r[:2], "expected 3 tab-separated fields"),
        (lambda r: [r[0], "x", r[2]], "num_boxes 'x' is not an integer"),
        (lambda r: [r[0], r[1], r[2][:-7]], "bad base64|not a whole number"),
        (lambda r: [r[0], r[1], r[2][:100] + "!" + r[2][101:]], "bad base64"),
        (lambda r: [r[0], "3", r[2]], "expected num_boxes\\*2054 = 3\\*2054"),
        (lambda r: [r[0], "0", encode_features(np.zeros((0, FEATURE_DIM)))], "expected num_boxes"),
    ],
)
def test_decode_feature_row_rejects(mutate, message):
    features = np.ones((2, FEATURE_DIM), dtype=np.float32)
    with pytest.raises(DataError, match=message) as info:
        decode_feature_row(mutate(_row(features)), "/data/features.tsv", 41)
    assert "/data/features.tsv: row 41" in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_decode_feature_row_rejects_non_finite(bad):
    features = np.ones((2, FEATURE_DIM), dtype=np.float32)
    features[1, 2050] = bad
    with pytest.raises(DataError, match=r"/f.tsv: row 9 \(image 123\): features contain NaN or Inf"):
        decode_feature_row(_row(features), "/f.tsv", 9)


# ---------------------------------------------------------------- predictions, hw, geometry


def test_parse_prediction_dict_and_bare_list():
    objects = [{"class": "dog", "rect": [0, 0, 10, 10], "conf": 0.9}, {"class": "tree", "rect": [1, 2, 3, 4]}]
    image_id, parsed, size = parse_prediction(["42", json.dumps({"objects": objects, "image_h": 480, "image_w": 640})], "p", 0)
    assert (image_id, [o["class"] for o in parsed], size) == ("42", ["dog", "tree"], (480, 640))
    _, parsed, size = parse_prediction(["42", json.dumps(objects)], "p", 0)
    assert [o["class"] for o in parsed] == ["dog", "tree"]
    assert size == DEFAULT_IMAGE_SIZE == (600, 800)


@pytest.mark.parametrize(
    "text, message",
    [('{"objects": [', "malformed JSON"), ('{"boxes": []}', "expected a list of objects"),
     ('{"objects": [], "image_h": null, "image_w": 640}', "image_h / image_w are not integers"),
     ('[{"rect": [0, 0, 1, 1]}]', "object 0 has no 'class'"), ("7", "expected a list of objects")],
)
def test_parse_prediction_rejects(text, message):
    with pytest.raises(DataError, match=message) as info:
        parse_prediction(["000000522418", text], "/d/predictions.tsv", 12)
    assert "/d/predictions.tsv: row 12" in str(info.value)
    if "malformed" in message:
        assert "image 000000522418" in str(info.value)


@pytest.mark.parametrize(
    "change, message",
    [(lambda o: o[1].pop("rect"), "every object needs a 4-number 'rect'"),
     (lambda o: o[1].update(rect=[1, 2, 3]), "every object needs a 4-number 'rect'"),
     (lambda o: o[0].update(feature="@@@@"), "object 0 has no valid base64 'feature'"),
     (lambda o: o[1].update(feature=encode_features(np.zeros(2047))), "object 1 feature has 2047 values"),
     (lambda o: o[1].update(rect=[0, 0, float("nan"), 1]), "NaN or Inf")],
)
def test_detector_features_rejects(change, message):
    objects = [{"class": "dog", "rect": [0, 0, 10, 20], "feature": encode_features(np.ones(2048))} for _ in range(2)]
    assert detector_features(objects, (40, 50), "p.tsv", "k").shape == (2, FEATURE_DIM)
    change(objects)
    with pytest.raises(DataError, match=message) as info:
        detector_features(objects, (40, 50), "/d/predictions.tsv", "000000522418")
    assert "/d/predictions.tsv: image 000000522418" in str(info.value)


def test_parse_hw_and_box_geometry():
    assert parse_hw(["000000522418", '[{"height": 480, "width": 640}]'], "x.hw.tsv", 0) == ("000000522418", (480, 640))
    with pytest.raises(DataError, match="x.hw.tsv: row 3"):
        parse_hw(["k", '[{"h": 1}]'], "x.hw.tsv", 3)
    geometry = box_geometry(np.array([[64, 48, 320, 240]], dtype=np.float32), 480, 640)
    np.testing.assert_allclose(geometry, [[0.1, 0.1, 0.5, 0.5, 0.4, 0.4]], rtol=1e-6)
    assert geometry.dtype == np.float32


# ---------------------------------------------------------------- the line index


def _write_tsv(path, rows):
    with open(path, "w") as f:
        f.writelines("\t".join(r) + "\n" for r in rows)
    offsets, position = [], 0
    for r in rows:
        offsets.append(position)
        position += len(("\t".join(r) + "\n").encode())
    return offsets


def test_lineidx_built_beside_a_writable_file(tmp_path):
    tsv = str(tmp_path / "features.tsv")
    offsets = _write_tsv(tsv, [["1", "a"], ["22", "bb"], ["333", "ccc"]])
    table = TSVFile(tsv, cache_dir=str(tmp_path / "cache"))
    assert table.lineidx_path == str(tmp_path / "features.lineidx")
    assert [int(x) for x in open(table.lineidx_path)] == offsets
    assert not (tmp_path / "cache").exists()
    assert table.seek(2) == ["333", "ccc"] and table.head(1) == ["22"] and len(table) == 3
    assert [fields for _, fields in table] == [["1", "a"], ["22", "bb"], ["333", "ccc"]]
    with pytest.raises(IndexError, match="row 3 out of range"):
        table.read_line(3)
    clone = pickle.loads(pickle.dumps(table))  # DataLoader workers get a copy without the handle
    assert clone.seek(0) == ["1", "a"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".lineidx-")]  # no temp file left


def test_lineidx_of_a_read_only_folder_goes_to_the_cache(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    tsv = str(folder / "features.tsv")
    offsets = _write_tsv(tsv, [["1", "a"], ["2", "b"]])
    os.chmod(folder, 0o555)
    try:
        if os.geteuid() == 0:  # root writes anywhere: make the folder read-only for the check too
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda p, m: False if os.path.abspath(p) == str(folder) else real_access(p, m))
        path = lineidx_path_for(tsv, str(tmp_path / "cache"))
        assert os.path.dirname(path) == str(tmp_path / "cache")
        assert [int(x) for x in open(path)] == offsets
        assert sorted(os.listdir(folder)) == ["features.tsv"]
        assert lineidx_path_for(tsv, str(tmp_path / "cache")) == path  # reused, not rebuilt
    finally:
        os.chmod(folder, 0o755)


@pytest.mark.parametrize(
    "content", ["0\n999\n", "0\n3\n", "0\n", "5\n9\n", "zero\n"], ids=["outside", "mid-row", "short", "no-0", "junk"]
)
def test_a_user_lineidx_that_does_not_fit_is_bypassed_never_rewritten(tmp_path, content):
    tsv = str(tmp_path / "features.tsv")
    offsets = _write_tsv(tsv, [["1", "a"], ["22", "bb"]])
    user = tmp_path / "features.lineidx"
    user.write_text(content)
    os.utime(user, (4_000_000_000, 4_000_000_000))  # newer than the TSV: time says nothing about fit
    table = TSVFile(tsv, cache_dir=str(tmp_path / "cache"))
    assert user.read_text() == content and os.path.getmtime(user) == 4_000_000_000
    assert table.lineidx_path.startswith(str(tmp_path / "cache"))
    assert [int(x) for x in open(table.lineidx_path)] == offsets
    assert table.seek(1) == ["22", "bb"]


def test_an_older_user_lineidx_that_fits_is_used(tmp_path):
    """A download finishing the big TSV after its index must not cost a pass over the TSV."""
    tsv = str(tmp_path / "features.tsv")
    offsets = _write_tsv(tsv, [[str(i), "x" * i] for i in range(40)])
    user = tmp_path / "features.lineidx"
    user.write_text("".join(f"{o}\n" for o in offsets))
    os.utime(user, (1_000_000, 1_000_000))
    assert index_fits(str(user), tsv)
    table = TSVFile(tsv, cache_dir=str(tmp_path / "cache"))
    assert table.lineidx_path == str(user) and not (tmp_path / "cache").exists()
    assert table.seek(39) == ["39", "x" * 39]
    with open(tsv, "a") as f:  # rows appended after the index was made: it no longer fits
        f.write("40\ty\n")
    assert not index_fits(str(user), tsv)


def test_a_corrupt_index_in_use_is_an_error(tmp_path):
    tsv = str(tmp_path / "features.tsv")
    _write_tsv(tsv, [["1", "a"], ["2", "b"]])
    table = TSVFile(tsv)
    with open(table.lineidx_path, "w") as f:
        f.write("0\n4000\n")
    with pytest.raises(ValueError, match="features.lineidx: offsets point outside"):
        table._read_offsets()
    with open(table.lineidx_path, "w") as f:
        f.write("0\nfour\n")
    with pytest.raises(ValueError, match="not a line index"):
        table._read_offsets()


def test_built_lineidx_is_readable_like_a_normal_file(tmp_path):
    tsv = str(tmp_path / "features.tsv")
    _write_tsv(tsv, [["1", "a"]])
    path = build_lineidx(tsv, str(tmp_path / "features.lineidx"))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
