"""Write a synthetic COCO retrieval corpus in the official file format (see `vinvl make-synthetic --help`)."""

import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.commands.make_synthetic import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
