"""The questions a reader reads: a KILT task's examples with their retrieved passages (the top of a run), a gold
passage forced in where training asks for it, and the knowledge-source passages they name."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from retromem.data.corpora import Corpus, open_corpus
from retromem.data.kilt import KiltExample, KiltTask, read_kilt_task, resolve_kilt_task
from retromem.data.kilt_source import passage_page
from retromem.data.passage import Passage
from retromem.errors import DataError, MissingDataError
from retromem.io import read_json
from retromem.retrieve.runfile import Run, ranked_docs, read_trec_run

log = logging.getLogger(__name__)
_NAMED = 5


@dataclass(frozen=True)
class Question:
    """One example as the reader reads it: its passages (rank order) and gold answers and pages."""

    qid: str
    text: str
    passage_ids: tuple[str, ...]
    answers: tuple[str, ...]
    gold_pages: frozenset[str]
    forced: bool = False


@dataclass
class ReadingSet:
    """A task prepared for reading: ``questions``, the ``passages`` they name (by id), the task and its source."""

    task: KiltTask
    examples: list[KiltExample]
    questions: list[Question]
    passages: dict[str, Passage]
    source: Corpus
    forced: int = 0

    def first_line(self, questions: Iterable[Question]) -> int | None:
        """The task file's line of the first of ``questions`` (in file order), for an error to name."""
        ids = {q.qid for q in questions}
        return next((e.line for e in self.examples if e.id in ids), None)


def reading_set(options, seed: int = 0, force_gold: bool = False, run: Run | None = None) -> ReadingSet:
    """The questions of ``options.task`` (``options.limit`` of them drawn with ``seed``) with the top
    ``options.passages`` of ``options.run`` (or ``run``), a gold passage forced in when ``force_gold``.

    The passages come from ``options.corpus`` (a KILT knowledge source, cut as the run's passages were, or a BEIR
    corpus whose document ids are the page ids; default: the task's knowledge source)."""
    task = resolve_kilt_task(options.task)
    spec = options.corpus or task.source_path
    if spec is None:
        raise MissingDataError(f"no knowledge source for {options.task}: give --corpus (the task's "
                               "knowledge_source.jsonl, or a corpus name such as scifact-kilt)")
    corpus = open_corpus(spec, options.passage_words, options.passage_stride)
    examples = subsample(read_kilt_task(task.path), options.limit, seed)
    run_path = resolve_run(options.run) if run is None else options.run
    run = run if run is not None else read_trec_run(run_path)
    retrieved = top_passages(run, examples, options.passages, run_path)
    gold_pages = set().union(*(e.gold_pages() for e in examples)) if force_gold else set()
    wanted = {pid for ids in retrieved.values() for pid in ids}
    passages, by_page = source_passages(corpus, wanted, gold_pages)
    missing = sorted(wanted - set(passages))
    if missing:
        raise DataError(f"{len(missing)} retrieved passages are not in the corpus {corpus.path} (e.g. "
                        f"{', '.join(missing[:_NAMED])})", run_path,
                        fix="search the same corpus, cut into the same --passage-words/--passage-stride (--corpus)")
    questions, forced = [], 0
    for example in examples:
        ids = list(retrieved[example.id])
        gold = example.gold_pages()
        was_forced = False
        if force_gold and gold and not any(page_of(i, passages) in gold for i in ids):
            chosen = gold_passage(example, by_page)
            if chosen is not None:
                ids = ids[:options.passages - 1] + [chosen.id]
                passages[chosen.id] = chosen
                forced += 1
                was_forced = True
        questions.append(Question(example.id, example.input, tuple(ids), tuple(a for a in example.answers if a.strip()),
                                  frozenset(gold), was_forced))
    return ReadingSet(task, examples, questions, passages, corpus, forced)


def resolve_run(run: str | Path) -> Path:
    """A run file, or the results folder of ``retromem eval kilt`` (its results.json names the run it scored)."""
    path = Path(run)
    if path.is_dir():
        results = path / "results.json"
        if not results.is_file():
            raise MissingDataError(f"--run {path} is a folder without results.json: give a TREC run file, or the "
                                   "--output folder of `retromem eval kilt`")
        metadata = read_json(results).get("metadata", {})
        if not metadata.get("run_file"):
            raise DataError("names no run file (scored from --predictions?)", results,
                            fix="give the TREC run file itself")
        return Path(metadata["run_file"])
    return path


def subsample(examples: Sequence[KiltExample], limit: int | None, seed: int) -> list[KiltExample]:
    """``limit`` examples drawn with ``seed``, in file order (all when ``limit`` is None or not smaller)."""
    if limit is None or limit >= len(examples):
        return list(examples)
    keep = set(random.Random(seed).sample(range(len(examples)), limit))
    return [e for i, e in enumerate(examples) if i in keep]


def top_passages(run: Run, examples: Iterable[KiltExample], k: int, where: str | Path | None = None
                 ) -> dict[str, list[str]]:
    """The top ``k`` passage ids of each example in ``run``; examples the run lacks are refused, counted."""
    out, absent = {}, []
    for example in examples:
        ranking = run.get(example.id)
        if not ranking:
            absent.append(example.id)
            continue
        out[example.id] = [doc for doc, _ in ranked_docs(ranking, k)]
    if absent:
        first = next(e for e in examples if e.id == absent[0])
        raise DataError(f"{len(absent)} question(s) of the task have no retrieved passages in the run (e.g. "
                        f"{', '.join(absent[:_NAMED])}; the first is line {first.line} of the task file)", where,
                        fix="search every question of the task")
    return out


def source_passages(corpus: Corpus, ids: set[str], pages: set[str]
                    ) -> tuple[dict[str, Passage], dict[str, list[Passage]]]:
    """The passages ``ids`` of a corpus, and every passage of ``pages`` by page (one pass; a BEIR document is
    its own page)."""
    found: dict[str, Passage] = {}
    by_page: dict[str, list[Passage]] = {}
    for passage in corpus.passages():
        if passage.id in ids:
            found[passage.id] = passage
        page = passage.page_id or passage.id
        if page in pages:
            by_page.setdefault(page, []).append(passage)
    return found, by_page


def gold_passage(example: KiltExample, by_page: Mapping[str, list[Passage]]) -> Passage | None:
    """A passage of the example's first reachable gold evidence: the one that covers the provenance's paragraph
    and holds an answer (ignoring case), else the first that covers the paragraph, else the page's first."""
    answers = [a.strip().lower() for a in example.answers if a.strip()]
    for evidence in example.evidence:
        for prov in evidence:
            candidates = by_page.get(prov.wikipedia_id or "", [])
            if not candidates:
                continue
            paragraph = prov.start_paragraph_id
            covering = [p for p in candidates if paragraph is None or p.paragraphs is None
                        or p.paragraphs[0] <= paragraph <= p.paragraphs[1]] or candidates
            for passage in covering:
                text = passage.full_text().lower()
                if any(a in text for a in answers):
                    return passage
            return covering[0]
    return None


def page_of(passage_id: str, passages: Mapping[str, Passage]) -> str:
    passage = passages.get(passage_id)
    return passage.page_id if passage is not None and passage.page_id else passage_page(passage_id)
