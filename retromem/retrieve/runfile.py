"""TREC run files (``qid Q0 docid rank score tag``) and TREC qrels, read and written as trec_eval does.

A *run* is held in memory as ``{query id: {doc id: score}}``, the shape pytrec_eval takes. The order
of a ranking is never taken from the dict or from the rank column: like trec_eval, it is always
score descending, ties broken by doc id in *descending* byte order (trec_eval's ``comp_sim_docno``
compares ``strcmp(docno2, docno1)``; Python's code-point order on ``str`` equals byte order of the
UTF-8 encoding). :func:`ranked_docs` is that order; the writer, :func:`top_k` and the MRR cut in
:mod:`retromem.eval.beir_metrics` all use it, so a rank written to a file is the rank trec_eval,
pytrec_eval and pyserini's evaluation tools see.
"""

from __future__ import annotations

import gzip
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path

from retromem.data.beir import Qrels
from retromem.errors import ConfigError, DataError
from retromem.io import atomic_path, open_text

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]
"""Query id -> doc id -> retrieval score (higher is better)."""

DEFAULT_TAG = "retromem"


def write_trec_run(run: Mapping[str, Mapping[str, float]], path: str | Path, tag: str = DEFAULT_TAG,
                   k: int | None = None) -> Path:
    """Write ``run`` as a TREC run file, atomically; a ``.gz`` path is gzip-compressed.

    Queries are written in the run's own (insertion) order; within a query, documents are ranked by
    :func:`ranked_docs` (score descending, ties by doc id descending, the order trec_eval uses), ranks
    start at 1, and only the first ``k`` are kept when ``k`` is given. Scores are written with
    ``repr`` so that reading the file back gives the same floats (no ties created by rounding).
    A query with an empty ranking writes no line (the format cannot say it exists).

    Raises ValueError for what the format cannot carry: an empty id or one with whitespace, a
    ``tag`` with whitespace, a NaN score, ``k < 1``.
    """
    if k is not None and k < 1:
        raise ConfigError(f"k must be >= 1 (or None for all documents), got {k}")
    if not tag or _has_space(tag):
        raise ConfigError(f"the run tag must be one non-empty word without whitespace, got {tag!r}")
    path = Path(path)
    lines = []
    for qid, doc_scores in run.items():
        _check_id(qid, "query")
        for rank, (docid, score) in enumerate(ranked_docs(doc_scores, k), start=1):
            _check_id(docid, "document", qid)
            lines.append(f"{qid} Q0 {docid} {rank} {score!r} {tag}\n")
    with atomic_path(path) as tmp:
        if path.suffix == ".gz":
            with gzip.open(tmp, "wt", encoding="utf-8") as handle:
                handle.writelines(lines)
        else:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.writelines(lines)
    return path


def read_trec_run(path: str | Path) -> Run:
    """Read a TREC run file (6 whitespace-separated columns; ``.gz`` allowed) into a :data:`Run`.

    Like trec_eval, the second column and the rank column are ignored (the ranking is recomputed
    from the scores) and any run of spaces or tabs separates columns. Blank lines are skipped.
    A line with another column count, a score that is not a number (or is NaN), or a (query, doc)
    pair seen before raises a :class:`DataError` naming the file, the line and the fix.
    """
    path = Path(path)
    run: Run = {}
    for lineno, fields in _rows(path, "qid Q0 docid rank score tag", _column_fix):
        qid, _, docid, _, score_text, _ = fields
        score = _parse_score(score_text, path, lineno)
        ranking = run.setdefault(qid, {})
        if docid in ranking:
            first = _first_line_of(path, qid, docid)
            raise DataError(f"duplicate pair: query {qid!r}, document {docid!r} (first on line {first})",
                            path, lineno, "each (query, document) pair may appear once; keep one score per pair")
        ranking[docid] = score
    if not run:
        logger.warning("run file %s holds no results", path)
    return run


def read_qrels_trec(path: str | Path) -> Qrels:
    """Read TREC qrels (``qid iter docid grade``, whitespace-separated; ``.gz`` allowed).

    The ``iter`` column is ignored, as trec_eval does. Grades must be integers; zero and negative
    grades are kept (they are judged non-relevant). A malformed line or a duplicate (query, doc)
    pair raises a :class:`DataError` naming the file and line. (BEIR's ``qrels/<split>.tsv`` layout
    is read by ``retromem.data``, not here.)
    """
    path = Path(path)
    qrels: Qrels = {}
    qrels_fix = ("TREC qrels lines are 'qid 0 docid grade'; a BEIR qrels .tsv (query-id, corpus-id, score) is read "
                 "by the BEIR loader instead")
    for lineno, fields in _rows(path, "qid iter docid grade", lambda found: qrels_fix):
        qid, _, docid, grade_text = fields
        try:
            grade = int(grade_text)
        except ValueError:
            raise DataError(f"relevance grade {grade_text!r} is not an integer", path, lineno,
                            "the 4th column must be an integer grade such as 0, 1 or 2") from None
        judged = qrels.setdefault(qid, {})
        if docid in judged:
            raise DataError(f"duplicate judgment: query {qid!r}, document {docid!r}", path, lineno,
                            "judge each (query, document) pair once")
        judged[docid] = grade
    return qrels


def ranked_docs(doc_scores: Mapping[str, float], k: int | None = None) -> list[tuple[str, float]]:
    """``(doc id, score)`` pairs in trec_eval's order: score descending, then doc id descending.

    ``k`` keeps the first ``k``. Scores are converted to Python floats (numpy scalars are accepted);
    a NaN score raises ValueError, since it has no place in an order.
    """
    pairs = []
    for docid, score in doc_scores.items():
        score = float(score)
        if math.isnan(score):
            raise DataError(f"document {docid!r} has a NaN score", fix="score every document with a number")
        pairs.append((docid, score))
    pairs.sort(key=lambda pair: (pair[1], pair[0]), reverse=True)
    return pairs if k is None else pairs[:k]


def top_k(run: Mapping[str, Mapping[str, float]], k: int) -> Run:
    """A new run holding each query's first ``k`` documents in :func:`ranked_docs` order."""
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    return {qid: dict(ranked_docs(doc_scores, k)) for qid, doc_scores in run.items()}


def _has_space(text: str) -> bool:
    return any(ch.isspace() for ch in text)


def _check_id(ident: object, kind: str, qid: str | None = None) -> None:
    if not isinstance(ident, str) or not ident or _has_space(ident):
        where = f" (query {qid!r})" if qid is not None else ""
        raise DataError(f"{kind} id {ident!r}{where} cannot be written to a TREC run file: "
                         "ids must be non-empty strings without whitespace")


def _parse_score(text: str, path: Path, lineno: int) -> float:
    try:
        score = float(text)
    except ValueError:
        score = math.nan
    if math.isnan(score):
        raise DataError(f"score {text!r} is not a number", path, lineno,
                        "the 5th column must be the retrieval score, e.g. 12.75; check the column order "
                        "(qid Q0 docid rank score tag)")
    return score


def _column_fix(count: int) -> str:
    if count == 3:
        return ("this looks like an MS MARCO run (qid docid rank); convert it to "
                "'qid Q0 docid rank score tag', e.g. using -rank as the score")
    return "each line must be 'qid Q0 docid rank score tag' separated by spaces or tabs; ids may not contain spaces"


def _first_line_of(path: Path, qid: str, docid: str) -> int | None:
    """Line number of the first ``(qid, docid)`` line: read again only on the error path."""
    with open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            fields = line.split()
            if len(fields) == 6 and fields[0] == qid and fields[2] == docid:
                return lineno
    return None


def _rows(path: Path, columns: str, fix) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of each non-blank line, refusing one without as many fields as ``columns``
    names (``fix(found)`` says what to do)."""
    expected = len(columns.split())
    with open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != expected:
                raise DataError(f"expected {expected} columns ({columns}), found {len(fields)}", path, lineno,
                                fix(len(fields)))
            yield lineno, fields
