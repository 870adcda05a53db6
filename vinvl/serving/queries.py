"""Queries as a client sends them over HTTP, parsed into the Taskflow's queries without ever opening a server file.

In-process, a string ending in ``.jpg`` is a photo path and ``{"image": path}`` a photo file
(:mod:`vinvl.query.photos`). Over HTTP that would let a client make the server read its own
files, so here:

- a string is always a caption;
- ``{"photo": "<base64 JPEG or PNG bytes>"}`` is an uploaded photo (``"caption"`` added: a pair
  score), detected with the Taskflow's detector (``detector_path=``; ``vinvl serve --detector``)
  and then answered as the ``{"features", "tags"}`` query of its regions, as in-process;
- ``{"image": ...}`` is refused, naming ``photo``;
- the other forms (``{"image_id"}``, ``{"features", "tags"}``, with ``"caption"``) are the
  Taskflow's own.

Every upload is decoded and its header checked (format, size in pixels: :mod:`vinvl.vision.image`)
before the first photo is detected; a photo's pixels are decoded only when its turn comes, so a
request holds one decoded photo at a time.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any, Dict, List, Sequence

from ..query import Query
from ..query.photos import detections_query
from ..vision.image import BadImageError, check_header, load_image

__all__ = ["PHOTO_KEY", "MAX_CAPTION_CHARS", "parse_http_queries", "decode_photo"]

PHOTO_KEY = "photo"
PHOTO_FORM = '{"photo": "<base64 JPEG or PNG bytes>", "caption"?: "..."}'
MAX_CAPTION_CHARS = 2000  # far beyond what the model reads (VinVL: 68 tokens); longer is a client error


def decode_photo(value: Any, where: str) -> bytes:
    """The image bytes of a ``photo`` field (strict base64), their header checked; ValueError naming the fault."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: 'photo' must be a base64 string of a JPEG or PNG file")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{where}: 'photo' is not base64 ({exc}); send the image file's bytes base64-encoded") from None
    try:
        check_header(data)
    except BadImageError as exc:
        raise ValueError(f"{where}: 'photo' {exc}") from None
    return data


def _check_photo_query(retriever, query: Dict[str, Any], where: str) -> None:
    if retriever.photos.detector_path is None:
        raise ValueError(
            f"{where}: a photo query needs a detector, and this server has none; start it with "
            "`vinvl serve --detector DIR` (or VINVL_SERVE_DETECTOR=DIR, or detector_path= in the Taskflow)"
        )
    clash = sorted({"image_id", "features", "tags"} & set(query))
    if clash:
        raise ValueError(f"{where}: give 'photo' or {clash}, not both")
    unknown = sorted(set(query) - {PHOTO_KEY, "caption"})
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} in a photo query; a photo query is {PHOTO_FORM}")
    if "caption" not in query and (retriever.gallery is None or not retriever.gallery.images.captions):
        raise ValueError(f"{where}: photo -> captions needs captions, but the gallery holds none (add 'caption' for a pair score)")


def parse_http_queries(retriever, queries: Sequence[Any]) -> List[Query]:
    """The query core's parsed queries of ``queries`` as HTTP carried them (see the module docstring).

    ``retriever`` is the :class:`~vinvl.query.Retriever` that answers them. Raises ValueError (the
    client's fault) naming the query; every photo is checked before any is detected.
    """
    uploads: Dict[int, bytes] = {}
    for position, query in enumerate(queries):
        where = f"query {position}"
        caption = query if isinstance(query, str) else query.get("caption") if isinstance(query, dict) else None
        if isinstance(caption, str) and len(caption) > MAX_CAPTION_CHARS:
            raise ValueError(
                f"{where}: the caption is {len(caption):,} characters; at most {MAX_CAPTION_CHARS:,} "
                "(the model reads its first max_seq_len - 2 tokens, a few hundred characters)"
            )
        if isinstance(query, dict) and "image" in query:
            raise ValueError(
                f"{where}: 'image' is not accepted over HTTP (the server opens no file for a client); "
                f"send the photo itself as {PHOTO_FORM}"
            )
        if isinstance(query, dict) and PHOTO_KEY in query:
            _check_photo_query(retriever, query, where)
            uploads[position] = decode_photo(query[PHOTO_KEY], where)
    parsed = []
    for position, query in enumerate(queries):
        if position in uploads:
            query = _detected(retriever, uploads.pop(position), query, f"query {position}")
        parsed.append(retriever.parse_one(query, position))  # a string stays a caption: no path lookup
    return parsed


def _detected(retriever, data: bytes, query: Dict[str, Any], where: str) -> Dict[str, Any]:
    """The ``{"features", "tags"(, "caption")}`` query of an uploaded photo."""
    try:
        image = load_image(data)
    except BadImageError as exc:
        raise ValueError(f"{where}: 'photo' {exc}") from None
    detections = retriever.detect(image)
    if len(detections) == 0:
        raise ValueError(f"{where}: the detector found no region in the photo")
    extra = {"caption": query["caption"]} if "caption" in query else {}
    return {**detections_query(detections), **extra}
