"""Load-test the retrieval service on 127.0.0.1: N concurrent clients for T seconds per worker count.

    python scripts/load_test_server.py --index OUT --model_dir M [--workers 1 2] [--clients 16] [--seconds 60]

Prints a Markdown table (throughput, latency percentiles, replies by status, mismatches against the
in-process Taskflow, RSS) and, with --json, writes every figure. See vinvl.serving.load_test.
"""
import argparse
import json

from vinvl.retrieval.first_stage import FIRST_STAGE_CHOICES
from vinvl.serving.load_test import format_table, load_test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, help="gallery index directory")
    parser.add_argument("--model_dir", required=True, help="the model the index was built with")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="uvicorn worker counts to run")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each concurrent run")
    parser.add_argument("--bad_fraction", type=float, default=0.1, help="share of bad requests under load")
    parser.add_argument("--repeats", type=int, default=3, help="sequential calls per query (latency, overhead)")
    parser.add_argument("--warmup_seconds", type=float, default=10.0, help="concurrent load before the measured run")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--first_stage", choices=FIRST_STAGE_CHOICES, default="auto")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--json", help="write the full report here")
    args = parser.parse_args()
    if args.clients <= 0 or args.seconds <= 0 or args.repeats <= 0 or args.warmup_seconds < 0 or not 0 <= args.bad_fraction <= 1:
        parser.error("--clients, --seconds and --repeats must be positive, --warmup_seconds >= 0, --bad_fraction in [0, 1]")
    options = {"top_k": args.top_k, "first_stage": args.first_stage, "candidates": args.candidates, "batch_size": args.batch_size}
    report = load_test(
        args.index, args.model_dir, workers=args.workers, clients=args.clients, seconds=args.seconds,
        bad_fraction=args.bad_fraction, repeats=args.repeats, options=options, warmup_seconds=args.warmup_seconds,
    )
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
