"""``vinvl benchmark``: what the retrieval engine buys, measured in one run
(:func:`vinvl.benchmarks.retrieval.run_benchmark`); ``scripts/benchmark_retrieval.py`` runs it too."""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Sequence, Tuple

from .options import PRECISIONS, check_precision, new_parser, positive_ints, reject_removed_option, require_positive

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Measure the retrieval engine on one model and gallery and print the ratios: exhaustive scoring
throughput over the reference pipeline, two-stage against exhaustive (time, pairs, R@K change,
first-stage coverage), scoring FLOP/s over a matmul's, peak memory, and the gain of vinvl's CPU
settings. Without --model_dir it trains the shipped tiny config first; without --data_dir it writes a
synthetic corpus. --precisions adds the exhaustive path at bf16 / int8 against the same reference.
Writes WORK_DIR/benchmark.json. --num_images 20 --train_steps 0 is a smoke test."""


def _precisions(text: str) -> Tuple[str, ...]:
    """argparse type of ``--precisions``: comma-separated names of :data:`PRECISIONS`."""
    values = tuple(text.split(","))
    unknown = [v for v in values if v not in PRECISIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(PRECISIONS)} separated by commas, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vinvl benchmark", DESCRIPTION)
    parser.add_argument("--model_dir", help="a trained model (default: train the shipped tiny config first)")
    parser.add_argument("--data_dir", help="a coco_ir corpus whose test split is the gallery (default: synthetic)")
    parser.add_argument("--work_dir", default="outputs/benchmark", help="corpus, trained model and benchmark.json go here")
    parser.add_argument("--num_images", type=int, default=1000, help="gallery images (5 captions each in the synthetic corpus)")
    parser.add_argument("--train_images", type=int, default=2000, help="synthetic train images when training")
    parser.add_argument("--train_steps", type=int, default=5000,
                        help="steps of training without --model_dir (0: untrained); the match head needs thousands")
    parser.add_argument("--baseline_pairs", type=int, default=3000, help="pairs the reference pipeline is timed on")
    parser.add_argument("--candidates", type=int, default=16, help="two-stage candidates per query")
    parser.add_argument("--top_k", default=None, help=argparse.SUPPRESS)  # renamed: --candidates
    parser.add_argument("--coverage_ks", type=positive_ints, default=(8, 16, 64),
                        help="comma-separated k at which each first stage's coverage is reported (besides --candidates)")
    parser.add_argument("--batch_size", type=int, default=128, help="engine pairs per forward pass")
    parser.add_argument("--max_seq_len", type=int, default=70, help="text tokens per pair (official 70)")
    parser.add_argument("--max_img_seq_len", type=int, default=70, help="regions per pair (official 70)")
    parser.add_argument("--matmul_size", type=int, default=2048, help="side of the reference fp32 matmul")
    parser.add_argument("--cpu_probe_images", type=int, default=40,
                        help="gallery images of the CPU-settings probe (0: skip the probe)")
    parser.add_argument(
        "--precisions", type=_precisions, default=("fp32",),
        help="comma-separated precisions of the exhaustive path's pair forward (fp32: the model itself; bf16, int8 on the "
             "CPU's inference runtimes, fp16 on a GPU), each measured against the fp32 reference pipeline",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic corpus and of training")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the benchmark; returns its report (also in WORK_DIR/benchmark.json)."""
    args = build_parser().parse_args(argv)
    reject_removed_option(args.top_k, "--top_k", "--candidates (two-stage candidates per query)")
    require_positive(args, ("num_images", "baseline_pairs", "candidates", "batch_size", "matmul_size"))
    for precision in args.precisions:
        check_precision(precision, "--precisions")  # before any training or loading
    from ..benchmarks.retrieval import RetrievalBenchmark, run_benchmark

    return run_benchmark(RetrievalBenchmark(
        model_dir=args.model_dir, data_dir=args.data_dir, work_dir=args.work_dir, num_images=args.num_images,
        train_images=args.train_images, train_steps=args.train_steps, baseline_pairs=args.baseline_pairs,
        candidates=args.candidates, coverage_ks=args.coverage_ks, batch_size=args.batch_size,
        max_seq_len=args.max_seq_len, max_img_seq_len=args.max_img_seq_len, matmul_size=args.matmul_size,
        cpu_probe_images=args.cpu_probe_images, seed=args.seed, progress=not args.no_progress,
        precisions=args.precisions,
    ))
