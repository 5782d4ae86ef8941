"""The ``dense`` searcher of the KILT retrieval pipeline (an entry of :data:`retromem.eval.kilt_pipeline.SEARCHERS`),
in its own module so that other searchers (hybrid fusion) can build it without importing the pipeline."""

from __future__ import annotations

from retromem.index.embeddings import encode_corpus
from retromem.index.encoder import Encoder
from retromem.index.faiss_index import build_or_reuse_index
from retromem.retrieve.dense import DenseSearcher
from retromem.workdir import slug, work_directory


def dense_searcher(setup) -> DenseSearcher | None:
    """The dense searcher: the corpus encoded (or the cached embeddings reused, re-encoded if the text changed),
    a FAISS index built (or reused) beside them, as ``eval beir`` does."""
    config, corpus = setup.config, setup.corpus
    encoder = Encoder(config.encoder)
    work = work_directory(setup.workdir, setup.corpus_key, encoder.metadata())
    embeddings = encode_corpus(corpus.passages, encoder, work / "embeddings", chunk_size=config.chunk_size,
                               total=corpus.count(), show_progress=config.show_progress,
                               corpus_name=str(corpus.path) if corpus.kind == "beir" else
                               f"{corpus.path} ({corpus.passage_key()} passages)",
                               corpus_path=corpus.path, replace_stale=True)
    if embeddings is None:
        return None
    if embeddings.reused:
        setup.reused.append("embeddings")
    index, index_reused = build_or_reuse_index(embeddings, work / f"index-{slug(config.index.factory)}-"
                                               f"{config.index.metric}", config.index,
                                               show_progress=config.show_progress, replace_other=True)
    if index_reused:
        setup.reused.append("index")
    setup.work = work
    setup.run_tag = f"dense-{config.index.factory}-{config.index.metric}" + (
        f"-{config.index.search_params}" if config.index.search_params else "")
    setup.passage_ids = embeddings.ids
    setup.metadata.update(model=str(config.encoder.model), encoder=encoder.metadata(),
                          index={"factory": config.index.factory, "metric": config.index.metric,
                                 "search_params": config.index.search_params})
    return DenseSearcher(encoder, index)
