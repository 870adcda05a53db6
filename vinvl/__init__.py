"""vinvl-paddle: VinVL (Oscar+) image-text retrieval on PaddlePaddle / PaddleNLP.

``import vinvl`` is light: it imports neither paddle nor paddlenlp, so ``vinvl --help`` answers
at once. It

- sets the CPU defaults of :mod:`vinvl.runtime` (they only act before paddle is imported);
- makes paddle's first import quiet, whoever imports it later (:func:`vinvl.runtime.quiet_paddle_import`);
- resolves the public model classes (``vinvl.OscarModel``...) on first use (PEP 562);
- registers ``Taskflow("image_text_retrieval")``: at once when ``paddlenlp.taskflow`` is already
  imported, else right after ``paddlenlp.taskflow.taskflow`` is (an import hook,
  :mod:`vinvl.import_hooks`; when that import happens inside a vinvl module's, right after the
  outermost vinvl import), so ``import vinvl`` and ``from paddlenlp import Taskflow`` work in
  either order.
"""
import importlib
from types import ModuleType
from typing import Any, List

from .import_hooks import after_import, track_imports, when_settled
from .runtime import quiet_paddle_import, tune_cpu_defaults

tune_cpu_defaults()  # must run before paddle is imported anywhere
quiet_paddle_import()
track_imports(__name__)

__version__ = "0.1.0"

# public name -> the module that defines it, imported on first access
_LAZY = {
    "OscarConfig": ".oscar.configuration",
    "OscarModel": ".oscar.modeling",
    "OscarForImageTextRetrieval": ".oscar.modeling",
    "OscarPretrainedModel": ".oscar.modeling",
    "OscarProcessor": ".oscar.processor",
    "OscarTokenizer": ".oscar.tokenizer",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))


def _register_task() -> None:
    from .apps.taskflow import register_task

    register_task()


def _register_task_when_settled(_taskflow_module: ModuleType) -> None:
    # paddlenlp is usually first imported by a vinvl module, whose import is then half done, and
    # register_task's module imports vinvl modules: it waits for the outermost vinvl import to end.
    when_settled(__name__, _register_task)


after_import("paddlenlp.taskflow.taskflow", _register_task_when_settled)
