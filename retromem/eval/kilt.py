"""The official KILT metrics, computed as KILT's ``eval_retrieval.py`` and ``eval_downstream.py`` compute them.

Retrieval is scored on pages (``wikipedia_id``), each prediction's pages deduplicated in rank order:

- **R-Prec**: for each evidence set (the provenance of one gold output) with R distinct pages, the share of the
  first R predicted pages that are in it; the best over the sets.
- **Precision@k / Recall@k / Success@k**: KILT's rank of evidence sets, where a set counts once, as a hit at the
  position of its last page found (earlier partial points of it are removed) and every other page is a miss:
  Precision@k = hits in the first k / k, Recall@k = hits in the first k / distinct evidence sets,
  Success@k = 1 if any hit in the first k. A prediction without pages scores 0.

Answers (each compared with every distinct gold answer, stripped, empty ones dropped; the best counts):
**accuracy** (strict string match), **em** and **f1** (after SQuAD normalisation: lower case, no punctuation,
no articles, single spaces), **rougel** (ROUGE-L F of the ``rouge`` package, 1.0.1, as KILT calls it: no
normalisation, 0 for an answer it cannot score). An empty predicted answer scores 0 everywhere.
**kilt_ac / kilt_em / kilt_f1 / kilt_rl** credit those only where R-Prec is 1. Every mean is over all task
examples. ``tests/test_eval_kilt.py`` pins the values KILT's own scripts give on perturbed official files.

Predictions are KILT's format: one line per id, ``{"id": ..., "output": [{"answer": ..., "provenance":
[{"wikipedia_id": ...}, ...]}]}``.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from retromem.data.kilt import KiltExample
from retromem.errors import ConfigError, DataError
from retromem.io import atomic_path, iter_jsonl

DEFAULT_KS: tuple[int, ...] = (1, 5)
ANSWER_METRICS: tuple[str, ...] = ("accuracy", "em", "f1", "rougel")
KILT_METRICS: tuple[str, ...] = ("kilt_ac", "kilt_em", "kilt_f1", "kilt_rl")


@dataclass(frozen=True)
class KiltPrediction:
    """One system output: an answer (empty for retrieval only) and the pages it retrieved, best first.

    ``line`` is where it was read from (``None`` when made in memory); it is not part of equality.
    """

    id: str
    answer: str = ""
    provenance: tuple[str, ...] = ()
    line: int | None = field(default=None, compare=False)


@dataclass
class KiltScores:
    """``mean``: every metric averaged over the task's examples; ``per_query``: the same per example id."""

    mean: dict[str, float]
    per_query: dict[str, dict[str, float]]
    ks: tuple[int, ...]
    num_examples: int
    with_answers: int
    """Predictions with a non-empty answer (0 for a retrieval run: the answer metrics are then all 0)."""

    def retrieval_metrics(self) -> list[str]:
        return ["R-Prec"] + [f"{m}@{k}" for k in self.ks for m in ("Recall", "Precision", "Success")]


def score_kilt(examples: Sequence[KiltExample], predictions: Iterable[KiltPrediction] | Mapping[str, KiltPrediction],
               ks: Iterable[int] = DEFAULT_KS, where: str | Path | None = None) -> KiltScores:
    """Score ``predictions`` against ``examples`` (see the module docstring).

    Every example needs exactly one prediction: a missing id, an id predicted twice and a prediction for an id
    the task lacks are DataErrors naming the id and its line (``where`` names the predictions file).
    """
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ConfigError(f"ks (--ks) must be positive integers, got {','.join(map(str, ks)) or 'none'}")
    by_id = _index_predictions(predictions, where)
    task_ids = {e.id for e in examples}
    unknown = [p for p in by_id.values() if p.id not in task_ids]
    if unknown:
        first = unknown[0]
        raise DataError(f"prediction for id {first.id!r} is not in the task ({len(unknown)} unknown id(s) in all)",
                        where, first.line, "predict exactly the task's ids")
    from rouge import Rouge

    rouge = Rouge()
    per_query: dict[str, dict[str, float]] = {}
    with_answers = 0
    for example in examples:
        prediction = by_id.get(example.id)
        if prediction is None:
            raise DataError(f"no prediction for id {example.id!r} (line {example.line} of the task)", where,
                            fix="predict every id of the task, one line each")
        values = retrieval_scores(example, prediction.provenance, ks)
        answer = prediction.answer.strip()
        with_answers += bool(answer)
        values.update(answer_scores(answer, example.answers, rouge))
        full = values["R-Prec"] == 1
        for name, base in zip(KILT_METRICS, ANSWER_METRICS):
            values[name] = values[base] if full else 0.0
        per_query[example.id] = values
    if not per_query:
        raise DataError("the task has no examples", where)
    names = list(next(iter(per_query.values())))
    mean = {name: sum(v[name] for v in per_query.values()) / len(per_query) for name in names}
    return KiltScores(mean=mean, per_query=per_query, ks=ks, num_examples=len(per_query), with_answers=with_answers)


def retrieval_scores(example: KiltExample, pages: Sequence[str], ks: Sequence[int]) -> dict[str, float]:
    """R-Prec and Recall/Precision/Success at each k of one prediction's ``pages`` (KILT's definitions)."""
    guess = _unique(str(p).strip() for p in pages)
    gold_lists = [_unique(p.wikipedia_id for p in ev if p.wikipedia_id is not None) for ev in example.evidence]
    values: dict[str, float] = {"R-Prec": max((r_precision(guess, gold) for gold in gold_lists), default=0.0)}
    rank, sets = evidence_rank(guess, example)
    for k in ks:
        hits = rank[:k].count(True)
        values[f"Recall@{k}"] = hits / sets if sets else 0.0
        values[f"Precision@{k}"] = hits / k if sets else 0.0
        values[f"Success@{k}"] = float(hits > 0) if sets else 0.0
    return values


def r_precision(guess: Sequence[str], gold: Sequence[str]) -> float:
    """The share of the first R guessed pages among the R gold pages (0 for an empty gold set)."""
    if not gold:
        return 0.0
    wanted = set(gold)
    return sum(1 for page in guess[:len(gold)] if page in wanted) / len(gold)


def evidence_rank(guess: Sequence[str], example: KiltExample) -> tuple[list[bool | str], int]:
    """KILT's ranking of evidence sets (``get_rank``): per guessed page ``False`` (no set has it), ``True`` (it
    completes a set) or a partial-set marker, and the number of distinct evidence sets (0 without guesses)."""
    if not guess:
        return [], 0
    evidence_sets: list[set[str]] = []
    for ev in example.evidence:
        pages = {p.wikipedia_id if p.wikipedia_id is not None else "" for p in ev}
        if pages not in evidence_sets:
            evidence_sets.append(pages)
    rank: list[bool | str] = []
    for page in guess:
        found = False
        for index, pages in enumerate(evidence_sets):
            if page in pages:
                found = True
                marker = f"evidence_set:{index}"
                if marker in rank:
                    rank.remove(marker)
                pages.remove(page)
                rank.append(True if not pages else marker)
        if not found:
            rank.append(False)
    return rank, len(evidence_sets)


def answer_scores(answer: str, gold_answers: Iterable[str], rouge=None) -> dict[str, float]:
    """accuracy, em, f1 and rougel of one (stripped) answer, each the best over the distinct gold answers."""
    golds = {a.strip() for a in gold_answers if a and a.strip()}
    if not answer or not golds:
        return dict.fromkeys(ANSWER_METRICS, 0.0)
    if rouge is None:
        from rouge import Rouge

        rouge = Rouge()
    return {
        "accuracy": float(answer in golds),
        "em": max(float(normalize_answer(answer) == normalize_answer(g)) for g in golds),
        "f1": max(token_f1(answer, g) for g in golds),
        "rougel": max(rouge_l(answer, g, rouge) for g in golds),
    }


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation removed, articles removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD's token F1 of the normalised texts."""
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(predicted) & Counter(wanted)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(wanted)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, gold: str, rouge=None) -> float:
    """ROUGE-L F of the ``rouge`` package (no normalisation), 0 where it refuses the text (e.g. no words)."""
    if rouge is None:
        from rouge import Rouge

        rouge = Rouge()
    try:
        return float(rouge.get_scores(prediction, gold, avg=True)["rouge-l"]["f"])
    except ValueError:
        return 0.0


def read_kilt_predictions(path: str | Path) -> list[KiltPrediction]:
    """Read a KILT predictions file (see the module docstring) in file order.

    Errors (DataError naming the file and line): malformed JSON, a missing ``id``, an id given twice (naming
    both lines), an ``output`` that is not a list of exactly one object, an answer that is not a string, a
    provenance that is not a list of objects. A provenance entry without ``wikipedia_id`` is skipped, as KILT does.
    """
    path = Path(path)
    predictions: list[KiltPrediction] = []
    first_line: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        pid = obj.get("id")
        if isinstance(pid, int) and not isinstance(pid, bool):
            pid = str(pid)
        if not isinstance(pid, str) or not pid.strip():
            raise DataError("missing or empty 'id'", path, lineno, 'each line needs {"id": ..., "output": [...]}')
        pid = pid.strip()
        if pid in first_line:
            raise DataError(f"id {pid!r} is predicted twice: on line {first_line[pid]} and on line {lineno}",
                            path, lineno, "give one prediction per id")
        first_line[pid] = lineno
        outputs = obj.get("output")
        if not isinstance(outputs, list) or len(outputs) != 1 or not isinstance(outputs[0], dict):
            raise DataError(f"id {pid!r}: 'output' must be a list of exactly one object (KILT's format)", path, lineno,
                            '{"id": ..., "output": [{"answer": ..., "provenance": [{"wikipedia_id": ...}]}]}')
        output = outputs[0]
        answer = output.get("answer", "")
        if not isinstance(answer, str):
            raise DataError(f"id {pid!r}: 'answer' must be a string", path, lineno)
        provenance = output.get("provenance", [])
        if not isinstance(provenance, list) or not all(isinstance(p, dict) for p in provenance):
            raise DataError(f"id {pid!r}: 'provenance' must be a list of objects", path, lineno)
        pages = tuple(str(p["wikipedia_id"]).strip() for p in provenance if "wikipedia_id" in p)
        predictions.append(KiltPrediction(id=pid, answer=answer, provenance=pages, line=lineno))
    if not predictions:
        raise DataError("the predictions file is empty", path, fix="give one prediction per task id")
    return predictions


def write_kilt_predictions(path: str | Path, predictions: Iterable[KiltPrediction],
                           titles: Mapping[str, str] | None = None) -> Path:
    """Write predictions in KILT's format (atomically); ``titles`` (page id -> title) adds each page's title."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for prediction in predictions:
            provenance = []
            for page in prediction.provenance:
                entry = {"wikipedia_id": page}
                if titles is not None and page in titles:
                    entry["title"] = titles[page]
                provenance.append(entry)
            line = {"id": prediction.id, "output": [{"answer": prediction.answer, "provenance": provenance}]}
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    return path


def _index_predictions(predictions, where) -> dict[str, KiltPrediction]:
    if isinstance(predictions, Mapping):
        return dict(predictions)
    by_id: dict[str, KiltPrediction] = {}
    for prediction in predictions:
        if prediction.id in by_id:
            earlier = by_id[prediction.id]
            lines = f" (lines {earlier.line} and {prediction.line})" if prediction.line is not None else ""
            raise DataError(f"id {prediction.id!r} is predicted twice{lines}", where, prediction.line,
                            "give one prediction per id")
        by_id[prediction.id] = prediction
    return by_id


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


_PUNCTUATION = frozenset(string.punctuation)
