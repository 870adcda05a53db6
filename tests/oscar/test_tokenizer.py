"""OscarTokenizer against HuggingFace's BERT tokenizer (``tokenizers``-backed BertTokenizerFast).

Same vocab (vinvl/assets/vocab.txt, bert-base-uncased's), real COCO captions and tag strings
made of the VinVL labelmap's class and attribute names. The Oscar layout is checked against an
independent construction: the official truncation rule applied to HF's ids, HF's own
``build_inputs_with_special_tokens`` / ``create_token_type_ids_from_sequences`` for the layout.
"""
from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

import vinvl  # noqa: E402,F401
from vinvl import OscarTokenizer  # noqa: E402
from vinvl.assets import VOCAB_PATH as VOCAB  # noqa: E402

from support.realdata import labelmap_names, read_captions  # noqa: E402

transformers = pytest.importorskip("transformers")



def tag_strings(count: int = 60, seed: int = 0) -> list:
    """Detector-like tag strings: 5-30 class names, some preceded by an attribute."""
    labels, attributes = labelmap_names()
    rng = random.Random(seed)
    strings = []
    for _ in range(count):
        tags = []
        for _ in range(rng.randint(5, 30)):
            name = rng.choice(labels)
            tags.append(f"{rng.choice(attributes)} {name}" if rng.random() < 0.3 else name)
        strings.append(" ".join(tags))
    return strings


@pytest.fixture(scope="module")
def tokenizer() -> OscarTokenizer:
    return OscarTokenizer(VOCAB)


@pytest.fixture(scope="module")
def hf_tokenizer():
    return transformers.BertTokenizerFast(vocab_file=VOCAB, do_lower_case=True)


def hf_ids(hf_tokenizer, text: str) -> list:
    return hf_tokenizer(text, add_special_tokens=False)["input_ids"]


def reference_layout(hf_tokenizer, caption: str, tags: str, max_seq_len: int) -> dict:
    """The official ``tensorize_example`` rule on HF ids, laid out by HF's BERT pair functions."""
    caption_ids = hf_ids(hf_tokenizer, caption)[: max_seq_len - 2]
    if not tags:
        ids = hf_tokenizer.build_inputs_with_special_tokens(caption_ids)
        return {"input_ids": ids, "token_type_ids": hf_tokenizer.create_token_type_ids_from_sequences(caption_ids)}
    room = max_seq_len - (len(caption_ids) + 2) - 1
    if room < 0:  # the caption fills the sequence: no room for the tag [SEP], tags are left out
        ids = hf_tokenizer.build_inputs_with_special_tokens(caption_ids)
        return {"input_ids": ids, "token_type_ids": hf_tokenizer.create_token_type_ids_from_sequences(caption_ids)}
    tag_ids = hf_ids(hf_tokenizer, tags)[:room]
    return {
        "input_ids": hf_tokenizer.build_inputs_with_special_tokens(caption_ids, tag_ids),
        "token_type_ids": hf_tokenizer.create_token_type_ids_from_sequences(caption_ids, tag_ids),
    }


def test_vocab_is_bert_base_uncased(tokenizer, hf_tokenizer):
    assert tokenizer.vocab_size == hf_tokenizer.vocab_size == 30522
    for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        assert tokenizer.convert_tokens_to_ids(token) == hf_tokenizer.convert_tokens_to_ids(token)


def test_wordpiece_matches_hf_on_real_captions(tokenizer, hf_tokenizer):
    captions = read_captions()
    assert len(captions) >= 50
    for caption in captions:
        assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize(caption)) == hf_ids(hf_tokenizer, caption), caption


def test_wordpiece_matches_hf_on_every_labelmap_name(tokenizer, hf_tokenizer):
    labels, attributes = labelmap_names()
    assert len(labels) == 1594 and len(attributes) == 524
    for name in labels + attributes:
        assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize(name)) == hf_ids(hf_tokenizer, name), name
    # Whole tag strings too (word boundaries between tags).
    for tags in tag_strings():
        assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize(tags)) == hf_ids(hf_tokenizer, tags)


@pytest.mark.parametrize("max_seq_len", [3, 4, 8, 16, 35, 70, 128])
def test_oscar_layout_matches_independent_construction(tokenizer, hf_tokenizer, max_seq_len):
    captions = read_captions()
    tags = tag_strings(len(captions), seed=max_seq_len)
    for caption, tag_text in zip(captions, tags):
        got = tokenizer.encode_oscar(caption, tag_text, max_seq_len=max_seq_len)
        assert got == reference_layout(hf_tokenizer, caption, tag_text, max_seq_len)
        assert len(got["input_ids"]) <= max_seq_len
        assert len(got["token_type_ids"]) == len(got["input_ids"])


def test_layout_details(tokenizer, hf_tokenizer):
    caption, tags = "A pizza with mushrooms on a plate.", ["pizza", "white plate", "mushroom"]
    out = tokenizer.encode_oscar(caption, tags, max_seq_len=70)
    caption_ids, tag_ids = hf_ids(hf_tokenizer, caption), hf_ids(hf_tokenizer, "pizza white plate mushroom")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert out["input_ids"] == [cls] + caption_ids + [sep] + tag_ids + [sep]
    assert out["token_type_ids"] == [0] * (len(caption_ids) + 2) + [1] * (len(tag_ids) + 1)
    # A list of tags is the same as the space-joined string.
    assert out == tokenizer.encode_oscar(caption, "pizza white plate mushroom")
    # Caption only, and image only (empty caption), as the contrastive heads read them.
    assert tokenizer.encode_oscar(caption)["input_ids"] == [cls] + caption_ids + [sep]
    image_only = tokenizer.encode_oscar("", tags)
    assert image_only["input_ids"] == [cls, sep] + tag_ids + [sep]
    assert image_only["token_type_ids"] == [0, 0] + [1] * (len(tag_ids) + 1)


def test_truncation_caption_first_then_tags_fill(tokenizer, hf_tokenizer):
    caption = read_captions()[0]
    n_caption = len(hf_ids(hf_tokenizer, caption))
    tags = tag_strings(1)[0]
    n_tags = len(hf_ids(hf_tokenizer, tags))
    assert n_tags > 20
    max_len = n_caption + 3 + 5  # room for exactly 5 tag tokens
    out = tokenizer.encode_oscar(caption, tags, max_seq_len=max_len)
    assert len(out["input_ids"]) == max_len
    assert out["token_type_ids"].count(1) == 5 + 1
    # A caption longer than max_seq_len - 2 is cut there; the tags then have no room.
    out = tokenizer.encode_oscar(caption, tags, max_seq_len=n_caption - 1)
    assert out["input_ids"][1:-1] == hf_ids(hf_tokenizer, caption)[: n_caption - 3]
    assert len(out["input_ids"]) == n_caption - 1 and set(out["token_type_ids"]) == {0}


def test_build_pair_ids_rejects_too_short(tokenizer):
    with pytest.raises(ValueError, match="at least 3"):
        tokenizer.build_pair_ids([5, 6], [7], max_seq_len=2)


def test_encode_oscar_batch(tokenizer):
    captions = read_captions()[:4]
    tags = tag_strings(4)
    assert tokenizer.encode_oscar_batch(captions, tags, 20) == [
        tokenizer.encode_oscar(c, t, 20) for c, t in zip(captions, tags)
    ]
    with pytest.raises(ValueError, match="4 captions but 3 tag lists"):
        tokenizer.encode_oscar_batch(captions, tags[:3])


def test_save_and_load_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(str(tmp_path))
    assert {"vocab.txt", "tokenizer_config.json"} <= set(os.listdir(tmp_path))
    with open(tmp_path / "vocab.txt", encoding="utf-8") as saved, open(VOCAB, encoding="utf-8") as original:
        assert saved.read().split() == original.read().split()
    loaded = OscarTokenizer.from_pretrained(str(tmp_path))
    assert isinstance(loaded, OscarTokenizer)
    assert loaded.do_lower_case
    captions, tags = read_captions()[:10], tag_strings(10)
    for caption, tag_text in zip(captions, tags):
        assert loaded.encode_oscar(caption, tag_text, 40) == tokenizer.encode_oscar(caption, tag_text, 40)


UNUSUAL_TEXTS = [
    "A man riding a horse, on the beach!", "don't stop", "HELLO World", "e.g. 3.5mm", "#$%&*()", "under_score",
    "mr. o'neil's 2nd", "  spaces  around  ", "", "a" * 150,  # a word past WordPiece's 100 characters is [UNK]
    "a [SEP] b", "a [MASK]dog", "[unused1] x", "x[sep]y",  # special tokens (case-sensitive) and a look-alike
    "naïve café", "中文 text", "tab\tsep", "new\nline", "x\x00y", "A.B,C-D",  # accents, CJK, control characters
]


@pytest.fixture(scope="module")
def paddlenlp_bert():
    from paddlenlp.transformers import BertTokenizer

    return BertTokenizer(VOCAB, do_lower_case=True)


def test_tokenize_equals_paddlenlp_bert_word_by_word_or_not(paddlenlp_bert):
    tokenizer = OscarTokenizer(VOCAB)  # a fresh cache
    texts = UNUSUAL_TEXTS + read_captions() + tag_strings()
    for _ in range(2):  # the second pass answers plain text from the remembered words
        for text in texts:
            tokens = paddlenlp_bert.tokenize(text)
            assert tokenizer.tokenize(text) == tokens, repr(text)
            assert tokenizer.text_ids(text) == paddlenlp_bert.convert_tokens_to_ids(tokens), repr(text)
            assert tokenizer.basic_tokens(text) == paddlenlp_bert.basic_tokenizer.tokenize(text), repr(text)
    remembered = tokenizer._word_pieces
    assert "horse," in remembered and "beach!" in remembered  # plain text went word by word
    assert "horse," in tokenizer._basic_words
    assert not any(word in remembered for word in ("naïve", "tab\tsep", "中文"))  # the rest did not
    tokenizer.add_tokens(["new york"])  # a token never split that holds a space: BERT's path, which keeps it whole
    assert tokenizer.tokenize("a new york cab") == ["a", "new york", "cab"]


def test_the_remembered_words_are_bounded(monkeypatch):
    from vinvl.oscar import tokenizer as module

    monkeypatch.setattr(module, "WORD_CACHE_SIZE", 3)
    tokenizer = OscarTokenizer(VOCAB)
    assert tokenizer.tokenize("one two three four five") == ["one", "two", "three", "four", "five"]
    assert len(tokenizer._word_pieces) <= 3
