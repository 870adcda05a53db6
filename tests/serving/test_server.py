"""The retrieval service, started for real (uvicorn in a subprocess on a free 127.0.0.1 port) over a
gallery index of a tiny model trained in the test: every answer through HTTP equals the in-process
Taskflow's over the same images held in memory (the same items in the same order, scores to 1e-5:
a Paddle Inference predictor run earlier in the test process can move the last float bits of later
forwards); each bad request gets its 4xx naming the fault and the next good request still works;
an internal failure is a logged 500; images added through the service are answered by every
worker; the PaddleNLP recipe (`paddlenlp server server:app`) serves too. Every request has a
timeout and every loop a fixed count."""
import http.client
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import psutil
import pytest

import vinvl  # noqa: F401  (registers the task, CPU runtime defaults)
from paddlenlp import Taskflow

from vinvl.data import load_corpus
from vinvl.index import GallerySource, build_index
from vinvl.serving.server import ROUTE
from vinvl.serving.client import ServerProcess, free_port, get_json, post_json, tree_rss_mb, vinvl_serve_command

from support.tinymodel import assert_same_answers, derive, in_memory_gallery

TEST_IMAGES = 12  # + 8 minival images in the index: 20 images, 100 captions
TOP_K, CANDIDATES, BATCH = 3, 4, 5
OPTIONS = dict(top_k=TOP_K, candidates=CANDIDATES, batch_size=BATCH)
SERVE_FLAGS = ["--top_k", str(TOP_K), "--candidates", str(CANDIDATES), "--batch_size", str(BATCH), "--allow_add"]
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory, train_tiny):
    root = tmp_path_factory.mktemp("serving_server")
    model_dir, corpus = train_tiny(root, TEST_IMAGES)
    return root, model_dir, corpus


class Reference:
    """In-process Taskflows over the in-memory gallery, one per option set, made on first use."""

    def __init__(self, model_dir, gallery):
        self.model_dir, self.gallery, self.flows = model_dir, gallery, {}

    def __call__(self, data, **parameters):
        key = json.dumps(parameters, sort_keys=True)
        if key not in self.flows:
            options = {**OPTIONS, **parameters}
            self.flows[key] = Taskflow("image_text_retrieval", task_path=self.model_dir, gallery=self.gallery, **options)
        return json.loads(json.dumps(self.flows[key](data)))  # as JSON carries it


@pytest.fixture(scope="module")
def service(trained, tmp_path_factory):
    root, model_dir, corpus = trained
    index = str(root / "index")
    build_index(index, model_dir, [GallerySource(corpus, "test"), GallerySource(corpus, "minival")], progress=False)
    port = free_port()
    server = ServerProcess(vinvl_serve_command(index, port, extra=SERVE_FLAGS), port, str(root / "server.log"))
    with server:
        reference = Reference(model_dir, in_memory_gallery(corpus, ["test", "minival"]))
        yield server, reference, corpus


def features_query(corpus_dir, split, i, caption=None):
    corpus = load_corpus(corpus_dir, split)
    query = {"features": corpus.features(i).tolist(), "tags": corpus.tags[i]}
    return {**query, "caption": caption} if caption else query


def ask(port, data, **parameters):
    status, answer = post_json(port, {"data": data, "parameters": parameters}, timeout=TIMEOUT)
    assert status == 200, answer
    return answer["result"]


def test_answers_through_http_equal_the_in_process_taskflow(service):
    server, reference, corpus_dir = service
    test, minival = load_corpus(corpus_dir, "test"), load_corpus(corpus_dir, "minival")
    queries = [
        test.captions[0][0],
        minival.captions[3][1],
        "a dog on a red couch",
        {"image_id": test.image_ids[2]},
        {"image_id": minival.image_ids[5]},
        features_query(corpus_dir, "test", 7),
        {"image_id": test.image_ids[4], "caption": test.captions[4][0]},
        features_query(corpus_dir, "minival", 1, caption=test.captions[9][2]),
    ]
    for query in queries:
        assert_same_answers(ask(server.port, query), reference(query))
    assert_same_answers(ask(server.port, queries[:4]), reference(queries[:4]))  # several queries in one request
    first = ask(server.port, queries[0])[0]
    assert len(first["images"]) == TOP_K and first["images"][0]["image_id"] in test.image_ids + minival.image_ids


def test_parameters_set_top_k_first_stage_and_candidates_for_one_request(service):
    server, reference, corpus_dir = service
    test = load_corpus(corpus_dir, "test")
    caption, image = test.captions[5][1], {"image_id": test.image_ids[5]}
    for parameters in ({"top_k": 2}, {"first_stage": "tags", "candidates": 6}, {"first_stage": "exhaustive", "top_k": 4}):
        for query in (caption, image):
            assert_same_answers(ask(server.port, query, **parameters), reference(query, **parameters))
    assert_same_answers(ask(server.port, caption), reference(caption))  # the defaults are back for the next request
    assert len(ask(server.port, caption, top_k=2)[0]["images"]) == 2


def bad_requests(corpus_dir):
    """(name, request body, expected status, words the message must hold)."""
    good = load_corpus(corpus_dir, "test").captions[0][0]
    narrow = {"features": np.zeros((3, 100)).tolist(), "tags": ["dog"]}
    dump = lambda payload: json.dumps(payload).encode()  # noqa: E731
    return [
        ("unknown field", dump({"data": good, "colour": "red"}), 422, ["unknown field", "colour"]),
        ("no data", dump({"parameters": {}}), 422, ["no 'data' field"]),
        ("unknown query key", dump({"data": {"image_id": "500001", "colour": 1}}), 400, ["unknown keys", "colour"]),
        ("empty caption", dump({"data": "   "}), 400, ["caption is empty"]),
        ("empty pair caption", dump({"data": {"image_id": "500001", "caption": ""}}), 400, ["'caption'", "non-empty"]),
        ("feature width", dump({"data": narrow}), 400, ["features must have shape", "2054", "100"]),
        ("overflowing features", dump({"data": {"features": np.full((2, 2054), 1e38).tolist(), "tags": ["dog"]}}), 400,
         ["query 0", "1e+38", "within 10000"]),
        ("a caption beyond any use", dump({"data": ["a dog", "a" * 2001]}), 400, ["query 1", "2,001 characters", "at most 2,000"]),
        ("unknown image id", dump({"data": {"image_id": "no-such-image"}}), 400, ["no-such-image", "not in the gallery"]),
        ("oversized body", b'{"data": "' + b"a" * (17 << 20) + b'"}', 413, ["limit is 16777216 bytes"]),
        ("not JSON", b'{"data": ', 422, ["not valid JSON"]),
        ("unknown parameter", dump({"data": good, "parameters": {"topk": 2}}), 400, ["unknown parameters", "topk"]),
        ("bad top_k", dump({"data": good, "parameters": {"top_k": 0}}), 400, ["'top_k'", "1..1000"]),
        ("bad first_stage", dump({"data": good, "parameters": {"first_stage": "fast"}}), 400, ["'first_stage'", "fast"]),
        ("empty list", dump({"data": []}), 400, ["empty list"]),
        ("too many queries", dump({"data": [good] * 65}), 413, ["65 queries", "at most 64"]),
        ("add with a bad directory", dump({"data": {"add": {"gallery_dir": "/no/such/dir"}}}), 400, ["/no/such/dir"]),
    ]


def test_each_bad_request_gets_its_4xx_and_the_next_good_request_works(service):
    server, reference, corpus_dir = service
    good = load_corpus(corpus_dir, "test").captions[0][0]
    expected = reference(good)
    for name, body, status, words in bad_requests(corpus_dir):
        got, answer = post_json(server.port, None, raw=body, timeout=TIMEOUT)
        assert got == status, (name, got, answer)
        for word in words:
            assert word in answer["detail"], (name, word, answer)
        assert_same_answers(ask(server.port, good), expected)
    status, health = get_json(server.port)
    assert status == 200 and health["status"] == "ok"


def test_an_oversized_chunked_body_is_cut_off_with_413(service):
    """A body without Content-Length is counted as it arrives and refused once over the limit."""
    server, reference, corpus_dir = service
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    chunks = [b'{"data": "'] + [b"a" * (1 << 20)] * 17 + [b'"}']
    try:
        connection.request("POST", "/" + ROUTE, body=iter(chunks), encode_chunked=True, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        status, answer = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert status == 413 and "more than" in answer["detail"] and "16777216" in answer["detail"]
    good = load_corpus(corpus_dir, "test").captions[1][0]
    assert_same_answers(ask(server.port, good), reference(good))


@pytest.mark.slow
def test_vinvl_serve_refuses_a_missing_index_and_other_weights_before_starting(trained, service, tmp_path):
    root, model_dir, _ = trained
    other = derive(model_dir, str(tmp_path / "other"), trained_heads=["match", "contrastive"], logit_scale=2.0)
    port = str(free_port())
    for index, model, words in ((str(tmp_path / "none"), model_dir, "not a gallery index"), (str(root / "index"), other, "rebuild the index")):
        command = [sys.executable, "-m", "vinvl.commands.cli", "serve", "--index", index, "--model_dir", model, "--port", port]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and words in done.stderr, done.stderr[-2000:]


def test_health_names_the_index_version_and_size(service):
    server, _, _ = service
    status, health = get_json(server.port)
    assert status == 200
    assert health["index"]["num_images"] == TEST_IMAGES + 8 and health["index"]["num_captions"] == (TEST_IMAGES + 8) * 5
    assert health["index"]["version"] == "v000001" and health["first_stage"] == "contrastive"
    assert health["pid"] == server.pid and health["busy"] is False  # one worker: uvicorn runs the app in `vinvl serve`
    assert tree_rss_mb(server.pid) > 0


RECIPE = """\
from paddlenlp import Taskflow
from paddlenlp.server import SimpleServer

import vinvl  # registers the task
from vinvl.serving.server import ROUTE, RetrievalHandler, RetrievalService, add_service_routes

retrieval = Taskflow("image_text_retrieval", task_path={model!r}, index_path={index!r}, top_k={top_k}, candidates={candidates}, batch_size={batch})
service = RetrievalService.from_taskflow(retrieval)
app = SimpleServer()
app.register_taskflow(ROUTE, retrieval, taskflow_handler=RetrievalHandler.configured(service))
add_service_routes(app, service)  # GET /health, body-size limit, JSON 4xx / 5xx errors
"""


@pytest.mark.slow
def test_paddlenlp_recipe_serves_and_an_internal_failure_is_a_logged_500(trained, tmp_path):
    """`paddlenlp server server:app` on the recipe: a missing feature file is the server's fault (500,
    logged with its traceback), and once the file is back the same request is answered."""
    _, model_dir, corpus = trained
    corpus_copy = str(tmp_path / "corpus")
    shutil.copytree(corpus, corpus_copy)
    index = str(tmp_path / "index")
    build_index(index, model_dir, [GallerySource(corpus_copy, "test"), GallerySource(corpus_copy, "minival")], progress=False)
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    recipe = RECIPE.format(model=model_dir, index=index, top_k=TOP_K, candidates=CANDIDATES, batch=BATCH)
    (app_dir / "server.py").write_text(recipe)
    port = free_port()
    command = [
        sys.executable, "-c", "import sys; from paddlenlp.cli import main; sys.exit(main())",
        "server", "server:app", "--host", "127.0.0.1", "--port", str(port), "--app_dir", str(app_dir),
    ]
    minival = load_corpus(corpus_copy, "minival")
    pair = {"image_id": minival.image_ids[2], "caption": minival.captions[2][0]}
    features = os.path.join(corpus_copy, "features", "minival", "features.tsv")
    log = str(tmp_path / "server.log")
    with ServerProcess(command, port, log, cwd=str(app_dir)):
        os.rename(features, features + ".away")  # no query has read a minival image yet
        try:
            status, answer = post_json(port, {"data": pair}, timeout=TIMEOUT)
        finally:
            os.rename(features + ".away", features)
        assert status == 500, answer
        assert "DataError" in answer["detail"] and "features.tsv" in answer["detail"]
        with open(log, encoding="utf-8", errors="replace") as f:
            logged = f.read()
        assert "internal error answering POST /taskflow/image_text_retrieval" in logged and "Traceback" in logged
        reference = Reference(model_dir, in_memory_gallery(corpus_copy, ["test", "minival"]))
        caption = minival.captions[0][0]
        assert_same_answers(ask(port, pair), reference(pair))
        assert_same_answers(ask(port, caption), reference(caption))


@pytest.mark.slow
def test_images_added_through_the_service_are_answered_by_every_worker(trained, tmp_path):
    """`vinvl serve --workers 2`: an add goes through the index's atomic add; every worker then answers
    over the new version, as a Taskflow over all the images in memory does."""
    _, model_dir, corpus = trained
    index = str(tmp_path / "index")
    build_index(index, model_dir, [GallerySource(corpus, "test")], progress=False)
    val = load_corpus(corpus, "val")
    port = free_port()
    command = vinvl_serve_command(index, port, workers=2, extra=SERVE_FLAGS)
    with ServerProcess(command, port, str(tmp_path / "server.log")) as server:
        assert len(psutil.Process(server.pid).children()) >= 2  # the uvicorn supervisor and its workers
        status, health = get_json(port)
        assert status == 200 and health["index"] == {
            "path": index, "version": "v000001", "num_images": TEST_IMAGES, "num_captions": TEST_IMAGES * 5,
        }
        add = {"data": {"add": {"gallery_dir": corpus, "split": "val"}}}
        status, answer = post_json(port, add, timeout=120)
        assert status == 200, answer
        assert answer["result"] == {"added": len(val), "num_images": TEST_IMAGES + len(val), "version": "v000002"}
        status, answer = post_json(port, add, timeout=120)
        assert status == 400 and "already in the index" in answer["detail"]
        # Whichever worker answers (8 requests over 2 workers), it knows the new images and ranks
        # as a Taskflow over both splits in memory does.
        both = Reference(model_dir, in_memory_gallery(corpus, ["test", "val"]))
        queries = [{"image_id": val.image_ids[i]} for i in range(4)] + [val.captions[i][0] for i in range(4)]
        for query in queries:
            assert_same_answers(ask(port, query), both(query))
        for _ in range(6):
            status, health = get_json(port)
            assert status == 200 and health["index"]["version"] == "v000002", health
            assert health["index"]["num_images"] == TEST_IMAGES + len(val)


def test_settings_from_the_environment_are_typed_and_checked():
    from vinvl.serving.server import settings_from_env

    environ = {"VINVL_SERVE_INDEX": "/i", "VINVL_SERVE_TOP_K": "3", "VINVL_SERVE_ALLOW_ADD": "1"}
    assert settings_from_env(environ) == {"index_path": "/i", "top_k": 3, "allow_add": True}
    assert settings_from_env({**environ, "VINVL_SERVE_ALLOW_ADD": "false"})["allow_add"] is False
    with pytest.raises(ValueError, match="VINVL_SERVE_ALLOW_ADD must be 1 or 0"):
        settings_from_env({**environ, "VINVL_SERVE_ALLOW_ADD": "yes please"})
    with pytest.raises(ValueError, match="VINVL_SERVE_TOP_K must be an integer"):
        settings_from_env({**environ, "VINVL_SERVE_TOP_K": "three"})
