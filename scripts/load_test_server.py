"""Load-test the retrieval service on 127.0.0.1: N concurrent clients for T seconds per worker count.

    python scripts/load_test_server.py --index OUT --model_dir M [--workers 1 2] [--clients 16] [--seconds 60]

Prints a Markdown table (throughput, latency percentiles, replies by status, mismatches against the
in-process Taskflow, RSS) and, with --json, writes every figure. See vinvl.benchmarks.load_test.
"""
import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.commands.load_test_server import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
