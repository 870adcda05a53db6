"""OscarTokenizer: BERT WordPiece plus the one text layout Oscar reads.

The layout is ``[CLS] caption [SEP] tags [SEP]`` with segment 0 for ``[CLS]``, the caption
and the first ``[SEP]``, and segment 1 for the tags and the second ``[SEP]``. The caption is
cut to ``max_seq_len - 2`` tokens and the tags fill what remains, exactly as
``RetrievalDataset.tensorize_example`` in microsoft/Oscar ``oscar/run_retrieval.py``.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from paddlenlp.transformers import BertTokenizer

from ..assets import VOCAB_PATH
from .names import SHIPPED_CONFIGS, pretrained_source

__all__ = ["OscarTokenizer"]

Tags = Union[str, Sequence[str], None]

_PRINTABLE_ASCII = re.compile(r"[ -~]*")  # space to tilde: no control characters, no whitespace but " "
WORD_CACHE_SIZE = 1 << 17  # distinct words whose pieces are kept (cleared when full)


class OscarTokenizer(BertTokenizer):
    """Lower-casing BERT WordPiece tokenizer that builds Oscar's caption + tags input."""

    resource_files_names = {"vocab_file": "vocab.txt"}
    # The shipped configs by name (PaddleNLP's built-in convention): all read the shipped vocabulary.
    pretrained_resource_files_map = {"vocab_file": {name: VOCAB_PATH for name in SHIPPED_CONFIGS}}
    pretrained_init_configuration = {name: {"do_lower_case": True} for name in SHIPPED_CONFIGS}
    max_model_input_sizes = {}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "OscarTokenizer":
        """A tokenizer from a local directory, or by the name of a shipped config (its vocabulary
        ships with the package); never from the network (see :mod:`vinvl.oscar.names`)."""
        source = pretrained_source(pretrained_model_name_or_path)
        if source in cls.pretrained_init_configuration:
            # Built here: PaddleNLP's route for built-in names saves the tokenizer's files beside its
            # vocabulary, which is inside the installed package.
            settings = {**cls.pretrained_init_configuration[source], **kwargs}
            return cls(cls.pretrained_resource_files_map["vocab_file"][source], *args, **settings)
        return super().from_pretrained(source, *args, **kwargs)

    def __init__(self, vocab_file: str, do_lower_case: bool = True, **kwargs):
        super().__init__(vocab_file, do_lower_case=do_lower_case, **kwargs)
        self._word_pieces: Dict[str, Tuple[Tuple[str, ...], Tuple[int, ...]]] = {}
        self._basic_words: Dict[str, Tuple[str, ...]] = {}

    def tokenize(self, text: str, **kwargs) -> List[str]:
        """BERT's ``tokenize``, word by word with each distinct word's pieces remembered.

        PaddleNLP's tokenizer runs per character in Python (cleaning, a lower-casing regex, punctuation
        splits): about 0.5 ms a caption, most of an index build's time before this. For text of
        printable ASCII, BERT's result is the concatenation of each space-separated word's result
        (cleaning, accents, punctuation, special tokens and WordPiece all work within a word), unless
        a token that is never split holds a space; such text, and any other, takes BERT's own path.
        """
        if kwargs or not self._word_by_word(text):
            return super().tokenize(text, **kwargs)
        return [piece for word in text.split(" ") if word for piece in self._word(word)[0]]

    def text_ids(self, text: str) -> List[int]:
        """``convert_tokens_to_ids(tokenize(text))``, with each distinct word's ids remembered too."""
        if not self._word_by_word(text):
            return self.convert_tokens_to_ids(super().tokenize(text))
        return [i for word in text.split(" ") if word for i in self._word(word)[1]]

    def basic_tokens(self, text: str) -> List[str]:
        """``basic_tokenizer.tokenize(text)``: BERT's words before WordPiece (lower-cased, accents stripped,
        punctuation split off), word by word with each distinct word's remembered, as :meth:`tokenize`."""
        if not _PRINTABLE_ASCII.fullmatch(text):
            return self.basic_tokenizer.tokenize(text)
        known = self._basic_words
        tokens: List[str] = []
        for word in text.split(" "):
            if word:
                word_tokens = known.get(word)
                if word_tokens is None:
                    if len(known) >= WORD_CACHE_SIZE:
                        known.clear()
                    word_tokens = known[word] = tuple(self.basic_tokenizer.tokenize(word))
                tokens.extend(word_tokens)
        return tokens

    def _word_by_word(self, text: str) -> bool:
        return bool(_PRINTABLE_ASCII.fullmatch(text)) and not any(" " in t for t in self.unique_no_split_tokens)

    def _word(self, word: str) -> Tuple[Tuple[str, ...], Tuple[int, ...]]:
        """One word's pieces and ids, tokenized by BERT's path once."""
        known = self._word_pieces.get(word)
        if known is None:
            if len(self._word_pieces) >= WORD_CACHE_SIZE:
                self._word_pieces.clear()
            pieces = super().tokenize(word)
            known = self._word_pieces[word] = (tuple(pieces), tuple(self.convert_tokens_to_ids(pieces)))
        return known

    @staticmethod
    def tags_to_text(tags: Tags) -> str:
        """Object tags as the official code joins them: class names separated by spaces."""
        if tags is None:
            return ""
        if isinstance(tags, str):
            return tags
        return " ".join(tags)

    def encode_oscar(self, caption: str, tags: Tags = None, max_seq_len: int = 70) -> Dict[str, List[int]]:
        """Token ids and segment ids of ``[CLS] caption [SEP] tags [SEP]``, unpadded.

        An empty caption gives ``[CLS] [SEP] tags [SEP]`` (the image-only input of the
        contrastive heads); no tags give ``[CLS] caption [SEP]`` (the caption-only input).
        """
        tag_text = self.tags_to_text(tags)
        return self.build_pair_ids(
            self.text_ids(caption) if caption else [],
            self.text_ids(tag_text) if tag_text else None,
            max_seq_len,
        )

    def build_pair_ids(
        self, caption_ids: Sequence[int], tag_ids: Optional[Sequence[int]], max_seq_len: int = 70
    ) -> Dict[str, List[int]]:
        """The Oscar layout from already tokenized caption and tag ids (no special tokens).

        Lets a caller tokenize each caption and each image's tags once and pair them many times.
        ``tag_ids=None`` leaves out the tag segment and its ``[SEP]``.
        """
        if max_seq_len < 3:
            raise ValueError(f"max_seq_len must be at least 3 to hold [CLS] and two [SEP], got {max_seq_len}")
        caption_ids = list(caption_ids[: max_seq_len - 2])
        input_ids = [self.cls_token_id] + caption_ids + [self.sep_token_id]
        token_type_ids = [0] * len(input_ids)
        room = max_seq_len - len(input_ids) - 1
        # A caption that fills max_seq_len leaves no room for the tag [SEP]; the tag segment is
        # then left out so the pair never exceeds max_seq_len (the official slice overflows here).
        if tag_ids and room >= 0:
            kept = list(tag_ids[:room])
            input_ids += kept + [self.sep_token_id]
            token_type_ids += [1] * (len(kept) + 1)
        return {"input_ids": input_ids, "token_type_ids": token_type_ids}

    def build_pair_id_arrays(
        self,
        caption_ids: np.ndarray,
        caption_lens: np.ndarray,
        tag_ids: np.ndarray,
        tag_lens: np.ndarray,
        max_seq_len: int = 70,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`build_pair_ids` for a whole batch at once, in numpy.

        ``caption_ids [B, Lc]`` / ``tag_ids [B, Lt]`` hold each row's ids (no special tokens) in
        their first ``caption_lens[b]`` / ``tag_lens[b]`` columns; a tag length of 0 leaves out
        the tag segment, as ``tag_ids=None`` does. Returns ``input_ids [B, T]`` and
        ``token_type_ids [B, T]``, right-filled with ``pad_token_id`` / 0 up to the longest row
        ``T``, and each row's length ``[B]``. Lets a scorer assemble many pairs without per-pair
        Python; row ``b`` equals ``build_pair_ids`` of the same ids.
        """
        if max_seq_len < 3:
            raise ValueError(f"max_seq_len must be at least 3 to hold [CLS] and two [SEP], got {max_seq_len}")
        caption_lens = np.minimum(np.asarray(caption_lens, dtype=np.int64), max_seq_len - 2)
        tag_lens = np.asarray(tag_lens, dtype=np.int64)
        room = max_seq_len - caption_lens - 3
        has_tags = (tag_lens > 0) & (room >= 0)
        kept_tags = np.where(has_tags, np.minimum(tag_lens, np.maximum(room, 0)), 0)
        lengths = caption_lens + 2 + np.where(has_tags, kept_tags + 1, 0)
        width = int(lengths.max()) if len(lengths) else 0
        pos = np.arange(width, dtype=np.int64)[None, :]
        cap_end = caption_lens[:, None] + 1  # position of the first [SEP]
        tag_end = cap_end + 1 + kept_tags[:, None]  # position of the second [SEP]
        in_caption = (pos >= 1) & (pos < cap_end)
        in_tags = (pos > cap_end) & (pos < tag_end)
        caption_tok = _gather_columns(caption_ids, pos - 1, in_caption)
        tag_tok = _gather_columns(tag_ids, pos - cap_end - 1, in_tags)
        input_ids = np.full((len(lengths), width), self.pad_token_id, dtype=np.int64)
        input_ids[:, :1] = self.cls_token_id
        input_ids = np.where(in_caption, caption_tok, input_ids)
        input_ids = np.where(in_tags, tag_tok, input_ids)
        input_ids = np.where((pos == cap_end) | ((pos == tag_end) & has_tags[:, None]), self.sep_token_id, input_ids)
        token_type_ids = ((pos > cap_end) & (pos < lengths[:, None])).astype(np.int64)
        return input_ids, token_type_ids, lengths

    def encode_oscar_batch(
        self, captions: Sequence[str], tags: Optional[Sequence[Tags]] = None, max_seq_len: int = 70
    ) -> List[Dict[str, List[int]]]:
        """:meth:`encode_oscar` over parallel lists of captions and tags."""
        if tags is None:
            tags = [None] * len(captions)
        if len(tags) != len(captions):
            raise ValueError(f"got {len(captions)} captions but {len(tags)} tag lists")
        return [self.encode_oscar(c, t, max_seq_len) for c, t in zip(captions, tags)]


def _gather_columns(ids: np.ndarray, columns: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``ids[b, columns[b, t]]`` where ``valid``, 0 elsewhere (columns clipped so the gather never overflows)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.shape[1] == 0:
        return np.zeros(columns.shape, dtype=np.int64)
    safe = np.clip(columns, 0, ids.shape[1] - 1)
    return np.where(valid, np.take_along_axis(ids, safe, axis=1), 0)
