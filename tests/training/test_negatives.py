"""Mined negatives: the draw (never the same image, softmax-weighted) and the pairs built from it."""
import numpy as np
import pytest

import vinvl  # noqa: F401  (CPU runtime defaults before paddle)

from vinvl.data.collate import MatchingCollator, MatchingPairDataset
from vinvl.oscar.model_dir import packaged_vocab_path
from vinvl.oscar.processor import OscarProcessor
from vinvl.oscar.tokenizer import OscarTokenizer
from vinvl.training.negatives import mined_pair_inputs, sample_negatives

from support.corpora import FEATURE_DIM, ListCorpus


@pytest.fixture(scope="module")
def processor():
    return OscarProcessor(OscarTokenizer(packaged_vocab_path()), max_seq_len=16, max_img_seq_len=4, img_feature_dim=FEATURE_DIM)


def test_draws_never_pick_an_item_of_the_same_image():
    rng = np.random.default_rng(0)
    image_index = np.array([0, 0, 1, 2, 2, 2, 3])
    for _ in range(200):
        similarity = rng.normal(scale=5.0, size=(7, 7))
        image_for_caption, caption_for_image = sample_negatives(similarity, image_index, rng)
        assert (image_for_caption >= 0).all() and (caption_for_image >= 0).all()
        assert (image_index[image_for_caption] != image_index).all()
        assert (image_index[caption_for_image] != image_index).all()


def test_draws_follow_the_softmax_of_the_similarity():
    similarity = np.array([[9.0, 2.0, 1.0, 0.0], [0.5, 9.0, -1.0, 1.5], [0.0, 0.0, 9.0, 0.0], [3.0, 1.0, 2.0, 9.0]])
    image_index = np.arange(4)
    rng = np.random.default_rng(1)
    draws = np.array([sample_negatives(similarity, image_index, rng) for _ in range(4000)])  # [N, 2, 4]
    for direction, logits in ((0, similarity), (1, similarity.T)):
        for row in range(4):
            others = [c for c in range(4) if c != row]
            expected = np.exp(logits[row, others]) / np.exp(logits[row, others]).sum()
            observed = np.array([(draws[:, direction, row] == c).mean() for c in others])
            np.testing.assert_allclose(observed, expected, atol=0.03, err_msg=f"direction {direction}, row {row}")


def test_a_batch_of_one_image_draws_nothing():
    image_for_caption, caption_for_image = sample_negatives(np.zeros((3, 3)), np.array([5, 5, 5]), np.random.default_rng(0))
    assert image_for_caption.tolist() == [-1, -1, -1] and caption_for_image.tolist() == [-1, -1, -1]


def test_mined_pairs_equal_the_same_pairs_encoded_directly(processor):
    corpus = ListCorpus(4, captions_per_image=2)
    dataset = MatchingPairDataset(corpus, processor, seed=0, pairs="mined")
    items = [dataset[i] for i in (0, 3, 4, 7)]  # images 0, 1, 2, 3
    batch = MatchingCollator(processor)(items)
    assert "input_ids" not in batch and "labels" not in batch  # pairs are assembled from the pieces
    image_for_caption = np.array([2, -1, 0, 1])
    caption_for_image = np.array([3, 2, -1, 0])
    got = mined_pair_inputs(processor, batch["pair_pieces"], batch["image_inputs"], image_for_caption, caption_for_image)

    item_caption = [corpus.captions[0][0], corpus.captions[1][1], corpus.captions[2][0], corpus.captions[3][1]]
    pairs = [(b, b) for b in range(4)] + [(0, 2), (2, 0), (3, 1)] + [(3, 0), (2, 1), (0, 3)]
    expected = processor.pad(
        [processor.encode(item_caption[c], corpus.tags[i], corpus.features(i)) for c, i in pairs], return_tensors="np"
    )
    assert got["labels"].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    for name in ("input_ids", "token_type_ids", "attention_mask", "img_feats"):
        np.testing.assert_array_equal(got[name].numpy(), expected[name], err_msg=name)


def test_pair_modes_of_the_dataset(processor):
    corpus = ListCorpus(3)
    contrastive_only = MatchingPairDataset(corpus, processor, pairs=None)[0]
    assert set(contrastive_only) == {"image_index", "caption_only", "image_only"}
    mined = MatchingPairDataset(corpus, processor, pairs="mined")[4]
    assert set(mined) == {"image_index", "caption_pieces", "tag_pieces", "caption_only", "image_only"}
    with pytest.raises(ValueError, match="single_modality"):
        MatchingPairDataset(corpus, processor, pairs="mined", single_modality=False)
    with pytest.raises(ValueError, match="pairs must be one of"):
        MatchingPairDataset(corpus, processor, pairs="hardest")
