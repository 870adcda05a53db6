"""``vinvl index``: build a gallery index, add images to it, or show what it holds
(:mod:`vinvl.index.store`).

    vinvl index build --model_dir M --gallery_dir D [--gallery_dir D2] [--split S] [--faiss] OUT
    vinvl index build ... --store milvus://HOST:PORT/COLLECTION | milvus-lite:PATH.db [--milvus_index T] OUT
    vinvl index add   --model_dir M --gallery_dir D2 [--split S] OUT
    vinvl index info  OUT
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, List, Optional, Sequence

from ..errors import UsageError
from .options import HelpFormatter, new_parser, require_directory, require_positive

if TYPE_CHECKING:
    from ..index.milvus import StoreOptions
    from ..index.store import GallerySource

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

SUBCOMMANDS = ("build", "add", "info")  # `vinvl index <sub-command>`: its errors start with that name

DESCRIPTION = """\
Build a gallery index on disk (ids, tags, captions, feature pointers and first-stage embeddings of
one or more galleries, memory-mapped, atomically versioned), add the images of more galleries to
it, or print what it holds. vinvl serve and Taskflow(index_path=...) answer over it."""


def _sources(args: argparse.Namespace) -> List["GallerySource"]:
    from ..index.store import GallerySource

    splits = args.split or ["test"]
    if len(splits) == 1:
        splits = splits * len(args.gallery_dir)
    if len(splits) != len(args.gallery_dir):
        raise UsageError(
            f"give --split once (for every gallery) or once per --gallery_dir; got {len(splits)} for {len(args.gallery_dir)}"
        )
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


def _json_object(text: str) -> dict:
    """A JSON object given on the command line (Milvus index or search parameters)."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"nlist\": 1024}}', got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vinvl index", DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{build,add,info}")
    build = commands.add_parser(
        "build", formatter_class=HelpFormatter, help="index galleries (replaces an index already at OUT, atomically)",
        description="Index galleries into OUT: a new or empty folder, or an index (replaced atomically).",
    )
    _add_common(build)
    build.add_argument("--faiss", action="store_true", help="also build a faiss IVF-Flat index (needs the [faiss] extra)")
    build.add_argument("--nlist", type=int, help="IVF lists of the faiss index (default about 4 sqrt(N))")
    build.add_argument(
        "--store", metavar="URI",
        help="keep the embeddings in Milvus: milvus://HOST:PORT/COLLECTION (a server or cluster) or "
             "milvus-lite:PATH.db (embedded, one process per file); needs the [milvus] extra",
    )
    build.add_argument("--milvus_index", default="FLAT",
                       help="the Milvus index type over the embeddings: FLAT (exact) or an approximate one "
                            "(IVF_FLAT, HNSW...; Milvus Lite builds FLAT and IVF_FLAT)")
    build.add_argument("--milvus_index_params", type=_json_object, metavar="JSON",
                       help='the index type\'s build parameters, e.g. \'{"nlist": 1024}\' or \'{"M": 16, "efConstruction": 200}\'')
    build.add_argument("--milvus_search_params", type=_json_object, metavar="JSON",
                       help='search parameters recorded for every query, e.g. \'{"ef": 64}\' (a query\'s nprobe sets IVF types\' nprobe)')
    add = commands.add_parser(
        "add", formatter_class=HelpFormatter, help="append the images of more galleries (same model weights)",
        description="Append the images of more galleries to the index OUT (embedded with the weights that built it).",
    )
    _add_common(add)
    info = commands.add_parser("info", formatter_class=HelpFormatter, help="print the live version's manifest",
                               description="Print the live version's manifest of the index OUT.")
    info.add_argument("out", help="the index directory")
    return parser


def _store_options(args: argparse.Namespace) -> Optional["StoreOptions"]:
    """The Milvus store of ``build`` (None without --store); a malformed URI or option is a StoreError here."""
    milvus_flags = [f for f in ("milvus_index_params", "milvus_search_params") if getattr(args, f) is not None]
    if args.milvus_index != "FLAT":
        milvus_flags.insert(0, "milvus_index")
    if args.store is None:
        if milvus_flags:
            raise UsageError(f"--{milvus_flags[0]} sets the Milvus store's index; it needs --store")
        return None
    if args.faiss:
        raise UsageError("--faiss and --store exclude each other: a Milvus store has its own index (--milvus_index)")
    from ..index.milvus import StoreOptions, StoreURI

    return StoreOptions(StoreURI.parse(args.store), args.milvus_index, args.milvus_index_params, args.milvus_search_params)


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Run the sub-command; returns the path of the live version."""
    args = build_parser().parse_args(argv)
    if args.command != "info":
        require_positive(args, ("batch_size",))
    if args.command == "build" and args.nlist is not None and not args.faiss:
        raise UsageError("--nlist sets the faiss index's lists; it needs --faiss")
    store = _store_options(args) if args.command == "build" else None  # a bad --store is named first
    if args.command != "info":
        require_directory(args.model_dir, "--model_dir", "model directory")
        for gallery_dir in args.gallery_dir:
            require_directory(gallery_dir, "--gallery_dir", "data directory")
    from ..index.store import GalleryIndex, add_to_index, build_index

    if args.command == "info":
        with GalleryIndex.open(args.out) as index:
            print(json.dumps({"version": index.version, **index.manifest}, indent=2))
            return index.path
    sources = _sources(args)
    if args.command == "build":
        path = build_index(args.out, args.model_dir, sources, use_faiss=args.faiss, faiss_nlist=args.nlist,
                           batch_size=args.batch_size, store=store)
    else:
        path = add_to_index(args.out, args.model_dir, sources, batch_size=args.batch_size)
    print(f"index {args.out}: live version {path}", file=sys.stderr)
    return path
