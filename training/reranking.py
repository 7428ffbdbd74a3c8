"""k-reciprocal re-ranking, kept importable from ``training`` for the evaluation code and its users.

The implementation lives in :mod:`index.reranking`: it works on distances between descriptors only, and the
server (which must not import ``training``) re-ranks a query's neighbourhood with the same function, so that
``rerank=true`` on ``/search`` and ``python -m training evaluate --rerank`` cannot drift apart.
"""

from __future__ import annotations

from index.reranking import k_reciprocal_rerank

__all__ = ["k_reciprocal_rerank"]
