"""``vinvl eval``: COCO 1K/5K retrieval evaluation of a saved model
(:func:`vinvl.retrieval.evaluate.evaluate_saved_model`); ``scripts/eval_retrieval.py`` runs it too."""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, Optional, Sequence

from ..errors import UsageError
from .options import (
    SPLITS,
    add_first_stage_argument,
    add_precision_argument,
    check_precision,
    new_parser,
    reject_removed_option,
    require_directory,
    require_positive,
)

__all__ = ["PROTOCOLS", "build_parser", "main"]

PROTOCOLS = ("coco1k", "coco5k", "keys", "all")  # vinvl.retrieval.evaluate.PROTOCOLS

DESCRIPTION = """\
COCO 1K/5K image-text retrieval of a saved model: R@1/5/10 both ways and rsum, printed as a table;
with --output_dir also metrics.json and each query's ranked results. Under
python -m paddle.distributed.launch the pair work is shared between the processes."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vinvl eval", DESCRIPTION)
    parser.add_argument("--model_dir", required=True, help="a saved model directory (config.json + weights)")
    parser.add_argument("--data_dir", required=True, help="the coco_ir directory")
    parser.add_argument("--features_dir", help="per-split feature folders (default: data_dir/features)")
    parser.add_argument("--split", default="test", help=f"split to evaluate: {', '.join(SPLITS)}")
    parser.add_argument("--protocol", choices=PROTOCOLS,
                        help="coco1k: 5-fold average + official 1K subset; coco5k: the whole set; keys: "
                             "--eval_img_keys_file; all: every image of the split (default: coco1k for the test split, "
                             "all for any other)")
    parser.add_argument("--eval_img_keys_file", help="key file for --protocol keys: a path, or a file name in data_dir")
    parser.add_argument("--fold_size", type=int,
                        help="images per 1K fold (default: the size of {split}_img_keys_1k.tsv, else 1000)")
    add_first_stage_argument(parser, default="exhaustive")  # exhaustive: the paper protocol
    parser.add_argument("--candidates", type=int, default=128,
                        help="gallery items a first stage proposes per query for the match head to re-rank")
    parser.add_argument("--top_k", default=None, help=argparse.SUPPRESS)  # renamed: --candidates
    parser.add_argument("--batch_size", type=int, default=128, help="pairs per forward pass")
    parser.add_argument("--no_od_labels", action="store_true", help="leave out the object tags")
    add_precision_argument(parser)
    parser.add_argument("--rescore_top", type=int,
                        help="below fp32: each query's N best pairs are scored again at fp32, which then "
                             "orders them (default 20, twice R@10's depth; 0: none). Near-ties are where low precision "
                             "disagrees with fp32; this restores fp32's top answers for about 6%% more time with int8 (docs/models.md)")
    parser.add_argument("--output_dir", help="write metrics.json and ranked results here")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def _check(args: argparse.Namespace) -> None:
    """Errors that need no data read, before anything is loaded."""
    reject_removed_option(args.mode, "--mode", "--first_stage exhaustive (every pair), contrastive, tags or auto")
    reject_removed_option(args.top_k, "--top_k", "--candidates (first-stage candidates per query; --top_k is the "
                                                 "number of results of vinvl retrieve and vinvl serve)")
    if args.split not in SPLITS:
        raise UsageError(f"--split: unknown split {args.split!r}; the splits are {', '.join(SPLITS)}")
    require_positive(args, ("batch_size", "candidates", "fold_size"))
    if args.rescore_top is not None:
        if args.precision == "fp32":
            raise UsageError("--rescore_top goes with --precision bf16, int8 or fp16 (fp32 scores need no re-scoring)")
        if args.rescore_top < 0:
            raise UsageError(f"--rescore_top must be 0 or more, got {args.rescore_top}")
    if (args.protocol == "keys") != (args.eval_img_keys_file is not None):
        raise UsageError("--eval_img_keys_file goes with --protocol keys (and that protocol needs it)")
    require_directory(args.model_dir, "--model_dir", "model directory")
    if not os.path.isfile(os.path.join(args.model_dir, "config.json")):
        raise FileNotFoundError(f"--model_dir {args.model_dir}: not a model directory (it has no config.json)")
    require_directory(args.data_dir, "--data_dir", "data directory")


def _print_table(report: Dict[str, Any]) -> None:
    names = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "rsum")
    print(f"{'':<10}" + "".join(f"{n:>9}" for n in names))
    for evaluation, metrics in report["results"].items():
        print(f"{evaluation:<10}" + "".join(f"{metrics[n]:>9.2f}" for n in names))
    rescored = f", {report['pairs_rescored']} of them again at fp32" if report["pairs_rescored"] else ""
    print(f"{report['pairs_scored']} pairs scored in {report['scoring_seconds']:.1f} s "
          f"({report['pairs_per_second']:.0f} pairs/s){rescored}")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Score, print the R@K table, write metrics.json and ranked results (rank 0 only); returns the report."""
    args = build_parser().parse_args(argv)
    _check(args)
    check_precision(args.precision)
    from ..data.formats import DataError
    from ..oscar.model_dir import has_weights
    from ..retrieval.distributed import rank
    from ..retrieval.evaluate import evaluate_saved_model, key_file_path, write_outputs

    if not has_weights(args.model_dir):
        raise FileNotFoundError(f"--model_dir {args.model_dir}: holds a config but no weights to evaluate")
    if args.eval_img_keys_file is not None and not os.path.isfile(key_file_path(args.data_dir, args.eval_img_keys_file)):
        raise DataError(f"{key_file_path(args.data_dir, args.eval_img_keys_file)}: no such file (--eval_img_keys_file)")
    report, result = evaluate_saved_model(
        args.model_dir, args.data_dir, split=args.split, protocol=args.protocol, features_dir=args.features_dir,
        keys_file=args.eval_img_keys_file, fold_size=args.fold_size, first_stage=args.first_stage,
        candidates=args.candidates, batch_size=args.batch_size, add_od_labels=not args.no_od_labels,
        progress=not args.no_progress, precision=args.precision,
        **({} if args.rescore_top is None else {"rescore_top": args.rescore_top}),
    )
    if rank() == 0:
        _print_table(report)
        if args.output_dir:
            for path in write_outputs(args.output_dir, report, result):
                print(f"wrote {path}")
    return report
