"""The synthetic corpus writer: deterministic, complete, atomic, and learnable by construction.

(Files, key files, the minival index, failure handling and the CLI; the captions are checked
against the true objects each image was generated with, recorded through a SceneGenerator
subclass.)
"""
import json
import os
import re

import numpy as np
import pytest
import torch

from vinvl.data import synthetic, write_synthetic_corpus
from vinvl.data.formats import APPEARANCE_DIM
from vinvl.commands.make_synthetic import main
from vinvl.data.synthetic import TEMPLATES, SceneGenerator, generate_split

COUNTS = {"train": 4, "minival": 3, "val": 2, "test": 5}


def tree(folder):
    """relative path -> bytes of every file under ``folder``."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


# ---------------------------------------------------------------- files


def test_every_split_and_file_is_written(tmp_path):
    out = write_synthetic_corpus(str(tmp_path / "c"), COUNTS, seed=0)
    per_split = ["features.tsv", "features.lineidx", "imageid2idx.json", "predictions.tsv"]
    expected = {f"{s}_captions.pt" for s in COUNTS} | {"test_img_keys.tsv", "test_img_keys_1k.tsv"}
    expected |= {"minival_caption_indexs_top20.pt"} | {os.path.join("features", s, n) for s in COUNTS for n in per_split}
    assert set(tree(out)) == expected
    all_ids = []
    for split, count in COUNTS.items():
        folder = os.path.join(out, "features", split)
        with open(os.path.join(folder, "features.tsv")) as f:
            ids = [line.split("\t", 1)[0] for line in f]
        assert len(ids) == count and len(set(ids)) == count
        with open(os.path.join(folder, "imageid2idx.json")) as f:
            assert json.load(f) == {image_id: row for row, image_id in enumerate(ids)}
        with open(os.path.join(folder, "predictions.tsv")) as f:
            assert [line.split("\t", 1)[0] for line in f] == ids
        assert [str(k) for k in torch.load(os.path.join(out, f"{split}_captions.pt"), weights_only=True)] == ids
        all_ids += ids
    assert len(set(all_ids)) == sum(COUNTS.values())  # splits never share an image id


def test_zero_image_splits_are_left_out(tmp_path):
    out = write_synthetic_corpus(str(tmp_path / "c"), {"train": 0, "minival": 0, "val": 0, "test": 3}, seed=0)
    assert sorted(os.listdir(out)) == ["features", "test_captions.pt", "test_img_keys.tsv", "test_img_keys_1k.tsv"]
    assert os.listdir(os.path.join(out, "features")) == ["test"]


def test_same_seed_same_bytes_other_seed_other_corpus(tmp_path):
    first = tree(write_synthetic_corpus(str(tmp_path / "a"), COUNTS, seed=3))
    assert tree(write_synthetic_corpus(str(tmp_path / "b"), COUNTS, seed=3)) == first
    other = tree(write_synthetic_corpus(str(tmp_path / "c"), COUNTS, seed=4))
    assert set(other) == set(first)
    changed = {name for name in first if other[name] != first[name]}
    assert {"train_captions.pt", os.path.join("features", "test", "features.tsv")} <= changed
    a = list(generate_split(SceneGenerator(seed=3), "val", 3, 3))
    b = list(generate_split(SceneGenerator(seed=3), "val", 3, 3))
    assert [x.captions for x in a] == [y.captions for y in b]
    assert all(x.features.tobytes() == y.features.tobytes() for x, y in zip(a, b))


def test_key_files(tmp_path):
    out = write_synthetic_corpus(str(tmp_path / "c"), {"train": 0, "minival": 0, "val": 0, "test": 12}, seed=1)
    with open(os.path.join(out, "test_img_keys.tsv")) as f:
        full = f.read().split()
    with open(os.path.join(out, "test_img_keys_1k.tsv")) as f:
        subset = f.read().split()
    assert full == [im.image_id for im in generate_split(SceneGenerator(seed=1), "test", 12, 1)]
    assert subset == full[:2]  # a fifth of the test set, as COCO 1K is of 5K, and a prefix of it


def test_minival_index_has_20_candidates_with_all_own_captions(tmp_path):
    out = write_synthetic_corpus(str(tmp_path / "c"), {"train": 0, "minival": 21, "val": 0, "test": 0}, seed=2)
    index = torch.load(os.path.join(out, "minival_caption_indexs_top20.pt"), weights_only=True)
    images = list(generate_split(SceneGenerator(seed=2), "minival", 21, 2))
    tags = {int(im.image_id): set(im.tags) for im in images}
    assert sorted(index) == sorted(tags)
    for image_id, value in index.items():
        pairs = json.loads(value)
        assert len(pairs) == 20 and len({tuple(p) for p in pairs}) == 20
        assert pairs[:5] == [[image_id, j] for j in range(5)]
        negatives = [img for img, _ in pairs[5:]]
        assert image_id not in negatives and len(set(negatives)) == 15
        assert all(0 <= cap < 5 for _, cap in pairs)
        # Hard negatives: the images sharing the most tags with this one.
        overlap = {other: len(tags[image_id] & tags[other]) for other in tags if other != image_id}
        chosen = [overlap[n] for n in negatives]
        assert chosen == sorted(chosen, reverse=True)
        assert min(chosen) >= max([v for k, v in overlap.items() if k not in negatives], default=0)


def test_minival_index_of_a_small_split_uses_every_other_image(tmp_path):
    """Fewer than 16 minival images: own captions plus one caption of each other image."""
    out = write_synthetic_corpus(str(tmp_path / "c"), {"train": 0, "minival": 4, "val": 0, "test": 0}, seed=2)
    index = torch.load(os.path.join(out, "minival_caption_indexs_top20.pt"), weights_only=True)
    for image_id, value in index.items():
        pairs = json.loads(value)
        assert len(pairs) == 5 + 3 and sorted(img for img, _ in pairs[5:]) == sorted(set(index) - {image_id})


def test_written_directory_is_readable_like_any_other(tmp_path):
    out = write_synthetic_corpus(str(tmp_path / "c"), {"train": 0, "minival": 0, "val": 0, "test": 1}, seed=0)
    os.mkdir(tmp_path / "plain")
    assert os.stat(out).st_mode & 0o777 == os.stat(tmp_path / "plain").st_mode & 0o777


# ---------------------------------------------------------------- refusing and failing cleanly


def test_refuses_a_non_empty_out_dir(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        write_synthetic_corpus(str(out), 2)
    assert os.listdir(out) == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"
    (out / "mine.txt").unlink()
    write_synthetic_corpus(str(out), {"train": 0, "minival": 0, "val": 0, "test": 1})  # an empty one is fine
    assert "test_captions.pt" in os.listdir(out)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_images={"trian": 3}), "unknown split 'trian'"),
        (dict(num_images={"test": -1}), "must be >= 0"),
        (dict(captions_format="csv"), "captions_format"),
        (dict(predictions_format="json"), "predictions_format"),
        (dict(layout="coco"), "layout"),
        (dict(layout="detector"), "exactly one split"),
    ],
)
def test_bad_arguments_fail_before_writing(tmp_path, monkeypatch, kwargs, message):
    started = []
    monkeypatch.setattr(synthetic, "SceneGenerator", lambda *a, **k: started.append(1))
    kwargs.setdefault("num_images", 2)
    with pytest.raises(ValueError, match=message):
        write_synthetic_corpus(str(tmp_path / "c"), **kwargs)
    assert started == [] and os.listdir(tmp_path) == []


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["oserror", "interrupt"])
def test_nothing_left_behind_when_writing_fails(tmp_path, monkeypatch, error):
    calls = []
    real = synthetic._save_mapping

    def failing(mapping, path, fmt):
        calls.append(path)
        if len(calls) == 3:  # after some splits are complete on disk
            raise error
        real(mapping, path, fmt)

    monkeypatch.setattr(synthetic, "_save_mapping", failing)
    with pytest.raises(type(error)):
        write_synthetic_corpus(str(tmp_path / "c"), COUNTS, seed=0)
    assert len(calls) == 3
    assert os.listdir(tmp_path) == []  # neither the corpus nor its temporary folder


# ---------------------------------------------------------------- the command line


def test_cli_main_writes_the_same_corpus(tmp_path, capsys):
    args = ["--train", "2", "--minival", "2", "--val", "1", "--test", "3", "--seed", "9", "--captions_format", "json"]
    path = main([str(tmp_path / "cli")] + args)
    assert path == str(tmp_path / "cli") and f"wrote {path}" in capsys.readouterr().out
    direct = write_synthetic_corpus(
        str(tmp_path / "direct"), {"train": 2, "minival": 2, "val": 1, "test": 3}, seed=9, captions_format="json"
    )
    assert tree(path) == tree(direct)
    main([str(tmp_path / "det"), "--layout", "detector", "--train", "0", "--minival", "0", "--val", "0", "--test", "2"])
    assert sorted(os.listdir(tmp_path / "det")) == ["images.hw.tsv", "predictions.tsv", "test_captions.pt"]
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x"), "--captions_format", "csv"])
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- learnable by construction


class RecordingGenerator(SceneGenerator):
    """Records the true object names (attribute + class) each image's captions were made from."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.names = []

    def _caption(self, rng, names):
        self.names.append([f"{attr} {cls}" if attr else cls for cls, attr in names])
        return super()._caption(rng, names)


def _a(text):
    return re.sub(r"\ban\b", "a", text)


def caption_slots(caption):
    """(template, slot phrases) for each template the caption fits (articles a/an ignored)."""
    fits = []
    for template in TEMPLATES:
        pattern = re.sub(r"\\\{\d\\\}", r"(\\w+(?: \\w+)?)", re.escape(_a(template)))
        match = re.fullmatch(pattern, _a(caption))
        if match:
            fits.append((template, list(match.groups())))
    return fits


@pytest.fixture(scope="module")
def scenes():
    generator = RecordingGenerator(seed=11)
    images = list(generate_split(generator, "train", 120, 11))
    plain = list(generate_split(SceneGenerator(seed=11), "train", 120, 11))
    assert [im.captions for im in images] == [im.captions for im in plain]  # recording changes nothing
    objects = [generator.names[5 * i] for i in range(len(images))]
    return generator, images, objects


def test_captions_mention_only_the_images_objects(scenes):
    generator, images, objects = scenes
    templates_used, in_tags, mentioned = set(), 0, 0
    for image, names in zip(images, objects):
        assert len(image.captions) == 5 and len(set(image.captions)) > 1
        for caption in image.captions:
            fits = caption_slots(caption)
            assert fits, caption
            template, phrases = next(f for f in fits if all(x in names for x in f[1]))  # true objects only
            templates_used.add(template)
            for phrase in phrases:
                words = phrase.split()
                assert words[-1] in generator.classes
                assert len(words) == 1 or words[0] in generator.attributes
                mentioned += 1
                in_tags += words[-1] in image.tags
    assert in_tags / mentioned > 0.8  # the detector finds most mentioned objects...
    assert in_tags < mentioned  # ...but not all of them
    assert templates_used == set(TEMPLATES)  # varied wording


def test_right_answers_are_the_captions_naming_only_objects_an_image_holds(scenes):
    generator, images, objects = scenes
    for image, names in zip(images, objects):
        # The scene as recorded: one (class, attribute) per object, named with that attribute or none.
        assert len(image.objects) == len(names)
        for (cls, attr), name in zip(image.objects, names):
            assert name in (cls, f"{attr} {cls}")
    named = []  # (class, attribute or None) of every phrase of every caption, parsed from its text
    for image, names in zip(images, objects):
        for caption, recorded in zip(image.captions, image.caption_objects):
            _, phrases = next(f for f in caption_slots(caption) if all(x in names for x in f[1]))
            parsed = [(p.split()[-1], p.split()[0] if " " in p else None) for p in phrases]
            assert parsed == [tuple(n) for n in recorded]
            named.append(parsed)
    expected = np.array([
        [all(any(c == cls and a in (None, attr) for cls, attr in image.objects) for c, a in caption) for caption in named]
        for image in images
    ])
    right = synthetic.right_answers(images)
    assert right.shape == (len(images), 5 * len(images)) and (right == expected).all()
    assert right[np.repeat(np.arange(len(images)), 5), np.arange(5 * len(images))].all()  # own captions
    assert 1 < right.sum(0).mean() < len(images) / 4  # a caption fits several images, not most


def test_tags_are_a_noisy_detection_of_the_objects(scenes):
    generator, images, objects = scenes
    missed = false_positive = 0
    for image, names in zip(images, objects):
        true_classes = {n.split()[-1] for n in names}
        assert set(image.tags) <= set(generator.classes)
        missed += len(true_classes - set(image.tags))
        false_positive += len(set(image.tags) - true_classes)
        assert len(image.tags) == len(image.features) == len(image.rects)
    assert missed > 0 and false_positive > 0


def test_a_single_word_rarely_identifies_an_image(scenes):
    """Most captions' rarest class word is in several images' captions: matching needs more."""
    generator, images, _ = scenes
    images_with = {c: sum(any(c in cap.split() for cap in im.captions) for im in images) for c in generator.classes}
    rarest = [min(images_with[w] for w in cap.split() if w in images_with) for im in images for cap in im.captions]
    assert np.mean([n >= 2 for n in rarest]) > 0.9


def test_region_features_cluster_by_class(scenes):
    generator, images, _ = scenes
    features = np.concatenate([im.features for im in images])
    labels = np.array([generator.classes.index(t) for im in images for t in im.tags])
    appearance, geometry = features[:, :APPEARANCE_DIM], features[:, APPEARANCE_DIM:]
    assert features.dtype == np.float32 and np.isfinite(features).all()
    squared = (appearance.astype(np.float64) ** 2).sum(1)
    distances = squared[:, None] + squared[None, :] - 2 * appearance.astype(np.float64) @ appearance.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    other = labels[:, None] != labels[None, :]
    # Same class closer than other classes, on average and for the nearest neighbour.
    assert distances[same].mean() < 0.5 * distances[other].mean()
    np.fill_diagonal(distances, np.inf)
    has_twin = same.any(1)
    assert np.mean(labels[distances.argmin(1)][has_twin] == labels[has_twin]) > 0.95
    # Real box geometry: inside the image, x2 > x1, width = x2 - x1.
    assert (geometry >= 0).all() and (geometry <= 1).all()
    np.testing.assert_allclose(geometry[:, 4], geometry[:, 2] - geometry[:, 0], atol=1e-6)
    np.testing.assert_allclose(geometry[:, 5], geometry[:, 3] - geometry[:, 1], atol=1e-6)
