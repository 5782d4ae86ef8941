"""Dense retrieval: encode queries, search a FAISS index."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from retromem.index.encoder import Encoder
from retromem.index.faiss_index import DenseIndex
from retromem.retrieve.runfile import Run


class DenseSearcher:
    """Searches ``index`` with queries encoded by ``encoder`` (refused if it is not the encoder that built it)."""

    def __init__(self, encoder: Encoder, index: DenseIndex, query_batch: int = 4096):
        index.check_encoder(encoder.metadata())
        self.encoder = encoder
        self.index = index
        self.query_batch = query_batch

    def search(self, queries: dict[str, str], k: int = 100, show_progress: bool = False) -> Run:
        """The top ``k`` of each query, best first (``{qid: {doc_id: score}}`` in rank order)."""
        run: Run = {}
        for batch, vectors in self.query_vectors(queries, show_progress=show_progress):
            scores, doc_ids = self.index.search(vectors, k)
            for qid, row_scores, row_ids in zip(batch, scores, doc_ids):
                run[qid] = {doc: float(s) for doc, s in zip(row_ids, row_scores)}
        return run

    def query_vectors(self, queries: dict[str, str],
                      show_progress: bool = False) -> Iterator[tuple[list[str], np.ndarray]]:
        """``(query ids, vectors)`` in the batches :meth:`search` encodes them in, so that another use of the
        vectors (scoring chosen documents) gets exactly the vectors the search used."""
        qids = list(queries)
        for start in range(0, len(qids), self.query_batch):
            batch = qids[start:start + self.query_batch]
            yield batch, self.encoder.encode_queries([queries[q] for q in batch], show_progress=show_progress)
