"""``vinvl index``: build a gallery index, add images to it, or show what it holds.

    vinvl index build --model_dir M --gallery_dir D [--gallery_dir D2] [--split S] [--faiss] OUT
    vinvl index add   --model_dir M --gallery_dir D2 [--split S] OUT
    vinvl index info  OUT
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional, Sequence

from ..index.store import GalleryIndex, GallerySource, add_to_index, build_index

__all__ = ["main"]


def _sources(parser: argparse.ArgumentParser, args: argparse.Namespace) -> List[GallerySource]:
    splits = args.split or ["test"]
    if len(splits) == 1:
        splits = splits * len(args.gallery_dir)
    if len(splits) != len(args.gallery_dir):
        parser.error(f"give --split once (for every gallery) or once per --gallery_dir; got {len(splits)} for {len(args.gallery_dir)}")
    return [GallerySource(d, s) for d, s in zip(args.gallery_dir, splits)]


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="the index directory")
    parser.add_argument("--model_dir", required=True, help="the saved model whose weights embed the gallery")
    parser.add_argument(
        "--gallery_dir", action="append", required=True,
        help="a data directory the coco_ir loading script reads (repeatable; images are indexed in the given order)",
    )
    parser.add_argument("--split", action="append", help="gallery split: once for all galleries or once per --gallery_dir (default test)")
    parser.add_argument("--batch_size", type=int, default=64, help="images per forward pass while embedding")


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(prog="vinvl index", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="index galleries (replaces an index already at OUT, atomically)")
    _add_common(build)
    build.add_argument("--faiss", action="store_true", help="also build a faiss IVF-Flat index (needs the [faiss] extra)")
    build.add_argument("--nlist", type=int, help="IVF lists of the faiss index (default about 4 sqrt(N))")
    add = commands.add_parser("add", help="append the images of more galleries (same model weights)")
    _add_common(add)
    info = commands.add_parser("info", help="print the live version's manifest")
    info.add_argument("out", help="the index directory")
    args = parser.parse_args(argv)
    if args.command == "info":
        with GalleryIndex.open(args.out) as index:
            print(json.dumps({"version": index.version, **index.manifest}, indent=2))
            return index.path
    if args.batch_size <= 0:
        parser.error(f"--batch_size must be positive, got {args.batch_size}")
    if args.command == "build" and args.nlist is not None and not args.faiss:
        parser.error("--nlist sets the faiss index's lists; it needs --faiss")
    sources = _sources(parser, args)
    if args.command == "build":
        path = build_index(args.out, args.model_dir, sources, use_faiss=args.faiss, faiss_nlist=args.nlist, batch_size=args.batch_size)
    else:
        path = add_to_index(args.out, args.model_dir, sources, batch_size=args.batch_size)
    print(f"index {args.out}: live version {path}", file=sys.stderr)
    return path
