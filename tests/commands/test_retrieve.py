"""``vinvl retrieve --index DIR``: the answers of a gallery index, equal to the Taskflow's over the same
index (what ``vinvl serve`` answers from), and a folder that is not an index refused in one line."""
import json

import pytest

import vinvl  # noqa: F401  (registers the task, CPU runtime defaults)
from paddlenlp import Taskflow

from vinvl.data import load_corpus
from vinvl.index import GallerySource, build_index

from support.commands import assert_user_error, vinvl_here

TEST_IMAGES = 8


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, train_tiny):
    root = tmp_path_factory.mktemp("retrieve_index")
    model_dir, corpus = train_tiny(root, TEST_IMAGES)
    index = str(root / "index")
    build_index(index, model_dir, [GallerySource(corpus, "test")], use_faiss=True, faiss_nlist=2, progress=False)
    return root, model_dir, corpus, index


@pytest.mark.parametrize("first_stage", ["contrastive", "tags"])
def test_retrieve_over_an_index_answers_as_the_taskflow_over_it(indexed, capfd, first_stage):
    root, model_dir, corpus, index = indexed
    test = load_corpus(corpus, "test")
    caption, image_id = test.captions[2][0], test.image_ids[5]
    done = vinvl_here(capfd, root, "retrieve", "--model_dir", model_dir, "--index", index, "--text", caption,
                      "--image_id", image_id, "--top_k", "3", "--candidates", "4", "--first_stage", first_stage)
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    served = Taskflow("image_text_retrieval", task_path=model_dir, index_path=index, top_k=3, candidates=4, first_stage=first_stage)
    assert answers == served([caption, {"image_id": image_id}])
    assert [len(answers[0]["images"]), len(answers[1]["captions"])] == [3, 3]


def test_retrieve_refuses_a_folder_that_is_not_an_index_before_loading_the_model(indexed, capfd, tmp_path):
    root, model_dir, _, _ = indexed
    done = vinvl_here(capfd, root, "retrieve", "--model_dir", model_dir, "--index", str(tmp_path), "--text", "a dog")
    assert_user_error(done, "vinvl retrieve", "--index", str(tmp_path), "not a gallery index")
