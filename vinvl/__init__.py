"""vinvl-paddle: VinVL (Oscar+) image-text retrieval on PaddlePaddle / PaddleNLP."""
from .runtime import import_paddle_quietly, tune_cpu_defaults

tune_cpu_defaults()  # must run before paddle is imported anywhere below
import_paddle_quietly()

# isort: split
from .oscar.configuration import OscarConfig
from .oscar.modeling import OscarForImageTextRetrieval, OscarModel, OscarPretrainedModel
from .oscar.processor import OscarProcessor
from .apps.taskflow import register_task
from .oscar.tokenizer import OscarTokenizer

register_task()  # Taskflow("image_text_retrieval") works once vinvl is imported

__version__ = "0.1.0"

__all__ = [
    "OscarConfig",
    "OscarModel",
    "OscarForImageTextRetrieval",
    "OscarPretrainedModel",
    "OscarProcessor",
    "OscarTokenizer",
]
