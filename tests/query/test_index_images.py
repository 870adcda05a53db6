"""An index gallery as the query core reads it (vinvl.query.index_images): QueryGallery.from_index reads
no row of the index's id, tag and caption columns when it opens (no Python list of the whole gallery),
and reads each row as the lists it replaced held it (flattened captions and their owners included,
for images with different numbers of captions); a version written before caption row starts were
stored opens and reads the same, and gets them on its next add."""
import json
import os

import numpy as np
import pytest

import vinvl  # noqa: F401  (CPU runtime defaults)
from vinvl.data import load_corpus, write_synthetic_corpus
from vinvl.index import GalleryIndex, GallerySource, add_to_index, build_index
from vinvl.index.store import CAPTION_STARTS
from vinvl.index.versions import MANIFEST
from vinvl.oscar.model_dir import load_tokenizer
from vinvl.query.gallery import QueryGallery
from vinvl.query.index_images import IndexImages

from support.tinymodel import save_random_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("index_images")
    corpus = str(root / "corpus")
    write_synthetic_corpus(corpus, {"test": 9, "val": 6}, seed=8)
    model = save_random_model(root / "model", ["match"], seed=0)  # a tags-only index: nothing to embed
    return {"root": root, "corpus": corpus, "model": model, "tokenizer": load_tokenizer(model)}


def _edit_live_manifest(out, edit):
    with GalleryIndex.open(out) as index:
        path = index.path
    with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    removed = edit(manifest)
    with open(os.path.join(path, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    for name in removed:
        os.remove(os.path.join(path, name))


def _drop_captions(manifest):
    """A version written before captions were stored."""
    del manifest["captions"]
    return ["captions.npy", "captions_offsets.npy", f"{CAPTION_STARTS}.npy"]


def _drop_starts(manifest):
    """A version written before caption row starts were stored."""
    del manifest["captions"]["starts"]
    return [f"{CAPTION_STARTS}.npy"]


@pytest.fixture(scope="module")
def uneven(setup):
    """An index whose first 9 images have no captions and whose last 6 have 5 each (a captionless
    version grown by an add), so caption rows do not sit at a fixed stride."""
    out = str(setup["root"] / "uneven")
    build_index(out, setup["model"], [GallerySource(setup["corpus"], "test")], progress=False)
    _edit_live_manifest(out, _drop_captions)
    add_to_index(out, setup["model"], [GallerySource(setup["corpus"], "val")], progress=False)
    return out


def _as_lists(index):
    """What QueryGallery.from_index held before: every id, tag list, caption and caption owner."""
    ids = [index.image_id(i) for i in range(index.num_images)]
    per_image = [index.captions(i) for i in range(index.num_images)]
    flat = [c for captions in per_image for c in captions]
    owners = [ids[i] for i, captions in enumerate(per_image) for _ in captions]
    return ids, [index.tags(i) for i in range(index.num_images)], flat, owners


def _assert_reads_as_lists(images, index):
    ids, tags, flat, owners = _as_lists(index)
    assert list(images.image_ids) == ids and list(images.tags) == tags
    assert list(images.captions) == flat and [images.captions[c] for c in range(len(flat))] == flat
    assert list(images.caption_image_ids) == owners
    assert images.num_images == len(images) == len(ids) and images.num_captions == len(images.captions) == len(flat)
    assert images.captions[::7] == flat[::7] and images.image_ids[-1] == ids[-1] and images.tags[-2] == tags[-2]
    with pytest.raises(IndexError):
        images.captions[len(flat)]
    positions = images.index_of([ids[5], ids[0]])
    assert positions.tolist() == [5, 0]
    with pytest.raises(KeyError, match="nope"):
        images.index_of([ids[1], "nope"])


def test_opening_reads_no_row_of_the_id_tag_and_caption_columns(setup, uneven, monkeypatch):
    reads = {"image_id": 0, "tags": 0, "captions": 0}
    for name in reads:
        real = getattr(GalleryIndex, name)

        def counted(self, i, real=real, name=name):
            reads[name] += 1
            return real(self, i)

        monkeypatch.setattr(GalleryIndex, name, counted)
    gallery = QueryGallery.from_index(uneven, setup["model"], setup["tokenizer"])
    try:
        # image 0's regions are read for the width check, and its reader is given its id; nothing else
        assert reads == {"image_id": 1, "tags": 0, "captions": 0}
        assert isinstance(gallery.images, IndexImages)
        assert gallery.images.feature_dim == 2054
    finally:
        gallery.close()


def test_the_gallery_reads_each_row_as_the_lists_it_replaced(setup, uneven):
    gallery = QueryGallery.from_index(uneven, setup["model"], setup["tokenizer"])
    try:
        index = gallery.index
        assert index.caption_starts.tolist() == [0] * 10 + [5, 10, 15, 20, 25, 30]
        assert isinstance(index.caption_starts, np.memmap)
        _assert_reads_as_lists(gallery.images, index)
        assert gallery.caption_image_ids is gallery.images.caption_image_ids
        val = load_corpus(setup["corpus"], "val")
        assert gallery.images.features(12).tolist() == val.features(3).tolist()
    finally:
        gallery.close()


def test_a_version_without_caption_starts_reads_the_same_and_gets_them_on_add(setup, uneven, tmp_path, caplog):
    out = str(tmp_path / "no_starts")
    build_index(out, setup["model"], [GallerySource(setup["corpus"], "val")], progress=False)
    with GalleryIndex.open(out) as index:
        stored = np.array(index.caption_starts)
    _edit_live_manifest(out, _drop_starts)
    with GalleryIndex.open(out) as index:
        images = IndexImages(index)
        assert not isinstance(index.caption_starts, np.memmap)  # counted from the caption column
        assert "caption row starts" in caplog.text and "vinvl index build" in caplog.text
        np.testing.assert_array_equal(index.caption_starts, stored)
        _assert_reads_as_lists(images, index)
    add_to_index(out, setup["model"], [GallerySource(setup["corpus"], "test")], progress=False)
    with GalleryIndex.open(out) as index:
        assert index.manifest["captions"]["starts"] == f"{CAPTION_STARTS}.npy"
        np.testing.assert_array_equal(index.caption_starts, np.arange(16) * 5)
        _assert_reads_as_lists(IndexImages(index), index)
