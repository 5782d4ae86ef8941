"""Dense hard-negative mining: a corpus encoded into retromem's Flat inner-product index, cached in the
work directory ``retromem eval beir`` uses, and searched by :func:`retromem.retrieve.hard_negatives.mine_candidates`.

The cache is checked as evaluation checks it: embeddings of a corpus whose text changed since are
encoded again, and an index of other embeddings is rebuilt. Positives are scored by their stored vectors
(:class:`DenseScorer`, with the query vectors of the search itself), so ``max_score_ratio`` applies to
every pair, however low its positive ranks; that encodes the queries a second time, in the search's own
batches, a small share of mining beside the corpus.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from retromem.data.passage import Passage
from retromem.index.embeddings import EmbeddingSet, encode_corpus
from retromem.index.encoder import Encoder
from retromem.index.faiss_index import IndexConfig, build_or_reuse_index
from retromem.retrieve.dense import DenseSearcher
from retromem.retrieve.hard_negatives import Candidates, MiningConfig, mine_candidates
from retromem.workdir import work_directory

INDEX = IndexConfig(factory="Flat", metric="ip")


def mine_negatives(queries: Mapping[str, str], positives: Mapping[str, Iterable[str]],
                   passages: Callable[[], Iterator[Passage]], encoder: Encoder, config: MiningConfig, name: str,
                   workdir: str | Path | None = None, total: int | None = None, corpus_path: str | Path | None = None,
                   show_progress: bool = False, write: bool = True) -> dict[str, Candidates]:
    """Rank the corpus for each query with ``encoder`` through retromem's own Flat index.

    ``passages`` is a callable returning a fresh passage iterator (the corpus is streamed; ``corpus_path``,
    its file when it has one, lets a finished cache skip rereading it). Embeddings and the index are cached
    in ``<workdir>/<name>/<model>-<key>/`` (the layout ``retromem eval beir`` uses, so the two share them).
    ``positives``: per query, the documents never to return (its positives, and whatever else
    :func:`retromem.retrieve.hard_negatives.never_negatives` adds). Under a launcher only the process with
    ``write=True`` searches; the others just encode their share and get ``{}``.
    """
    work = work_directory(workdir, name, encoder.metadata())
    embeddings = encode_corpus(passages, encoder, work / "embeddings", total=total, show_progress=show_progress,
                               corpus_name=name, corpus_path=corpus_path, replace_stale=True)
    if not write or embeddings is None:
        return {}
    index, _ = build_or_reuse_index(embeddings, work / f"index-{INDEX.factory}-{INDEX.metric}", INDEX,
                                    show_progress=show_progress, replace_other=True)
    searcher = DenseSearcher(encoder, index)  # refuses an index of another encoder
    return mine_candidates(searcher, queries, positives, config, scorer=DenseScorer(searcher, embeddings),
                           show_progress=show_progress)


class DenseScorer:
    """Scores (query, document) pairs as the dense index does: the inner product with the stored vector."""

    def __init__(self, searcher: DenseSearcher, embeddings: EmbeddingSet):
        self.searcher = searcher
        self.embeddings = embeddings
        self._row_of = {doc_id: row for row, doc_id in enumerate(embeddings.ids)}

    def score(self, queries: Mapping[str, str], docs: Mapping[str, Iterable[str]]) -> dict[str, dict[str, float]]:
        """Each query's vector is the one the search used (same batches), so a positive's score and the
        candidates' scores it is compared with come from one vector."""
        scored: dict[str, dict[str, float]] = {}
        for batch, vectors in self.searcher.query_vectors(dict(queries)):
            for qid, vector in zip(batch, vectors):
                scored[qid] = {d: float(np.dot(vector, self.embeddings.vectors[self._row_of[d]]))
                               for d in docs[qid] if d in self._row_of}
        return scored
