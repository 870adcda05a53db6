"""Fine-tune Oscar/VinVL for image-text retrieval with paddlenlp.Trainer.

    python scripts/train_retrieval.py model_configs/tiny/train_synthetic.json
    python -m paddle.distributed.launch --nproc_per_node 2 scripts/train_retrieval.py --model_name_or_path ... 

Flags are vinvl.training.arguments (model, data) plus paddlenlp TrainingArguments.
"""
import vinvl  # noqa: F401  (tunes the CPU runtime before paddle loads)
from vinvl.training.run import main

if __name__ == "__main__":
    main()
