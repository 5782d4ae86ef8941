"""KILT retrieval end to end: a task's knowledge source -> passages -> a searcher -> pages -> KILT metrics.

The knowledge source is cut into passages (:mod:`retromem.data.kilt_source`), searched by one of
:data:`SEARCHERS` (``dense``: the encoder, embeddings cache and FAISS index of ``eval beir``, in the same work
directory; the BM25 module adds its own), and each question's ranked passages become its pages, deduplicated in
rank order: KILT predictions with provenance and empty answers, scored by :func:`retromem.eval.kilt.score_kilt`.
A dense run's work directory::

    <workdir>/<folder>-<source>-<where>-w100/<model>-<key>/embeddings/, index-<factory>-<metric>/   shared by tasks
    <workdir>/<folder>-<source>-<where>-w100/<model>-<key>/runs/<task>-<run>.trec      the ranked passages
    <workdir>/<folder>-<source>-<where>-w100/<model>-<key>/results/<task>-<run>/       predictions, results...

``w100`` names the passage cut (``w100s50`` with a stride), so other cuts of one source never share vectors. A BEIR
corpus given as the source (its documents are the pages) uses the folder ``eval beir`` uses, and so its embeddings.
The ranked passages of every question stay available for a reader: :attr:`KiltEvalResult.run` (and the run
file), and :func:`ranked_passages` turns them back into passages with their page and paragraph range.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from retromem.data.beir import default_cache_dir
from retromem.data.corpora import Corpus, open_corpus
from retromem.data.kilt import KiltExample, ProvenanceReport, check_provenance, read_kilt_task, resolve_kilt_task
from retromem.data.kilt_source import DEFAULT_PASSAGE_WORDS, passage_page
from retromem.data.passage import Passage
from retromem.errors import ConfigError, MissingDataError
from retromem.eval.beir_pipeline import parse_int_list
from retromem.eval.kilt import (
    DEFAULT_KS,
    KiltPrediction,
    KiltScores,
    normalize_answer,
    score_kilt,
    write_kilt_predictions,
)
from retromem.eval.kilt_bm25 import bm25_kilt_searcher, hybrid_kilt_searcher
from retromem.eval.kilt_dense import dense_searcher
from retromem.eval.kilt_report import write_kilt_results
from retromem.index.embeddings import DEFAULT_CHUNK_SIZE
from retromem.index.encoder import EncoderConfig
from retromem.index.faiss_index import IndexConfig
from retromem.options import check_options, option
from retromem.retrieve.runfile import Run, write_trec_run
from retromem.retrieve.searcher import Searcher
from retromem.workdir import dataset_key, slug

log = logging.getLogger(__name__)


def parse_ks(text: str) -> tuple[int, ...]:
    """``"1,5"`` -> ``(1, 5)`` (the command line's --ks)."""
    return parse_int_list(text, "ks (--ks)")


@dataclass
class KiltEvalConfig:
    """A KILT retrieval evaluation. ``workdir`` defaults to ``$RETROMEM_CACHE/work`` (``~/.cache/retromem/work``)."""

    task: str = option(help="KILT task: scifact-dev, scifact-train, squad-dev, squad-train, or a task .jsonl file")
    source: str | None = option(None, help="knowledge source to search (a KILT .jsonl, scifact-kilt, squad-kilt, or "
                                "a BEIR corpus whose ids are the page ids); default: the task's own")
    method: str = option("dense", help="retrieval method: one of those the command's description lists (dense "
                         "always; others as their modules register in SEARCHERS)")
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    passage_words: int = option(DEFAULT_PASSAGE_WORDS, min=1, help="words per passage of the knowledge source")
    passage_stride: int | None = option(None, min=1, help="words from one passage's start to the next's (default: "
                                        "--passage-words, no overlap)")
    top_k: int = option(100, min=1, help="passages retrieved per question (their pages, deduplicated, are the "
                        "provenance)")
    ks: tuple[int, ...] = option(DEFAULT_KS, parse=parse_ks, metavar="K,K,...",
                                 help="cut-offs of Recall/Precision/Success@k, comma-separated")
    workdir: Path | None = option(None, help="cache of embeddings/indexes/runs (default: $RETROMEM_CACHE/work or "
                                  "~/.cache/retromem/work)")
    output_dir: Path | None = option(None, flag="--output", help="results folder (default: <workdir>/.../results/"
                                     "<task>-<run>)")
    chunk_size: int = option(DEFAULT_CHUNK_SIZE, min=1, help="passages per encoding chunk: the unit of resuming and "
                             "of work shared between processes")
    show_progress: bool = False

    def __post_init__(self) -> None:
        check_options(self)
        self.ks = tuple(sorted({int(k) for k in self.ks}))
        if not self.ks or self.ks[0] < 1:
            raise ConfigError(f"ks (--ks) must be positive integers, got {','.join(map(str, self.ks)) or 'none'}")
        if self.method not in SEARCHERS:
            raise ConfigError(f"method (--method) {self.method!r} is not available: choose one of "
                              f"{', '.join(SEARCHERS)}")
        if self.passage_stride is not None and self.passage_stride > self.passage_words:
            raise ConfigError(f"passage_stride (--passage-stride) {self.passage_stride} is above --passage-words "
                              f"{self.passage_words}: words would be skipped")


@dataclass
class SearchSetup:
    """What a searcher factory of :data:`SEARCHERS` gets, and what it tells the pipeline back.

    A factory builds (or reuses) its index of ``corpus`` under ``workdir``, sets ``work`` (the folder whose
    ``runs/`` and ``results/`` take this run's files), ``run_tag`` (what of the searcher names the run, e.g.
    ``dense-Flat-ip``), ``metadata``, ``reused`` (what it found finished) and, when it knows them cheaply,
    ``passage_ids``; and returns the searcher, or ``None`` on a process that only helped encode (a rank > 0
    under ``accelerate launch``).
    """

    corpus: Corpus
    config: KiltEvalConfig
    workdir: Path | None
    corpus_key: str
    work: Path | None = None
    run_tag: str = ""
    metadata: dict = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    passage_ids: list[str] | None = None


SearcherFactory = Callable[[SearchSetup], "Searcher | None"]


SEARCHERS: dict[str, SearcherFactory] = {"dense": dense_searcher, "bm25": bm25_kilt_searcher,
                                         "hybrid": hybrid_kilt_searcher}
"""Method name -> factory of its :class:`Searcher` over the knowledge-source passages (see :class:`SearchSetup`).
Another retrieval module adds itself with one entry."""


@dataclass
class KiltEvalResult:
    """``scores``: page-level KILT metrics; ``passage_metrics``: the gold paragraph / answer among the top k
    passages; ``run``: each question's passages, best first (:func:`ranked_passages` gives them as passages);
    ``top_passages``: the first ``max(ks)`` of them as passages."""

    scores: KiltScores
    passage_metrics: dict[str, float]
    run: Run
    top_passages: dict[str, list[Passage]]
    examples: list[KiltExample]
    corpus: Corpus
    predictions_path: Path
    results_path: Path
    run_path: Path
    work: Path
    timings: dict[str, float]
    reused: list[str]
    report: ProvenanceReport
    metadata: dict


def evaluate_kilt(config: KiltEvalConfig) -> KiltEvalResult | None:
    """Retrieve passages for every question of ``config.task``, score their pages; ``None`` on ranks > 0."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    task = resolve_kilt_task(config.task)
    examples = read_kilt_task(task.path)
    source = config.source if config.source is not None else task.source_path
    if source is None:
        raise MissingDataError(f"no knowledge source for {task.path}: give --source (a KILT knowledge-source .jsonl "
                               "or a name such as squad-kilt), or put knowledge_source.jsonl beside the task file")
    corpus = open_corpus(source, config.passage_words, config.passage_stride)
    corpus_key = work_key(corpus)
    setup = SearchSetup(corpus=corpus, config=config, workdir=config.workdir, corpus_key=corpus_key)
    timings["load"] = time.perf_counter() - clock

    clock = time.perf_counter()
    searcher = SEARCHERS[config.method](setup)
    timings["encode_and_index"] = time.perf_counter() - clock
    if searcher is None:
        return None
    root = Path(config.workdir) if config.workdir else default_cache_dir() / "work"
    work = setup.work or root / corpus_key / slug(config.method)

    clock = time.perf_counter()
    run = searcher.search({e.id: e.input for e in examples}, k=config.top_k, show_progress=config.show_progress)
    run_name = slug(f"{task.name}-{setup.run_tag or config.method}-top{config.top_k}")
    run_path = write_trec_run(run, work / "runs" / f"{run_name}.trec", tag=f"retromem-{slug(config.method)}")
    timings["search"] = time.perf_counter() - clock

    clock = time.perf_counter()
    page_of = page_mapper(corpus)
    predictions = [KiltPrediction(e.id, "", pages_in_rank_order(run.get(e.id, {}), page_of)) for e in examples]
    report = ProvenanceReport()
    page_ids = _source_pages(corpus, setup.passage_ids, page_of)
    if page_ids is not None:
        check_provenance(examples, page_ids, where=str(task.path), report=report)
    scores = score_kilt(examples, predictions, ks=config.ks)
    depth = max(config.ks)
    top_passages = ranked_passages(corpus, run, depth)
    passage_metrics = passage_level_metrics(examples, top_passages, config.ks)
    timings["evaluate"] = time.perf_counter() - clock

    output_dir = Path(config.output_dir) if config.output_dir else work / "results" / run_name
    titles = {p.page_id or page_of(p.id): p.title for ps in top_passages.values() for p in ps}
    predictions_path = write_kilt_predictions(output_dir / "predictions.jsonl", predictions, titles=titles)
    metadata = {
        "task": task.name, "task_file": str(task.path), "source": str(corpus.path), "method": config.method,
        "system": f"{setup.metadata.get('model', config.method)} ({config.method})",
        "passages": {"words": config.passage_words, "stride": config.passage_stride or config.passage_words,
                     "count": len(setup.passage_ids) if setup.passage_ids is not None else None},
        "top_k": config.top_k, "run_file": str(run_path), "predictions": str(predictions_path), "workdir": str(work),
        "reused": setup.reused, "timings": timings, "warnings": report.warnings,
        "missing_gold_pages": report.missing_pages, **setup.metadata,
    }
    results_path = write_kilt_results(output_dir, scores, metadata, passage_metrics)
    return KiltEvalResult(scores=scores, passage_metrics=passage_metrics, run=run, top_passages=top_passages,
                          examples=examples, corpus=corpus, predictions_path=predictions_path,
                          results_path=results_path, run_path=run_path, work=work, timings=timings,
                          reused=setup.reused, report=report, metadata=metadata)


def work_key(corpus: Corpus) -> str:
    """The corpus's folder name in the work directory: ``<folder>-<file>-<where>-w100`` for a KILT source; for a
    BEIR corpus the very folder ``eval beir`` uses, so a KILT task over a BEIR corpus reuses its embeddings."""
    if corpus.kind == "beir":
        return dataset_key(corpus.path.parent)
    return f"{slug(corpus.path.parent.name)}-{dataset_key(corpus.path)}-{corpus.passage_key()}"


def page_mapper(corpus: Corpus) -> Callable[[str], str]:
    """Passage id -> page id: ``<page>#<i>`` for a KILT source, the document id itself for a BEIR corpus."""
    return passage_page if corpus.kind == "kilt" else (lambda passage_id: passage_id)


def pages_in_rank_order(ranking: Mapping[str, float], page_of: Callable[[str], str]) -> tuple[str, ...]:
    """The pages of a ranking of passages (best first), each once, where its best passage ranked."""
    return tuple(dict.fromkeys(page_of(passage_id) for passage_id in ranking))


def ranked_passages(corpus: Corpus, run: Run, k: int) -> dict[str, list[Passage]]:
    """The first ``k`` passages of each question of ``run`` as :class:`Passage` objects (text, title, page,
    paragraph range), in rank order. Streams the corpus once, keeping only the passages asked for."""
    wanted = {qid: list(ranking)[:k] for qid, ranking in run.items()}
    needed = {pid for ids in wanted.values() for pid in ids}
    found: dict[str, Passage] = {}
    for passage in corpus.passages():
        if passage.id in needed:
            found[passage.id] = passage
            if len(found) == len(needed):
                break
    return {qid: [found[pid] for pid in ids if pid in found] for qid, ids in wanted.items()}


def passage_level_metrics(examples: Iterable[KiltExample], top_passages: Mapping[str, list[Passage]],
                          ks: Iterable[int]) -> dict[str, float]:
    """Shares of questions, at each k, whose gold paragraph is in a top-k passage (``gold_paragraph@k``: a passage
    of a gold page whose paragraph range meets the provenance's; only for tasks with paragraph provenance, over
    passages that know their paragraphs) and whose gold answer (SQuAD-normalised) occurs in a top-k passage's title
    and text (``answer_in_passages@k``, the reader's upper bound; only for tasks whose answers are not a few
    labels)."""
    examples = list(examples)
    with_paragraphs = [e for e in examples if any(p.start_paragraph_id is not None for ev in e.evidence for p in ev)]
    if not any(p.paragraphs is not None for ps in top_passages.values() for p in ps):
        with_paragraphs = []   # passages without paragraph ranges (a BEIR corpus): nothing to compare
    distinct_answers = {a.strip() for e in examples for a in e.answers if a.strip()}
    with_answers = [e for e in examples if any(a.strip() for a in e.answers)] if len(distinct_answers) > 10 else []
    metrics: dict[str, float] = {}
    for k in sorted(set(ks)):
        if with_paragraphs:
            hits = sum(_gold_paragraph_in(e, top_passages.get(e.id, [])[:k]) for e in with_paragraphs)
            metrics[f"gold_paragraph@{k}"] = hits / len(with_paragraphs)
        if with_answers:
            hits = sum(_answer_in(e, top_passages.get(e.id, [])[:k]) for e in with_answers)
            metrics[f"answer_in_passages@{k}"] = hits / len(with_answers)
    return metrics


def _gold_paragraph_in(example: KiltExample, passages: list[Passage]) -> bool:
    for passage in passages:
        if passage.paragraphs is None:
            continue
        first, last = passage.paragraphs
        for evidence in example.evidence:
            for p in evidence:
                if p.wikipedia_id != passage.page_id or p.start_paragraph_id is None:
                    continue
                end = p.end_paragraph_id if p.end_paragraph_id is not None else p.start_paragraph_id
                if p.start_paragraph_id <= last and end >= first:
                    return True
    return False


def _answer_in(example: KiltExample, passages: list[Passage]) -> bool:
    answers = [normalize_answer(a) for a in example.answers if normalize_answer(a)]
    texts = [normalize_answer(p.full_text()) for p in passages]
    return any(a in t for a in answers for t in texts)


def _source_pages(corpus: Corpus, passage_ids: list[str] | None, page_of) -> set[str] | None:
    """The pages of the knowledge source: from the searcher's passage ids when it gave them, else by streaming
    the source (skipped, with a note, for a source too large to read again)."""
    if passage_ids is not None:
        return {page_of(pid) for pid in passage_ids}
    if corpus.path.suffix != ".gz" and corpus.path.stat().st_size <= 256 << 20:
        return {p.page_id or p.id for p in corpus.passages()}
    log.info("%s is large: gold pages absent from it are not counted (the searcher gave no passage ids)",
             corpus.path)
    return None
