"""A model whose contrastive heads are not trained, as a converted official checkpoint is: trained
tiny weights, contrastive projections re-drawn at random, config recording ``["match"]``.
Taskflow's default, ``vinvl retrieve`` and ``vinvl eval`` must rank exactly as exhaustive scoring
does (saying so once), use the first stage the user names, and refuse an explicit contrastive one.
The same weights with nothing recorded (read as all trained) show that the gallery is one where a
random contrastive first stage gives different answers, so the checks can fail."""
import json
import logging

import numpy as np
import pytest

import vinvl  # noqa: F401  (registers the task)
from paddlenlp import Taskflow

from vinvl.data import load_corpus
from vinvl.oscar.model_dir import load_retrieval_model
from vinvl.retrieval import Gallery, RetrievalEngine, tag_candidates
from vinvl.commands.evaluate import main as eval_main
from vinvl.commands.retrieve import main as retrieve_main

from support.tinymodel import derive

TEST_IMAGES = 20
CANDIDATES = 4
LOGGER = "vinvl.retrieval.first_stage"


@pytest.fixture(scope="module")
def models(tmp_path_factory, train_tiny):
    root = tmp_path_factory.mktemp("trained_heads")
    trained, corpus_dir = train_tiny(root, TEST_IMAGES)
    converted = derive(trained, str(root / "converted"), ["match"], reset_contrastive=True)
    unrecorded = derive(converted, str(root / "unrecorded"), None)
    return {"converted": converted, "unrecorded": unrecorded, "corpus_dir": corpus_dir}


@pytest.fixture(scope="module")
def reference(models):
    """(engine, gallery, exhaustive scores) of the converted model on the test split."""
    model, processor = load_retrieval_model(models["converted"])
    gallery = Gallery.from_corpus(load_corpus(models["corpus_dir"], "test"))
    engine = RetrievalEngine(model, processor, progress=False)
    return engine, gallery, engine.exhaustive(gallery)


def exhaustive_images(reference, caption):
    _, gallery, scores = reference
    column = gallery.captions.index(caption)
    margins = scores.i2t[:, column]
    return [gallery.image_ids[i] for i in np.lexsort((np.arange(gallery.num_images), -margins))]


def exhaustive_captions(reference, image_id):
    _, gallery, scores = reference
    margins = scores.i2t[gallery.image_ids.index(image_id)]
    return [gallery.captions[c] for c in np.lexsort((np.arange(gallery.num_captions), -margins))]


def queries(gallery):
    return [gallery.captions_of(i)[i % 5] for i in range(0, TEST_IMAGES, 2)], gallery.image_ids[:4]


def answers(results):
    """Each result's ranked ids (caption queries) or captions (image queries)."""
    return [[r["image_id"] for r in x["images"]] if "images" in x else [r["caption"] for r in x["captions"]] for x in results]


def test_taskflow_default_ranks_exhaustively_and_says_so_once(models, reference, caplog):
    _, gallery, _ = reference
    captions, image_ids = queries(gallery)
    expected = [exhaustive_images(reference, c) for c in captions] + [exhaustive_captions(reference, i) for i in image_ids]
    options = dict(gallery_dir=models["corpus_dir"], candidates=CANDIDATES, top_k=10_000)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        task = Taskflow("image_text_retrieval", task_path=models["converted"], **options)
        got = answers(task(captions + [{"image_id": i} for i in image_ids]))
        task(captions[:2])
    assert got == expected
    said = [r for r in caplog.records if r.name == LOGGER]
    assert len(said) == 1 and "not trained" in said[0].getMessage() and "exhaustively" in said[0].getMessage()
    # The same weights read as trained: the random contrastive first stage changes answers here.
    unrecorded = Taskflow("image_text_retrieval", task_path=models["unrecorded"], **options)
    assert answers(unrecorded(captions + [{"image_id": i} for i in image_ids])) != expected


def test_taskflow_uses_the_named_first_stage_and_refuses_contrastive(models, reference):
    engine, gallery, scores = reference
    options = dict(gallery_dir=models["corpus_dir"], candidates=CANDIDATES, top_k=10_000)
    with pytest.raises(ValueError, match="needs trained contrastive heads.*trained_heads: \\['match'\\]"):
        Taskflow("image_text_retrieval", task_path=models["converted"], first_stage="contrastive", **options)
    tags = Taskflow("image_text_retrieval", task_path=models["converted"], first_stage="tags", **options)
    proposed = tag_candidates(gallery, engine.processor.tokenizer, CANDIDATES)
    captions, _ = queries(gallery)
    for caption, result in zip(captions, tags(captions)):
        column = gallery.captions.index(caption)
        expected = sorted(proposed.t2i[column], key=lambda i: (-scores.i2t[i, column], i))
        assert [r["image_id"] for r in result["images"]] == [gallery.image_ids[i] for i in expected]


def test_vinvl_retrieve_ranks_exhaustively_or_as_told(models, reference, capsys):
    _, gallery, _ = reference
    captions, image_ids = queries(gallery)
    base = ["--model_dir", models["converted"], "--data_dir", models["corpus_dir"], "--top_k", "10000",
            "--candidates", str(CANDIDATES), "--text", captions[0], "--text", captions[3], "--image_id", image_ids[1]]
    results = retrieve_main(base)
    assert answers(results) == [exhaustive_images(reference, captions[0]), exhaustive_images(reference, captions[3]),
                                exhaustive_captions(reference, image_ids[1])]
    assert json.loads(capsys.readouterr().out) == results
    assert all(len(a) == CANDIDATES for a in answers(retrieve_main(base + ["--first_stage", "tags"])))
    with pytest.raises(ValueError, match="needs trained contrastive heads"):
        retrieve_main(base + ["--first_stage", "contrastive"])
    with pytest.raises(ValueError, match="--mode is gone: use --first_stage"):
        retrieve_main(base + ["--mode", "exhaustive"])


def test_vinvl_eval_ranks_exhaustively_or_as_told(models, reference, tmp_path, caplog):
    engine, gallery, scores = reference
    keys = tmp_path / "keys.tsv"
    keys.write_text("".join(f"{i}\n" for i in gallery.image_ids))

    def run(*extra):
        return eval_main(["--model_dir", models["converted"], "--data_dir", models["corpus_dir"], "--protocol", "keys",
                          "--eval_img_keys_file", str(keys), "--no_progress", *extra])

    expected = {name.replace("_R@", "_r"): value for name, value in scores.metrics(gallery.caption_to_image).items()}
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        auto = run("--first_stage", "auto", "--candidates", str(CANDIDATES))
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1
    for report in (auto, run()):  # auto, and the default (exhaustive)
        assert report["first_stage"] == "exhaustive" and report["candidates"] is None
        assert report["pairs_scored"] == gallery.num_images * gallery.num_captions
        assert report["results"]["keys"] == pytest.approx(expected)
    tags = run("--first_stage", "tags", "--candidates", str(CANDIDATES))
    two_stage = engine.two_stage(gallery, k=CANDIDATES, first_stage="tags")
    assert tags["first_stage"] == "tags" and tags["pairs_scored"] == two_stage.pairs_scored < auto["pairs_scored"]
    expected_tags = {name.replace("_R@", "_r"): v for name, v in two_stage.metrics(gallery.caption_to_image).items()}
    assert tags["results"]["keys"] == pytest.approx(expected_tags)
    with pytest.raises(ValueError, match="needs trained contrastive heads"):
        run("--first_stage", "contrastive")
