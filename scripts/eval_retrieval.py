"""Evaluate image-text retrieval: COCO 1K (5-fold and official subset), 5K, or a key file.

    python scripts/eval_retrieval.py --model_dir outputs/tiny-synthetic --data_dir outputs/synthetic_coco \
        --protocol coco1k --output_dir outputs/eval
    python -m paddle.distributed.launch --nproc_per_node 2 scripts/eval_retrieval.py --model_dir ... --data_dir ...

Same flags as `vinvl eval` (vinvl.commands.evaluate).
"""

import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.commands.evaluate import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
