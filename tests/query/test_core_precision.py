"""The query core's ``precision`` (vinvl.query.Retriever): bf16 and int8 answer caption, image and
pair queries over a gallery index within their documented tolerance of fp32 (and measurably apart
from it: a retriever that silently ran fp32 fails); the first stage's embeddings stay fp32, so its
candidates do not change; a precision the CPU lacks is refused before the model loads."""
import numpy as np
import pytest

from vinvl.data import write_synthetic_corpus
from vinvl.errors import UsageError
from vinvl.index import GallerySource, build_index
from vinvl.query import Retriever

from support.precision import (
    assert_within_tolerance, refuse_missing_instructions, save_wide_model, skip_unless_supported,
)

NUM_IMAGES = 12


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(model_dir, index, the fp32 retriever over it, its caption queries)."""
    root = tmp_path_factory.mktemp("core_precision")
    corpus = str(root / "corpus")
    write_synthetic_corpus(corpus, {"train": 0, "minival": 0, "val": 0, "test": NUM_IMAGES}, seed=4)
    model_dir = save_wide_model(root / "model", trained_heads=["match", "contrastive"])
    index = str(root / "index")
    build_index(index, model_dir, [GallerySource(corpus, "test")], progress=False)
    fp32 = Retriever(model_dir, first_stage="exhaustive")
    fp32.use_index(index)
    captions = [c for c in fp32.gallery.images.captions[::7]]
    return model_dir, index, fp32, captions


def margins_of(answers):
    """{(query position, answered item): margin} of caption, image and pair answers."""
    found = {}
    for position, answer in enumerate(answers):
        if "images" in answer:
            found.update({(position, r["image_id"]): r["margin"] for r in answer["images"]})
        elif "captions" in answer:
            found.update({(position, r["caption"]): r["margin"] for r in answer["captions"]})
        else:
            found[(position, None)] = answer["margin"]
    return found


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_answers_within_the_precisions_tolerance(built, precision):
    skip_unless_supported(precision)
    model_dir, index, fp32, captions = built
    retriever = Retriever(model_dir, first_stage="exhaustive", precision=precision)
    retriever.use_index(index)
    assert retriever.precision == precision and retriever.model.precision == precision
    queries = captions + [{"image_id": "500003"}, {"image_id": "500005", "caption": captions[0]}]
    options = {"top_k": 1000, "first_stage": "exhaustive"}  # every item answered, so every margin compares
    low, reference = margins_of(retriever.answer(queries, **options)), margins_of(fp32.answer(queries, **options))
    assert low.keys() == reference.keys()
    keys = sorted(reference, key=str)
    scale = np.std([reference[k] for k in keys])
    assert_within_tolerance([low[k] for k in keys], [reference[k] for k in keys], precision, scale)


def test_the_first_stage_stays_fp32(built):
    skip_unless_supported("int8")
    model_dir, index, fp32, captions = built
    retriever = Retriever(model_dir, first_stage="contrastive", precision="int8")
    retriever.use_index(index)
    options = {"top_k": 4, "candidates": 4, "first_stage": "contrastive"}
    ids = [{r["image_id"] for r in a["images"]} for a in retriever.answer(captions, **options)]
    assert ids == [{r["image_id"] for r in a["images"]} for a in fp32.answer(captions, **options)]


def test_a_precision_the_machine_lacks_is_refused_before_the_model_loads(built, monkeypatch):
    model_dir, _, _, _ = built
    refuse_missing_instructions(monkeypatch)
    monkeypatch.setattr("vinvl.query.core.load_retrieval_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(UsageError, match="avx512_bf16"):
        Retriever(model_dir, precision="bf16")
    with pytest.raises(UsageError, match="GPU"):
        Retriever(model_dir, precision="fp16")
