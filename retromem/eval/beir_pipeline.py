"""The whole BEIR chain for a dense encoder: corpus -> embeddings -> FAISS index -> run -> metrics.

Everything that takes time is cached in a work directory per (data set, encoder settings) (see
:mod:`retromem.workdir`), so a second evaluation reuses finished embeddings and indexes (and an
interrupted encode resumes); what is reused is checked first, and embeddings of a corpus whose text
changed since are encoded again::

    <workdir>/<dataset>-<where>/<model>-<key>/embeddings/                  see retromem.index.embeddings
    <workdir>/<dataset>-<where>/<model>-<key>/index-<factory>-<metric>/    see retromem.index.faiss_index
    <workdir>/<dataset>-<where>/<model>-<key>/runs/<run>.trec
    <workdir>/<dataset>-<where>/<model>-<key>/results/<run>/               results.json, per_query.json, ...

``<run>`` names the split and everything of the search that changes the results, the query prefix
included (:func:`run_key`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from retromem.data.beir import BeirDataset, LoadReport, corpus_file, load_beir
from retromem.errors import ConfigError
from retromem.eval.beir_metrics import DEFAULT_K_VALUES, METRIC_FAMILIES, BeirScores, evaluate
from retromem.eval.report import plot_per_query, write_results
from retromem.index.embeddings import DEFAULT_CHUNK_SIZE, encode_corpus
from retromem.index.encoder import Encoder, EncoderConfig
from retromem.index.faiss_index import IndexConfig, build_or_reuse_index
from retromem.io import count_lines
from retromem.options import check_options, option
from retromem.retrieve.dense import DenseSearcher
from retromem.retrieve.runfile import read_trec_run, write_trec_run
from retromem.workdir import slug, work_directory

log = logging.getLogger(__name__)


# The command line's text -> value for two options below (they must exist when the class is made).
def parse_k_values(text: str) -> tuple[int, ...]:
    """``"1,10,100"`` -> ``(1, 10, 100)`` (the command line's --k-values)."""
    return parse_int_list(text, "k_values (--k-values)")


def parse_int_list(text: str, option_name: str) -> tuple[int, ...]:
    """``"1,10"`` -> ``(1, 10)``; anything else is a ConfigError naming ``option_name``."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise ConfigError(f"{option_name} must be comma-separated integers, got {text!r}") from err


def parse_plot_metric(text: str) -> str | None:
    """``none`` (any case) is no plot; anything else is a metric name."""
    return None if text.strip().lower() == "none" else text.strip()


@dataclass
class BeirEvalConfig:
    """A dense BEIR evaluation. ``workdir`` defaults to ``$RETROMEM_CACHE/work`` (``~/.cache/retromem/work``)."""

    dataset: str = option(help="BEIR data set name (looked up in $RETROMEM_DATA/beir, ../shared/data/beir, the "
                          "cache, then downloaded) or folder")
    split: str = option("test", help="qrels split to evaluate")
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    top_k: int = option(1000, min=1, help="documents retrieved per query")
    k_values: tuple[int, ...] = option(DEFAULT_K_VALUES, parse=parse_k_values, metavar="K,K,...",
                                       help="cut-offs of the metrics, comma-separated")
    ignore_identical_ids: bool = option(True, flag="--keep-identical-ids", help="score a document whose id equals "
                                        "the query id (BEIR removes them by default)")
    workdir: Path | None = option(None, help="cache of embeddings/indexes/runs (default: $RETROMEM_CACHE/work or "
                                  "~/.cache/retromem/work)")
    output_dir: Path | None = option(None, flag="--output", help="results folder (default: <workdir>/<dataset>-<where>/"
                                     "<model>-<key>/results/<run>, named like the run file; with --run, beside it)")
    chunk_size: int = option(DEFAULT_CHUNK_SIZE, min=1, help="passages per encoding chunk: the unit of resuming and "
                             "of work shared between processes")
    show_progress: bool = False
    plot_metric: str | None = option("auto", flag="--plot", parse=parse_plot_metric,
                                     help="metric plotted per query, e.g. NDCG@10; auto = NDCG@10, or NDCG at the "
                                     "last --k-values cut-off when 10 is not one; 'none' for no plot")

    def __post_init__(self) -> None:
        check_options(self)
        self.k_values = check_k_values(self.k_values)
        if self.plot_metric == "auto":
            self.plot_metric = f"NDCG@{10 if 10 in self.k_values else self.k_values[-1]}"
        check_plot_metric(self.plot_metric, self.k_values)


@dataclass
class BeirEvalResult:
    scores: BeirScores
    results_path: Path
    run_path: Path | None
    workdir: Path | None
    timings: dict[str, float]
    reused: list[str]
    report: LoadReport
    metadata: dict


def evaluate_dense_beir(config: BeirEvalConfig) -> BeirEvalResult | None:
    """Encode (or reuse), index (or reuse), search and score a BEIR data set with a dense encoder.

    Under ``accelerate launch`` every process encodes its share of the corpus; rank 0 then goes on
    alone and the other ranks return ``None``.
    """
    timings: dict[str, float] = {}
    reused: list[str] = []
    clock = time.perf_counter()
    dataset = load_beir(config.dataset, split=config.split)
    encoder = Encoder(config.encoder)
    timings["load"] = time.perf_counter() - clock

    work = work_directory(config.workdir, dataset.root, encoder.metadata())
    emb_dir = work / "embeddings"
    clock = time.perf_counter()
    embeddings = encode_corpus(dataset.iter_corpus, encoder, emb_dir, chunk_size=config.chunk_size,
                               total=count_lines(corpus_file(dataset.root)), show_progress=config.show_progress,
                               corpus_name=str(dataset.corpus_path), corpus_path=dataset.corpus_path,
                               replace_stale=True)
    timings["encode"] = time.perf_counter() - clock
    if embeddings is None:  # a rank > 0 under accelerate launch: rank 0 indexes, searches and scores
        return None
    if embeddings.reused:
        reused.append("embeddings")
    dataset.check_qrels_docs(frozenset(embeddings.ids))

    clock = time.perf_counter()
    index_dir = work / f"index-{slug(config.index.factory)}-{config.index.metric}"
    index, index_reused = build_or_reuse_index(embeddings, index_dir, config.index, show_progress=config.show_progress,
                                               replace_other=True)
    if index_reused:
        reused.append("index")
    timings["index"] = time.perf_counter() - clock

    clock = time.perf_counter()
    # one more than asked, so that dropping a query's own id (BEIR's convention) still leaves top_k
    k = config.top_k + 1 if config.ignore_identical_ids else config.top_k
    run = DenseSearcher(encoder, index).search(dataset.queries, k=k)
    if config.ignore_identical_ids:
        run = _top_k_besides_own_id(run, config.top_k)
    run_name = slug(run_key(config, query_prefix=encoder.query_prefix))
    run_path = work / "runs" / f"{run_name}.trec"
    write_trec_run(run, run_path, tag=f"retromem-{slug(str(config.encoder.model))}")
    timings["search"] = time.perf_counter() - clock

    metadata = {
        "dataset": dataset.name, "split": config.split, "model": str(config.encoder.model),
        "encoder": encoder.metadata(), "index": {"factory": config.index.factory, "metric": config.index.metric,
                                                 "search_params": config.index.search_params},
        "top_k": config.top_k, "run_file": str(run_path), "workdir": str(work), "reused": reused,
    }
    output_dir = Path(config.output_dir) if config.output_dir else work / "results" / run_name
    result = _score(dataset, run, config, output_dir, metadata, timings)
    return BeirEvalResult(scores=result[0], results_path=result[1], run_path=run_path, workdir=work,
                          timings=timings, reused=reused, report=dataset.report, metadata=metadata)


def evaluate_run_beir(dataset_name: str, run_file: str | Path, split: str = "test",
                      k_values: tuple[int, ...] = DEFAULT_K_VALUES, ignore_identical_ids: bool = True,
                      output_dir: str | Path | None = None, plot_metric: str | None = "auto") -> BeirEvalResult:
    """Score a TREC run file made by any system against a BEIR data set's qrels."""
    timings: dict[str, float] = {}
    dataset = load_beir(dataset_name, split=split)
    run = read_trec_run(run_file)
    config = BeirEvalConfig(dataset=dataset_name, split=split, k_values=k_values,
                            ignore_identical_ids=ignore_identical_ids, plot_metric=plot_metric)
    metadata = {"dataset": dataset.name, "split": split, "run_file": str(run_file)}
    output_dir = Path(output_dir) if output_dir else Path(run_file).with_suffix("").parent / (
        Path(run_file).stem + f"-{dataset.name}-{split}")
    scores, results_path = _score(dataset, run, config, output_dir, metadata, timings)
    return BeirEvalResult(scores=scores, results_path=results_path, run_path=Path(run_file), workdir=None,
                          timings=timings, reused=[], report=dataset.report, metadata=metadata)


def run_key(config: BeirEvalConfig, query_prefix: str = "") -> str:
    """What names a run and its results: the split and everything of the search that changes them (what
    changes the passage vectors names the work directory above them), the query prefix by a short hash."""
    name = f"{config.split}-{config.index.factory}-{config.index.metric}-top{config.top_k}"
    if config.index.search_params:
        name += f"-{config.index.search_params}"
    if not config.ignore_identical_ids:
        name += "-identical-ids"
    if query_prefix:
        name += f"-query{hashlib.sha256(query_prefix.encode()).hexdigest()[:8]}"
    return name


def check_k_values(values) -> tuple[int, ...]:
    """The cut-offs sorted and without repeats; none, or one below 1, is refused."""
    ks = tuple(sorted({int(k) for k in values}))
    if not ks or ks[0] < 1:
        given = ",".join(map(str, values)) or "none"
        raise ConfigError(f"k_values (--k-values) must be positive integers, got {given}")
    return ks


def check_plot_metric(metric: str | None, k_values: tuple[int, ...]) -> None:
    """Refuse a metric to plot that the evaluation does not compute (a family not in BEIR's, or another cut-off)."""
    if metric is None:
        return
    family, _, k = metric.partition("@")
    if family in METRIC_FAMILIES and k.isdigit() and int(k) in k_values:
        return
    raise ConfigError(f"plot_metric (--plot) {metric!r} is not computed: give FAMILY@K with FAMILY one of "
                      f"{', '.join(METRIC_FAMILIES)} and K one of --k-values ({','.join(map(str, k_values))}), "
                      f"e.g. NDCG@{k_values[-1] if 10 not in k_values else 10}, or 'none'")


def _top_k_besides_own_id(run: dict[str, dict[str, float]], top_k: int) -> dict[str, dict[str, float]]:
    """Each ranking (best first) cut to ``top_k`` documents other than the query's own id, which stays where it
    was found (scoring removes it and counts it): ``top_k + 1`` were searched so that this leaves ``top_k``."""
    cut = {}
    for qid, ranking in run.items():
        kept, others = {}, 0
        for doc, score in ranking.items():
            if doc != qid:
                if others == top_k:
                    break
                others += 1
            kept[doc] = score
        cut[qid] = kept
    return cut


def _score(dataset: BeirDataset, run, config: BeirEvalConfig, output_dir: Path, metadata: dict,
           timings: dict[str, float]) -> tuple[BeirScores, Path]:
    clock = time.perf_counter()
    scores = evaluate(dataset.qrels, run, k_values=config.k_values, ignore_identical_ids=config.ignore_identical_ids)
    timings["evaluate"] = time.perf_counter() - clock
    metadata = dict(metadata, timings=timings, warnings=dataset.report.warnings)
    results_path = write_results(output_dir, scores, metadata)
    if config.plot_metric and config.plot_metric in scores.mean:
        plot_per_query(scores, config.plot_metric, output_dir / f"per_query_{slug(config.plot_metric)}.png")
    return scores, results_path
