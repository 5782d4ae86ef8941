"""The ``bm25`` and ``hybrid`` searchers of the KILT retrieval pipeline (entries of
:data:`retromem.eval.kilt_pipeline.SEARCHERS`): BM25 over the knowledge-source passages, its index cached in the
work directory (``<workdir>/<source>-<where>-w100/bm25-flat-<key>/index``) and checked against the passages before
reuse; ``hybrid`` = that BM25 fused by reciprocal rank fusion (k=60) with the dense searcher of the pipeline."""

from __future__ import annotations

from retromem.index.bm25 import BM25IndexConfig, bm25_work_directory, build_or_reuse_bm25_index
from retromem.retrieve.bm25 import BM25Searcher
from retromem.retrieve.fusion import RRF_K, HybridSearcher


def bm25_kilt_searcher(setup):
    """A BM25 searcher of ``setup.corpus`` (pyserini's defaults: flat, k1 0.9, b 0.4); see SearchSetup."""
    corpus = setup.corpus
    index_config = BM25IndexConfig()
    work = bm25_work_directory(setup.workdir, setup.corpus_key, index_config)
    index, reused = build_or_reuse_bm25_index(corpus.passages, work / "index", index_config,
                                              corpus_name=f"{corpus.name} ({corpus.passage_key() or 'documents'})",
                                              corpus_path=corpus.path, total=corpus.count(),
                                              show_progress=setup.config.show_progress, replace_other=True)
    if reused:
        setup.reused.append("bm25 index")
    searcher = BM25Searcher(index)
    if setup.work is None:
        setup.work = work
        setup.run_tag = "bm25-flat"
        setup.metadata.update(model="BM25 flat", bm25={"k1": searcher.config.k1, "b": searcher.config.b,
                                                       "index": str(index.path)})
    return searcher


def hybrid_kilt_searcher(setup):
    """BM25 and the pipeline's dense searcher, fused by RRF; the run goes beside the dense one."""
    from retromem.eval.kilt_dense import dense_searcher

    dense = dense_searcher(setup)
    if dense is None:  # a helper process under accelerate launch
        return None
    bm25 = bm25_kilt_searcher(setup)
    setup.run_tag = f"hybrid-rrf{RRF_K}-bm25-{setup.run_tag}"
    setup.metadata.update(fusion="rrf", rrf_k=RRF_K)
    return HybridSearcher(bm25, dense, method="rrf", depth=max(100, setup.config.top_k))
