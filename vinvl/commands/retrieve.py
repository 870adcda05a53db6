"""``vinvl retrieve``: ask a saved model for images of a caption or captions of an image, through
``Taskflow("image_text_retrieval")`` (:mod:`vinvl.apps.taskflow`)."""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import List, Optional, Sequence

from ..errors import UsageError
from .options import (
    DETECTOR_PRECISIONS,
    SPLITS,
    add_detector_precision_argument,
    add_first_stage_argument,
    add_precision_argument,
    check_precision,
    detector_directory,
    new_parser,
    random_detector_notice,
    reject_removed_option,
    require_directory,
    require_positive,
)

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Ask a saved model for the images of a caption (--text) or the captions of an image (--image_id, a
gallery image; --image, a photo) through Taskflow("image_text_retrieval"), and print the answers as
JSON. The gallery is a data directory (--data_dir), a gallery index (--index, as `vinvl serve`
answers from) or a folder of photos (--gallery_images, extracted with --detector once and cached);
--image photos are detected with --detector, at --detector_precision."""


class _InOrder(argparse.Action):
    """``append``, and the (option, value) pair also added to ``queries``: the answers follow the
    command line's order of --text, --image_id and --image."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [*getattr(namespace, self.dest), values])
        namespace.queries = [*namespace.queries, (self.dest, values)]


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vinvl retrieve", DESCRIPTION)
    parser.add_argument("--model_dir", required=True, help="a saved model directory")
    gallery = parser.add_mutually_exclusive_group(required=True)
    gallery.add_argument("--data_dir", help="the gallery: a data directory the coco_ir script reads (with captions for "
                                            "--image and --image_id queries)")
    gallery.add_argument("--gallery_images", help="the gallery: a folder of photos (no captions; needs --detector)")
    gallery.add_argument("--index", help="the gallery: a gallery index directory (vinvl index build) built with --model_dir's weights")
    parser.add_argument("--split", choices=SPLITS, default="test", help="gallery split")
    parser.set_defaults(queries=[])
    parser.add_argument("--text", action=_InOrder, default=[], help="a caption query (repeatable)")
    parser.add_argument("--image_id", action=_InOrder, default=[], help="a gallery image to find captions for (repeatable)")
    parser.add_argument("--image", action=_InOrder, default=[], help="a photo file to find captions for (repeatable; needs --detector)")
    parser.add_argument("--detector", help="detector directory for --image and --gallery_images, or a shipped detector config (vinvl-detector-tiny: random weights)")
    add_detector_precision_argument(parser)
    parser.add_argument(
        "--gallery_cache_dir", help="where --gallery_images extractions are cached (default ~/.cache/vinvl/photo_galleries)"
    )
    parser.add_argument("--top_k", type=int, default=5, help="results per query")
    add_first_stage_argument(parser, default="auto")
    parser.add_argument("--candidates", type=int, default=16, help="gallery items a first stage proposes per query")
    add_precision_argument(parser)
    return parser


def _check(args: argparse.Namespace) -> None:
    """Errors that need no model, before anything is loaded."""
    reject_removed_option(args.mode, "--mode", "--first_stage exhaustive (every pair), contrastive, tags or auto")
    if not args.text and not args.image_id and not args.image:
        raise UsageError("give at least one --text, --image_id or --image")
    if args.gallery_images and (args.image or args.image_id):
        raise UsageError("--image and --image_id retrieve captions, and a --gallery_images gallery has none: use --data_dir")
    if (args.image or args.gallery_images) and not args.detector:
        raise UsageError(f"{'--image' if args.image else '--gallery_images'} needs --detector DIR (a detector directory)")
    if args.detector_precision != "fp32" and not args.detector:
        raise UsageError(f"--detector_precision {args.detector_precision} is the precision of --detector, and none is given")
    if any(not text.strip() for text in args.text):
        raise UsageError("--text: a caption query cannot be empty")
    require_positive(args, ("top_k", "candidates"))
    require_directory(args.model_dir, "--model_dir", "model directory")
    if args.data_dir is not None:
        require_directory(args.data_dir, "--data_dir", "data directory")
    if args.index is not None:
        require_directory(args.index, "--index", "gallery index directory")
    if args.detector is not None:
        args.detector = detector_directory(args.detector)


def _check_captions(args: argparse.Namespace) -> None:
    """--image and --image_id retrieve captions: refuse a --data_dir that has none for the split."""
    from ..data.formats import DataError, find_captions_file

    if args.data_dir is None or not (args.image or args.image_id):
        return
    try:
        find_captions_file(args.data_dir, args.split)
    except DataError as exc:
        raise UsageError(f"--image and --image_id retrieve captions, but --data_dir has none: {exc}; give --data_dir "
                         "a data directory with captions") from None


def _check_index(args: argparse.Namespace) -> None:
    """--index: a gallery index built with --model_dir's weights, checked before the model loads."""
    from ..index.store import GalleryIndex

    if args.index is None:
        return
    try:
        GalleryIndex.open(args.index, args.model_dir).close()
    except (FileNotFoundError, ValueError) as exc:  # not an index; an index of another format
        raise UsageError(f"--index: {exc}") from exc


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    """Answer the queries, print them as JSON; returns them."""
    args = build_parser().parse_args(argv)
    _check(args)
    _check_captions(args)
    check_precision(args.precision)
    check_precision(args.detector_precision, "--detector_precision", DETECTOR_PRECISIONS)
    _check_index(args)
    if args.detector is not None:
        random_detector_notice(args.detector)
    from paddlenlp import Taskflow  # importing it registers the task (see vinvl/__init__.py)

    retrieval = Taskflow(
        "image_text_retrieval",
        task_path=args.model_dir,
        gallery_dir=args.data_dir,
        index_path=args.index,
        gallery_images=args.gallery_images,
        gallery_cache_dir=args.gallery_cache_dir,
        detector_path=args.detector,
        detector_precision=args.detector_precision,
        gallery_split=args.split,
        top_k=args.top_k,
        first_stage=args.first_stage,
        candidates=args.candidates,
        precision=args.precision,
    )
    as_query = {"text": str, "image_id": lambda i: {"image_id": i}, "image": pathlib.Path}
    queries = [as_query[option](value) for option, value in args.queries]
    try:
        results = retrieval(queries)
    except ValueError as exc:  # the task's message names the query at fault (an unknown image id, a bad photo...)
        raise UsageError(str(exc)) from exc
    results = [{"photo": value, **result} if option == "image" else result for (option, value), result in zip(args.queries, results)]
    for position, result in enumerate(results):
        if "truncated" in result:
            cut = result["truncated"]
            print(f"vinvl retrieve: note: query {position}'s caption has {cut['tokens']} tokens; the model reads "
                  f"the first {cut['kept']} (its text length), so later words do not count", file=sys.stderr)
    print(json.dumps(results, indent=2))
    return results
