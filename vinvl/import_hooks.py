"""Act on another package's first import without importing it: around it, or right after it.

``import vinvl`` must stay light (no paddle, no paddlenlp), yet two things must happen whenever
those are imported later, by vinvl or by the user: paddle's import is quieted (see
:mod:`vinvl.runtime`), and ``Taskflow("image_text_retrieval")`` is registered once
``paddlenlp.taskflow.taskflow`` exists. A hook is an entry of ``sys.meta_path`` that finds
nothing itself: for its one module name it asks the other finders for the module's spec and
wraps the spec's ``loader.exec_module``, so that the module's code runs inside a context (or
is followed by a callback). It removes itself when the module's code runs; a later reload is
not hooked.

A callback that imports vinvl modules cannot run in the middle of a vinvl import (paddlenlp is
usually first imported by a vinvl module, whose own import is then half done: a circular
import). :func:`when_settled` runs it once no module of a package is being imported in the
thread: at once, or when the outermost such import ends.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import sys
import threading
from types import ModuleType
from typing import Callable, ContextManager, Dict, Iterator, List, Optional

__all__ = ["ImportHook", "around_import", "after_import", "track_imports", "when_settled"]


def _other_spec(finder: importlib.abc.MetaPathFinder, fullname: str, path, target):
    """The spec the finders of ``sys.meta_path`` other than ``finder`` give ``fullname``, or None."""
    for other in list(sys.meta_path):
        if other is not finder and hasattr(other, "find_spec"):
            spec = other.find_spec(fullname, path, target)
            if spec is not None:
                return spec
    return None


def _wrap_loader(spec, wrap: Callable[[Callable[[ModuleType], None]], Callable[[ModuleType], None]]):
    """``spec`` with its loader's ``exec_module`` replaced by ``wrap(exec_module)`` (when it has one)."""
    loader = getattr(spec, "loader", None)
    if loader is not None and hasattr(loader, "exec_module"):
        loader.exec_module = wrap(loader.exec_module)
    return spec


class ImportHook(importlib.abc.MetaPathFinder):
    """Runs the first execution of module ``name`` inside ``context()``; see the module docstring."""

    def __init__(self, name: str, context: Callable[[], ContextManager[None]]):
        self.name, self._context, self._searching = name, context, False

    @property
    def active(self) -> bool:
        return self in sys.meta_path

    def cancel(self) -> None:
        """Remove the hook (nothing happens if the module was not imported yet)."""
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name or target is not None or self._searching:
            return None
        self._searching = True  # the other finders may include hooks that ask this one back
        try:
            return _wrap_loader(_other_spec(self, fullname, path, target), self._wrap)
        finally:
            self._searching = False

    def _wrap(self, exec_module: Callable[[ModuleType], None]) -> Callable[[ModuleType], None]:
        def hooked(module: ModuleType) -> None:
            if not self.active:  # cancelled, or a second execution (reload)
                exec_module(module)
                return
            self.cancel()
            with self._context():
                exec_module(module)

        return hooked


def around_import(name: str, context: Callable[[], ContextManager[None]]) -> Optional[ImportHook]:
    """Run module ``name``'s first import inside ``context()``; None (nothing done) if it is imported already."""
    if name in sys.modules:
        return None
    hook = ImportHook(name, context)
    sys.meta_path.insert(0, hook)
    return hook


def after_import(name: str, callback: Callable[[ModuleType], None]) -> Optional[ImportHook]:
    """Call ``callback(module)`` once module ``name`` is imported: now if it is, else right after its
    code ran (not if that failed). Returns the hook (``cancel()`` it to call nothing), or None when
    the callback already ran."""
    if name in sys.modules:
        callback(sys.modules[name])
        return None

    @contextlib.contextmanager
    def then_call() -> Iterator[None]:
        yield
        callback(sys.modules[name])

    return around_import(name, then_call)


class _Settling(importlib.abc.MetaPathFinder):
    """Counts, per thread, the modules of ``package`` being executed, and runs the callbacks queued
    with :func:`when_settled` when the count falls back to 0."""

    def __init__(self, package: str):
        self.prefix = package + "."
        self._local = threading.local()
        self._pending: List[Callable[[], None]] = []

    def busy(self) -> bool:
        return getattr(self._local, "depth", 0) > 0

    def queue(self, callback: Callable[[], None]) -> None:
        self._pending.append(callback)

    def find_spec(self, fullname, path, target=None):
        if not fullname.startswith(self.prefix) or getattr(self._local, "searching", False):
            return None
        self._local.searching = True
        try:
            return _wrap_loader(_other_spec(self, fullname, path, target), self._wrap)
        finally:
            self._local.searching = False

    def _wrap(self, exec_module: Callable[[ModuleType], None]) -> Callable[[ModuleType], None]:
        def counted(module: ModuleType) -> None:
            self._local.depth = getattr(self._local, "depth", 0) + 1
            try:
                exec_module(module)
            finally:
                self._local.depth -= 1
            while not self.busy() and self._pending:
                self._pending.pop(0)()

        return counted


_SETTLING: Dict[str, _Settling] = {}


def track_imports(package: str) -> None:
    """Start counting the imports of ``package``'s modules (from now on) for :func:`when_settled`."""
    if package not in _SETTLING:
        _SETTLING[package] = _Settling(package)
        sys.meta_path.insert(0, _SETTLING[package])


def when_settled(package: str, callback: Callable[[], None]) -> None:
    """Call ``callback()`` now if no module of ``package`` is being imported in this thread, else
    right after the outermost such import (:func:`track_imports` must have been called)."""
    settling = _SETTLING[package]
    if settling.busy():
        settling.queue(callback)
    else:
        callback()
