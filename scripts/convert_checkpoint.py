"""Convert an official Oscar/VinVL or a BERT checkpoint into a vinvl-paddle model directory.

Usage: python scripts/convert_checkpoint.py SRC DST [--set KEY=VALUE ...] [--overwrite]
(the same as ``vinvl convert``; the logic lives in :mod:`vinvl.oscar.convert`).
"""

import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.commands.convert import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
