"""Milvus as the store of a gallery index's contrastive first stage (the optional ``[milvus]`` extra).

An index built with ``--store milvus://HOST:PORT/COLLECTION`` (a Milvus server or cluster) or
``--store milvus-lite:PATH.db`` (Milvus Lite, embedded: one process per file) keeps its versioned
folder as usual (manifest, ids, tags, captions, feature pointers) but no embedding files: the image
and caption embeddings live in one Milvus collection, one entity per gallery row::

    key        INT64 primary: kind * KEY_STRIDE + row (an image's gallery position, a caption's number)
    kind       INT8: 0 image, 1 caption
    row        INT64: the image's position (the caption's number, in the index's flattened order)
    image_id   VARCHAR: the image's id (a caption's: the image it belongs to)
    tags       VARCHAR: the image's tags as JSON ("[]" for a caption)
    embedding  FLOAT_VECTOR [contrastive_dim], inner product (the embeddings are L2-normalised)

The collection's description records the weights' sha256, the index folder and a build id that the
index's manifest records too: opening an index checks that its collection still holds the embeddings
of that build, so a collection rebuilt with other weights (or by another index) is refused, as the
folder's manifest refuses a model with other weights.

Writes are upserts keyed by (kind, row). An add writes the new rows before the folder's new version
goes live, and every search filters ``row < the version's count``: a writer that dies mid-add leaves
rows past the live version's end, which no reader sees and which the next add or build deletes and
rewrites. Searching keeps the project's one order: Milvus' hits are re-sorted by
:func:`vinvl.retrieval.topk.merge_top_k` (score descending, ties to the lower row), and a query whose
k-th score ties with the last hit Milvus returned is asked again with a larger limit, so a tie at the
k boundary is decided by row, not by Milvus' internal order.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from ..errors import UserError
from ..retrieval.topk import TopK, merge_top_k
from .errors import IndexWeightsError

__all__ = [
    "IMAGE",
    "CAPTION",
    "LITE_INDEX_TYPES",
    "MilvusRows",
    "MilvusSearch",
    "MilvusStore",
    "StoreError",
    "StoreOptions",
    "StoreURI",
    "require_pymilvus",
]

REMOTE_SCHEME = "milvus://"
LITE_SCHEME = "milvus-lite:"
LITE_COLLECTION = "vinvl_gallery"  # a Lite file holds one index's collection
IMAGE, CAPTION = 0, 1
KEY_STRIDE = 1 << 40  # rows per kind (a trillion) in the primary key
CONNECT_TIMEOUT = 10.0  # seconds before an unreachable server is an error
MAX_LIMIT = 16384  # Milvus' largest top-k per search
TIE_MARGIN = 8  # hits asked beyond k, so a tie at the boundary rarely needs a second search
UPSERT_ROWS = 1024  # entities per upsert call
FETCH_ROWS = 4096  # rows per query when reading embeddings back
STORE_FORMAT = 1
LITE_INDEX_TYPES = ("FLAT", "IVF_FLAT", "AUTOINDEX")  # what Milvus Lite builds
# The search parameter that a query's nprobe sets, per approximate index type.
NPROBE_PARAM = {"IVF_FLAT": "nprobe", "IVF_SQ8": "nprobe", "IVF_PQ": "nprobe", "SCANN": "nprobe"}


class StoreError(UserError, ValueError):
    """A bad or unreachable store URI, or a Milvus collection that does not hold what the index expects."""


def require_pymilvus():
    """The pymilvus module, or a StoreError saying how to install it."""
    try:
        import pymilvus
    except ImportError as exc:
        raise StoreError("a Milvus store needs pymilvus and milvus-lite: pip install 'vinvl-paddle[milvus]'") from exc
    return pymilvus


@dataclass(frozen=True)
class StoreURI:
    """Where the embeddings live: a Milvus server's address and collection, or a Milvus Lite file."""

    address: str  # "http://HOST:PORT", or the Lite file's absolute path
    collection: str
    lite: bool

    @classmethod
    def parse(cls, text: str) -> "StoreURI":
        """``milvus://HOST:PORT/COLLECTION`` or ``milvus-lite:PATH.db``; StoreError naming what is wrong."""
        if text.startswith(LITE_SCHEME):
            path = text[len(LITE_SCHEME):]
            if not path.endswith(".db"):
                raise StoreError(f"--store {text}: a Milvus Lite file must end in .db (milvus-lite:PATH.db)")
            path = os.path.abspath(path)
            if not os.path.isdir(os.path.dirname(path)):
                raise StoreError(f"--store {text}: the folder {os.path.dirname(path)} does not exist")
            return cls(path, LITE_COLLECTION, True)
        if text.startswith(REMOTE_SCHEME):
            host_port, _, collection = text[len(REMOTE_SCHEME):].partition("/")
            host, _, port = host_port.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise StoreError(f"--store {text}: expected milvus://HOST:PORT/COLLECTION with a numeric port")
            if not collection or not collection.replace("_", "a").isalnum() or not (collection[0].isalpha() or collection[0] == "_"):
                raise StoreError(
                    f"--store {text}: the collection name must be letters, digits and underscores, "
                    "starting with a letter or underscore"
                )
            return cls(f"http://{host}:{port}", collection, False)
        raise StoreError(f"--store {text}: expected milvus://HOST:PORT/COLLECTION or milvus-lite:PATH.db")

    def __str__(self) -> str:
        if self.lite:
            return f"{LITE_SCHEME}{self.address}"
        return f"{REMOTE_SCHEME}{self.address[len('http://'):]}/{self.collection}"


@dataclass(frozen=True)
class StoreOptions:
    """A store URI and the Milvus index over its embeddings: ``FLAT`` (exact) or an approximate type
    with its build parameters (``{"nlist": 1024}`` for IVF_FLAT, ``{"M": 16, "efConstruction": 200}``
    for HNSW) and search parameters (``{"ef": 64}``; a query's ``nprobe`` sets IVF types' ``nprobe``)."""

    uri: StoreURI
    index_type: str = "FLAT"
    index_params: Optional[dict] = None
    search_params: Optional[dict] = None

    def __post_init__(self):
        if self.uri.lite and self.index_type not in LITE_INDEX_TYPES:
            raise StoreError(
                f"--store {self.uri}: Milvus Lite builds {', '.join(LITE_INDEX_TYPES)}, not {self.index_type}; "
                "use a Milvus server for other index types"
            )
        for name in ("index_params", "search_params"):
            if not isinstance(getattr(self, name) or {}, dict):
                raise StoreError(f"the Milvus {name.replace('_', ' ')} must be a JSON object, got {getattr(self, name)!r}")

    def to_manifest(self, build: str) -> dict:
        """The index manifest's ``store`` entry (with the build id the collection records)."""
        return {
            "uri": str(self.uri),
            "build": build,
            "index_type": self.index_type,
            "index_params": dict(self.index_params or {}),
            "search_params": dict(self.search_params or {}),
        }

    @classmethod
    def from_manifest(cls, entry: dict) -> "StoreOptions":
        return cls(StoreURI.parse(entry["uri"]), entry["index_type"], entry["index_params"], entry["search_params"])

    def search_params_for(self, nprobe: Optional[int]) -> dict:
        """The search parameters of one query: the recorded ones, with ``nprobe`` where the index type reads it."""
        params = dict(self.search_params or {})
        if nprobe is not None and self.index_type in NPROBE_PARAM:
            params[NPROBE_PARAM[self.index_type]] = int(nprobe)
        return params


@contextmanager
def _quiet_pymilvus() -> Iterator[None]:
    """pymilvus logs a record for every failed call (through loggers it configures); its exception says the same in one line."""
    loggers = [logging.getLogger(name) for name in ("pymilvus", "pymilvus.milvus_client")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


_lite_lock = threading.Lock()
_lite_users: Dict[str, int] = {}  # open stores per Lite file in this process


def _acquire_lite(uri: StoreURI) -> None:
    """Count a store of this process on the Lite file; the first one checks that no other process holds it.

    Milvus Lite locks ``.NAME.lock`` beside the file (``lockf``) while a process serves it. Testing
    that lock here gives the one-line StoreError without Milvus Lite's own log lines. Only when this
    process holds no store on the file: closing a ``lockf`` descriptor drops all of the process'
    locks on that file, Milvus Lite's included.
    """
    with _lite_lock:
        if not _lite_users.get(uri.address):
            lock_path = os.path.join(os.path.dirname(uri.address), f".{os.path.basename(uri.address)}.lock")
            if os.path.exists(lock_path):
                with open(lock_path, "a") as handle:
                    try:
                        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        raise StoreError(
                            f"--store {uri}: another process has the file open (Milvus Lite serves one process per "
                            "file): stop that process, or put the collection on a Milvus server"
                        ) from None
                    fcntl.lockf(handle, fcntl.LOCK_UN)
        _lite_users[uri.address] = _lite_users.get(uri.address, 0) + 1


def _release_lite(path: str, stop_server: bool = True) -> None:
    """Stop this process' Milvus Lite server of ``path`` when no store here uses it any more, so
    another process can open the file (pymilvus keeps the server until the process exits)."""
    with _lite_lock:
        _lite_users[path] -= 1
        if _lite_users[path]:
            return
        del _lite_users[path]
        if stop_server:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(path)


class MilvusStore:
    """One connection to the collection of a store URI (its own connection: closing it closes no other).

    Thread-safe as pymilvus' client is: calls go over one gRPC channel.
    """

    def __init__(self, uri: StoreURI, timeout: float = CONNECT_TIMEOUT):
        pymilvus = require_pymilvus()
        self.uri = uri
        self._alias = f"vinvl-{uuid.uuid4().hex}"
        if uri.lite:
            _acquire_lite(uri)
        try:
            with _quiet_pymilvus():
                self.client = pymilvus.MilvusClient(uri=uri.address, timeout=timeout, alias=self._alias)
        except Exception as exc:
            if uri.lite:
                _release_lite(uri.address, stop_server=False)  # a server that did not start is not registered
            raise StoreError(f"--store {uri}: cannot open it: {_reason(exc, uri)}") from None

    def close(self) -> None:
        if self.client is None:
            return
        self.client.close()
        self.client = None
        if self.uri.lite:
            _release_lite(self.uri.address)

    def __enter__(self) -> "MilvusStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- the collection and what it records -----------------------------------------------

    def meta(self) -> Optional[dict]:
        """What the collection records (weights, build, index folder), or None when it does not exist."""
        if not self.client.has_collection(self.uri.collection):
            return None
        description = self.client.describe_collection(self.uri.collection).get("description", "")
        try:
            meta = json.loads(description)
        except ValueError:
            meta = None
        if not isinstance(meta, dict) or meta.get("vinvl_store") != STORE_FORMAT:
            raise StoreError(f"{self.uri}: the collection {self.uri.collection} exists but was not written by vinvl")
        return meta

    def check_owner(self, index_root: str) -> None:
        """Refuse to build into a collection that holds another index's embeddings."""
        meta = self.meta()
        if meta is not None and meta["index_root"] != index_root:
            raise StoreError(
                f"{self.uri}: the collection {self.uri.collection} holds the embeddings of the index "
                f"{meta['index_root']}; choose another collection (or build that index again)"
            )

    def check_build(self, index_root: str, weights_sha256: str, build: str) -> None:
        """Raise unless the collection holds build ``build`` of these weights, as the index's manifest records."""
        meta = self.meta()
        if meta is None:
            raise StoreError(f"{index_root}: its store {self.uri} has no collection {self.uri.collection}; rebuild the index")
        if meta["weights_sha256"] != weights_sha256:
            raise IndexWeightsError(
                f"{index_root}: its store {self.uri} holds embeddings of weights sha256 {meta['weights_sha256']} "
                f"(built for {meta['index_root']}), but the index was built with weights sha256 {weights_sha256}; "
                "rebuild the index"
            )
        if meta["build"] != build:
            raise StoreError(
                f"{index_root}: its store {self.uri} was rebuilt since this index version was written "
                f"(build {meta['build']}, not {build}, for {meta['index_root']}); rebuild the index"
            )

    def create(self, dim: int, index_root: str, weights_sha256: str, index_type: str, index_params: dict) -> str:
        """Drop the collection (if any) and create it empty for a new build; returns the build id."""
        pymilvus = require_pymilvus()
        DataType = pymilvus.DataType
        build = uuid.uuid4().hex
        meta = {"vinvl_store": STORE_FORMAT, "weights_sha256": weights_sha256, "build": build, "index_root": index_root}
        schema = self.client.create_schema(auto_id=False, description=json.dumps(meta))
        schema.add_field("key", DataType.INT64, is_primary=True)
        schema.add_field("kind", DataType.INT8)
        schema.add_field("row", DataType.INT64)
        schema.add_field("image_id", DataType.VARCHAR, max_length=1024)
        schema.add_field("tags", DataType.VARCHAR, max_length=65535)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=int(dim))
        params = self.client.prepare_index_params()
        params.add_index(field_name="embedding", index_type=index_type, metric_type="IP", params=dict(index_params))
        try:
            with _quiet_pymilvus():
                if self.client.has_collection(self.uri.collection):
                    self.client.drop_collection(self.uri.collection)
                # Strong: a search sees every write acknowledged before it (Milvus' default, Bounded, may not
                # yet see an add's rows when the new version goes live).
                self.client.create_collection(self.uri.collection, schema=schema, index_params=params, consistency_level="Strong")
        except Exception as exc:
            raise StoreError(f"{self.uri}: cannot create the collection: {_reason(exc, self.uri)}") from None
        return build

    # ----- rows -------------------------------------------------------------------------------

    def delete_from(self, kind: int, row: int) -> None:
        """Delete the rows of ``kind`` numbered ``row`` and up (what a writer that died left past the live end)."""
        self.client.delete(self.uri.collection, filter=f"kind == {int(kind)} and row >= {int(row)}")

    def upsert(self, kind: int, start: int, embeddings: np.ndarray, image_ids: Sequence[str], tags: Sequence[Sequence[str]]) -> None:
        """Write rows ``start .. start + len(embeddings)`` of ``kind`` (replacing any with those keys)."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        for lo in range(0, len(embeddings), UPSERT_ROWS):
            hi = min(lo + UPSERT_ROWS, len(embeddings))
            self.client.upsert(
                self.uri.collection,
                [
                    {
                        "key": kind * KEY_STRIDE + start + j,
                        "kind": kind,
                        "row": start + j,
                        "image_id": str(image_ids[j]),
                        "tags": json.dumps(list(tags[j])),
                        "embedding": embeddings[j].tolist(),
                    }
                    for j in range(lo, hi)
                ],
            )
        self.client.flush(self.uri.collection)

    def vectors(self, kind: int, rows: np.ndarray) -> np.ndarray:
        """The stored embeddings of ``rows`` (in that order), ``[len(rows), dim]`` float32."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        found: Dict[int, List[float]] = {}
        unique = np.unique(rows)
        for lo in range(0, len(unique), FETCH_ROWS):
            keys = [int(kind * KEY_STRIDE + r) for r in unique[lo : lo + FETCH_ROWS]]
            for hit in self.client.get(self.uri.collection, ids=keys, output_fields=["row", "embedding"]):
                found[int(hit["row"])] = hit["embedding"]
        missing = [int(r) for r in unique if int(r) not in found]
        if missing:
            raise StoreError(f"{self.uri}: rows {missing[:5]} of kind {kind} are missing from the collection; rebuild the index")
        return np.asarray([found[int(r)] for r in rows], dtype=np.float32).reshape(len(rows), -1)

    def search(self, kind: int, count: int, queries: np.ndarray, limit: int, params: dict) -> List[List[dict]]:
        """Milvus' hits (``row``, ``distance``) per query among rows ``0 .. count - 1`` of ``kind``."""
        return self.client.search(
            self.uri.collection,
            data=np.asarray(queries, dtype=np.float32).tolist(),
            anns_field="embedding",
            limit=int(limit),
            filter=f"kind == {int(kind)} and row < {int(count)}",
            output_fields=["row"],
            search_params={"metric_type": "IP", "params": dict(params)},
        )


def _reason(exc: Exception, uri: StoreURI) -> str:
    """One line of why pymilvus failed (Milvus Lite's 'file opened by another program' said plainly)."""
    message = getattr(exc, "message", None) or str(exc)
    if uri.lite and "Open local milvus failed" in message:
        return (
            "Milvus Lite could not open the file; is another process using it? (Milvus Lite serves one "
            "process per file: stop that process, or put the collection on a Milvus server)"
        )
    return " ".join(str(message).split())


class MilvusSearch:
    """The rows ``0 .. count - 1`` of one kind in a Milvus collection, as a :class:`vinvl.retrieval.search.Searcher`.

    ``params`` are the index type's search parameters (``nprobe`` for IVF types, ``ef`` for HNSW...).
    With a FLAT index the answers are the exact search's: the same rows in the same order, scores
    equal up to float rounding (Milvus and numpy sum the products in different orders).
    """

    def __init__(self, store: MilvusStore, kind: int, count: int, params: Optional[dict] = None):
        self.store = store
        self.kind = kind
        self.count = int(count)
        self.params = dict(params or {})

    def __len__(self) -> int:
        return self.count

    def search(self, queries: np.ndarray, k: int) -> TopK:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        width = min(int(k), self.count)
        scores = np.full((len(queries), width), -np.inf, np.float32)
        rows = np.full((len(queries), width), -1, np.int64)
        if width == 0 or len(queries) == 0:
            return scores, rows
        limit = min(width + TIE_MARGIN, self.count, MAX_LIMIT)
        pending = list(range(len(queries)))
        while pending:
            hits = self.store.search(self.kind, self.count, queries[pending], limit, self.params)
            retry = []
            for q, found in zip(pending, hits):
                found_scores = np.array([h["distance"] for h in found], np.float32)
                found_rows = np.array([h["entity"]["row"] for h in found], np.int64)
                if _boundary_tied(found_scores, width, limit, self.count):
                    retry.append(q)
                    continue
                if len(found):
                    best_scores, best_rows = merge_top_k([(found_scores[None], found_rows[None])], width)
                    scores[q, : best_scores.shape[1]], rows[q, : best_rows.shape[1]] = best_scores[0], best_rows[0]
            pending, limit = retry, min(limit * 2, self.count, MAX_LIMIT)
        return scores[:, :width], rows[:, :width]


def _boundary_tied(scores: np.ndarray, width: int, limit: int, count: int) -> bool:
    """Whether rows Milvus did not return may tie with the k-th best (so the answer is not yet decided).

    Milvus returns the ``limit`` best hits in no particular order among equal scores: if the worst
    returned ties with the k-th best, a lower row with that score may have been left out. Asked
    again with a larger limit until it does not, or every row (or Milvus' largest limit) is returned.
    """
    if len(scores) < limit or limit >= min(count, MAX_LIMIT) or len(scores) < width:
        return False
    kth = np.sort(scores)[::-1][width - 1]
    return bool(scores.min() >= kth)


class MilvusRows:
    """The embeddings of rows ``0 .. count - 1`` of one kind, indexed like a read-only ``[count, dim]`` array.

    Lets code that reads stored embeddings by row (an image query naming a gallery image) read them
    from the collection; only the rows asked for are fetched.
    """

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, store: MilvusStore, kind: int, count: int, dim: int):
        self.store, self.kind, self.count, self.dim = store, kind, int(count), int(dim)

    @property
    def shape(self):
        return (self.count, self.dim)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, rows: Union[int, slice, np.ndarray, Sequence[int]]) -> np.ndarray:
        if isinstance(rows, slice):
            rows = np.arange(self.count)[rows]
        single = np.ndim(rows) == 0
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        rows = np.where(rows < 0, rows + self.count, rows)
        if ((rows < 0) | (rows >= self.count)).any():
            raise IndexError(f"rows {rows[(rows < 0) | (rows >= self.count)][:5].tolist()} are outside 0..{self.count - 1}")
        out = self.store.vectors(self.kind, rows)
        return out[0] if single else out
