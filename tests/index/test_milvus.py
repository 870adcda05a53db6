"""Milvus as the store of the first stage, on Milvus Lite files under tmp_path: the searcher equals exact
top-k (ties at the k boundary included), rows past the live end are never seen, an index built with
``store=`` answers as the local index does, refuses a collection rebuilt with other weights, adds by
upsert (and survives a writer killed mid-add), and a bad or unreachable store URI is one line, exit 2."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

import vinvl  # noqa: E402,F401  (CPU runtime defaults)
from vinvl.commands.cli import main as cli_main  # noqa: E402
from vinvl.data import load_corpus, write_synthetic_corpus  # noqa: E402
from vinvl.index import GalleryIndex, GallerySource, IndexWeightsError, add_to_index, build_index, milvus  # noqa: E402
from vinvl.index.versions import PAUSE_ENV  # noqa: E402
from vinvl.retrieval.search import ExactSearch  # noqa: E402
from vinvl.serving.client import ServerProcess, free_port, post_json, vinvl_serve_command  # noqa: E402

from support.commands import SOURCE_TREE, assert_user_error, run, vinvl_cmd  # noqa: E402
from support.tinymodel import caption_embeddings, save_random_model  # noqa: E402

K = 4


def _unit(rng, num, dim=16):
    points = rng.standard_normal((num, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def _store(tmp_path, embeddings, index_type="FLAT", index_params=None, name="store.db"):
    """A Lite store holding ``embeddings`` as image rows 0..N-1."""
    store = milvus.MilvusStore(milvus.StoreURI.parse(f"milvus-lite:{tmp_path / name}"))
    store.create(embeddings.shape[1], str(tmp_path / "index"), "sha", index_type, index_params or {})
    ids = [f"img{i}" for i in range(len(embeddings))]
    store.upsert(milvus.IMAGE, 0, embeddings, ids, [["tag"]] * len(embeddings))
    return store


def test_flat_search_equals_exact_search_and_ignores_rows_past_the_live_end(tmp_path):
    rng = np.random.default_rng(0)
    embeddings, queries = _unit(rng, 300), _unit(rng, 12)
    with _store(tmp_path, embeddings) as store:
        for count in (300, 250):  # 250: the rows 250.. a dead writer left are not part of the gallery
            scores, rows = milvus.MilvusSearch(store, milvus.IMAGE, count).search(queries, 10)
            exact_scores, exact_rows = ExactSearch(embeddings[:count]).search(queries, 10)
            np.testing.assert_array_equal(rows, exact_rows)
            np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
            assert rows.max() < count
        short_scores, short_rows = milvus.MilvusSearch(store, milvus.IMAGE, 5).search(queries[:2], 10)
        assert short_rows.shape == (2, 5)  # k above the row count: every row, as ExactSearch gives
        np.testing.assert_array_equal(short_rows, ExactSearch(embeddings[:5]).search(queries[:2], 10)[1])


def test_ties_at_the_k_boundary_go_to_the_lower_rows_as_exact_search_orders_them(tmp_path):
    rng = np.random.default_rng(1)
    embeddings = _unit(rng, 80)
    tied = np.sort(rng.choice(80, 40, replace=False))
    embeddings[tied] = embeddings[tied[0]]  # 40 rows with one vector: more than k + TIE_MARGIN hits tie
    queries = np.stack([embeddings[tied[0]], _unit(rng, 1)[0]])
    with _store(tmp_path, embeddings) as store:
        # Rewritten rows (a repeated add) come back last among equal scores: Milvus' first 13 hits miss them.
        store.upsert(milvus.IMAGE, int(tied[0]), embeddings[tied[:1]], ["again"], [[]])
        store.upsert(milvus.IMAGE, int(tied[1]), embeddings[tied[1:2]], ["again"], [[]])
        scores, rows = milvus.MilvusSearch(store, milvus.IMAGE, 80).search(queries, 5)
    exact_scores, exact_rows = ExactSearch(embeddings).search(queries, 5)
    np.testing.assert_array_equal(rows[0], tied[:5])
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)


def test_ivf_flat_probing_every_list_is_exact_and_rows_read_back_by_position(tmp_path):
    rng = np.random.default_rng(2)
    embeddings, queries = _unit(rng, 200), _unit(rng, 6)
    with _store(tmp_path, embeddings, "IVF_FLAT", {"nlist": 4}) as store:
        _, rows = milvus.MilvusSearch(store, milvus.IMAGE, 200, {"nprobe": 4}).search(queries, 8)
        np.testing.assert_array_equal(rows, ExactSearch(embeddings).search(queries, 8)[1])
        view = milvus.MilvusRows(store, milvus.IMAGE, 200, 16)
        assert view.shape == (200, 16)
        np.testing.assert_array_equal(view[np.array([7, 3, 7, 199])], embeddings[[7, 3, 7, 199]])
        np.testing.assert_array_equal(view[-1], embeddings[199])
        with pytest.raises(IndexError, match="200"):
            view[np.array([200])]


@pytest.mark.parametrize(
    "uri, message",
    [
        ("milvus://localhost/gallery", "numeric port"),
        ("milvus://localhost:19530/", "collection name"),
        ("milvus://localhost:19530/bad-name", "collection name"),
        ("milvus-lite:gallery.sqlite", "must end in .db"),
        ("milvus-lite:/no/such/folder/g.db", "/no/such/folder does not exist"),
        ("faiss:/tmp/x", "expected milvus://HOST:PORT/COLLECTION or milvus-lite:PATH.db"),
    ],
)
def test_a_malformed_store_uri_is_refused_naming_what_is_wrong(uri, message):
    with pytest.raises(milvus.StoreError, match=message):
        milvus.StoreURI.parse(uri)


def test_an_unreachable_server_is_one_store_error_within_the_timeout():
    with pytest.raises(milvus.StoreError, match=r"milvus://127\.0\.0\.1:1/gallery: cannot open it") as caught:
        milvus.MilvusStore(milvus.StoreURI.parse("milvus://127.0.0.1:1/gallery"), timeout=1.0)
    assert "\n" not in str(caught.value)


# ----- an index whose embeddings live in Milvus Lite ------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("milvus_index")
    corpus = str(root / "corpus")
    write_synthetic_corpus(corpus, {"test": 10, "val": 6}, seed=3)
    model = save_random_model(root / "model", ["contrastive", "match"], seed=0)
    local = str(root / "local")  # the local exact index of both splits: what every Milvus answer must equal
    build_index(local, model, [GallerySource(corpus, "test"), GallerySource(corpus, "val")], progress=False)
    val = load_corpus(corpus, "val")
    queries = caption_embeddings(model, ["a dog near a tree", val.captions[1][0], load_corpus(corpus, "test").captions[3][0]])
    return {
        "root": root,
        "corpus": corpus,
        "model": model,
        "other_model": save_random_model(root / "other", ["contrastive", "match"], seed=1),
        "local": local,
        "queries": queries,
    }


def _lite(tmp_path, name="store.db"):
    return milvus.StoreOptions(milvus.StoreURI.parse(f"milvus-lite:{tmp_path / name}"))


def _source(setup, split):
    return GallerySource(setup["corpus"], split)


def _assert_answers_equal_the_local_index(index, setup, num_images):
    """Images and captions searched through the store give the local exact index's rows (of its first images)."""
    with GalleryIndex.open(setup["local"]) as local:
        assert [index.image_id(i) for i in range(num_images)] == [local.image_id(i) for i in range(num_images)]
        expected = ExactSearch(np.asarray(local.embeddings[:num_images])).search(setup["queries"], K)
        num_captions = sum(len(local.captions(i)) for i in range(num_images))
        expected_captions = ExactSearch(np.asarray(local.caption_embeddings[:num_captions])).search(local.embeddings[:2], K)
        np.testing.assert_array_equal(index.embeddings[np.arange(num_images)], local.embeddings[:num_images])
        image_embeds = np.asarray(local.embeddings[:2])
    scores, rows = index.image_searcher().search(setup["queries"], K)
    np.testing.assert_array_equal(rows, expected[1])
    np.testing.assert_allclose(scores, expected[0], atol=1e-5)
    assert index.num_captions == num_captions
    np.testing.assert_array_equal(index.caption_searcher().search(image_embeds, K)[1], expected_captions[1])


def test_an_index_with_a_lite_store_answers_as_the_local_exact_index(setup, tmp_path):
    out = str(tmp_path / "index")
    build_index(out, setup["model"], [_source(setup, "test")], progress=False, store=_lite(tmp_path))
    with GalleryIndex.open(out, model_dir=setup["model"]) as index:
        assert index.store is not None and index.manifest["store"]["index_type"] == "FLAT"
        assert not [n for n in os.listdir(index.path) if "embeddings" in n]  # no local copy of the embeddings
        _assert_answers_equal_the_local_index(index, setup, 10)
        np.testing.assert_array_equal(index.search(setup["queries"], K, method="store")[1], index.image_searcher().search(setup["queries"], K)[1])


@pytest.mark.slow
def test_add_upserts_the_new_images_and_their_captions(setup, tmp_path):
    out = str(tmp_path / "index")
    build_index(out, setup["model"], [_source(setup, "test")], progress=False, store=_lite(tmp_path))
    add_to_index(out, setup["model"], [_source(setup, "val")], progress=False)
    with GalleryIndex.open(out, model_dir=setup["model"]) as index:
        assert index.version == "v000002" and index.num_images == 16
        _assert_answers_equal_the_local_index(index, setup, 16)


@pytest.mark.slow
def test_a_collection_rebuilt_with_other_weights_or_owned_by_another_index_is_refused(setup, tmp_path):
    out, stale_copy = str(tmp_path / "index"), str(tmp_path / "stale_copy")
    build_index(out, setup["model"], [_source(setup, "test")], progress=False, store=_lite(tmp_path))
    with pytest.raises(IndexWeightsError, match="weights sha256"):  # the folder's own check, as for a local index
        GalleryIndex.open(out, model_dir=setup["other_model"])
    shutil.copytree(out, stale_copy)  # e.g. a node's old copy of the index folder
    with pytest.raises(milvus.StoreError, match="holds the embeddings of the index"):
        build_index(stale_copy, setup["other_model"], [_source(setup, "test")], progress=False, store=_lite(tmp_path))
    build_index(out, setup["other_model"], [_source(setup, "test")], progress=False, store=_lite(tmp_path))
    with pytest.raises(IndexWeightsError, match="holds embeddings of weights sha256"):
        GalleryIndex.open(stale_copy)
    with GalleryIndex.open(out, model_dir=setup["other_model"]) as index:  # the rebuilt index itself is fine
        assert index.num_images == 10


@pytest.mark.slow
def test_a_writer_killed_during_an_add_leaves_rows_no_reader_sees_and_the_next_add_replaces_them(setup, tmp_path):
    out = str(tmp_path / "index")
    build_index(out, setup["model"], [_source(setup, "test")], progress=False, store=_lite(tmp_path))
    with GalleryIndex.open(out) as index:
        before = index.image_searcher().search(setup["queries"], K)
    marker = str(tmp_path / "paused")
    env = dict(os.environ, PYTHONPATH=SOURCE_TREE, **{PAUSE_ENV: f"store:{marker}"})
    args = ["add", "--model_dir", setup["model"], "--gallery_dir", setup["corpus"], "--split", "val", out]
    process = subprocess.Popen([sys.executable, "-m", "vinvl.commands.cli", "index", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while not os.path.exists(marker):  # the new rows are in the collection; the new version is not live
        if process.poll() is not None:
            pytest.fail(f"the writer exited ({process.returncode}) before pausing: {process.stderr.read().decode()[-2000:]}")
        assert time.time() < deadline, "the writer never reached the pause point"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    time.sleep(1)  # its Milvus Lite server notices the parent is gone and lets go of the file
    with GalleryIndex.open(out) as index:
        assert index.version == "v000001" and index.num_images == 10
        leftovers = index.store.client.query(index.store.uri.collection, filter="kind == 0 and row >= 10", output_fields=["row"])
        assert sorted(r["row"] for r in leftovers) == list(range(10, 16))  # the dead writer's rows ...
        after = index.image_searcher().search(setup["queries"], K)  # ... which no reader of the live version sees
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0])
    add_to_index(out, setup["model"], [_source(setup, "val")], progress=False)
    with GalleryIndex.open(out) as index:
        assert index.num_images == 16
        _assert_answers_equal_the_local_index(index, setup, 16)


# ----- the commands and the service over a store ---------------------------------------------------


def _vinvl(capsys, *args):
    """``vinvl <args>`` in this process: (exit status, stderr lines)."""
    status = cli_main(list(args))
    return status, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    "store, extra, message",
    [
        ("milvus-lite:/no/such/folder/g.db", [], "the folder /no/such/folder does not exist"),
        ("milvus://gallery-host/gallery", [], "milvus://HOST:PORT/COLLECTION with a numeric port"),
        ("redis://localhost:6379/0", [], "expected milvus://HOST:PORT/COLLECTION or milvus-lite:PATH.db"),
        ("milvus-lite:{tmp}/g.db", ["--milvus_index", "HNSW"], "Milvus Lite builds FLAT, IVF_FLAT, AUTOINDEX, not HNSW"),
        ("milvus-lite:{tmp}/g.db", ["--faiss"], "--faiss and --store exclude each other"),
    ],
)
def test_index_build_refuses_a_bad_store_in_one_line_before_reading_the_model(capsys, tmp_path, store, extra, message):
    out = str(tmp_path / "index")  # the model directory does not exist: the store is refused before it is read
    status, lines = _vinvl(capsys, "index", "build", "--model_dir", str(tmp_path / "no_model"), "--gallery_dir",
                           str(tmp_path / "no_data"), "--store", store.format(tmp=tmp_path), *extra, out)
    assert status == 2 and len(lines) == 1 and lines[0].startswith("vinvl index build: error: ") and message in lines[0], lines
    assert not os.path.exists(out)


def test_milvus_options_need_a_store_and_a_json_object(capsys, tmp_path):
    common = ["index", "build", "--model_dir", "m", "--gallery_dir", "d", str(tmp_path / "index")]
    status, lines = _vinvl(capsys, *common, "--milvus_index", "IVF_FLAT")
    assert status == 2 and lines == ["vinvl index build: error: --milvus_index sets the Milvus store's index; it needs --store"]
    status, lines = _vinvl(capsys, *common, "--store", f"milvus-lite:{tmp_path}/g.db", "--milvus_index_params", "{nlist: 4}")
    assert status == 2 and len(lines) == 1 and "expected a JSON object" in lines[0], lines


@pytest.mark.slow
def test_an_unreachable_server_is_one_line_from_the_real_command(setup, tmp_path):
    # run() ends a command that hangs after 600 s, so a connection retried forever fails here; the time
    # it takes is not asserted (the machine's load decides it)
    done = run(vinvl_cmd("index", "build", "--model_dir", setup["model"], "--gallery_dir", setup["corpus"],
                         "--store", "milvus://127.0.0.1:1/gallery", "index"), tmp_path)
    assert_user_error(done, "vinvl index build", "--store milvus://127.0.0.1:1/gallery: cannot open it: ")


@pytest.mark.slow
def test_add_while_another_process_holds_the_lite_file_is_one_line_naming_it(setup, tmp_path):
    out = str(tmp_path / "index")
    build_index(out, setup["model"], [_source(setup, "test")], progress=False, store=_lite(tmp_path))
    with GalleryIndex.open(out):  # this process serves the file, as a running `vinvl serve` would
        done = run(vinvl_cmd("index", "add", "--model_dir", setup["model"], "--gallery_dir", setup["corpus"],
                             "--split", "val", out), tmp_path)
    assert_user_error(done, "vinvl index add", f"milvus-lite:{tmp_path}/store.db: another process has the file open")
    add_to_index(out, setup["model"], [_source(setup, "val")], progress=False)  # once it is let go, the add works
    with GalleryIndex.open(out) as index:
        assert index.num_images == 16


@pytest.mark.slow
def test_index_build_add_and_info_through_the_command(capsys, setup, tmp_path):
    out = str(tmp_path / "index")
    common = ["--model_dir", setup["model"], "--gallery_dir", setup["corpus"]]
    assert _vinvl(capsys, "index", "build", *common, "--store", f"milvus-lite:{tmp_path}/g.db",
                  "--milvus_index", "IVF_FLAT", "--milvus_index_params", '{"nlist": 2}', out)[0] == 0
    assert _vinvl(capsys, "index", "add", *common, "--split", "val", out)[0] == 0
    assert cli_main(["index", "info", out]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_images"] == 16 and info["faiss"] is None
    assert info["store"]["uri"] == f"milvus-lite:{tmp_path}/g.db" and info["store"]["index_type"] == "IVF_FLAT"
    with GalleryIndex.open(out) as index:  # probing both lists of the IVF index is exact
        rows = index.image_searcher(nprobe=2).search(setup["queries"], K)[1]
    with GalleryIndex.open(setup["local"]) as local:
        np.testing.assert_array_equal(rows, local.search(setup["queries"], K)[1])


def test_serve_refuses_several_workers_on_a_lite_file(capsys, setup, tmp_path):
    out = str(tmp_path / "index")
    build_index(out, setup["model"], [_source(setup, "test")], progress=False, store=_lite(tmp_path))
    status, lines = _vinvl(capsys, "serve", "--index", out, "--workers", "2", "--port", str(free_port()))
    assert status == 2 and len(lines) == 1 and "Milvus Lite serves one process per file" in lines[0], lines


@pytest.mark.slow
def test_a_service_over_a_lite_store_answers_as_the_service_over_the_local_index(setup, tmp_path):
    out = str(tmp_path / "index")  # the test split only: the service adds the val split itself
    build_index(out, setup["model"], [_source(setup, "test")], progress=False, store=_lite(tmp_path))
    test, val = load_corpus(setup["corpus"], "test"), load_corpus(setup["corpus"], "val")
    data = ["a dog near a tree", test.captions[3][0], val.captions[1][0], {"image_id": test.image_ids[2]},
            {"image_id": val.image_ids[4]}, {"image_id": test.image_ids[1], "caption": test.captions[1][0]}]
    answers = []
    for index in (setup["local"], out):  # the local index holds test + val
        port = free_port()
        flags = ["--top_k", "3", "--candidates", "5", "--first_stage", "contrastive", "--allow_add"]
        with ServerProcess(vinvl_serve_command(index, port, extra=flags), port, str(tmp_path / f"server{port}.log")):
            if index == out:  # an add request in the process that holds the Lite file
                status, added = post_json(port, {"data": {"add": {"gallery_dir": setup["corpus"], "split": "val"}}}, timeout=120)
                assert status == 200 and added["result"]["num_images"] == 16, added
            status, answer = post_json(port, {"data": data}, timeout=120)
            assert status == 200, answer
            answers.append(answer["result"])
    assert answers[0] == answers[1]
    assert [len(a.get("images", a.get("captions", [None]))) for a in answers[1][:5]] == [3, 3, 3, 3, 3]
    assert set(val.image_ids) & {hit["image_id"] for a in answers[1][:3] for hit in a["images"]}  # added images are found
