"""The ``vinvl`` command: one sub-command per step of the flow, each a thin call into the library.

Every sub-command is a module with ``main(argv)``; ``vinvl <command> --help`` shows its flags.
"""
from __future__ import annotations

import importlib
import sys
from typing import List, Optional

# name -> (module holding main(argv), one-line summary)
COMMANDS = {
    "demo": ("vinvl.demo", "synthetic corpus -> train -> evaluate -> Taskflow queries -> HTML report"),
    "convert": ("vinvl.convert", "official Oscar/VinVL or BERT checkpoint -> PaddleNLP model directory"),
    "convert-detector": ("vinvl.vision.convert", "official VinVL detector checkpoint (.pth) -> Paddle detector directory"),
    "make-synthetic": ("vinvl.data.synthetic", "write a synthetic corpus in the official coco_ir file format"),
    "train": ("vinvl.training.run", "fine-tune with paddlenlp.Trainer (accepts a JSON config)"),
    "eval": ("vinvl.retrieval.evaluate", "COCO 1K/5K retrieval evaluation: R@1/5/10 both ways, rsum"),
    "extract": ("vinvl.vision.extract", "photos -> region features and tags the loading script reads (resumable, sharded)"),
    "retrieve": ("vinvl.retrieve", "answer text or image queries against a gallery through Taskflow"),
    "benchmark": ("vinvl.retrieval.benchmark", "measure scoring throughput, two-stage savings, FLOP/s, memory"),
    "index": ("vinvl.serving.command", "build / extend a gallery index on disk (memory-mapped, atomically versioned)"),
    "serve": ("vinvl.serving.serve", "serve retrieval over a gallery index through HTTP (PaddleNLP SimpleServer, uvicorn)"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: vinvl <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run `vinvl <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"vinvl: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    module.main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
