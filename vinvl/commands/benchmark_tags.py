"""``scripts/benchmark_tags.py``: the tags first stage at scale, the index's BM25 postings against BM25Index
(:func:`vinvl.benchmarks.tags.run_benchmark`)."""
from __future__ import annotations

import argparse
from typing import List, Optional, Sequence

from .options import new_parser, require_positive, write_json_report

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Benchmark the tags first stage: for each size, synthetic tag lists (10-50 VinVL classes per image,
by their Visual Genome frequency) and captions naming some of an image's tags; the BM25 postings
as `vinvl index build` writes them (tag words, write time, disk, first search, one caption at a
time) against BM25Index built from the same words (tokenizing, build, one caption at a time), and
whether both answer the same. Writes under --root and deletes it."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(None, DESCRIPTION)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="gallery sizes (images)")
    parser.add_argument("--model_dir", default="tiny", help="whose tokenizer splits tags and captions (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=200, help="captions searched one at a time (default: %(default)s)")
    parser.add_argument("--k", type=int, default=16, help="candidates per caption (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="searches per caption; the fastest is kept (default: %(default)s)")
    parser.add_argument("--tokenize_sample", type=int, default=10_000,
                        help="images tokenized image by image to estimate BM25Index's tokenizing (default: %(default)s)")
    parser.add_argument("--root", default="/tmp/vinvl_tags_benchmark", help="scratch folder (deleted afterwards)")
    parser.add_argument("--json", help="write the rows here")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    """Run the benchmark, print its tables; returns the rows."""
    args = build_parser().parse_args(argv)
    require_positive(args, ("queries", "k", "tokenize_sample", "repeats"))
    from ..assets import resolve_config
    from ..benchmarks.tags import format_table, run_benchmark
    from ..oscar.model_dir import load_tokenizer

    tokenizer = load_tokenizer(resolve_config(args.model_dir, "--model_dir", kind="config"))
    rows = run_benchmark(args.sizes, tokenizer, args.queries, args.k, args.root, args.tokenize_sample, args.repeats)
    print(format_table(rows))
    write_json_report(args.json, rows)
    return rows
