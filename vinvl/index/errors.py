"""Errors of the gallery index that several of its modules raise (the local store and the Milvus store)."""
from __future__ import annotations

from ..errors import UserError

__all__ = ["IndexWeightsError"]


class IndexWeightsError(UserError, ValueError):
    """An index queried or extended with weights other than those that built it."""
