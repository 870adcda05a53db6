"""OscarProcessor: tokenizer + region features -> one padded batch.

This is the only place that knows how a batch is padded and masked. Batches are padded
dynamically, to the longest text and the longest region set in the batch; the attention
mask covers the text positions, then the region positions (the official ``att_mask_type=CLR``).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .tokenizer import OscarTokenizer, Tags

__all__ = ["OscarProcessor"]


class OscarProcessor:
    """Turns captions, tags and region features into model inputs.

    ``encode`` handles one pair; ``pad`` stacks encoded pairs into a batch of
    ``input_ids [B,T]``, ``token_type_ids [B,T]``, ``attention_mask [B,T+R]`` and
    ``img_feats [B,R,D]`` (left out when no pair in the batch has regions).
    """

    def __init__(
        self,
        tokenizer: OscarTokenizer,
        max_seq_len: int = 70,
        max_img_seq_len: int = 70,
        img_feature_dim: int = 2054,
    ):
        if max_img_seq_len < 0:
            raise ValueError(f"max_img_seq_len must be >= 0, got {max_img_seq_len}")
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.max_img_seq_len = max_img_seq_len
        self.img_feature_dim = img_feature_dim
        self.pad_token_id = tokenizer.pad_token_id

    def encode_text(self, caption: str, tags: Tags = None) -> Dict[str, List[int]]:
        """Ids and segments of ``[CLS] caption [SEP] tags [SEP]`` (see :class:`OscarTokenizer`)."""
        return self.tokenizer.encode_oscar(caption, tags, self.max_seq_len)

    def prepare_regions(self, img_feats: np.ndarray) -> np.ndarray:
        """Validate one image's ``[R, D]`` features and keep the first ``max_img_seq_len`` regions."""
        feats = np.asarray(img_feats, dtype=np.float32)
        if feats.ndim != 2 or feats.shape[1] != self.img_feature_dim:
            raise ValueError(
                f"region features must have shape [num_regions, {self.img_feature_dim}], got {list(feats.shape)}"
            )
        return feats[: self.max_img_seq_len]

    def encode(self, caption: str, tags: Tags = None, img_feats: Optional[np.ndarray] = None) -> Dict:
        """One (caption + tags, regions) pair, unpadded."""
        example = dict(self.encode_text(caption, tags))
        if img_feats is not None:
            example["img_feats"] = self.prepare_regions(img_feats)
        return example

    def pad(
        self,
        examples: Sequence[Mapping],
        return_tensors: str = "pd",
        pad_text_to: Optional[int] = None,
        pad_regions_to: Optional[int] = None,
    ) -> Dict:
        """Stack encoded pairs into one batch, padded to the longest text and region set.

        ``pad_text_to`` / ``pad_regions_to`` force a fixed size instead (the official
        fixed 70 + 70 padding, used by baselines); ``return_tensors`` is ``"pd"`` or ``"np"``.
        """
        if not examples:
            raise ValueError("cannot pad an empty batch")
        text_lens = [len(e["input_ids"]) for e in examples]
        region_lens = [len(e["img_feats"]) if e.get("img_feats") is not None else 0 for e in examples]
        text_len = pad_text_to if pad_text_to is not None else max(text_lens)
        region_len = pad_regions_to if pad_regions_to is not None else max(region_lens)
        if max(text_lens) > text_len or max(region_lens) > region_len:
            raise ValueError(f"a pair is longer than the fixed padding ({text_len} tokens, {region_len} regions)")
        batch = len(examples)
        input_ids = np.full((batch, text_len), self.pad_token_id, dtype=np.int64)
        token_type_ids = np.zeros((batch, text_len), dtype=np.int64)
        attention_mask = np.zeros((batch, text_len + region_len), dtype=np.int64)
        img_feats = np.zeros((batch, region_len, self.img_feature_dim), dtype=np.float32)
        for i, example in enumerate(examples):
            n_text, n_regions = text_lens[i], region_lens[i]
            input_ids[i, :n_text] = example["input_ids"]
            token_type_ids[i, :n_text] = example["token_type_ids"]
            attention_mask[i, :n_text] = 1
            attention_mask[i, text_len : text_len + n_regions] = 1
            if n_regions:
                img_feats[i, :n_regions] = example["img_feats"]
        out = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
        if region_len:
            out["img_feats"] = img_feats
        if return_tensors == "np":
            return out
        if return_tensors != "pd":
            raise ValueError(f"return_tensors must be 'pd' or 'np', got {return_tensors!r}")
        import paddle

        return {k: paddle.to_tensor(v) for k, v in out.items()}

    def caption_pieces(self, captions: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Each caption's WordPiece ids, cut to what any layout keeps (``max_seq_len - 2``),
        as a zero-padded ``[N, L]`` matrix and lengths ``[N]``: the caption side of
        :meth:`assemble_pairs`, tokenized once however many pairs it joins."""
        return self._pieces(captions, self.max_seq_len - 2)

    def tag_pieces(self, tags: Sequence[Tags]) -> Tuple[np.ndarray, np.ndarray]:
        """Each image's tag ids, cut to ``max_seq_len - 3``, as :meth:`caption_pieces` does."""
        return self._pieces([self.tokenizer.tags_to_text(t) for t in tags], self.max_seq_len - 3)

    def _pieces(self, texts: Sequence[str], keep: int) -> Tuple[np.ndarray, np.ndarray]:
        tok = self.tokenizer
        return self.stack_pieces([tok.text_ids(t)[:keep] if t else [] for t in texts])

    @staticmethod
    def stack_pieces(rows: Sequence[Sequence[int]]) -> Tuple[np.ndarray, np.ndarray]:
        """Id sequences as a zero-padded ``[N, L]`` matrix (at least one column) and lengths ``[N]``."""
        lens = np.array([len(r) for r in rows], dtype=np.int64)
        matrix = np.zeros((len(rows), max(int(lens.max(initial=0)), 1)), dtype=np.int64)
        for row, row_ids in enumerate(rows):
            matrix[row, : len(row_ids)] = row_ids
        return matrix, lens

    def assemble_pairs(
        self,
        caption_ids: np.ndarray,
        caption_lens: np.ndarray,
        tag_ids: np.ndarray,
        tag_lens: np.ndarray,
        region_lens: np.ndarray,
        region_len: int,
    ) -> Dict[str, np.ndarray]:
        """Text inputs and mask of many pairs from token pieces, in numpy, without per-pair Python.

        Row ``b`` pairs ``caption_ids[b]`` with ``tag_ids[b]`` (pieces as :meth:`caption_pieces`
        and :meth:`tag_pieces` give them; a zero length leaves that side out) and an image of
        ``region_lens[b]`` regions, the regions padded to ``region_len``. Returns
        ``input_ids`` / ``token_type_ids [B, T]`` and ``attention_mask [B, T + region_len]``
        (float32), equal to what :meth:`pad` gives for the same pairs.
        """
        input_ids, token_type_ids, text_lens = self.tokenizer.build_pair_id_arrays(
            caption_ids, caption_lens, tag_ids, tag_lens, self.max_seq_len
        )
        mask = self.attention_mask_from_lengths(text_lens, input_ids.shape[1], region_lens, region_len)
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": mask}

    @staticmethod
    def attention_mask_from_lengths(
        text_lens: np.ndarray, text_len: int, region_lens: np.ndarray, region_len: int
    ) -> np.ndarray:
        """The ``[B, text_len + region_len]`` float32 mask :meth:`pad` builds, from lengths alone
        (text positions, then region positions), for callers that assemble pairs in bulk."""
        text = np.arange(text_len)[None, :] < np.asarray(text_lens)[:, None]
        regions = np.arange(region_len)[None, :] < np.asarray(region_lens)[:, None]
        return np.concatenate([text, regions], axis=1).astype(np.float32)

    def __call__(
        self,
        captions: Sequence[str],
        tags: Optional[Sequence[Tags]] = None,
        img_feats: Optional[Sequence[np.ndarray]] = None,
        return_tensors: str = "pd",
    ) -> Dict:
        """Encode and pad parallel lists of captions, tags and per-image region features."""
        if tags is None:
            tags = [None] * len(captions)
        if img_feats is None:
            img_feats = [None] * len(captions)
        if not (len(captions) == len(tags) == len(img_feats)):
            raise ValueError(
                f"captions, tags and img_feats differ in length: {len(captions)}, {len(tags)}, {len(img_feats)}"
            )
        examples = [self.encode(c, t, f) for c, t, f in zip(captions, tags, img_feats)]
        return self.pad(examples, return_tensors=return_tensors)
