"""Writing a directory whole: made beside its final place, moved into place last."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator

__all__ = ["replaced_directory"]


@contextmanager
def replaced_directory(final: str) -> Iterator[str]:
    """Yield an empty temporary directory beside ``final``; when the block ends without an error it
    replaces ``final`` (removed first if it exists), otherwise it is removed. An interrupted write
    so leaves the previous ``final`` (or none), never a half-written one."""
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}-", dir=os.path.dirname(final) or ".")
    try:
        yield work
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(work, final)
    finally:
        if os.path.isdir(work):
            shutil.rmtree(work)
