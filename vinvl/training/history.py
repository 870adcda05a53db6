"""A run's logged values (loss, learning rate, eval R@K) as JSON lines in its output directory.

paddlenlp 3.0.0b4 empties ``TrainerState.log_history`` at every log call, so the curves a
report draws are kept here instead: one JSON object per log call, written by rank 0.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List

from paddlenlp.trainer import TrainerCallback

__all__ = ["LOG_HISTORY_FILE", "LogHistoryCallback", "read_log_history"]

LOG_HISTORY_FILE = "log_history.jsonl"


class LogHistoryCallback(TrainerCallback):
    """Appends every logged dict, with its global step, to ``output_dir/log_history.jsonl``."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            os.makedirs(args.output_dir, exist_ok=True)
            record = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
            with open(os.path.join(args.output_dir, LOG_HISTORY_FILE), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def read_log_history(output_dir: str) -> List[Dict[str, float]]:
    """The logged records in step order; a step logged again after a resume keeps its last record."""
    path = os.path.join(output_dir, LOG_HISTORY_FILE)
    if not os.path.isfile(path):
        return []
    latest: Dict[tuple, Dict[str, float]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                latest[(record["step"], tuple(sorted(record)))] = record
    return sorted(latest.values(), key=lambda r: r["step"])
