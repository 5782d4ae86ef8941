"""The training tuples of contrastive fine-tuning: (anchor, positive, negative_1..n), from a BEIR data set's
qrels and from JSONL records, with hard negatives mined by the starting encoder (or ``mining_model``).

- BEIR: one (query, passage) pair for every judgment of grade >= 1 of the ``beir_split`` qrels, the
  passage formatted as retromem's encoder formats it (title + " " + text); negatives are mined from
  the corpus (:func:`retromem.retrieve.negative_sources.mine_negatives_from`: dense, BM25 or both fused),
  never one of the query's positives, counting those of every query id with the same text, nor the
  query's own twin in the corpus (:func:`retromem.retrieve.hard_negatives.never_negatives`).
- JSONL (:mod:`retromem.pretrain.contrastive_jsonl`): each record's first ``hard_negatives``
  negatives, completed with mined ones from the pool of every text in the files when it has fewer.

The tuples are written to ``train_examples.jsonl`` (with the data key that made them beside it), so
that a rerun with the same data settings and inputs reuses them (:func:`prepare_examples`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accelerate import PartialState

from retromem.data.beir import corpus_file, load_beir
from retromem.data.passage import Passage
from retromem.errors import RetromemError
from retromem.index.encoder import Encoder, EncoderConfig
from retromem.io import atomic_path, count_lines, iter_jsonl, read_json, write_json_atomic
from retromem.pretrain.contrastive_jsonl import read_jsonl_examples
from retromem.pretrain.finetune_config import FinetuneConfig
from retromem.retrieve.hard_negatives import Candidates, never_negatives, pick_negatives
from retromem.retrieve.negative_sources import mine_negatives_from

log = logging.getLogger(__name__)

EXAMPLES_FILE = "train_examples.jsonl"


@dataclass
class ExampleReport:
    """What building the training tuples did; saved in ``final/finetune_run.json``."""

    pairs: int = 0
    examples: int = 0
    dropped_no_text: int = 0
    dropped_few_negatives: int = 0
    mined_queries: int = 0
    mining_seconds: float = 0.0
    sources: list[str] = field(default_factory=list)


def prepare_examples(config: FinetuneConfig, settings: dict[str, Any], output_dir: Path,
                     data_key: str) -> tuple[list[dict[str, str]], ExampleReport]:
    """The training tuples: reused from ``train_examples.jsonl`` when made with the same data settings.

    Under a launcher every process encodes its share of the corpus for mining; the main process
    mines and writes the file, the others read it.
    """
    state = PartialState()
    path = output_dir / EXAMPLES_FILE
    meta_path = output_dir / (EXAMPLES_FILE + ".json")
    if path.exists() and meta_path.exists() and read_json(meta_path).get("data_key") == data_key:
        log.info("reusing the training tuples in %s", path)
        return _read_examples(path), ExampleReport(**read_json(meta_path)["report"])
    examples, report = build_examples(config, settings, device=str(state.device),
                                      write=state.is_main_process)
    if state.is_main_process:
        _write_examples(path, examples)
        write_json_atomic(meta_path, {"data_key": data_key, "report": asdict(report)})
    state.wait_for_everyone()
    return (_read_examples(path) if not state.is_main_process else examples), report


def build_examples(config: FinetuneConfig, settings: dict[str, Any], device: str | None = None,
                   write: bool = True) -> tuple[list[dict[str, str]], ExampleReport]:
    """Make (anchor, positive, negative_1..n) tuples from ``config.beir`` and ``config.jsonl``."""
    report = ExampleReport()
    examples: list[dict[str, str]] = []
    encoder: Encoder | None = None

    def get_encoder() -> Encoder:
        nonlocal encoder
        if encoder is None:
            encoder = mining_encoder(config, settings, device)
        return encoder

    if config.beir:
        examples += beir_examples(config, get_encoder, report, write=write)
    if config.jsonl:
        examples += jsonl_examples(config, get_encoder, report, write=write)
    report.examples = len(examples)
    hint = "lower --hard-negatives or --mine-skip, raise --mine-top-k" + (
        ", or raise --mine-max-score-ratio" if config.mine_max_score_ratio is not None else "")
    if write and not examples:
        raise RetromemError(f"no training tuples were made ({report.pairs} pairs; {report.dropped_no_text} without "
                            f"text, {report.dropped_few_negatives} with fewer than {config.hard_negatives} negatives "
                            f"left after mining): check the data, or {hint}")
    if write and report.dropped_few_negatives:
        log.warning("%d of %d pairs (%.0f%%) had fewer than %d hard negatives left after mining and are left out; "
                    "to keep them, %s", report.dropped_few_negatives, report.pairs,
                    100 * report.dropped_few_negatives / max(report.pairs, 1), config.hard_negatives, hint)
    return examples, report


def mining_encoder(config: FinetuneConfig, settings: dict[str, Any], device: str | None = None) -> Encoder:
    """retromem's encoder with exactly the settings the fine-tuned model starts from (or ``mining_model``'s own)."""
    if config.mining_model:
        return Encoder(EncoderConfig(model=config.mining_model, precision=config.precision,
                                     batch_size=config.encode_batch_size, device=device,
                                     trust_remote_code=config.trust_remote_code))
    return Encoder(EncoderConfig(model=config.model, pooling=settings["pooling"], normalize=settings["normalize"],
                                 max_length=settings["max_length"], query_prefix=settings["query_prefix"],
                                 passage_prefix=settings["passage_prefix"], precision=config.precision,
                                 batch_size=config.encode_batch_size, device=device,
                                 trust_remote_code=config.trust_remote_code))


def beir_examples(config: FinetuneConfig, get_encoder, report: ExampleReport, write: bool = True) -> list[dict]:
    """Tuples from a BEIR data set's ``config.beir_split`` qrels (grade >= 1), negatives mined from its corpus."""
    dataset = load_beir(config.beir, split=config.beir_split)
    report.sources.append(f"beir:{dataset.name}/{config.beir_split}")
    positives = relevant_docs(dataset.qrels)
    queries = {qid: dataset.queries[qid] for qid in positives}
    candidates: dict[str, Candidates] = {}
    if config.hard_negatives:
        clock = time.perf_counter()
        never = never_negatives(queries, positives, dataset.iter_corpus)
        candidates = mine_negatives_from(config.negatives_source, queries, never, dataset.iter_corpus, get_encoder,
                                         config.mining(), name=str(dataset.root), workdir=config.mining_workdir,
                                         total=count_lines(corpus_file(dataset.root)),
                                         corpus_path=corpus_file(dataset.root), show_progress=config.show_progress,
                                         write=write)
        report.mining_seconds += time.perf_counter() - clock
        report.mined_queries += len(candidates)
    if not write:
        return []
    rng = random.Random(config.seed)
    chosen: list[tuple[str, str, list[str]]] = []
    for qid in sorted(queries):
        for doc_id in positives[qid]:
            report.pairs += 1
            negatives: list[str] = []
            if config.hard_negatives:
                negatives = pick_negatives(candidates[qid], doc_id, config.mining(), rng)
                if negatives is None:
                    report.dropped_few_negatives += 1
                    continue
            chosen.append((qid, doc_id, negatives))
    needed = {d for _, pos, negs in chosen for d in (pos, *negs)}
    texts = {p.id: p.full_text() for p in dataset.iter_corpus() if p.id in needed}
    examples = []
    for qid, doc_id, negatives in chosen:
        if doc_id not in texts:  # judged but not in the corpus: no text to train on
            report.dropped_no_text += 1
            continue
        examples.append(_example(queries[qid], texts[doc_id], [texts[d] for d in negatives]))
    if report.dropped_no_text:
        log.warning("%d judged document(s) of %s are not in its corpus: their pairs are left out",
                    report.dropped_no_text, dataset.name)
    return examples


def jsonl_examples(config: FinetuneConfig, get_encoder, report: ExampleReport, write: bool = True) -> list[dict]:
    """Tuples from JSONL records: each record's first ``hard_negatives`` negatives (none with 0),
    completed with mined ones when it has fewer.

    Mining searches the pool of every positive and negative text in the files, excluding all the
    positives given for the same query text and the record's own negatives.
    """
    records = read_jsonl_examples(config.jsonl)
    report.sources += [f"jsonl:{p}" for p in config.jsonl]
    n = config.hard_negatives
    pool = list(dict.fromkeys(t for r in records for t in (r.positive, *r.negatives)))
    pool_ids = {text: f"p{i}" for i, text in enumerate(pool)}
    positives_of: dict[str, list[str]] = {}
    for r in records:
        positives_of.setdefault(r.query, []).append(pool_ids[r.positive])
    for query, ids in positives_of.items():  # the query's own text, if some record holds it, is no negative
        if query in pool_ids:
            ids.append(pool_ids[query])
    needs_mining = sorted({r.query for r in records if len(r.negatives) < n})
    candidates: dict[str, Candidates] = {}
    if needs_mining:
        queries = {f"q{i}": q for i, q in enumerate(needs_mining)}
        digest = hashlib.sha256("\n".join(pool).encode()).hexdigest()[:12]
        clock = time.perf_counter()
        mined = mine_negatives_from(config.negatives_source, queries,
                                    {qid: positives_of[q] for qid, q in queries.items()},
                                    lambda: (Passage(id=pool_ids[t], text=t) for t in pool), get_encoder,
                                    config.mining(), name=f"jsonl-{digest}", workdir=config.mining_workdir,
                                    total=len(pool), show_progress=config.show_progress, write=write)
        report.mining_seconds += time.perf_counter() - clock
        report.mined_queries += len(mined)
        candidates = {queries[qid]: c for qid, c in mined.items()}
    if not write:
        return []
    text_of = {doc_id: text for text, doc_id in pool_ids.items()}
    rng = random.Random(config.seed)
    examples = []
    for r in records:
        report.pairs += 1
        negatives = r.negatives[:n]
        if len(negatives) < n:
            own = {pool_ids[t] for t in negatives}
            cand = candidates[r.query]
            keep = [i for i, d in enumerate(cand.doc_ids) if d not in own]
            cand = Candidates([cand.doc_ids[i] for i in keep], [cand.scores[i] for i in keep], cand.positive_scores)
            extra = pick_negatives(cand, pool_ids[r.positive], config.mining(), rng, count=n - len(negatives))
            if extra is None:
                report.dropped_few_negatives += 1
                continue
            negatives = negatives + [text_of[d] for d in extra]
        examples.append(_example(r.query, r.positive, negatives))
    return examples


def relevant_docs(qrels: dict[str, dict[str, int]]) -> dict[str, list[str]]:
    """Query id -> the documents judged relevant (grade >= 1), in a stable order; queries without any left out."""
    relevant = {qid: sorted(d for d, grade in docs.items() if grade >= 1) for qid, docs in qrels.items()}
    return {qid: docs for qid, docs in relevant.items() if docs}


# ---- helpers ------------------------------------------------------------------------------------

def _example(query: str, positive: str, negatives: list[str]) -> dict[str, str]:
    example = {"anchor": query, "positive": positive}
    example.update({f"negative_{i}": text for i, text in enumerate(negatives, start=1)})
    return example


def _write_examples(path: Path, examples: list[dict[str, str]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example, ensure_ascii=False) + "\n")


def _read_examples(path: Path) -> list[dict[str, str]]:
    return [obj for _, obj in iter_jsonl(path)]
