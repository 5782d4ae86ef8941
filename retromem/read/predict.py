"""Predicting with a reader (``retromem read predict``): for each question of a KILT task, read its retrieved
passages (from the memory, or their text for k = N) and write KILT predictions: the answer, and the pages of the
retrieved passages as provenance (rank order), which ``retromem eval kilt --predictions`` scores.

With ``--rerank memory`` the run's top ``--rerank-depth`` passages of each question are first reranked by MaxSim
over a token memory (:mod:`retromem.read.rerank`); the reader reads, and the provenance follows, the new order.
The reranking is timed apart from the reading."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from retromem.device import check_device, resolve_autocast_dtype
from retromem.errors import DataError
from retromem.eval.kilt import KiltPrediction, write_kilt_predictions
from retromem.read.batch import ReadItem, collate
from retromem.read.checkpoint import load_reader, require_memory
from retromem.read.memory import PassageReader
from retromem.read.memory_open import open_memory
from retromem.read.questions import ReadingSet, page_of, reading_set, resolve_run, subsample
from retromem.read.read_options import ReaderPredictConfig
from retromem.read.span import best_spans, span_text
from retromem.retrieve.runfile import Run, ranked_docs, read_trec_run

log = logging.getLogger(__name__)
_NAMED = 5


@dataclass
class PredictOutcome:
    """The predictions and the reading time (memory gather, batching and the reader's forward; retrieval, which
    came before, not included), and the time of memory reranking before reading (``rerank_seconds``, apart;
    ``rerank``: what was reranked from, None without reranking)."""

    predictions: list[KiltPrediction]
    reading_seconds: float
    questions: int
    data: ReadingSet | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    rerank_seconds: float = 0.0
    rerank: dict[str, Any] | None = None

    @property
    def questions_per_second(self) -> float:
        return self.questions / self.reading_seconds if self.reading_seconds > 0 else float("inf")


def predict(config: ReaderPredictConfig, memory: Any = None, reader: Any = None, run: Run | None = None,
            reranked: Any = None) -> PredictOutcome:
    """Read every question of ``config.task`` (see the module's doc); write ``config.output`` when given.
    ``memory``/``reader``/``run``: objects to use instead of the folders and file the config names;
    ``reranked``: a :class:`retromem.read.rerank.RerankOutcome` of ``run`` already made (then ``run`` is its run
    and it is not reranked again)."""
    config.validate()
    device = check_device(config.device)
    reader = reader if reader is not None else load_reader(config.reader, device, config.trust_remote_code)
    spec = reader.spec
    run = run if run is not None else read_trec_run(resolve_run(config.run))
    if reranked is None and config.rerank:
        reranked = rerank_run(config, spec, run)
    if reranked is not None:
        run = reranked.run
    data = reading_set(config, run=run)
    check_answers_expressible(spec, data)
    if not spec.full:
        if memory is None:
            if not config.memory:
                raise DataError(f"the reader reads a token memory of layer {spec.memory_layer}: give --memory")
            memory = open_memory(config.memory)
        encoder, layer, codec = memory.info()
        require_memory(spec, encoder, layer, codec, config.memory or "the memory")
    where = config.memory or "the memory"
    max_length = int((spec.memory.encoder.get("max_length") if spec.memory else None) or 512)
    source = PassageReader(spec, reader.tokenizer, data.passages, memory if not spec.full else None, where,
                           max_length=max_length)
    source.require({pid for q in data.questions for pid in q.passage_ids},
                   path=resolve_run(config.run) if config.run and reranked is None else None)
    answers, seconds = read_answers(reader, source, data, config.batch_size, config.precision, device,
                                    config.show_progress)
    predictions = [KiltPrediction(q.qid, answers[q.qid], pages_of_run(run.get(q.qid, {}), data, config.provenance))
                   for q in data.questions]
    if config.output:
        titles = {p.page_id: p.title for p in data.passages.values() if p.page_id}
        write_kilt_predictions(config.output, predictions, titles=titles)
    return PredictOutcome(predictions, seconds, len(data.questions), data,
                          rerank_seconds=reranked.seconds if reranked is not None else 0.0,
                          rerank=reranked.info if reranked is not None else None)


def rerank_run(config: ReaderPredictConfig, spec: Any, run: Run) -> Any:
    """``run`` reranked from a token memory for the questions ``config`` reads (:mod:`retromem.read.rerank`)."""
    from retromem.data.kilt import read_kilt_task, resolve_kilt_task
    from retromem.read.rerank import rerank_for_reading

    examples = subsample(read_kilt_task(resolve_kilt_task(config.task).path), config.limit, 0)
    return rerank_for_reading(config, spec, run, {e.id: e.input for e in examples}, memory=config.memory,
                              device=config.device, show_progress=config.show_progress,
                              trust_remote_code=config.trust_remote_code)


def read_answers(reader: Any, source: PassageReader, data: ReadingSet, batch_size: int, precision: str,
                 device: torch.device, show_progress: bool = False) -> tuple[dict[str, str], float]:
    """Each question's answer, and the seconds spent reading (gather + batch + forward)."""
    spec = reader.spec
    reader.to(device).eval()
    dtype = resolve_autocast_dtype(precision, device)
    autocast = (torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None
                else contextlib.nullcontext())
    answers: dict[str, str] = {}
    seconds = 0.0
    questions = data.questions
    with tqdm(total=len(questions), desc="reading", unit="question", disable=not show_progress, leave=False) as bar:
        for start in range(0, len(questions), batch_size):
            chunk = questions[start:start + batch_size]
            began = time.perf_counter()
            items = [ReadItem(q.qid, q.text, tuple(source.read(q.passage_ids))) for q in chunk]
            batch = {k: v.to(device) for k, v in collate(spec, reader.tokenizer, items).items()}
            with torch.inference_mode(), autocast:
                if spec.head == "generative":
                    texts = reader.head.decode(reader.generate(batch))
                else:
                    out = reader(**batch)
                    texts = _answers(spec, reader, out, batch, items)
            seconds += time.perf_counter() - began
            answers.update({q.qid: text for q, text in zip(chunk, texts)})
            bar.update(len(chunk))
    return answers, seconds


def check_answers_expressible(spec: Any, data: ReadingSet) -> None:
    """Refuse a task whose gold answers a classification reader cannot give (labels it was not trained on)."""
    if spec.head != "classification":
        return
    unknown = sorted({a for q in data.questions for a in q.answers if a not in spec.labels})
    if unknown:
        bad = [q for q in data.questions if any(a not in spec.labels for a in q.answers)]
        raise DataError(f"{len(bad)} question(s) have answers the reader's classification head cannot give "
                        f"({', '.join(unknown[:_NAMED])}; it knows {', '.join(spec.labels)}; the first is on this "
                        "line)", data.task.path, data.first_line(bad), fix="use a reader trained on this task's labels")


def pages_of_run(ranking: dict[str, float], data: ReadingSet, limit: int) -> tuple[str, ...]:
    """The distinct pages of a question's ranked passages, best first, at most ``limit``."""
    pages: list[str] = []
    for doc, _ in ranked_docs(ranking):
        page = page_of(doc, data.passages)
        if page not in pages:
            pages.append(page)
            if len(pages) == limit:
                break
    return tuple(pages)


def _answers(spec: Any, reader: Any, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
             items: list[ReadItem]) -> list[str]:
    if spec.head == "classification":
        return [spec.labels[i] for i in out["logits"].argmax(-1).tolist()]
    texts = []
    for i, (j, first, last, _) in enumerate(best_spans(out["start_logits"], out["end_logits"], spec.max_answer_tokens)):
        index = batch["token_index"][i, j]
        m_first, m_last = int(index[first]), int(index[last])
        if m_first < 0 or m_last < 0 or j >= len(items[i].passages):
            texts.append("")
            continue
        texts.append(span_text(items[i].passages[j], m_first, m_last, reader.tokenizer))
    return texts
