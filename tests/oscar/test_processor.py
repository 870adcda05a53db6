"""OscarProcessor: bulk pair assembly and masks equal what pad() builds."""
import numpy as np

from vinvl.oscar.model_dir import packaged_vocab_path
from vinvl.oscar.processor import OscarProcessor
from vinvl.oscar.tokenizer import OscarTokenizer


def test_mask_from_lengths_equals_pad():
    processor = OscarProcessor(OscarTokenizer(packaged_vocab_path()), max_seq_len=20, max_img_seq_len=6, img_feature_dim=4)
    rng = np.random.default_rng(0)
    examples = [
        processor.encode("a dog on a couch", ["dog"], rng.normal(size=(3, 4))),
        processor.encode("two cats sleeping in the sun near a window", None, rng.normal(size=(6, 4))),
        processor.encode("a bike", ["bike", "wheel", "street"], rng.normal(size=(1, 4))),
    ]
    batch = processor.pad(examples, return_tensors="np")
    mask = processor.attention_mask_from_lengths(
        [len(e["input_ids"]) for e in examples], batch["input_ids"].shape[1], [3, 6, 1], batch["img_feats"].shape[1]
    )
    np.testing.assert_array_equal(mask, batch["attention_mask"])


def test_assembled_pairs_equal_pad_including_single_modality_rows():
    processor = OscarProcessor(OscarTokenizer(packaged_vocab_path()), max_seq_len=12, max_img_seq_len=6, img_feature_dim=4)
    captions = ["a dog on a couch next to a very long row of windows", "", "a bike"]
    tags = [["dog", "couch"], ["cat", "window", "sun"], None]
    region_lens = np.array([3, 6, 0])
    caption_ids, caption_lens = processor.caption_pieces(captions)
    tag_ids, tag_lens = processor.tag_pieces(tags)
    got = processor.assemble_pairs(caption_ids, caption_lens, tag_ids, tag_lens, region_lens, 6)
    feats = [np.ones((n, 4)) if n else None for n in region_lens]
    expected = processor.pad([processor.encode(c, t, f) for c, t, f in zip(captions, tags, feats)], return_tensors="np")
    for name in ("input_ids", "token_type_ids", "attention_mask"):
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
