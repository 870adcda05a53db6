"""OscarTokenizer: BERT WordPiece plus the one text layout Oscar reads.

The layout is ``[CLS] caption [SEP] tags [SEP]`` with segment 0 for ``[CLS]``, the caption
and the first ``[SEP]``, and segment 1 for the tags and the second ``[SEP]``. The caption is
cut to ``max_seq_len - 2`` tokens and the tags fill what remains, exactly as
``RetrievalDataset.tensorize_example`` in microsoft/Oscar ``oscar/run_retrieval.py``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

from paddlenlp.transformers import BertTokenizer

__all__ = ["OscarTokenizer"]

Tags = Union[str, Sequence[str], None]


class OscarTokenizer(BertTokenizer):
    """Lower-casing BERT WordPiece tokenizer that builds Oscar's caption + tags input."""

    resource_files_names = {"vocab_file": "vocab.txt"}
    pretrained_resource_files_map = {"vocab_file": {}}
    pretrained_init_configuration = {}
    max_model_input_sizes = {}

    def __init__(self, vocab_file: str, do_lower_case: bool = True, **kwargs):
        super().__init__(vocab_file, do_lower_case=do_lower_case, **kwargs)

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
        if max_seq_len < 3:
            raise ValueError(f"max_seq_len must be at least 3 to hold [CLS] and two [SEP], got {max_seq_len}")
        caption_tokens = self.tokenize(caption)[: max_seq_len - 2] if caption else []
        tokens = [self.cls_token] + caption_tokens + [self.sep_token]
        segments = [0] * len(tokens)
        tag_text = self.tags_to_text(tags)
        if tag_text:
            tag_tokens = self.tokenize(tag_text)[: max(max_seq_len - len(tokens) - 1, 0)]
            tokens += tag_tokens + [self.sep_token]
            segments += [1] * (len(tag_tokens) + 1)
        return {"input_ids": self.convert_tokens_to_ids(tokens), "token_type_ids": segments}

    def encode_oscar_batch(
        self, captions: Sequence[str], tags: Optional[Sequence[Tags]] = None, max_seq_len: int = 70
    ) -> List[Dict[str, List[int]]]:
        """:meth:`encode_oscar` over parallel lists of captions and tags."""
        if tags is None:
            tags = [None] * len(captions)
        if len(tags) != len(captions):
            raise ValueError(f"got {len(captions)} captions but {len(tags)} tag lists")
        return [self.encode_oscar(c, t, max_seq_len) for c, t in zip(captions, tags)]
