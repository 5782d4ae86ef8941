"""JSONL training records for contrastive fine-tuning: ``{"query", "positive", "negative" | "negatives"}``.

A bad line is a :class:`retromem.errors.DataError` naming the file and line; so is a negative that is
the record's own positive, one given twice, or one that another record gives as a positive of the
same query (it would teach both ways).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from retromem.errors import DataError
from retromem.io import iter_jsonl


@dataclass
class JsonlExample:
    """One JSONL training record, with where it came from (for error messages)."""

    query: str
    positive: str
    negatives: list[str]
    path: Path
    line: int


def read_jsonl_examples(paths: Sequence[str | Path]) -> list[JsonlExample]:
    """Read ``{"query", "positive", "negative" | "negatives"}`` records; a bad line raises a DataError naming it."""
    records: list[JsonlExample] = []
    form = '{"query": "...", "positive": "...", "negatives": ["...", ...]} (or "negative": "...")'
    for path in map(Path, paths):
        if not path.exists():
            raise DataError("training file does not exist", path, fix="check the --jsonl path")
        before = len(records)
        for lineno, obj in iter_jsonl(path):
            for key in ("query", "positive"):
                value = obj.get(key)
                if not isinstance(value, str) or not value.strip():
                    raise DataError(f"{key!r} must be a non-empty string, got {value!r}" if key in obj
                                    else f"missing {key!r}", path, lineno, f"each line needs {form}")
            if "negative" in obj and "negatives" in obj:
                raise DataError("give either 'negative' or 'negatives', not both", path, lineno)
            negatives = obj.get("negatives", [obj["negative"]] if "negative" in obj else [])
            if not isinstance(negatives, list) or not all(isinstance(t, str) and t.strip() for t in negatives):
                raise DataError("'negative' must be a non-empty string and 'negatives' a list of them", path, lineno,
                                f"each line needs {form}")
            if obj["positive"] in negatives:
                raise DataError("a negative is the same text as the positive", path, lineno,
                                "remove it from the negatives")
            if len(set(negatives)) < len(negatives):
                repeated = next(t for t in negatives if negatives.count(t) > 1)
                raise DataError(f"the negative {_clip(repeated)!r} is given twice", path, lineno,
                                "give each negative once")
            records.append(JsonlExample(query=obj["query"], positive=obj["positive"], negatives=list(negatives),
                                        path=path, line=lineno))
        if len(records) == before:
            raise DataError("no training records in the file", path, fix=f"each line needs {form}")
    _refuse_negatives_that_are_positives(records)
    return records


def _refuse_negatives_that_are_positives(records: Sequence[JsonlExample]) -> None:
    """A negative that another record gives as a positive of the same query would teach both ways."""
    positives: dict[str, dict[str, JsonlExample]] = {}
    for r in records:
        positives.setdefault(r.query, {}).setdefault(r.positive, r)
    for r in records:
        for negative in r.negatives:
            other = positives[r.query].get(negative)
            if other is not None:
                raise DataError(f"the negative {_clip(negative)!r} is a positive of the same query in "
                                f"{other.path}, line {other.line}", r.path, r.line,
                                "remove it from this record's negatives (or from that record)")


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."
