"""The whole BEIR chain for a dense encoder: corpus -> embeddings -> FAISS index -> run -> metrics.

Everything that takes time is cached in a work directory per (data set, encoder settings), so a
second evaluation reuses finished embeddings and indexes (and an interrupted encode resumes)::

    <workdir>/<dataset>/<model>-<key>/embeddings/      see retromem.index.embeddings
    <workdir>/<dataset>/<model>-<key>/index-<factory>/ see retromem.index.faiss_index
    <workdir>/<dataset>/<model>-<key>/runs/<split>-<factory>.trec

``<key>`` hashes what changes the vectors: the weights' fingerprint, pooling, normalisation, maximum
length, passage prefix and precision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from retromem.data.beir import BeirDataset, LoadReport, corpus_file, default_cache_dir, load_beir
from retromem.eval.beir_metrics import DEFAULT_K_VALUES, BeirScores, evaluate
from retromem.eval.report import plot_per_query, write_results
from retromem.index.embeddings import encode_corpus, is_complete
from retromem.index.encoder import Encoder, EncoderConfig
from retromem.index.faiss_index import DenseIndex, IndexConfig, build_index
from retromem.io import count_lines
from retromem.retrieve.dense import DenseSearcher
from retromem.retrieve.runfile import read_trec_run, write_trec_run

log = logging.getLogger(__name__)


@dataclass
class BeirEvalConfig:
    """A dense BEIR evaluation. ``workdir`` defaults to ``$RETROMEM_CACHE/work`` (``~/.cache/retromem/work``)."""

    dataset: str
    split: str = "test"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    top_k: int = 1000
    k_values: tuple[int, ...] = DEFAULT_K_VALUES
    ignore_identical_ids: bool = True
    workdir: Path | None = None
    output_dir: Path | None = None
    chunk_size: int = 4096
    show_progress: bool = False
    plot_metric: str | None = "NDCG@10"


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

    work = work_directory(config.workdir, dataset.name, encoder.metadata())
    emb_dir = work / "embeddings"
    clock = time.perf_counter()
    if is_complete(emb_dir):
        reused.append("embeddings")
    embeddings = encode_corpus(dataset.iter_corpus(), encoder, emb_dir, chunk_size=config.chunk_size,
                               total=count_lines(corpus_file(dataset.root)), show_progress=config.show_progress,
                               corpus_name=str(dataset.corpus_path))
    timings["encode"] = time.perf_counter() - clock
    if embeddings is None:  # a rank > 0 under accelerate launch: rank 0 indexes, searches and scores
        return None
    dataset.check_qrels_docs(frozenset(embeddings.ids))

    clock = time.perf_counter()
    index_dir = work / f"index-{_slug(config.index.factory)}-{config.index.metric}"
    if _index_matches(index_dir, embeddings):
        index = DenseIndex.load(index_dir, config=config.index)
        reused.append("index")
    else:
        index = build_index(embeddings, index_dir, config.index, show_progress=config.show_progress)
        if config.index.search_params:
            index = DenseIndex.load(index_dir, config=config.index)
    timings["index"] = time.perf_counter() - clock

    clock = time.perf_counter()
    # one more than asked, so that dropping a query's own id (BEIR's convention) still leaves top_k
    k = config.top_k + 1 if config.ignore_identical_ids else config.top_k
    run = DenseSearcher(encoder, index).search(dataset.queries, k=k)
    run_name = f"{config.split}-{config.index.factory}-{config.index.metric}-top{config.top_k}"
    if config.index.search_params:
        run_name += f"-{config.index.search_params}"
    run_path = work / "runs" / f"{_slug(run_name)}.trec"
    write_trec_run(run, run_path, tag=f"retromem-{_slug(str(config.encoder.model))}")
    timings["search"] = time.perf_counter() - clock

    metadata = {
        "dataset": dataset.name, "split": config.split, "model": str(config.encoder.model),
        "encoder": encoder.metadata(), "index": {"factory": config.index.factory, "metric": config.index.metric,
                                                 "search_params": config.index.search_params},
        "top_k": config.top_k, "run_file": str(run_path), "workdir": str(work), "reused": reused,
    }
    output_dir = Path(config.output_dir) if config.output_dir else work / "results" / config.split
    result = _score(dataset, run, config, output_dir, metadata, timings)
    return BeirEvalResult(scores=result[0], results_path=result[1], run_path=run_path, workdir=work,
                          timings=timings, reused=reused, report=dataset.report, metadata=metadata)


def evaluate_run_beir(dataset_name: str, run_file: str | Path, split: str = "test",
                      k_values: tuple[int, ...] = DEFAULT_K_VALUES, ignore_identical_ids: bool = True,
                      output_dir: str | Path | None = None, plot_metric: str | None = "NDCG@10") -> BeirEvalResult:
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


def work_directory(root: Path | str | None, dataset: str, encoder_meta: dict) -> Path:
    """``<root>/<dataset>/<model>-<key>``: one folder per data set and vector-changing encoder settings."""
    root = Path(root) if root else default_cache_dir() / "work"
    keys = ("fingerprint", "pooling", "normalize", "max_length", "passage_prefix", "precision")
    key = hashlib.sha256(json.dumps({k: encoder_meta.get(k) for k in keys}, sort_keys=True).encode()).hexdigest()
    return root / dataset / f"{_slug(Path(str(encoder_meta['model'])).name)}-{key[:10]}"


def _index_matches(index_dir: Path, embeddings) -> bool:
    """A finished index built from these very embeddings (same encoder fingerprint and count)."""
    if not (index_dir / "index.json").exists():
        return False
    meta = json.loads((index_dir / "index.json").read_text())
    return (meta.get("fingerprint") == embeddings.meta.get("fingerprint")
            and meta.get("ntotal") == len(embeddings.ids) and meta.get("precision") == embeddings.meta.get("precision"))


def _score(dataset: BeirDataset, run, config: BeirEvalConfig, output_dir: Path, metadata: dict,
           timings: dict[str, float]) -> tuple[BeirScores, Path]:
    clock = time.perf_counter()
    scores = evaluate(dataset.qrels, run, k_values=config.k_values, ignore_identical_ids=config.ignore_identical_ids)
    timings["evaluate"] = time.perf_counter() - clock
    metadata = dict(metadata, timings=timings, warnings=dataset.report.warnings)
    results_path = write_results(output_dir, scores, metadata)
    if config.plot_metric and config.plot_metric in scores.mean:
        plot_per_query(scores, config.plot_metric, output_dir / f"per_query_{_slug(config.plot_metric)}.png")
    return scores, results_path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"

