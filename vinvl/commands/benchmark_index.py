"""``scripts/benchmark_index.py``: the gallery index at scale (:func:`vinvl.benchmarks.index.run_benchmark`)."""
from __future__ import annotations

import argparse
from typing import List, Optional, Sequence

from .options import new_parser, require_positive

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Benchmark the gallery index: for each size, a synthetic index (real index files, clustered
embeddings) opened in a fresh process (time, memory), exact vs faiss IVF-Flat first-stage latency,
and faiss recall@k against exact top-k. Needs faiss-cpu (pip install -e ".[faiss]"). Writes under
--root and deletes it."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(None, DESCRIPTION)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="gallery sizes (images)")
    parser.add_argument("--dim", type=int, default=256, help="embedding dimension")
    parser.add_argument("--k", type=int, default=10, help="top-k of every search (and of recall@k)")
    parser.add_argument("--queries", type=int, default=100, help="queries for recall and the batch latency")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32], help="IVF lists searched per query")
    parser.add_argument("--max_nlist", type=int, default=1024, help="cap on the IVF lists (about 4 sqrt(N) below it)")
    parser.add_argument("--clusters", type=int, default=2000, help="centres of the synthetic embeddings")
    parser.add_argument("--spread", type=float, default=0.5, help="noise around each centre (per dimension)")
    parser.add_argument("--root", default="/tmp/vinvl_index_benchmark", help="scratch folder (deleted afterwards)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    """Run the benchmark, print its table; returns the rows."""
    args = build_parser().parse_args(argv)
    require_positive(args, ("dim", "k", "queries", "max_nlist", "clusters"))
    from ..benchmarks.index import format_table, run_benchmark

    rows = run_benchmark(args.sizes, args.dim, args.k, args.queries, args.nprobe, args.root, args.clusters,
                         args.spread, args.max_nlist)
    print(format_table(rows, args.k, args.queries))
    return rows
