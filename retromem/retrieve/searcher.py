"""The interface every searcher offers (dense now; BM25 and hybrid fusion plug in the same way)."""

from __future__ import annotations

from typing import Protocol

from retromem.retrieve.runfile import Run


class Searcher(Protocol):
    def search(self, queries: dict[str, str], k: int = 100, show_progress: bool = False) -> Run:
        """Return the top ``k`` documents of each query as ``{qid: {doc_id: score}}``."""
        ...
