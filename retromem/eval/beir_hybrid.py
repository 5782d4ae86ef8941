"""The BEIR chain for BM25 and for BM25 fused with a dense encoder (``retromem eval beir --method bm25|hybrid``).

The BM25 index is cached in the work directory beside the dense encoders' folders, checked against the corpus
before it is reused (a corpus changed since is indexed again)::

    <workdir>/<dataset>-<where>/bm25-<layout>-<key>/index/           see retromem.index.bm25
    <workdir>/<dataset>-<where>/bm25-<layout>-<key>/runs/<run>.trec
    <workdir>/<dataset>-<where>/bm25-<layout>-<key>/results/<run>/   results.json, per_query.json, ...

``hybrid`` also runs the dense chain of :mod:`retromem.eval.beir_pipeline` with its cache (the encoded corpus
and its index are reused, so only the queries are encoded) and fuses the two runs (BM25 first) by RRF or by
score interpolation. Interpolation's ``alpha`` (the weight of BM25) is, unless given, chosen on the queries of
another split (``alpha_split``, ``train``) by nDCG@10 over a grid, never on the split evaluated; the result
records the choice and the score of every alpha tried. The hybrid's results go under the dense folder
(``results/hybrid-<run>``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from retromem.data.beir import BeirDataset, load_beir
from retromem.errors import ConfigError, MissingDataError
from retromem.eval.beir_metrics import evaluate
from retromem.eval.beir_pipeline import BeirEvalConfig, BeirEvalResult, _score, _top_k_besides_own_id
from retromem.index.bm25 import BM25IndexConfig, bm25_work_directory, build_or_reuse_bm25_index
from retromem.options import check_options, option
from retromem.retrieve.bm25 import BM25Config, BM25Searcher
from retromem.retrieve.fusion import METHODS as FUSIONS
from retromem.retrieve.fusion import NORMALIZATIONS, RRF_K, fuse
from retromem.retrieve.runfile import Run, write_trec_run
from retromem.workdir import slug

log = logging.getLogger(__name__)

EVAL_METHODS = ("dense", "bm25", "hybrid")
#: The alphas tried on the tuning split (weight of BM25 in the interpolation).
ALPHA_GRID = tuple(round(0.1 * i, 1) for i in range(11))
TUNING_METRIC = "NDCG@10"
#: Documents per query each searcher gives the tuning fusions (nDCG@10 needs the fused top 10 only; a document
#: below rank 100 in both runs does not reach it under min-max or z-score). Keeps choosing alpha a few seconds.
TUNING_DEPTH = 100


@dataclass
class FusionConfig:
    """How ``hybrid`` fuses BM25 (first) and the dense run (second)."""

    fusion: str = option("rrf", choices=(*FUSIONS, "all"), help="hybrid: reciprocal rank fusion, normalised score "
                         "interpolation, or all (both, each scored, beside BM25 and the dense run alone)")
    alpha: float | None = option(None, min=0.0, max=1.0, help="hybrid interpolation: the weight of BM25 (1 - alpha "
                                 "for dense); default: chosen on --alpha-split queries by NDCG@10")
    alpha_split: str = option("train", help="hybrid interpolation: the split whose queries choose alpha (never the "
                              "split evaluated)")
    normalization: str = option("minmax", choices=NORMALIZATIONS, help="hybrid interpolation: per-query score "
                                "normalisation")
    rrf_k: int = option(RRF_K, min=0, help="hybrid RRF: the constant k of 1 / (k + rank)")
    fusion_depth: int = option(1000, min=1, help="hybrid: documents each searcher contributes per query")

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class HybridEvalConfig:
    """A BM25 or hybrid BEIR evaluation: ``beir`` holds the data set, split, cut-offs, work directory and, for
    ``hybrid``, the dense encoder and index."""

    beir: BeirEvalConfig
    method: str = "bm25"
    bm25_index: BM25IndexConfig = field(default_factory=BM25IndexConfig)
    bm25: BM25Config = field(default_factory=BM25Config)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def __post_init__(self) -> None:
        if self.method not in ("bm25", "hybrid"):
            raise ConfigError(f"method (--method) must be bm25 or hybrid here, got {self.method!r}")
        if self.method == "hybrid" and self.fusion.fusion in ("interpolate", "all") and self.fusion.alpha is None \
                and self.fusion.alpha_split == self.beir.split:
            raise ConfigError(f"--alpha-split {self.fusion.alpha_split} is the split evaluated: alpha is chosen on "
                              "other queries (e.g. --alpha-split train), or give --alpha")


def evaluate_bm25_beir(config: HybridEvalConfig) -> BeirEvalResult:
    """Index (or reuse), search and score a BEIR data set with BM25, or with BM25 fused with a dense encoder."""
    beir = config.beir
    timings: dict[str, float] = {}
    reused: list[str] = []
    clock = time.perf_counter()
    dataset = load_beir(beir.dataset, split=beir.split)
    timings["load"] = time.perf_counter() - clock

    clock = time.perf_counter()
    searcher, work, index_reused = bm25_searcher(dataset, config, show_progress=beir.show_progress)
    if index_reused:
        reused.append("bm25 index")
    timings["bm25 index"] = time.perf_counter() - clock

    clock = time.perf_counter()
    depth = config.fusion.fusion_depth if config.method == "hybrid" else beir.top_k
    bm25_run = _search(searcher, dataset.queries, max(depth, beir.top_k), beir.ignore_identical_ids)
    timings["bm25 search"] = time.perf_counter() - clock
    run_name = slug(bm25_run_key(config))
    metadata = {"dataset": dataset.name, "split": beir.split, "model": f"BM25 {config.bm25_index.layout}",
                "bm25": {"k1": config.bm25.k1, "b": config.bm25.b, "layout": config.bm25_index.layout,
                         "index": str(searcher.index.path), **{k: searcher.index.meta.details.get(k)
                                                               for k in ("pyserini", "anserini", "lucene")}},
                "top_k": beir.top_k, "workdir": str(work), "reused": reused}
    if config.method == "bm25":
        run = _cut(bm25_run, beir.top_k, beir.ignore_identical_ids)
        run_path = write_trec_run(run, work / "runs" / f"{run_name}.trec", tag="retromem-bm25")
        metadata["run_file"] = str(run_path)
        output_dir = Path(beir.output_dir) if beir.output_dir else work / "results" / run_name
        scores, results_path = _score(dataset, run, beir, output_dir, metadata, timings)
        return BeirEvalResult(scores=scores, results_path=results_path, run_path=run_path, workdir=work,
                              timings=timings, reused=reused, report=dataset.report, metadata=metadata)

    clock = time.perf_counter()
    dense, dense_work, dense_reused = dense_searcher(dataset, beir)
    reused += dense_reused
    timings["dense index"] = time.perf_counter() - clock
    clock = time.perf_counter()
    dense_run = _search(dense, dataset.queries, max(depth, beir.top_k), beir.ignore_identical_ids)
    timings["dense search"] = time.perf_counter() - clock

    fusion = config.fusion
    alpha = fusion.alpha
    kinds = FUSIONS if fusion.fusion == "all" else (fusion.fusion,)
    if "interpolate" in kinds and alpha is None:
        clock = time.perf_counter()
        alpha, tried = choose_alpha(dataset, searcher, dense, config)
        timings["choose alpha"] = time.perf_counter() - clock
        metadata["alpha_chosen_on"] = {"split": fusion.alpha_split, "metric": TUNING_METRIC, "scores": tried,
                                       "queries": tried.pop("_queries"), "depth": min(fusion.fusion_depth,
                                                                                      TUNING_DEPTH)}
    # the two systems fused, scored alone (cheap: their runs are here), so the output compares like with like
    rows = {}
    for label, part in ((metadata["model"], bm25_run), (str(beir.encoder.model), dense_run)):
        rows[label] = evaluate(dataset.qrels, _cut(part, beir.top_k, beir.ignore_identical_ids),
                               k_values=beir.k_values, ignore_identical_ids=beir.ignore_identical_ids).mean
    metadata.update(bm25_model=metadata["model"], fusion_depth=fusion.fusion_depth, dense_workdir=str(dense_work),
                    workdir=str(dense_work), normalization=fusion.normalization, rrf_k=fusion.rrf_k)
    result = None
    for kind in kinds:
        clock = time.perf_counter()
        run = fuse([bm25_run, dense_run], kind, k=beir.top_k + int(beir.ignore_identical_ids),
                   alpha=alpha if alpha is not None else 0.5, normalization=fusion.normalization, rrf_k=fusion.rrf_k)
        run = _cut(run, beir.top_k, beir.ignore_identical_ids)
        timings[f"fuse {kind}"] = time.perf_counter() - clock
        label = f"RRF k={fusion.rrf_k}" if kind == "rrf" else f"interpolation alpha={alpha} {fusion.normalization}"
        meta = dict(metadata, model=f"BM25 + {beir.encoder.model} ({label})", fusion=kind,
                    alpha=alpha if kind == "interpolate" else None)
        name = slug(f"hybrid-{kind}-{run_name}-{_fusion_key(fusion, kind, alpha)}")
        run_path = write_trec_run(run, dense_work / "runs" / f"{name}.trec", tag="retromem-hybrid")
        meta["run_file"] = str(run_path)
        output_dir = Path(beir.output_dir) / kind if beir.output_dir and len(kinds) > 1 else \
            Path(beir.output_dir) if beir.output_dir else dense_work / "results" / name
        scores, results_path = _score(dataset, run, beir, output_dir, meta, timings)
        rows[meta["model"]] = scores.mean
        result = BeirEvalResult(scores=scores, results_path=results_path, run_path=run_path, workdir=dense_work,
                                timings=timings, reused=reused, report=dataset.report, metadata=meta)
    result.metadata["rows"] = rows
    return result


def choose_alpha(dataset: BeirDataset, bm25: BM25Searcher, dense, config: HybridEvalConfig) -> tuple[float, dict]:
    """The alpha of :data:`ALPHA_GRID` with the best nDCG@10 on ``config.fusion.alpha_split``'s queries (ties: the
    one nearest 0.5), the runs searched :data:`TUNING_DEPTH` deep, and ``{alpha: score}`` of all tried (plus
    ``_queries``, how many)."""
    fusion, beir = config.fusion, config.beir
    if fusion.alpha_split == beir.split:
        raise ConfigError(f"alpha must be chosen on another split than the one evaluated ({beir.split})")
    try:
        tuning = load_beir(dataset.root, split=fusion.alpha_split)
    except MissingDataError as err:
        raise ConfigError(f"no {fusion.alpha_split!r} split to choose alpha on ({err}); give --alpha, or "
                          "another --alpha-split") from err
    depth = min(fusion.fusion_depth, TUNING_DEPTH)
    runs = [_search(s, tuning.queries, depth, beir.ignore_identical_ids) for s in (bm25, dense)]
    tried: dict = {}
    for alpha in ALPHA_GRID:
        fused = fuse(runs, "interpolate", k=10 + int(beir.ignore_identical_ids), alpha=alpha,
                     normalization=fusion.normalization)
        scores = evaluate(tuning.qrels, fused, k_values=(10,), ignore_identical_ids=beir.ignore_identical_ids)
        tried[str(alpha)] = scores.mean[TUNING_METRIC]
    best = max(ALPHA_GRID, key=lambda a: (round(tried[str(a)], 10), -abs(a - 0.5)))
    log.info("alpha %.1f chosen on %d %s queries (%s %.4f)", best, len(tuning.queries), fusion.alpha_split,
             TUNING_METRIC, tried[str(best)])
    tried["_queries"] = len(tuning.queries)
    return best, tried


def bm25_searcher(dataset: BeirDataset, config: HybridEvalConfig,
                  show_progress: bool = False) -> tuple[BM25Searcher, Path, bool]:
    """The BM25 searcher of the data set's cached index (built, or rebuilt for a changed corpus, when needed)."""
    work = bm25_work_directory(config.beir.workdir, dataset.root, config.bm25_index)
    from retromem.io import count_lines

    index, reused = build_or_reuse_bm25_index(dataset.iter_corpus, work / "index", config.bm25_index,
                                              corpus_name=str(dataset.corpus_path), corpus_path=dataset.corpus_path,
                                              total=count_lines(dataset.corpus_path), show_progress=show_progress,
                                              replace_other=True)
    return BM25Searcher(index, config.bm25), work, reused


def dense_searcher(dataset: BeirDataset, beir: BeirEvalConfig):
    """``(searcher, work directory, reused)``: the dense chain of ``retromem eval beir`` with its cache."""
    from retromem.data.beir import corpus_file
    from retromem.index.embeddings import encode_corpus
    from retromem.index.encoder import Encoder
    from retromem.index.faiss_index import build_or_reuse_index
    from retromem.io import count_lines
    from retromem.retrieve.dense import DenseSearcher
    from retromem.workdir import work_directory

    encoder = Encoder(beir.encoder)
    work = work_directory(beir.workdir, dataset.root, encoder.metadata())
    embeddings = encode_corpus(dataset.iter_corpus, encoder, work / "embeddings", chunk_size=beir.chunk_size,
                               total=count_lines(corpus_file(dataset.root)), show_progress=beir.show_progress,
                               corpus_name=str(dataset.corpus_path), corpus_path=dataset.corpus_path,
                               replace_stale=True)
    if embeddings is None:
        raise ConfigError("the hybrid evaluation runs in one process; run it without accelerate launch")
    reused = ["embeddings"] if embeddings.reused else []
    index_dir = work / f"index-{slug(beir.index.factory)}-{beir.index.metric}"
    index, index_reused = build_or_reuse_index(embeddings, index_dir, beir.index, show_progress=beir.show_progress,
                                               replace_other=True)
    if index_reused:
        reused.append("index")
    return DenseSearcher(encoder, index), work, reused


def bm25_run_key(config: HybridEvalConfig) -> str:
    """What names a BM25 run: split, k1, b and depth (the index folder names layout and analyzer)."""
    name = f"{config.beir.split}-bm25-k1_{config.bm25.k1}-b_{config.bm25.b}-top{config.beir.top_k}"
    if not config.beir.ignore_identical_ids:
        name += "-identical-ids"
    return name


def _fusion_key(fusion: FusionConfig, kind: str, alpha: float | None) -> str:
    if kind == "rrf":
        return f"k{fusion.rrf_k}-depth{fusion.fusion_depth}"
    return f"alpha{alpha}-{fusion.normalization}-depth{fusion.fusion_depth}"


def _search(searcher, queries: dict[str, str], k: int, ignore_identical_ids: bool) -> Run:
    """Search one more than ``k`` when a query's own id is to be dropped (BEIR's convention), as the dense chain."""
    return searcher.search(queries, k=k + 1 if ignore_identical_ids else k)


def _cut(run: Run, top_k: int, ignore_identical_ids: bool) -> Run:
    if ignore_identical_ids:
        return _top_k_besides_own_id(run, top_k)
    return {qid: dict(list(docs.items())[:top_k]) for qid, docs in run.items()}
