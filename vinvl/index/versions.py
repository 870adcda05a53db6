"""A directory of immutable versions with an atomically switched ``CURRENT`` pointer.

```
OUT/
  CURRENT        the name of the live version ("v000003"), replaced with os.replace
  .lock          held (flock) by the one writer at a time
  v000003/       a complete version; readers pin it with a shared flock on its manifest
  .staging-*     a version being written (removed if its writer died)
```

A writer fills a staging directory, fsyncs it, renames it to the next version name and then
replaces ``CURRENT``; a reader resolves ``CURRENT`` once and reads only that version. A writer
killed at any point (SIGKILL included) leaves ``CURRENT`` naming the previous complete version;
what it left behind is removed by the next writer. After a switch, versions other than the live
one are deleted unless a reader still pins them (flock is released when a process dies, so a
crashed reader never pins a version for ever).
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from typing import IO, Iterator, List, Optional, Tuple

from ..errors import UserError

__all__ = ["CURRENT", "MANIFEST", "IndexBusyError", "VersionedDir", "pause_for_test"]

CURRENT = "CURRENT"
MANIFEST = "manifest.json"
LOCK = ".lock"
STAGING_PREFIX = ".staging-"
_VERSION = re.compile(r"^v(\d{6,})$")
# Test hook: "<stage>:<marker path>" makes a writer create the marker and sleep at that stage,
# so a test can SIGKILL a real writer process at a known point.
PAUSE_ENV = "VINVL_INDEX_TEST_PAUSE"


class IndexBusyError(UserError, RuntimeError):
    """Another process is writing the same index."""


def pause_for_test(stage: str) -> None:
    """Sleep at ``stage`` when the test hook asks for it (see ``PAUSE_ENV``); a no-op otherwise."""
    hook = os.environ.get(PAUSE_ENV, "")
    wanted, _, marker = hook.partition(":")
    if wanted != stage or not marker:
        return
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: str) -> None:
    for root, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(root, name), "rb+") as f:
                os.fsync(f.fileno())
        _fsync_dir(root)


class VersionedDir:
    """The versions of one index directory ``root``."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    # ----- reading ------------------------------------------------------------------------

    def current(self) -> Optional[str]:
        """The live version's name, or None when nothing was ever committed."""
        try:
            with open(os.path.join(self.root, CURRENT), encoding="utf-8") as f:
                name = f.read().strip()
        except FileNotFoundError:
            return None
        if not _VERSION.match(name):
            raise ValueError(f"{os.path.join(self.root, CURRENT)}: holds {name!r}, not a version name")
        return name

    def pin_current(self, attempts: int = 5) -> Tuple[str, IO]:
        """(live version path, an open manifest holding a shared lock that keeps it from deletion).

        Retries when a writer switches and deletes the version between the two steps.
        """
        for _ in range(attempts):
            name = self.current()
            if name is None:
                raise FileNotFoundError(f"{self.root} is not a gallery index (no {CURRENT} file); build one with `vinvl index build`")
            path = os.path.join(self.root, name)
            manifest = os.path.join(path, MANIFEST)
            try:
                handle = open(manifest, "rb")
            except FileNotFoundError:
                continue
            fcntl.flock(handle, fcntl.LOCK_SH)
            try:
                same = os.fstat(handle.fileno()).st_ino == os.stat(manifest).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return path, handle
            handle.close()
        raise RuntimeError(f"{self.root}: cannot open the live version {name} (no {MANIFEST}, or it kept changing)")

    def versions(self) -> List[str]:
        names = [n for n in os.listdir(self.root) if _VERSION.match(n)] if os.path.isdir(self.root) else []
        return sorted(names, key=lambda n: int(n[1:]))

    # ----- writing ------------------------------------------------------------------------

    def refuse_foreign(self) -> None:
        """Refuse a root that holds files but none a writer of versions writes: a folder of the
        user's, which a build would fill beside what is there (as ``vinvl demo`` refuses one)."""
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise NotADirectoryError(f"{self.root} is a file, not an index directory")
        names = os.listdir(self.root) if os.path.isdir(self.root) else []
        ours = [n for n in names if n in (CURRENT, LOCK) or _VERSION.match(n) or n.startswith(STAGING_PREFIX)]
        if names and not ours:
            raise FileExistsError(
                f"{self.root} exists, is not empty and is not a gallery index; choose a new or empty folder"
            )

    @contextmanager
    def writer(self) -> Iterator["VersionedDir"]:
        """Hold the writer lock (error if another writer holds it) and clear what dead writers left."""
        os.makedirs(self.root, exist_ok=True)
        handle = open(os.path.join(self.root, LOCK), "a")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise IndexBusyError(f"{self.root}: another `vinvl index` build or add is writing this index") from None
            self._remove_leftovers()
            yield self
        finally:
            handle.close()

    @contextmanager
    def staging(self) -> Iterator[str]:
        """A fresh staging directory; removed if the block raises."""
        path = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root)
        try:
            yield path
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise

    def commit(self, staging: str) -> str:
        """Make ``staging`` the live version (durably, atomically); returns the version's path."""
        os.chmod(staging, 0o755)
        _fsync_tree(staging)
        existing = self.versions()
        number = int(existing[-1][1:]) + 1 if existing else 1
        name = f"v{number:06d}"
        final = os.path.join(self.root, name)
        os.rename(staging, final)
        _fsync_dir(self.root)
        pause_for_test("commit")
        pointer = os.path.join(self.root, f".{CURRENT}.{os.getpid()}")
        with open(pointer, "w", encoding="utf-8") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(pointer, os.path.join(self.root, CURRENT))
        _fsync_dir(self.root)
        self.collect_garbage()
        return final

    def collect_garbage(self) -> List[str]:
        """Delete every version but the live one that no reader pins; returns the deleted names."""
        live = self.current()
        deleted = []
        for name in self.versions():
            if name == live:
                continue
            path = os.path.join(self.root, name)
            try:
                handle = open(os.path.join(path, MANIFEST), "rb")
            except FileNotFoundError:  # a version without manifest is never read: delete it
                shutil.rmtree(path, ignore_errors=True)
                deleted.append(name)
                continue
            with handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a reader still has it open
                shutil.rmtree(path, ignore_errors=True)
                deleted.append(name)
        return deleted

    def _remove_leftovers(self) -> None:
        for name in os.listdir(self.root):
            if name.startswith(STAGING_PREFIX) or name.startswith(f".{CURRENT}."):
                path = os.path.join(self.root, name)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        self.collect_garbage()
