"""The gallery index on disk: what answering queries over a gallery needs, built once, opened in seconds.

One index version holds, per image (in gallery order):

```
manifest.json            format, model (weights sha256, trained heads), first stages, sources, files
image_ids.npy            ids as fixed-width UTF-8 (+ image_ids_order.npy: their sort order, for lookup)
tags.npy                 object tags, JSON per image (+ tags_offsets.npy)
feature_file.npy         which feature file (manifest["feature_files"]) holds the image's regions
feature_row.npy          the image's row in that file (features are read lazily, never copied)
embeddings.npy           float32 [N, contrastive_dim] first-stage image embeddings (L2-normalised),
                         only when the model's contrastive heads are trained
faiss.index              optional IVF-Flat index over embeddings.npy
captions.npy             each image's captions, JSON per image (+ captions_offsets.npy); what
                         image -> captions queries retrieve (flattened in image order)
caption_starts.npy       int64 [N + 1]: image i's captions are caption rows starts[i]..starts[i + 1]
caption_embeddings.npy   float32 [C, contrastive_dim] caption-only embeddings of those captions,
                         only when the contrastive heads are trained
bm25_tags_*.npy          the tags first stage's BM25 postings over the images' tag words
                         (:mod:`vinvl.index.bm25`): vocabulary, term -> images and term frequencies,
                         image lengths (caption -> images)
bm25_captions_*.npy      the same over the captions' words, one document per caption row
                         (image -> captions)
```

An index built with a Milvus store (``store=``, :mod:`vinvl.index.milvus`) writes neither embedding
file nor faiss index: its manifest's ``store`` entry names the collection that holds both kinds of
embedding (and the build of it the version was written with); everything else is as above.

Captions came later than the rest of format 1: an index written before them has no
``captions`` entry in its manifest and reads as an index whose images have no captions (image ->
captions queries say so); ``add`` to such an index gives its old images no captions. A version
without ``caption_starts`` (no ``starts`` in its manifest's ``captions`` entry) opens too: its
readers count each image's captions once (:attr:`GalleryIndex.caption_starts`). Likewise
the BM25 postings: a version without a ``tag_postings`` (or ``caption_postings``) entry opens,
and its readers build those postings in memory from the tags (the captions) on their first tags
query (:meth:`GalleryIndex.bm25_search` is None); ``add`` to it writes them for every image (caption).

Every array is opened with ``np.load(mmap_mode="r")``: opening costs the same for 1K or 1M
images, and a query reads only the rows it touches. Versions are switched atomically
(:mod:`vinvl.index.versions`). An index records the checksum of the weights that embedded it
and refuses to serve another model's queries.
"""
from __future__ import annotations

import datetime
import itertools
import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import IO, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from ..data import DataError, load_coco_ir
from ..data.examples import ExampleOptions, detect_layout, open_feature_source
from ..oscar.configuration import OscarConfig
from ..oscar.model_dir import load_retrieval_model, load_tokenizer, weights_checksum
from ..retrieval import Gallery, RetrievalEngine
from ..retrieval.first_stage import BM25_B, BM25_K1, tag_word_lists, words_of
from ..retrieval.postings import Postings, PostingsBM25
from ..retrieval.search import ExactSearch, Searcher
from ..retrieval.topk import TopK
from . import bm25, ivf, milvus
from .errors import IndexWeightsError
from .tables import ArrayWriter, IdColumn, ListColumn, ListColumnWriter, load_array
from .versions import MANIFEST, VersionedDir, pause_for_test

__all__ = [
    "FIRST_STAGES",
    "GallerySource",
    "GalleryIndex",
    "IndexWeightsError",
    "add_to_index",
    "build_index",
]

logger = logging.getLogger(__name__)

INDEX_FORMAT = 1
FIRST_STAGES = ("contrastive", "tags")  # "tags": the tags are stored for a tag-matching first stage
EMBEDDINGS_FILE = "embeddings.npy"
CAPTION_EMBEDDINGS_FILE = "caption_embeddings.npy"
CAPTION_STARTS = "caption_starts"  # .npy: each image's first caption row (see GalleryIndex.caption_starts)
# Images embedded per engine call: a multiple of the engine's IMAGE_BLOCK (128), so chunking
# gives the batches (and so the bits) one call over the whole source would.
EMBED_CHUNK = 1024
CAPTION_CHUNK = 8192  # captions embedded per engine call


@dataclass
class GallerySource:
    """A split of a data directory the ``coco_ir`` loading script reads (official or detector layout)."""

    gallery_dir: str
    split: str = "test"


class _LoadedSource:
    """A source loaded by the ``coco_ir`` loading script, read back from its Arrow cache files as a
    stream of record batches (not memory-mapped: pages read once would stay in the resident memory
    of the build), so the build holds one chunk of images at a time whatever the gallery's size."""

    COLUMNS = ("image_id", "tags", "captions", "feature_file", "feature_row")

    def __init__(self, source: GallerySource, dataset, layout: str):
        if dataset._indices is not None or not dataset.cache_files:
            raise ValueError(f"{source.gallery_dir}: the loading script's dataset has no plain Arrow cache to stream")
        self.source, self.layout = source, layout
        self.arrow_files = [entry["filename"] for entry in dataset.cache_files]
        self.num_images = len(dataset)
        self.num_captions = 0
        self.id_width = 0
        self.feature_files: List[str] = []  # distinct, in first-seen order
        for batch in self._batches(("image_id", "captions", "feature_file")):
            self.num_captions += int(pc.sum(pc.list_value_length(batch.column("captions"))).as_py() or 0)
            self.id_width = max(self.id_width, int(pc.max(pc.binary_length(batch.column("image_id"))).as_py() or 0))
            for path in pc.unique(batch.column("feature_file")).to_pylist():
                if path not in self.feature_files:
                    self.feature_files.append(path)

    @property
    def where(self) -> str:
        return f"{self.source.gallery_dir} (split {self.source.split})"

    def _batches(self, columns: Sequence[str]) -> Iterator["pa.RecordBatch"]:
        for path in self.arrow_files:
            with pa.OSFile(path) as handle:
                for batch in pa.ipc.open_stream(handle):
                    yield batch.select(list(columns))

    def chunks(self, columns: Sequence[str] = COLUMNS) -> Iterator[Dict[str, list]]:
        """The images' ``columns`` as lists, ``EMBED_CHUNK`` images at a time, in gallery order."""
        size = EMBED_CHUNK
        buffer: Dict[str, list] = {c: [] for c in columns}
        for batch in self._batches(columns):
            for name, values in batch.to_pydict().items():
                buffer[name].extend(values)
            while len(buffer[columns[0]]) >= size:
                yield {c: v[:size] for c, v in buffer.items()}
                buffer = {c: v[size:] for c, v in buffer.items()}
        if buffer[columns[0]]:
            yield buffer


def _load_source(source: GallerySource, feature_dim: int) -> _LoadedSource:
    """Load a source (ids, tags, captions, feature pointers) and check its first image's features."""
    dataset = load_coco_ir(source.gallery_dir, source.split)
    layout = detect_layout(source.gallery_dir, ExampleOptions())
    if len(dataset) == 0:
        raise DataError(f"{source.gallery_dir}: split {source.split!r} has no images")
    first = dataset[0]
    width = open_feature_source(first["feature_file"], layout).read(first["feature_row"], first["image_id"]).shape[1]
    if width != feature_dim:
        raise DataError(
            f"{source.gallery_dir}: image {first['image_id']}: region features are {width} wide, "
            f"the model reads {feature_dim}"
        )
    return _LoadedSource(source, dataset, layout)


def _check_new_ids(ids: "IdColumn", sources: Sequence[_LoadedSource], base: Optional["GalleryIndex"]) -> None:
    """Refuse an id stored twice in the new version's id column (``base``'s images first, then ``sources``')."""
    duplicate = ids.first_duplicate()
    if duplicate is None:
        return
    first, second = duplicate
    image_id = ids[first]
    old = len(base) if base is not None else 0
    if first < old:
        raise DataError(f"image {image_id} of {_source_at(sources, second - old).where} is already in the index {base.root}")
    raise DataError(
        f"image {image_id} is in both {_source_at(sources, first - old).where} and "
        f"{_source_at(sources, second - old).where}; image ids must be distinct"
    )


def _source_at(sources: Sequence[_LoadedSource], position: int) -> _LoadedSource:
    for loaded in sources:
        if position < loaded.num_images:
            return loaded
        position -= loaded.num_images
    raise IndexError(position)


def _first_stages(config: OscarConfig) -> List[str]:
    """The first stages an index built with this model supports: contrastive only if its heads are trained."""
    stages = ["tags"]
    if config.contrastive_dim > 0 and "contrastive" in config.heads_trained():
        stages.insert(0, "contrastive")
    return stages


class GalleryIndex:
    """A read-only view of the live version of an index directory (pinned while open).

    Use :meth:`open`; close it (or use it as a context manager) to let the version be
    garbage-collected once a newer one is live. Safe to share between threads.
    """

    def __init__(self, root: str, path: str, handle: IO):
        self.root = root
        self.path = path
        self._handle = handle
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
            self.manifest = json.load(f)
        if self.manifest.get("format") != INDEX_FORMAT:
            raise ValueError(f"{path}: index format {self.manifest.get('format')!r}, this code reads format {INDEX_FORMAT}")
        # The stored columns, read by readers and by the next version's writer (which extends them).
        self.id_column = IdColumn(path, "image_ids")
        self.tag_column = ListColumn(path, "tags")
        self.feature_file = load_array(path, "feature_file")  # per image: its feature file's number (-1: none)
        self.feature_row = load_array(path, "feature_row")  # per image: its row in that file
        captions = self.manifest.get("captions")  # absent in indexes written before captions were stored
        self.caption_column = ListColumn(path, "captions") if captions else None
        # The Milvus store holding the embeddings, when the index was built with one (else None).
        self.store_options = milvus.StoreOptions.from_manifest(self.manifest["store"]) if self.manifest.get("store") else None
        self.store: Optional[milvus.MilvusStore] = None
        if self.store_options is not None:
            self.store = milvus.MilvusStore(self.store_options.uri)
            try:
                self.store.check_build(self.root, self.weights_sha256, self.manifest["store"]["build"])
            except BaseException:
                self.store.close()
                raise
        self.embeddings = self._embeddings("embeddings", milvus.IMAGE, self.num_images, self.manifest["embeddings"])
        self.caption_embeddings = self._embeddings(
            "caption_embeddings", milvus.CAPTION, self.num_captions, captions.get("embeddings") if captions else None
        )
        self._faiss = None
        self._bm25: Dict[bm25.PostingsKind, PostingsBM25] = {}
        self._caption_starts: Optional[np.ndarray] = None
        self._sources: Dict[int, object] = {}
        self._lock = threading.Lock()  # feature files share one handle (seek + read); faiss and the postings load once

    def _embeddings(self, name: str, kind: int, count: int, entry: Optional[dict]):
        """One kind of embedding: memory-mapped from the version, or the store's rows; None when not stored."""
        if not entry:
            return None
        if self.store is not None:
            return milvus.MilvusRows(self.store, kind, count, entry["dim"])
        return load_array(self.path, name)

    @classmethod
    def open(cls, root: str, model_dir: Optional[str] = None) -> "GalleryIndex":
        """The live version of the index at ``root``; with ``model_dir``, checked to match its weights.

        An index with a Milvus store connects to it and checks that the collection holds this
        version's build (a bad or unreachable store is a :class:`vinvl.index.milvus.StoreError`).
        """
        path, handle = VersionedDir(root).pin_current()
        try:
            index = cls(os.path.abspath(root), path, handle)
        except BaseException:
            handle.close()
            raise
        if model_dir is not None:
            try:
                index.check_weights(weights_checksum(model_dir), model_dir)
            except BaseException:
                index.close()
                raise
        return index

    def close(self) -> None:
        self._faiss = None
        self._bm25 = {}
        if self.store is not None:
            self.store.close()
        self._handle.close()

    def __enter__(self) -> "GalleryIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- what the index holds -----------------------------------------------------------

    @property
    def version(self) -> str:
        return os.path.basename(self.path)

    @property
    def num_images(self) -> int:
        return int(self.manifest["num_images"])

    def __len__(self) -> int:
        return self.num_images

    @property
    def first_stages(self) -> List[str]:
        return list(self.manifest["first_stages"])

    @property
    def weights_sha256(self) -> str:
        return self.manifest["model"]["weights_sha256"]

    def check_weights(self, weights_sha256: str, model_dir: str = "the model") -> None:
        """Raise :class:`IndexWeightsError` unless the index was built with these weights."""
        if weights_sha256 != self.weights_sha256:
            raise IndexWeightsError(
                f"{self.root} was built with weights sha256 {self.weights_sha256} "
                f"(from {self.manifest['model']['model_dir']}), but {model_dir} has weights sha256 "
                f"{weights_sha256}; rebuild the index with `vinvl index build --model_dir {model_dir} ...`"
            )

    def image_id(self, index: int) -> str:
        return self.id_column[index]

    def find(self, image_id: str) -> int:
        """Position of ``image_id`` in the gallery, or -1."""
        return self.id_column.find(image_id)

    def index_of(self, image_id: str) -> int:
        """Position of ``image_id``; KeyError naming it when it is not in the index."""
        position = self.find(image_id)
        if position < 0:
            raise KeyError(f"image {image_id!r} is not in the index {self.root}")
        return position

    def tags(self, index: int) -> List[str]:
        return self.tag_column[index]

    @property
    def num_captions(self) -> int:
        """Captions of every image together (0 for an index written before captions were stored)."""
        return int(self.manifest["captions"]["count"]) if self.caption_column is not None else 0

    def captions(self, index: int) -> List[str]:
        """Image ``index``'s captions ([] when it has none, or the index stores none)."""
        return self.caption_column[index] if self.caption_column is not None else []

    @property
    def caption_starts(self) -> np.ndarray:
        """int64 ``[N + 1]``: image i's captions are the caption rows ``[starts[i], starts[i + 1])``
        (rows number the captions flattened in image order). Memory-mapped from the version; for a
        version written before it was stored, counted once from the caption column (a read of
        every image's captions, logged)."""
        if self._caption_starts is None:  # read per caption row: the lock only for the first load
            with self._lock:
                if self._caption_starts is None:
                    self._caption_starts = self._load_caption_starts()
        return self._caption_starts

    def _load_caption_starts(self) -> np.ndarray:
        if self.caption_column is None:
            return np.zeros(self.num_images + 1, dtype=np.int64)
        if self.manifest["captions"].get("starts"):
            return load_array(self.path, CAPTION_STARTS)
        logger.warning(
            "the index %s stores no caption row starts (built before they were stored): counting every image's "
            "captions in this process; `vinvl index build` again to store them", self.root,
        )
        return self.caption_column.row_starts()

    def caption(self, row: int) -> str:
        """Caption row ``row`` (captions flattened in image order)."""
        image = self.caption_owner(row)
        return self.captions(image)[row - int(self.caption_starts[image])]

    def caption_owner(self, row: int) -> int:
        """The image whose caption ``row`` is."""
        if not 0 <= row < self.num_captions:
            raise IndexError(f"caption row {row} is not in 0..{self.num_captions - 1}")
        return int(np.searchsorted(self.caption_starts, row, side="right")) - 1

    def features(self, index: int) -> np.ndarray:
        """Image ``index``'s ``[num_regions, 2054]`` region features, read from the original file."""
        number = int(self.feature_file[index])
        if number < 0:
            raise ValueError(f"image {self.image_id(index)!r} has no region features in the index {self.root}")
        with self._lock:
            if number not in self._sources:
                self._sources[number] = self._open_feature_file(number)
            return self._sources[number].read(int(self.feature_row[index]), self.image_id(index))

    def _open_feature_file(self, number: int):
        """The reader of feature file ``number``, once it is checked to be the file the index was built on."""
        entry = self.manifest["feature_files"][number]
        size = os.path.getsize(entry["path"]) if os.path.isfile(entry["path"]) else None
        if size != entry["size"]:
            raise DataError(
                f"{entry['path']}: {'missing' if size is None else f'{size} bytes'}, but the index "
                f"{self.root} was built when it had {entry['size']} bytes; rebuild the index"
            )
        return open_feature_source(entry["path"], entry["layout"])

    # ----- first stage --------------------------------------------------------------------

    def require_embeddings(self) -> np.ndarray:
        if self.embeddings is None:
            model = self.manifest["model"]
            raise ValueError(
                f"the index {self.root} has no contrastive first stage: the model that built it records "
                f"trained_heads={model['trained_heads']} (contrastive_dim {model['contrastive_dim']}); "
                f"it supports {self.first_stages}"
            )
        return self.embeddings

    def image_searcher(self, nprobe: Optional[int] = None) -> Searcher:
        """The contrastive search over the images: the Milvus collection when the index has a store
        (``nprobe`` for its IVF types; exact with FLAT), the faiss IVF index (``nprobe`` lists probed,
        default :data:`vinvl.index.ivf.DEFAULT_NPROBE`) when the version has one, else exact chunked
        top-k over the memory-mapped embeddings. Ties rank the lower position first every way."""
        embeddings = self.require_embeddings()
        if self.store is not None:
            return milvus.MilvusSearch(self.store, milvus.IMAGE, self.num_images, self.store_options.search_params_for(nprobe))
        if self.manifest.get("faiss") is not None:
            return ivf.IVFSearch(self.faiss_index(), ivf.DEFAULT_NPROBE if nprobe is None else nprobe)
        return ExactSearch(embeddings)

    def caption_searcher(self) -> Optional[Searcher]:
        """Exact search over the captions' embeddings (None when the index holds no captions)."""
        if self.num_captions == 0:
            return None
        if self.caption_embeddings is None:
            self.require_embeddings()
        if self.store is not None:
            return milvus.MilvusSearch(self.store, milvus.CAPTION, self.num_captions, self.store_options.search_params_for(None))
        return ExactSearch(self.caption_embeddings)

    def search(self, queries: np.ndarray, k: int, method: str = "exact", nprobe: int = ivf.DEFAULT_NPROBE) -> TopK:
        """Contrastive top-``k`` images per caption embedding ``[Q, E]``: (scores, image positions).

        ``exact`` scans the memory-mapped embeddings in chunks; ``faiss`` searches the IVF index
        (built with ``--faiss``); ``store`` searches the Milvus collection (built with ``store=``).
        Ties rank the lower position first.
        """
        if method == "store":
            if self.store is None:
                raise ValueError(f"the index {self.root} has no Milvus store; build it with `vinvl index build --store ...`")
            return self.image_searcher(nprobe).search(queries, k)
        if method == "exact":
            if self.store is not None:
                raise ValueError(f"the index {self.root} keeps its embeddings in {self.store.uri}; search it with method='store'")
            return ExactSearch(self.require_embeddings()).search(queries, k)
        if method == "faiss":
            return ivf.IVFSearch(self.faiss_index(), nprobe).search(queries, k)
        raise ValueError(f"method must be 'exact', 'faiss' or 'store', got {method!r}")

    def has_postings(self, kind: bm25.PostingsKind) -> bool:
        """Whether the version stores the ``kind`` BM25 postings (:data:`vinvl.index.bm25.TAGS` or
        :data:`~vinvl.index.bm25.CAPTIONS`; indexes built before them do not)."""
        return self.manifest.get(kind.manifest_key) is not None

    def postings(self, kind: bm25.PostingsKind) -> Tuple[Postings, IdColumn]:
        """The version's ``kind`` BM25 postings, memory-mapped: (postings, vocabulary)."""
        if not self.has_postings(kind):
            raise ValueError(f"the index {self.root} stores no BM25 {kind.manifest_key}; rebuild it with `vinvl index build`")
        return bm25.load_postings(self.path, kind)

    def bm25_search(self, kind: bm25.PostingsKind) -> Optional[PostingsBM25]:
        """BM25 over the stored ``kind`` postings (opened on first use, shared by every caller): caption
        words against the images' tag words (``TAGS``), or tag words against the captions' words
        (``CAPTIONS``); None for a version written before those postings were stored."""
        if not self.has_postings(kind):
            return None
        with self._lock:
            if kind not in self._bm25:
                postings, vocabulary = self.postings(kind)
                self._bm25[kind] = PostingsBM25(postings, vocabulary.find, BM25_K1, BM25_B)
        return self._bm25[kind]

    def faiss_index(self):
        """The version's faiss index, memory-mapped on first use."""
        if self.manifest.get("faiss") is None:
            raise ValueError(f"the index {self.root} has no faiss index; build it with `vinvl index build --faiss ...`")
        with self._lock:
            if self._faiss is None:
                self._faiss = ivf.load(os.path.join(self.path, self.manifest["faiss"]["file"]))
        return self._faiss


# ----- writing ------------------------------------------------------------------------------


def _engine(model_dir: str, batch_size: int) -> RetrievalEngine:
    model, processor = load_retrieval_model(model_dir)
    return RetrievalEngine(model, processor, batch_size=batch_size, progress=False)


class _FeatureReaders:
    """One reader per feature file, opened on first use (a build reads images of few files)."""

    def __init__(self, layout: str):
        self.layout = layout
        self._readers: Dict[str, object] = {}

    def read(self, path: str, row: int, image_id: str) -> np.ndarray:
        if path not in self._readers:
            self._readers[path] = open_feature_source(path, self.layout)
        return self._readers[path].read(int(row), image_id)


def _embed_chunk(engine: RetrievalEngine, chunk: Dict[str, list], readers: _FeatureReaders) -> np.ndarray:
    """``[n, E]`` image embeddings of one chunk of images (their regions read from the feature files)."""
    files, rows, ids = chunk["feature_file"], chunk["feature_row"], chunk["image_id"]
    gallery = Gallery.for_queries(ids, chunk["tags"], lambda j: readers.read(files[j], rows[j], ids[j]), [])
    return engine.embed_images(gallery)


class _CaptionEmbedder:
    """Caption-only embeddings of the captions given in image order, ``CAPTION_CHUNK`` per engine call
    (the same calls, so the same bits, as one list of every caption cut every ``CAPTION_CHUNK``)."""

    def __init__(self, engine: RetrievalEngine, placeholder: Tuple[str, List[str], np.ndarray]):
        self.engine = engine
        self.placeholder = ([placeholder[0]], [placeholder[1]], [placeholder[2]])  # a caption-only embedding reads no image
        self.pending: List[str] = []
        self.pending_owners: List[str] = []

    def add(self, captions: Sequence[Sequence[str]], owners: Sequence[str]) -> Iterator[Tuple[np.ndarray, List[str]]]:
        """Queue one chunk's captions per image; yields ``(embeddings, owner ids)`` of every full call."""
        for image_id, per_image in zip(owners, captions):
            self.pending.extend(per_image)
            self.pending_owners.extend([image_id] * len(per_image))
        while len(self.pending) >= CAPTION_CHUNK:
            yield self._embed(CAPTION_CHUNK)

    def finish(self) -> Iterator[Tuple[np.ndarray, List[str]]]:
        if self.pending:
            yield self._embed(len(self.pending))

    def _embed(self, count: int) -> Tuple[np.ndarray, List[str]]:
        captions, owners = self.pending[:count], self.pending_owners[:count]
        self.pending, self.pending_owners = self.pending[count:], self.pending_owners[count:]
        return self.engine.embed_captions(Gallery.for_queries(*self.placeholder, captions)), owners


def _feature_file_entries(paths: Sequence[str], layouts: Sequence[str]) -> List[dict]:
    return [{"path": p, "layout": l, "size": os.path.getsize(p)} for p, l in zip(paths, layouts)]


def _write_version(
    folder: str,
    model_dir: str,
    checksum: str,
    config: OscarConfig,
    sources: Sequence[_LoadedSource],
    base: Optional[GalleryIndex],
    faiss_nlist: Optional[int],
    use_faiss: bool,
    batch_size: int,
    progress: bool,
    store: Optional[milvus.MilvusStore] = None,
    store_entry: Optional[dict] = None,
) -> dict:
    """Write a complete index version into ``folder``: ``base``'s images (if any), then ``sources``'.

    The id column is already there (:func:`_write_ids`). One pass over the sources,
    ``EMBED_CHUNK`` images at a time, writes the other columns and the embeddings as it goes.
    With a ``store`` (and the manifest entry naming it) the embeddings are
    upserted into its collection instead of written to the version's files.
    """
    files = [dict(e) for e in base.manifest["feature_files"]] if base else []
    number = {e["path"]: n for n, e in enumerate(files)}
    new_files, new_layouts = [], []
    for s in sources:
        for path in s.feature_files:
            if path not in number:
                number[path] = len(files) + len(new_files)
                new_files.append(path)
                new_layouts.append(s.layout)
    files += _feature_file_entries(new_files, new_layouts)
    old = base.num_images if base else 0
    total = old + sum(s.num_images for s in sources)
    stages = _first_stages(config)
    old_captions = base.num_captions if base else 0
    num_captions = old_captions + sum(s.num_captions for s in sources)
    embed = store is not None or "contrastive" in stages
    engine = _engine(model_dir, batch_size) if embed else None
    writers = _VersionWriters(folder, config, base, total, num_captions, embed and store is None)
    if store is not None:
        store.delete_from(milvus.IMAGE, old)  # what a writer that died during an add left there
        store.delete_from(milvus.CAPTION, old_captions)
    captions = _CaptionEmbedder(engine, _placeholder_image(sources[0])) if embed else None
    image_at, caption_at = old, old_captions
    for s in sources:
        readers = _FeatureReaders(s.layout)
        chunks = tqdm(s.chunks(), desc="indexing images", unit="chunk", total=-(-s.num_images // EMBED_CHUNK), disable=not progress)
        for chunk in chunks:
            writers.columns(chunk, [number[p] for p in chunk["feature_file"]])
            if not embed:
                continue
            embeddings = _embed_chunk(engine, chunk, readers)
            if store is not None:
                store.upsert(milvus.IMAGE, image_at, embeddings, chunk["image_id"], chunk["tags"])
            else:
                writers.images.append(embeddings)
            image_at += len(embeddings)
            for embedded, owners in captions.add(chunk["captions"], chunk["image_id"]):
                caption_at = _caption_rows(writers, store, caption_at, embedded, owners)
    if embed:
        for embedded, owners in captions.finish():
            caption_at = _caption_rows(writers, store, caption_at, embedded, owners)
    writers.close()
    tag_postings, caption_postings = _write_postings(folder, model_dir, sources, base)
    if store is not None:
        pause_for_test("store")

    embeddings_entry = faiss_entry = None
    captions_entry = {"count": num_captions, "starts": f"{CAPTION_STARTS}.npy", "embeddings": None}
    if store is not None:
        embeddings_entry = {"store": "milvus", "dim": config.contrastive_dim}
        captions_entry["embeddings"] = dict(embeddings_entry)
    elif embed:
        embeddings_entry = {"file": EMBEDDINGS_FILE, "dim": config.contrastive_dim}
        captions_entry["embeddings"] = {"file": CAPTION_EMBEDDINGS_FILE, "dim": config.contrastive_dim}
        if use_faiss:
            faiss_entry = _write_faiss(folder, base, faiss_nlist, total, progress)

    return write_manifest(
        folder,
        num_images=total,
        model={
            "weights_sha256": checksum,
            "model_dir": os.path.abspath(model_dir),
            "trained_heads": sorted(config.heads_trained()),
            "contrastive_dim": config.contrastive_dim,
        },
        first_stages=stages,
        embeddings=embeddings_entry,
        faiss=faiss_entry,
        store=store_entry,
        captions=captions_entry,
        tag_postings=tag_postings,
        caption_postings=caption_postings,
        feature_files=files,
        sources=(base.manifest["sources"] if base else [])
        + [{"gallery_dir": os.path.abspath(s.source.gallery_dir), "split": s.source.split, "num_images": s.num_images} for s in sources],
    )


def _write_ids(folder: str, sources: Sequence[_LoadedSource], base: Optional[GalleryIndex]) -> None:
    """The version's id column (``base``'s ids, then ``sources``'), refused when an id repeats:
    written and checked before the model loads or a store is touched."""
    IdColumn.write(
        folder, "image_ids", (c["image_id"] for s in sources for c in s.chunks(("image_id",))),
        sum(s.num_images for s in sources), max(s.id_width for s in sources), base.id_column if base else None,
    )
    _check_new_ids(IdColumn(folder, "image_ids"), sources, base)
    pause_for_test("staging")


def _placeholder_image(source: _LoadedSource) -> Tuple[str, List[str], np.ndarray]:
    first = next(source.chunks())
    features = _FeatureReaders(source.layout).read(first["feature_file"][0], first["feature_row"][0], first["image_id"][0])
    return first["image_id"][0], first["tags"][0], features


def _caption_rows(writers: "_VersionWriters", store: Optional[milvus.MilvusStore], at: int, embedded: np.ndarray, owners: List[str]) -> int:
    """Store one call's caption embeddings from caption row ``at``; returns the next row."""
    if store is not None:
        store.upsert(milvus.CAPTION, at, embedded, owners, [[]] * len(embedded))
    else:
        writers.captions.append(embedded)
    return at + len(embedded)


class _VersionWriters:
    """The per-image columns of a version (``base``'s rows first) and, with ``embeddings``, its two
    embedding files, written chunk by chunk."""

    def __init__(self, folder: str, config: OscarConfig, base: Optional[GalleryIndex], total: int, num_captions: int, embeddings: bool):
        self.folder = folder
        old = base.num_images if base else 0
        self.tags = ListColumnWriter(folder, "tags", total - old, base.tag_column if base else None)
        # An index written before captions were stored gives its old images none.
        base_captions = base.caption_column if base is not None else None
        self.caption_column = ListColumnWriter(folder, "captions", total - old + (old if base and base_captions is None else 0), base_captions)
        if base is not None and base_captions is None:
            self.caption_column.append([[]] * old)
        self.feature_file = np.full(total, -1, dtype=np.int32)
        self.feature_row = np.zeros(total, dtype=np.int64)
        self.caption_starts = np.zeros(total + 1, dtype=np.int64)
        if base is not None:
            self.feature_file[:old], self.feature_row[:old] = base.feature_file, base.feature_row
            self.caption_starts[: old + 1] = base.caption_starts
        self.at = old
        self.images = self.captions = None
        if embeddings:
            dim = config.contrastive_dim
            self.images = ArrayWriter(os.path.join(folder, EMBEDDINGS_FILE), (total, dim), np.float32, base.embeddings if base else None)
            previous = base.caption_embeddings if base is not None and base.num_captions else None
            self.captions = ArrayWriter(os.path.join(folder, CAPTION_EMBEDDINGS_FILE), (num_captions, dim), np.float32, previous)

    def columns(self, chunk: Dict[str, list], file_numbers: List[int]) -> None:
        self.tags.append(chunk["tags"])
        self.caption_column.append(chunk["captions"])
        hi = self.at + len(file_numbers)
        self.feature_file[self.at : hi] = file_numbers
        self.feature_row[self.at : hi] = chunk["feature_row"]
        counts = np.fromiter((len(c) for c in chunk["captions"]), dtype=np.int64, count=hi - self.at)
        np.cumsum(counts, out=self.caption_starts[self.at + 1 : hi + 1])
        self.caption_starts[self.at + 1 : hi + 1] += self.caption_starts[self.at]
        self.at = hi

    def close(self) -> None:
        self.tags.close()
        self.caption_column.close()
        np.save(os.path.join(self.folder, "feature_file.npy"), self.feature_file)
        np.save(os.path.join(self.folder, "feature_row.npy"), self.feature_row)
        np.save(os.path.join(self.folder, f"{CAPTION_STARTS}.npy"), self.caption_starts)
        for writer in (self.images, self.captions):
            if writer is not None:
                writer.close()


def write_columns(
    folder: str,
    image_ids: Sequence[str],
    tags: Sequence[Sequence[str]],
    feature_file: np.ndarray,
    feature_row: np.ndarray,
) -> None:
    """The per-image columns of a version held in memory (``feature_file[i]`` numbers a file of the
    manifest's ``feature_files``, -1: no features); what the index benchmark writes."""
    IdColumn.write(folder, "image_ids", [image_ids], len(image_ids), max((len(str(i).encode("utf-8")) for i in image_ids), default=0))
    ListColumn.write(folder, "tags", tags)
    np.save(os.path.join(folder, "feature_file.npy"), np.asarray(feature_file, dtype=np.int32))
    np.save(os.path.join(folder, "feature_row.npy"), np.asarray(feature_row, dtype=np.int64))


def _write_postings(folder: str, model_dir: str, sources: Sequence[_LoadedSource], base: Optional[GalleryIndex]) -> Tuple[dict, dict]:
    """The version's two sets of BM25 postings, streamed from the sources a chunk of images at a time:
    the images' tag words and the captions' words, each ``base``'s postings merged with the new
    documents' (a ``base`` written before them has its tags / captions tokenized now); their manifest entries."""
    tokenizer = load_tokenizer(model_dir)
    new_tags = (t for s in sources for chunk in s.chunks(("tags",)) for t in chunk["tags"])
    new_captions = (c for s in sources for chunk in s.chunks(("captions",)) for per_image in chunk["captions"] for c in per_image)
    old = range(base.num_images) if base is not None else range(0)
    tags = _merged_postings(folder, bm25.TAGS, base, (base.tags(i) for i in old), new_tags, lambda tags: tag_word_lists(tokenizer, tags))
    captions = _merged_postings(
        folder, bm25.CAPTIONS, base, (c for i in old for c in base.captions(i)), new_captions,
        lambda texts: (words_of(tokenizer, c) for c in texts),
    )
    return tags, captions


def _merged_postings(
    folder: str, kind: bm25.PostingsKind, base: Optional[GalleryIndex], old: Iterator, new: Iterator,
    words: Callable[[Iterator], Iterator[List[str]]],
) -> dict:
    """``kind`` postings of the ``old`` documents then the ``new`` ones (``words`` turns documents into
    word lists): ``base``'s stored postings extended when it has them, else every document tokenized."""
    if base is not None and base.has_postings(kind):
        return bm25.write_postings(folder, words(new), base=base.postings(kind)[0], kind=kind)
    return bm25.write_postings(folder, words(itertools.chain(old, new)), kind=kind)


def write_manifest(folder: str, **fields) -> dict:
    """``manifest.json`` of a version (written last: a version without it is never read)."""
    manifest = {
        "format": INDEX_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **fields,
    }
    with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def _write_faiss(folder: str, base: Optional[GalleryIndex], faiss_nlist: Optional[int], total: int, progress: bool) -> dict:
    """The faiss index over the version's ``embeddings.npy`` (``base``'s trained one extended, or a new
    one trained on a bounded sample); its manifest entry."""
    embeddings = load_array(folder, "embeddings")
    if base is not None and base.manifest.get("faiss"):
        trained = ivf.load(os.path.join(base.path, base.manifest["faiss"]["file"]), writable=True)
        index = ivf.extend(trained, embeddings, base.num_images, progress)
        entry = dict(base.manifest["faiss"])
    else:
        index = ivf.build_ivf_flat(embeddings, nlist=faiss_nlist, progress=progress)
        entry = {"kind": "ivf_flat", "file": ivf.FAISS_FILE, "nlist": int(index.nlist), "trained_on": total}
    ivf.save(index, os.path.join(folder, ivf.FAISS_FILE))
    return entry


def _prepare(model_dir: str, sources: Sequence[GallerySource], use_faiss: bool, uses_store: bool = False):
    """Everything checked before long work: weights, config, sources, faiss availability, a store's needs."""
    if not sources:
        raise ValueError("give at least one gallery directory")
    checksum = weights_checksum(model_dir)
    config = OscarConfig.from_pretrained(model_dir)
    if use_faiss and uses_store:
        raise ValueError("--faiss and --store exclude each other: a Milvus store has its own index (--milvus_index)")
    for flag, used in (("--faiss", use_faiss), ("--store", uses_store)):
        if used and "contrastive" not in _first_stages(config):
            raise ValueError(
                f"{flag} needs contrastive embeddings, but {model_dir} records trained_heads="
                f"{sorted(config.heads_trained())} (contrastive_dim {config.contrastive_dim})"
            )
    if use_faiss:
        ivf.require_faiss()
    loaded = [_load_source(s, config.img_feature_dim) for s in sources]
    return checksum, config, loaded


def build_index(
    out: str,
    model_dir: str,
    sources: Sequence[GallerySource],
    use_faiss: bool = False,
    faiss_nlist: Optional[int] = None,
    batch_size: int = 64,
    progress: bool = True,
    store: Optional[milvus.StoreOptions] = None,
) -> str:
    """Build an index of ``sources`` (in order) at ``out``; replaces a previous index atomically.

    Returns the new version's path. A non-empty ``out`` that is not an index is refused before
    anything is read. With ``store`` the embeddings go to that Milvus collection, which is
    connected to (and refused if another index's) before the model loads, then dropped and created
    anew for this build.
    """
    versions = VersionedDir(out)
    versions.refuse_foreign()
    connection = milvus.MilvusStore(store.uri) if store is not None else None
    try:
        if connection is not None:
            connection.check_owner(versions.root)
        checksum, config, loaded = _prepare(model_dir, sources, use_faiss, uses_store=store is not None)
        total = sum(s.num_images for s in loaded)
        if faiss_nlist is not None and not 1 <= faiss_nlist <= total:
            raise ValueError(f"nlist must be in 1..{total} (the number of images), got {faiss_nlist}")
        with versions.writer(), versions.staging() as folder:
            _write_ids(folder, loaded, None)
            store_entry = None
            if connection is not None:
                build = connection.create(
                    config.contrastive_dim, versions.root, checksum, store.index_type, store.index_params or {}
                )
                store_entry = store.to_manifest(build)
            _write_version(folder, model_dir, checksum, config, loaded, None, faiss_nlist, use_faiss, batch_size, progress,
                           connection, store_entry)
            return versions.commit(folder)
    finally:
        if connection is not None:
            connection.close()


def add_to_index(
    out: str, model_dir: str, sources: Sequence[GallerySource], batch_size: int = 64, progress: bool = True
) -> str:
    """Append the images of ``sources`` to the index at ``out`` (built with the same weights).

    Writes a new version holding the old images then the new ones and switches to it; a faiss
    index keeps its trained lists and gets the new vectors added; a Milvus store gets the new rows
    upserted (keyed by kind and row) before the switch. Returns the new version's path.
    """
    versions = VersionedDir(out)
    with versions.writer():
        base = GalleryIndex.open(out)
        try:
            use_faiss = base.manifest.get("faiss") is not None
            checksum, config, loaded = _prepare(model_dir, sources, use_faiss, uses_store=base.store is not None)
            base.check_weights(checksum, model_dir)
            with versions.staging() as folder:
                _write_ids(folder, loaded, base)
                _write_version(folder, model_dir, checksum, config, loaded, base, None, use_faiss, batch_size, progress,
                               base.store, base.manifest.get("store"))
                base.close()  # unpinned, so the switch can delete it
                return versions.commit(folder)
        finally:
            base.close()
