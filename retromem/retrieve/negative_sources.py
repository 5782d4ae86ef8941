"""Where fine-tuning's hard negatives come from: ``dense`` (the encoder's own Flat index,
:mod:`retromem.retrieve.dense_negatives`), ``bm25`` (a Lucene BM25 index of the corpus), or ``bm25+dense``
(the two fused by reciprocal rank fusion). Mining itself is one function over any searcher
(:func:`retromem.retrieve.hard_negatives.mine_candidates`); this module only builds the searcher.

The BM25 index is cached in the work directory ``retromem eval beir --method bm25`` uses
(``<workdir>/<dataset>-<where>/bm25-flat-<key>/index``), checked against the corpus before it is reused. With
``bm25`` and ``bm25+dense`` the positives' scores (for ``max_score_ratio``) come from the ranking itself: a
positive ranked beyond the search depth has none, and the ratio does not apply to its pair. Fused scores are RRF
scores, so a ratio compares ranks, not similarities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from retromem.data.passage import Passage
from retromem.errors import ConfigError
from retromem.index.bm25 import BM25IndexConfig, bm25_work_directory, build_or_reuse_bm25_index
from retromem.index.encoder import Encoder
from retromem.retrieve.bm25 import BM25Searcher
from retromem.retrieve.dense_negatives import mine_negatives as mine_dense_negatives
from retromem.retrieve.fusion import HybridSearcher
from retromem.retrieve.hard_negatives import Candidates, MiningConfig, mine_candidates

SOURCES = ("dense", "bm25", "bm25+dense")


def mine_negatives_from(source: str, queries: Mapping[str, str], positives: Mapping[str, Iterable[str]],
                        passages: Callable[[], Iterator[Passage]], get_encoder: Callable[[], Encoder],
                        config: MiningConfig, name: str, workdir: str | Path | None = None, total: int | None = None,
                        corpus_path: str | Path | None = None, show_progress: bool = False,
                        write: bool = True) -> dict[str, Candidates]:
    """Each query's :class:`Candidates` from ``source``'s ranking (arguments as
    :func:`retromem.retrieve.dense_negatives.mine_negatives`; ``get_encoder`` is called only when dense search is
    part of it). Under a launcher, only the process with ``write=True`` builds and searches a BM25 index."""
    if source not in SOURCES:
        raise ConfigError(f"negatives_source (--negatives) must be one of {', '.join(SOURCES)}, got {source!r}")
    if source == "dense":
        return mine_dense_negatives(queries, positives, passages, get_encoder(), config, name=name, workdir=workdir,
                                    total=total, corpus_path=corpus_path, show_progress=show_progress, write=write)
    if not write:  # a helper process under accelerate launch: it encodes its share for dense, the main one mines
        if source == "bm25+dense":
            mine_dense_negatives(queries, positives, passages, get_encoder(), config, name=name, workdir=workdir,
                                 total=total, corpus_path=corpus_path, show_progress=show_progress, write=False)
        return {}
    searcher = bm25_mining_searcher(passages, name, workdir, total=total, corpus_path=corpus_path,
                                    show_progress=show_progress)
    if source == "bm25+dense":
        searcher = HybridSearcher(searcher, _dense_searcher(passages, get_encoder(), name, workdir, total,
                                                            corpus_path, show_progress),
                                  method="rrf", depth=config.top_k + max((len(set(p)) for p in positives.values()),
                                                                         default=0))
    return mine_candidates(searcher, queries, positives, config, show_progress=show_progress)


def bm25_mining_searcher(passages: Callable[[], Iterator[Passage]], name: str, workdir: str | Path | None,
                         total: int | None = None, corpus_path: str | Path | None = None,
                         show_progress: bool = False) -> BM25Searcher:
    """A BM25 searcher of the corpus (flat layout, pyserini's defaults), its index cached under ``workdir``."""
    index_config = BM25IndexConfig()
    work = bm25_work_directory(workdir, name, index_config)
    index, _ = build_or_reuse_bm25_index(passages, work / "index", index_config, corpus_name=name,
                                         corpus_path=corpus_path, total=total, show_progress=show_progress,
                                         replace_other=True)
    return BM25Searcher(index)


def _dense_searcher(passages, encoder: Encoder, name: str, workdir, total, corpus_path, show_progress):
    """The dense searcher dense mining uses (its cached embeddings and Flat index)."""
    from retromem.index.embeddings import encode_corpus
    from retromem.index.faiss_index import build_or_reuse_index
    from retromem.retrieve.dense import DenseSearcher
    from retromem.retrieve.dense_negatives import INDEX
    from retromem.workdir import work_directory

    work = work_directory(workdir, name, encoder.metadata())
    embeddings = encode_corpus(passages, encoder, work / "embeddings", total=total, show_progress=show_progress,
                               corpus_name=name, corpus_path=corpus_path, replace_stale=True)
    index, _ = build_or_reuse_index(embeddings, work / f"index-{INDEX.factory}-{INDEX.metric}", INDEX,
                                    show_progress=show_progress, replace_other=True)
    return DenseSearcher(encoder, index)
