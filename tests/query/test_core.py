"""The query core (vinvl.query.Retriever) over a gallery index built with a faiss IVF file: the
contrastive first stage of caption queries is the index's faiss search with the request's nprobe
(with few lists probed its candidates are faiss's, not the exact top candidates), probing every list
gives the exact candidates, and a list of queries answers as its queries one by one."""
import os
import time

import numpy as np
import pytest

pytest.importorskip("faiss")

from vinvl.data import load_corpus, write_synthetic_corpus  # noqa: E402
from vinvl.index import GallerySource, GalleryIndex, build_index  # noqa: E402
from vinvl.query import Retriever, core  # noqa: E402
from vinvl.retrieval.search import ExactSearch  # noqa: E402

from support.tinymodel import assert_same_answers, caption_embeddings, save_random_model  # noqa: E402

NUM_IMAGES, NLIST, CANDIDATES = 60, 12, 6


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("query_core")
    corpus = str(root / "corpus")
    write_synthetic_corpus(corpus, {"train": 0, "minival": 0, "val": 0, "test": NUM_IMAGES}, seed=3)
    model_dir = save_random_model(root / "model", ["match", "contrastive"], seed=11)
    index = str(root / "index")
    build_index(index, model_dir, [GallerySource(corpus, "test")], use_faiss=True, faiss_nlist=NLIST, progress=False)
    retriever = Retriever(model_dir, first_stage="contrastive", batch_size=64)
    retriever.use_index(index)
    captions = [per_image[0] for per_image in load_corpus(corpus, "test").captions[:20]]
    return retriever, model_dir, index, captions


def answered_ids(answer):
    return {item["image_id"] for item in answer["images"]}


def candidate_ids(index_path, model_dir, captions, search):
    with GalleryIndex.open(index_path, model_dir=model_dir) as index:
        _, rows = search(index, caption_embeddings(model_dir, captions))
        return [{index.image_id(int(r)) for r in row if r >= 0} for row in rows]  # -1: fewer than k in the probed lists


def test_caption_candidates_come_from_the_faiss_index_with_the_requests_nprobe(built):
    retriever, model_dir, index, captions = built
    # top_k = candidates: the answer lists every candidate, re-ranked
    answers = retriever.answer(captions, top_k=CANDIDATES, candidates=CANDIDATES, nprobe=1)
    faiss_sets = candidate_ids(index, model_dir, captions, lambda ix, q: ix.search(q, CANDIDATES, method="faiss", nprobe=1))
    exact_sets = candidate_ids(index, model_dir, captions, lambda ix, q: ExactSearch(ix.embeddings).search(q, CANDIDATES))
    assert [answered_ids(a) for a in answers] == faiss_sets
    # the check has power: one probed list of twelve misses exact candidates for some queries
    assert faiss_sets != exact_sets
    every_list = retriever.answer(captions, top_k=CANDIDATES, candidates=CANDIDATES, nprobe=NLIST)
    assert [answered_ids(a) for a in every_list] == exact_sets


def test_a_list_of_queries_answers_as_its_queries_one_by_one(built):
    retriever, _, _, captions = built
    queries = captions[:3] + [{"image_id": "500001"}, {"image_id": "500004", "caption": captions[0]}]
    together = retriever.answer(queries, top_k=4, candidates=CANDIDATES, nprobe=2)
    for query, answer in zip(queries, together):
        assert_same_answers(answer, retriever.answer(query, top_k=4, candidates=CANDIDATES, nprobe=2)[0])


def test_options_are_arguments_and_a_bad_one_names_itself(built):
    retriever, _, _, captions = built
    assert len(retriever.answer(captions[0], top_k=2)[0]["images"]) == 2
    assert len(retriever.answer(captions[0], top_k=5)[0]["images"]) == 5  # nothing carried over
    for name in ("top_k", "candidates", "nprobe"):
        with pytest.raises(ValueError, match=name):
            retriever.answer(captions[0], **{name: 0})
    with pytest.raises(ValueError, match="query 1: image 'nope' is not in the gallery"):
        retriever.answer([captions[0], {"image_id": "nope"}])


def test_image_queries_over_a_gallery_without_captions_say_what_gives_captions(built, tmp_path):
    _, model_dir, _, _ = built
    corpus = str(tmp_path / "corpus")
    write_synthetic_corpus(corpus, {"train": 0, "minival": 0, "val": 0, "test": 3}, seed=4)
    test = load_corpus(corpus, "test")
    retriever = Retriever(model_dir, first_stage="exhaustive")
    retriever.use_arrays(test.image_ids, test.features, test.tags)  # no captions
    assert len(retriever.answer("a dog", top_k=3)[0]["images"]) == 3  # caption queries still work
    with pytest.raises(ValueError, match=r"needs a gallery with captions.*gallery_dir= / --data_dir"):
        retriever.answer({"image_id": test.image_ids[0]})


def test_a_cut_caption_says_so_and_bad_feature_values_are_refused(built):
    retriever, _, _, captions = built
    kept = retriever.processor.max_seq_len - 2
    long_caption = " ".join([captions[0]] * 20)
    (answer,) = retriever.answer(long_caption)
    assert answer["truncated"]["kept"] == kept and answer["truncated"]["tokens"] > kept
    # words past the limit do not count: the same answer as the caption cut to its first tokens
    head = retriever.processor.tokenizer.convert_tokens_to_string(retriever.processor.tokenizer.tokenize(long_caption)[:kept])
    assert [i["image_id"] for i in answer["images"]] == [i["image_id"] for i in retriever.answer(head)[0]["images"]]
    assert "truncated" not in retriever.answer(captions[0])[0]
    for value, words in ((np.nan, "NaN or Inf"), (1e38, "within 10000")):
        features = np.zeros((2, 2054), np.float32)
        features[1, 7] = value
        with pytest.raises(ValueError, match=rf"query 1: .*{words}"):
            retriever.answer([captions[0], {"features": features, "tags": ["dog"]}])


@pytest.mark.parametrize("first_stage", ["contrastive", "tags"])
def test_the_core_proposes_what_evaluation_proposes(built, first_stage):
    """`vinvl eval` ranks whole splits with the engine, not through the core; both first stages
    must still propose the same candidates for the same gallery (one searcher, one BM25, one tie rule)."""
    _, model_dir, index, _ = built
    corpus_dir = os.path.join(os.path.dirname(index), "corpus")
    corpus = load_corpus(corpus_dir, "test")
    retriever = Retriever(model_dir, first_stage="contrastive", batch_size=64)
    retriever.use_data_dir(corpus_dir, "test")
    gallery = retriever.gallery.images
    captions = [gallery.captions[c] for c in range(0, gallery.num_captions, 7)]
    proposed = retriever.engine.first_stage_candidates(gallery, first_stage, CANDIDATES)
    answers = retriever.answer(captions, top_k=CANDIDATES, first_stage=first_stage, candidates=CANDIDATES)
    expected = [{corpus.image_ids[i] for i in proposed.t2i[c]} for c in range(0, gallery.num_captions, 7)]
    assert [answered_ids(a) for a in answers] == expected
    image_ids = corpus.image_ids[::9]
    answers = retriever.answer([{"image_id": i} for i in image_ids], top_k=CANDIDATES, first_stage=first_stage,
                               candidates=CANDIDATES)
    expected = [{gallery.captions[c] for c in proposed.i2t[i]} for i in range(0, gallery.num_images, 9)]
    assert [{item["caption"] for item in a["captions"]} for a in answers] == expected


def test_answer_timed_gives_the_same_answers_and_puts_feature_reads_apart_from_scoring(built, monkeypatch):
    retriever, _, _, captions = built
    queries = captions[:2] + [{"image_id": "500003"}]
    options = {"top_k": 3, "candidates": CANDIDATES, "first_stage": "tags"}
    plain = retriever.answer(queries, **options)
    # every feature read now takes READ seconds more on the core's clock (a clock the read moves forward, so
    # the machine's load cannot blur it): the breakdown must put that time under feature_reads, not under
    # scoring, which calls the reader
    READ, reads, skipped = 1000.0, [], [0.0]
    images = retriever.gallery.images
    read = images._read
    clock = time.perf_counter

    def slow_read(j):
        reads.append(j)
        skipped[0] += READ
        return read(j)

    monkeypatch.setattr(images, "_read", slow_read)
    monkeypatch.setattr(core.time, "perf_counter", lambda: clock() + skipped[0])
    timed, timings = retriever.answer_timed(queries, **options)
    assert timed == plain  # the same batch, the same forwards: equal to the last bit
    assert set(timings) == {"first_stage", "feature_reads", "scoring", "total"}
    assert len(reads) >= CANDIDATES  # the caption queries read their candidates' regions
    assert timings["feature_reads"] >= READ * len(reads)
    assert 0 < timings["scoring"] < READ * len(reads) / 2
    assert timings["first_stage"] > 0
    assert sum(timings[s] for s in ("first_stage", "feature_reads", "scoring")) <= timings["total"]
