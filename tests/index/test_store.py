"""The gallery index on disk: build, open (memory-mapped), add (= one build of the union), atomic
versions with garbage collection, SIGKILL safety of a real `vinvl index add` / `build` process,
refusal of other weights, and the tags-only index of a model whose contrastive heads are untrained."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import vinvl  # noqa: F401  (CPU runtime defaults)
from vinvl.data import load_corpus, write_synthetic_corpus
from vinvl.oscar.model_dir import load_retrieval_model
from vinvl.retrieval import Gallery, RetrievalEngine
from vinvl.index import GalleryIndex, GallerySource, IndexBusyError, IndexWeightsError, add_to_index, build_index
from vinvl.oscar.model_dir import weights_checksum
from vinvl.index.versions import PAUSE_ENV, VersionedDir

from support.paths import TINY_MODEL
from support.tinymodel import caption_embeddings, save_random_model

K = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving_index")
    corpus = str(root / "corpus")
    write_synthetic_corpus(corpus, {"test": 10, "val": 6}, seed=3)
    return {
        "root": root,
        "corpus": corpus,
        "model": save_random_model(root / "model", ["contrastive", "match"], seed=0),
        "other_model": save_random_model(root / "other", ["contrastive", "match"], seed=1),
        "untrained": save_random_model(root / "untrained", ["match"], seed=0),
    }


def _engine(model_dir):
    model, processor = load_retrieval_model(model_dir)
    return RetrievalEngine(model, processor, progress=False)


def _answers(index_dir, queries, k=K):
    with GalleryIndex.open(index_dir) as index:
        scores, rows = index.search(queries, k)
        return scores, [[index.image_id(r) for r in row] for row in rows]


def _test_source(setup):
    return GallerySource(setup["corpus"], "test")


def _val_source(setup):
    return GallerySource(setup["corpus"], "val")


def test_build_holds_ids_tags_feature_pointers_and_the_engines_embeddings(setup, tmp_path):
    out = str(tmp_path / "index")
    build_index(out, setup["model"], [_test_source(setup)], progress=False)
    corpus = load_corpus(setup["corpus"], "test")
    expected = _engine(setup["model"]).embed_images(Gallery.from_corpus(corpus))  # the whole gallery in one call
    with GalleryIndex.open(out, model_dir=setup["model"]) as index:
        assert isinstance(index.embeddings, np.memmap)  # memory-mapped, not read into memory
        assert index.num_images == len(corpus) == 10
        assert [index.image_id(i) for i in range(10)] == corpus.image_ids
        assert [index.tags(i) for i in range(10)] == corpus.tags
        for i in (0, 7):
            np.testing.assert_array_equal(index.features(i), corpus.features(i))
        assert index.index_of(corpus.image_ids[6]) == 6
        assert index.find("no-such-image") == -1
        with pytest.raises(KeyError, match="no-such-image"):
            index.index_of("no-such-image")
        np.testing.assert_array_equal(np.asarray(index.embeddings), expected)
        assert index.first_stages == ["contrastive", "tags"]
        assert index.weights_sha256 == weights_checksum(setup["model"])
        queries = caption_embeddings(setup["model"], corpus.captions[2][:2])
        scores, rows = index.search(queries, K)
        similarity = queries @ expected.T
        np.testing.assert_array_equal(rows, np.argsort(-similarity, axis=1, kind="stable")[:, :K])
        np.testing.assert_allclose(scores, np.sort(similarity, axis=1)[:, ::-1][:, :K], rtol=1e-6)


def test_build_then_add_equals_one_build_of_the_union(setup, tmp_path):
    union, grown = str(tmp_path / "union"), str(tmp_path / "grown")
    build_index(union, setup["model"], [_test_source(setup), _val_source(setup)], progress=False)
    build_index(grown, setup["model"], [_test_source(setup)], progress=False)
    add_to_index(grown, setup["model"], [_val_source(setup)], progress=False)
    assert VersionedDir(grown).versions() == ["v000002"]  # the first version was garbage-collected
    captions = load_corpus(setup["corpus"], "val").captions
    queries = caption_embeddings(setup["model"], [captions[0][0], captions[3][1], "a dog on a red couch"])
    with GalleryIndex.open(union) as a, GalleryIndex.open(grown) as b:
        assert a.num_images == b.num_images == 16
        assert [a.image_id(i) for i in range(16)] == [b.image_id(i) for i in range(16)]
        assert [a.tags(i) for i in range(16)] == [b.tags(i) for i in range(16)]
        np.testing.assert_array_equal(np.asarray(a.embeddings), np.asarray(b.embeddings))
        np.testing.assert_array_equal(b.features(13), a.features(13))
        assert a.manifest["sources"] == b.manifest["sources"]
    union_scores, union_ids = _answers(union, queries)
    grown_scores, grown_ids = _answers(grown, queries)
    np.testing.assert_array_equal(union_scores, grown_scores)
    assert union_ids == grown_ids


def test_the_build_holds_chunks_of_images_never_the_whole_gallery(setup, tmp_path, monkeypatch):
    """What the build holds at once is set by EMBED_CHUNK, CAPTION_CHUNK and MAX_TRAIN_POINTS, not by
    the number of images: every read of the loading script's dataset, every engine call and every
    write is at most a chunk; no column is written through a memory map (whose pages stay resident);
    faiss trains on a bounded sample. The chunked build equals the default one."""
    import datasets

    import vinvl.index.bm25 as bm25
    import vinvl.index.ivf as ivf
    import vinvl.index.store as store
    import vinvl.index.tables as tables

    reference = str(tmp_path / "reference")
    build_index(reference, setup["model"], [_test_source(setup), _val_source(setup)], use_faiss=True, faiss_nlist=2, progress=False)
    chunk, caption_chunk, train_points = 3, 7, 5
    monkeypatch.setattr(store, "EMBED_CHUNK", chunk)
    monkeypatch.setattr(store, "CAPTION_CHUNK", caption_chunk)
    monkeypatch.setattr(ivf, "MAX_TRAIN_POINTS", train_points)
    held = {"dataset rows": [], "images embedded": [], "captions embedded": [], "rows written": [], "faiss trained on": []}

    def record(owner, name, key, size):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            result = real(*args, **kwargs)
            held[key].append(size(args, result))
            return result

        monkeypatch.setattr(owner, name, wrapper)

    record(datasets.Dataset, "_getitem", "dataset rows", lambda a, r: len(next(iter(r.values()))) if isinstance(a[1], slice) or not isinstance(a[1], int) else 1)
    record(datasets.Dataset, "to_dict", "dataset rows", lambda a, r: len(a[0]))
    record(RetrievalEngine, "embed_images", "images embedded", lambda a, r: len(r))
    record(RetrievalEngine, "embed_captions", "captions embedded", lambda a, r: len(r))
    # (the BM25 vocabulary is written whole: it grows with the distinct tag words, not with the images)
    record(tables.ArrayWriter, "append", "rows written", lambda a, r: 0 if os.path.basename(a[0].path).startswith(bm25.PREFIX) else len(a[1]))
    record(tables.ListColumnWriter, "append", "rows written", lambda a, r: len(a[1]))
    record(ivf, "training_sample", "faiss trained on", lambda a, r: len(r))
    read_map = np.lib.format.open_memmap

    def open_memmap(filename, mode="r+", *args, **kwargs):
        # the BM25 postings alone are filled in place (a counting sort by term, vinvl.index.bm25)
        assert mode == "r" or os.path.basename(filename).startswith(bm25.PREFIX), f"{filename} written through a memory map"
        return read_map(filename, mode, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "open_memmap", open_memmap)

    chunked = str(tmp_path / "chunked")
    build_index(chunked, setup["model"], [_test_source(setup), _val_source(setup)], use_faiss=True, faiss_nlist=2, progress=False)
    assert max(held["dataset rows"]) == 1  # the first image's features are checked; the rest is streamed
    assert max(held["images embedded"]) == chunk and sum(held["images embedded"]) == 16
    assert max(held["captions embedded"]) == caption_chunk and len(held["captions embedded"]) > 2
    assert 0 < max(held["rows written"]) <= caption_chunk
    assert held["faiss trained on"] == [train_points]
    with GalleryIndex.open(reference) as a, GalleryIndex.open(chunked) as b:
        assert [a.image_id(i) for i in range(16)] == [b.image_id(i) for i in range(16)]
        assert [a.tags(i) for i in range(16)] == [b.tags(i) for i in range(16)]
        assert [a.captions(i) for i in range(16)] == [b.captions(i) for i in range(16)]
        np.testing.assert_allclose(np.asarray(a.embeddings), np.asarray(b.embeddings), atol=1e-6)
        np.testing.assert_allclose(np.asarray(a.caption_embeddings), np.asarray(b.caption_embeddings), atol=1e-6)
        assert b.index_of(a.image_id(12)) == 12 and b.faiss_index().ntotal == 16


def test_add_refuses_images_already_indexed_and_other_weights(setup, tmp_path):
    out = str(tmp_path / "index")
    build_index(out, setup["model"], [_test_source(setup)], progress=False)
    with pytest.raises(ValueError, match="already in the index"):
        add_to_index(out, setup["model"], [_test_source(setup)], progress=False)
    with pytest.raises(IndexWeightsError) as info:
        add_to_index(out, setup["other_model"], [_val_source(setup)], progress=False)
    message = str(info.value)
    assert weights_checksum(setup["model"]) in message and weights_checksum(setup["other_model"]) in message
    with pytest.raises(IndexWeightsError, match=weights_checksum(setup["other_model"])):
        GalleryIndex.open(out, model_dir=setup["other_model"])
    assert VersionedDir(out).versions() == ["v000001"]  # nothing was written by the refused adds


def test_a_model_with_untrained_contrastive_heads_gets_a_tags_only_index(setup, tmp_path):
    out = str(tmp_path / "index")
    with pytest.raises(ValueError, match="trained_heads"):
        build_index(out, setup["untrained"], [_test_source(setup)], use_faiss=True, progress=False)
    build_index(out, setup["untrained"], [_test_source(setup)], progress=False)
    with GalleryIndex.open(out) as index:
        assert index.first_stages == ["tags"]
        assert index.embeddings is None and not os.path.exists(os.path.join(index.path, "embeddings.npy"))
        assert index.tags(0) == load_corpus(setup["corpus"], "test").tags[0]
        with pytest.raises(ValueError, match="no contrastive first stage"):
            index.search(np.zeros((1, 64), np.float32), 3)


def test_a_model_directory_without_weights_is_refused(setup, tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved weights"):
        build_index(str(tmp_path / "index"), TINY_MODEL, [_test_source(setup)])
    assert not os.path.exists(tmp_path / "index")


def test_an_open_reader_keeps_its_version_until_it_closes(setup, tmp_path):
    out = str(tmp_path / "index")
    build_index(out, setup["model"], [_test_source(setup)], progress=False)
    queries = caption_embeddings(setup["model"], ["a cat next to a table"])
    reader = GalleryIndex.open(out)
    before = reader.search(queries, K)
    add_to_index(out, setup["model"], [_val_source(setup)], progress=False)
    assert VersionedDir(out).versions() == ["v000001", "v000002"]  # pinned by the reader
    after = reader.search(queries, K)  # the reader still sees its complete version
    np.testing.assert_array_equal(before[1], after[1])
    assert reader.num_images == 10
    reader.close()
    assert VersionedDir(out).collect_garbage() == ["v000001"]
    with GalleryIndex.open(out) as index:
        assert index.num_images == 16


def test_a_second_writer_is_refused_while_one_writes(setup, tmp_path):
    out = str(tmp_path / "index")
    build_index(out, setup["model"], [_test_source(setup)], progress=False)
    with VersionedDir(out).writer():
        with pytest.raises(IndexBusyError, match="another"):
            add_to_index(out, setup["model"], [_val_source(setup)], progress=False)


def _run_and_kill(args, stage, tmp_path):
    """Start a real `vinvl index ...` process, SIGKILL it once it reaches ``stage``."""
    marker = str(tmp_path / f"paused-{stage}")
    env = dict(os.environ, **{PAUSE_ENV: f"{stage}:{marker}"})
    process = subprocess.Popen(
        [sys.executable, "-m", "vinvl.commands.cli", "index", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + 180
    while not os.path.exists(marker):
        if process.poll() is not None:
            pytest.fail(f"the writer exited ({process.returncode}) before pausing: {process.stderr.read().decode()[-2000:]}")
        if time.time() > deadline:
            process.kill()
            pytest.fail("the writer never reached the pause point")
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("command, stage", [("add", "staging"), ("add", "commit"), ("build", "commit")])
@pytest.mark.slow
def test_sigkill_during_add_or_rebuild_leaves_the_previous_index_intact(setup, tmp_path, command, stage):
    out = str(tmp_path / "index")
    build_index(out, setup["model"], [_test_source(setup)], progress=False)
    queries = caption_embeddings(setup["model"], ["a dog near a tree", load_corpus(setup["corpus"], "val").captions[1][0]])
    before = _answers(out, queries)
    args = [command, "--model_dir", setup["model"], "--gallery_dir", setup["corpus"], "--split", "val", out]
    _run_and_kill(args, stage, tmp_path)
    leftovers = set(os.listdir(out)) - {"CURRENT", ".lock", "v000001"}
    assert leftovers  # the killed writer did leave files behind ...
    with GalleryIndex.open(out) as index:  # ... but readers still get the old, complete version
        assert index.version == "v000001" and index.num_images == 10
    after = _answers(out, queries)
    np.testing.assert_array_equal(before[0], after[0])
    assert before[1] == after[1]
    add_to_index(out, setup["model"], [_val_source(setup)], progress=False)  # the next writer cleans up
    assert sorted(os.listdir(out)) == [".lock", "CURRENT", "v000002"]
    with GalleryIndex.open(out) as index:
        assert index.num_images == 16


@pytest.mark.slow
def test_sigkill_during_a_first_build_leaves_no_index_and_a_rebuild_works(setup, tmp_path):
    out = str(tmp_path / "index")
    args = ["build", "--model_dir", setup["model"], "--gallery_dir", setup["corpus"], out]
    _run_and_kill(args, "staging", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a gallery index"):
        GalleryIndex.open(out)
    build_index(out, setup["model"], [_test_source(setup)], progress=False)
    with GalleryIndex.open(out) as index:
        assert index.num_images == 10
    assert not [n for n in os.listdir(out) if n.startswith(".staging-")]


def test_detector_layout_gallery_reads_features_through_the_index(tmp_path):
    corpus_dir = str(tmp_path / "detector")
    write_synthetic_corpus(corpus_dir, {"test": 5}, seed=6, layout="detector")
    model = save_random_model(tmp_path / "model", ["contrastive", "match"], seed=0)
    out = str(tmp_path / "index")
    build_index(out, model, [GallerySource(corpus_dir, "test")], progress=False)
    corpus = load_corpus(corpus_dir, "test")
    with GalleryIndex.open(out) as index:
        assert index.manifest["feature_files"][0]["layout"] == "detector"
        assert [index.image_id(i) for i in range(5)] == corpus.image_ids
        np.testing.assert_array_equal(index.features(4), corpus.features(4))


def test_a_feature_file_changed_after_the_build_is_reported(setup, tmp_path):
    corpus_dir = str(tmp_path / "corpus")
    write_synthetic_corpus(corpus_dir, {"test": 4}, seed=7)
    out = str(tmp_path / "index")
    build_index(out, setup["model"], [GallerySource(corpus_dir, "test")], progress=False)
    features_tsv = os.path.join(corpus_dir, "features", "test", "features.tsv")
    with open(features_tsv, "a") as f:
        f.write("\n")
    with GalleryIndex.open(out) as index:
        assert index.tags(1)  # what the index holds itself is still served
        with pytest.raises(ValueError, match="features.tsv.*rebuild the index"):
            index.features(1)


def test_the_vinvl_index_command(setup, tmp_path, capsys):
    from vinvl.commands.cli import main as vinvl_main

    out = str(tmp_path / "index")
    common = ["--model_dir", setup["model"], "--gallery_dir", setup["corpus"]]
    assert vinvl_main(["index", "build", *common, "--split", "test", "--split", "val", out]) == 2  # two --split, one gallery
    assert not os.path.exists(out)
    assert vinvl_main(["index", "build", *common, "--gallery_dir", setup["corpus"], "--split", "test", "--split", "val", out]) == 0
    capsys.readouterr()
    vinvl_main(["index", "info", out])
    info = capsys.readouterr().out
    assert '"version": "v000001"' in info and '"num_images": 16' in info
