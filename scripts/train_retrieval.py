"""Fine-tune Oscar/VinVL for image-text retrieval with paddlenlp.Trainer.

    python scripts/train_retrieval.py tiny/train_synthetic    # a shipped recipe by name, or a JSON file
    python -m paddle.distributed.launch --nproc_per_node 2 scripts/train_retrieval.py --model_name_or_path ... 

A JSON recipe first, flags overriding it: as `vinvl train` (vinvl/commands/train.py).
"""

import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.commands.train import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
