"""BM25 search of a retromem BM25 index through pyserini's ``LuceneSearcher``, behind the :class:`Searcher` interface.

The defaults, ``k1=0.9`` and ``b=0.4``, are pyserini's (and its BEIR runs'). Queries are searched in batches by
Anserini's multi-threaded ``batch_search`` and analyzed as the index was (English analyzer). What is documented
for odd queries:

- a query with no terms left after analysis (empty, only whitespace or punctuation, only stopwords) has an empty
  ranking: its query id maps to ``{}`` in the run (a TREC run file then has no line for it, and evaluation counts
  it as a query without results);
- a query longer than Lucene's limit of 1024 boolean clauses (one per distinct term) is searched whole: the
  limit is raised when the JVM starts (:data:`retromem.index.java.MAX_CLAUSES`).

Documents are returned by Lucene's score, ties in Lucene's order (internal doc id), exactly as pyserini returns
them (``tests/test_bm25.py`` checks it against ``LuceneSearcher`` called directly).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from retromem.artifacts import CorpusRef
from retromem.data.passage import Passage
from retromem.errors import ConfigError
from retromem.index.bm25 import BM25Index
from retromem.options import check_options, option
from retromem.retrieve.runfile import Run


@dataclass
class BM25Config:
    """How a BM25 index is searched."""

    k1: float = option(0.9, min=0.0, help="BM25 term-frequency saturation (pyserini's BEIR default 0.9)")
    b: float = option(0.4, min=0.0, max=1.0, help="BM25 length normalisation (pyserini's BEIR default 0.4)")
    search_threads: int = option(min(4, os.cpu_count() or 1), min=1, max=1024,
                          help="search threads (Anserini's batch_search)")
    query_batch: int = option(1000, min=1, cli=False, help="queries per batch_search call (the unit of progress)")
    jvm_heap: str | None = option(None, help="JVM heap, e.g. 6g (default: $RETROMEM_JVM_HEAP, else 6g)")

    def __post_init__(self) -> None:
        check_options(self)


class BM25Searcher:
    """Searches a BM25 index (a folder from :func:`retromem.index.bm25.build_bm25_index`).

    ``corpus`` (a callable streaming the passages, or their :class:`CorpusRef`), when given, is checked against the
    corpus the index was built from: another corpus, or one changed since, is refused (:class:`MismatchError`).
    """

    def __init__(self, index: BM25Index | str | Path, config: BM25Config | None = None,
                 corpus: Callable[[], Iterable[Passage]] | CorpusRef | None = None,
                 corpus_path: str | Path | None = None):
        from retromem.index.java import start_jvm

        self.config = config or BM25Config()
        self.index = index if isinstance(index, BM25Index) else BM25Index.open(index)
        if corpus is not None:
            self.index.check_corpus(corpus, corpus_path=corpus_path)
        start_jvm(self.config.jvm_heap)
        from pyserini.search.lucene import LuceneSearcher

        self.lucene = LuceneSearcher(str(self.index.lucene_dir))
        self.lucene.set_bm25(float(self.config.k1), float(self.config.b))
        self.fields = self.index.fields if self.index.layout != "flat" else {}

    def search(self, queries: dict[str, str], k: int = 100, show_progress: bool = False) -> Run:
        """The top ``k`` of each query, best first (``{qid: {doc_id: score}}`` in rank order); a ``k`` beyond the
        index's documents returns them all."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        k = min(int(k), max(1, int(self.index.meta.details.get("indexed") or k)))  # Lucene takes an int32
        qids = list(queries)
        run: Run = {}
        batch = self.config.query_batch
        with tqdm(total=len(qids), desc="BM25 search", unit="query", disable=not show_progress) as bar:
            for start in range(0, len(qids), batch):
                chunk = qids[start:start + batch]
                texts = [_query_text(queries[q]) for q in chunk]
                hits = self.lucene.batch_search(texts, chunk, k=int(k), threads=self.config.search_threads,
                                                fields=self.fields)
                for qid in chunk:
                    run[qid] = {hit.docid: float(hit.score) for hit in hits.get(qid, ())}
                bar.update(len(chunk))
        return run

    def close(self) -> None:
        self.lucene.close()


def _query_text(text: str) -> str:
    """The text handed to Anserini: its query generator analyzes it (no Lucene query syntax is parsed)."""
    return text if isinstance(text, str) else str(text)
