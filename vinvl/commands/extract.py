"""``vinvl extract IMAGES OUT --detector DIR``: photos -> the files the coco_ir loading script reads
(:func:`vinvl.vision.extract.extract`)."""
from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Optional, Sequence

from .options import (
    DETECTOR_PRECISIONS,
    add_detector_precision_argument,
    check_precision,
    detector_directory,
    new_parser,
    random_detector_notice,
)

if TYPE_CHECKING:
    from ..vision.extract import ExtractSummary

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Photos -> VinVL region features and object tags in the files the coco_ir loading script reads
(predictions.tsv + images.hw.tsv in OUT). Resumable: a killed run continues where it stopped when
run again with the same IMAGES and --detector. Sharded over the processes of
python -m paddle.distributed.launch. Bad files are skipped and listed in OUT/bad_images.jsonl,
unless --fail_on_bad."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vinvl extract", DESCRIPTION)
    parser.add_argument("images", help="a folder of .jpg/.jpeg/.png photos, or a list file (one path per line, optionally <TAB>image_id)")
    parser.add_argument("out_dir", metavar="OUT",
                        help="folder for predictions.tsv, images.hw.tsv and the bad-file report (resumed if unfinished)")
    parser.add_argument("--detector", required=True,
                        help="detector directory (config.json [+ model.safetensors], e.g. from vinvl convert-detector), "
                             "or a shipped detector config: vinvl-detector-tiny, vinvl-detector-x152c4 (random weights)")
    add_detector_precision_argument(parser, "--precision")
    parser.add_argument("--recursive", action="store_true", help="also take the photos in the folder's subfolders")
    parser.add_argument("--fail_on_bad", action="store_true",
                        help="stop at the first bad file (exit non-zero naming it) instead of skipping it")
    parser.add_argument("--restart", action="store_true",
                        help="discard an unfinished extraction of other images or with another detector or precision that OUT "
                             "holds (OUT/.extract), instead of refusing to start")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Optional["ExtractSummary"]:
    """Extract; print where the files are and what was skipped. Returns the ExtractSummary (None on a
    rank that finished its share while another merges); exits 1 when no image could be extracted."""
    args = build_parser().parse_args(argv)
    check_precision(args.precision, supported=DETECTOR_PRECISIONS)  # before any notice or loading
    from ..vision.extract import BAD_FILE, extract

    args.detector = detector_directory(args.detector)
    random_detector_notice(args.detector)
    summary = extract(
        args.images, args.out_dir, args.detector,
        recursive=args.recursive, fail_on_bad=args.fail_on_bad, restart=args.restart, progress=not args.no_progress,
        precision=args.precision,
    )
    if summary is None:
        print("this rank's share is done; the last rank to finish writes the files")
        return None
    if summary.already_done:
        print(f"{summary.out_dir} already holds this extraction: {summary.num_extracted} of {summary.num_listed} images")
    else:
        print(f"extracted {summary.num_extracted} of {summary.num_listed} images into {summary.out_dir} "
              f"in {summary.seconds:.1f} s")
    if summary.bad:
        print(f"skipped {summary.num_bad} bad files (listed in {os.path.join(summary.out_dir, BAD_FILE)}):")
        for record in summary.bad[:10]:
            print(f"  {record['path']}: {record['reason']}")
    if summary.num_extracted == 0:
        raise SystemExit("no image could be extracted")
    return summary
