"""The Oscar / VinVL model family, PaddleNLP style (as ``paddlenlp.transformers.bert``): configuration,
modeling, tokenizer, processor (tokenizer + region padding), the saved model directory, and
conversion of official PyTorch and seed-port checkpoints."""
from .configuration import OscarConfig
from .modeling import OscarForImageTextRetrieval, OscarModel, OscarPretrainedModel
from .processor import OscarProcessor
from .tokenizer import OscarTokenizer

__all__ = ["OscarConfig", "OscarModel", "OscarForImageTextRetrieval", "OscarPretrainedModel", "OscarProcessor", "OscarTokenizer"]
