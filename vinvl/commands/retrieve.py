"""``vinvl retrieve``: ask a saved model for images of a caption or captions of an image, via Taskflow.

The gallery is a data directory (``--data_dir``) or a folder of photos (``--gallery_images``,
extracted with ``--detector`` once and cached); ``--image`` queries are photos, detected with
``--detector``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
from typing import List, Optional, Sequence

from ..data.layout import SPLITS
from ..errors import UsageError
from ..retrieval.first_stage import add_first_stage_argument, reject_removed_mode


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(prog="vinvl retrieve", description=__doc__)
    parser.add_argument("--model_dir", required=True, help="a saved model directory")
    gallery = parser.add_mutually_exclusive_group(required=True)
    gallery.add_argument("--data_dir", help="the gallery: a data directory the coco_ir script reads")
    gallery.add_argument("--gallery_images", help="the gallery: a folder of photos (no captions; needs --detector)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="gallery split")
    parser.add_argument("--text", action="append", default=[], help="a caption query (repeatable)")
    parser.add_argument("--image_id", action="append", default=[], help="a gallery image to find captions for (repeatable)")
    parser.add_argument("--image", action="append", default=[], help="a photo file to find captions for (repeatable; needs --detector)")
    parser.add_argument("--detector", help="detector directory for --image and --gallery_images")
    parser.add_argument(
        "--gallery_cache_dir", help="where --gallery_images extractions are cached (default ~/.cache/vinvl/photo_galleries)"
    )
    parser.add_argument("--top_k", type=int, default=5)
    add_first_stage_argument(parser, default="auto")
    parser.add_argument("--candidates", type=int, default=16, help="gallery items a first stage proposes per query")
    args = parser.parse_args(argv)
    reject_removed_mode(args)
    if not args.text and not args.image_id and not args.image:
        parser.error("give at least one --text, --image_id or --image")
    if args.gallery_images and (args.image or args.image_id):
        parser.error("--image and --image_id retrieve captions, and a --gallery_images gallery has none: use --data_dir")
    if (args.image or args.gallery_images) and not args.detector:
        parser.error(f"{'--image' if args.image else '--gallery_images'} needs --detector DIR (a detector directory)")
    if any(not text.strip() for text in args.text):
        parser.error("--text: a caption query cannot be empty")
    for name in ("top_k", "candidates"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")

    import vinvl  # noqa: F401  (registers the task)
    from paddlenlp import Taskflow

    retrieval = Taskflow(
        "image_text_retrieval",
        task_path=args.model_dir,
        gallery_dir=args.data_dir,
        gallery_images=args.gallery_images,
        gallery_cache_dir=args.gallery_cache_dir,
        detector_path=args.detector,
        gallery_split=args.split,
        top_k=args.top_k,
        first_stage=args.first_stage,
        candidates=args.candidates,
    )
    queries = list(args.text) + [{"image_id": i} for i in args.image_id] + [pathlib.Path(p) for p in args.image]
    try:
        results = retrieval(queries)
    except ValueError as exc:  # the task's message names the query at fault (an unknown image id, a bad photo...)
        raise UsageError(str(exc)) from exc
    print(json.dumps(results, indent=2))
    return results
