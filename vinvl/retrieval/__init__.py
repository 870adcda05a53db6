"""Image-text retrieval: galleries, first stages, the scoring engine (exhaustive and two-stage) and R@K metrics."""
from .engine import RetrievalEngine, RetrievalScores, match_probability
from .evaluate import evaluate_corpus, public_names, run_protocol, score_gallery
from .first_stage import FIRST_STAGE_CHOICES, FIRST_STAGES, BM25Index, Candidates, resolve_first_stage, tag_candidates
from .gallery import Gallery
from .metrics import (
    candidate_i2t_ranks,
    coverage,
    first_stage_coverage,
    fold_metrics,
    i2t_ranks,
    recall_at_k,
    rerank_metrics,
    retrieval_metrics,
    right_answer_coverage,
    scored_coverage,
    subset_metrics,
    t2i_ranks,
    top_k_indices,
    two_stage_coverage,
)

__all__ = [
    "Gallery",
    "RetrievalEngine",
    "RetrievalScores",
    "match_probability",
    "FIRST_STAGES",
    "FIRST_STAGE_CHOICES",
    "BM25Index",
    "Candidates",
    "resolve_first_stage",
    "tag_candidates",
    "coverage",
    "first_stage_coverage",
    "right_answer_coverage",
    "scored_coverage",
    "two_stage_coverage",
    "evaluate_corpus",
    "public_names",
    "run_protocol",
    "score_gallery",
    "i2t_ranks",
    "t2i_ranks",
    "candidate_i2t_ranks",
    "recall_at_k",
    "retrieval_metrics",
    "rerank_metrics",
    "fold_metrics",
    "subset_metrics",
    "top_k_indices",
]
