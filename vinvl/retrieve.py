"""``vinvl retrieve``: ask a saved model for images of a caption or captions of an image, via Taskflow."""
from __future__ import annotations

import argparse
import json
from typing import List, Optional, Sequence

from .retrieval.first_stage import FIRST_STAGE_CHOICES


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(prog="vinvl retrieve", description=__doc__)
    parser.add_argument("--model_dir", required=True, help="a saved model directory")
    parser.add_argument("--data_dir", required=True, help="the gallery: a data directory the coco_ir script reads")
    parser.add_argument("--split", default="test", help="gallery split")
    parser.add_argument("--text", action="append", default=[], help="a caption query (repeatable)")
    parser.add_argument("--image_id", action="append", default=[], help="a gallery image to find captions for (repeatable)")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--first_stage", choices=FIRST_STAGE_CHOICES, default="auto",
                        help="which gallery items the match head re-ranks: contrastive (embedding top-N), tags "
                             "(BM25 of caption words vs detector tags, top-N; needs no trained heads), exhaustive "
                             "(all), auto (contrastive if the model records trained contrastive heads, else exhaustive)")
    parser.add_argument("--candidates", type=int, default=16, help="N: items a first stage proposes per query")
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # removed: named in an error
    args = parser.parse_args(argv)
    if args.mode is not None:
        raise ValueError(f"--mode is gone: use --first_stage exhaustive, contrastive, tags or auto (got --mode {args.mode})")
    if not args.text and not args.image_id:
        parser.error("give at least one --text or --image_id")

    import vinvl  # noqa: F401  (registers the task)
    from paddlenlp import Taskflow

    retrieval = Taskflow(
        "image_text_retrieval",
        task_path=args.model_dir,
        gallery_dir=args.data_dir,
        gallery_split=args.split,
        top_k=args.top_k,
        first_stage=args.first_stage,
        candidates=args.candidates,
    )
    results = retrieval(list(args.text) + [{"image_id": i} for i in args.image_id])
    print(json.dumps(results, indent=2))
    return results
