"""BEIR-layout data sets: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

A data set is named by a path or by a name. A name resolves, in order, to ``$RETROMEM_DATA/beir/<name>``,
``<project>/../shared/data/beir/<name>``, the download cache (``$RETROMEM_CACHE/beir/<name>``), and
finally the public BEIR download. The corpus is streamed (never held in memory as a whole), so a corpus
larger than memory can be encoded; queries and qrels are small and loaded eagerly.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from retromem.data.passage import Passage
from retromem.errors import DataError, MissingDataError
from retromem.io import iter_jsonl, open_text, usual_modes

log = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]
"""Query id -> doc id -> relevance grade (>= 1 is relevant, as in trec_eval)."""

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
_EXAMPLES = 5   # how many ids or lines a warning names


@dataclass
class LoadReport:
    """What loading found that a person should know about (the CLI prints it)."""

    empty_texts: int = 0
    unknown_qrel_queries: int = 0
    unknown_qrel_docs: int = 0
    duplicate_qrels: int = 0
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        """Record (and log) ``message``; the same message twice (a corpus streamed again) is kept once."""
        if message in self.warnings:
            return
        self.warnings.append(message)
        log.warning(message)


@dataclass
class BeirDataset:
    """A BEIR data set on disk. ``queries`` and ``qrels`` cover the chosen split only."""

    root: Path
    split: str
    queries: dict[str, str]
    qrels: Qrels
    report: LoadReport = field(default_factory=LoadReport)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def corpus_path(self) -> Path:
        return corpus_file(self.root)

    def iter_corpus(self) -> Iterator[Passage]:
        """Stream the corpus, validating every line (see :func:`iter_corpus`)."""
        return iter_corpus(self.corpus_path, self.report)

    def check_qrels_docs(self, doc_ids: set[str] | frozenset[str]) -> int:
        """Warn about (and count) judged documents absent from the corpus; they still count as relevant."""
        unknown = sorted({d for docs in self.qrels.values() for d in docs if d not in doc_ids})
        self.report.unknown_qrel_docs = len(unknown)
        if unknown:
            self.report.warn(f"{len(unknown)} judged document(s) in qrels/{self.split}.tsv are not in the corpus "
                             f"(e.g. {unknown[:3]}); they stay in the qrels and count as missed")
        return len(unknown)


def load_beir(name_or_path: str | Path, split: str = "test", cache_dir: str | Path | None = None,
              download: bool = True) -> BeirDataset:
    """Load queries and qrels of ``split`` for a BEIR data set given by name or folder.

    Only queries that have judgments in the split are kept (as BEIR does). Qrels that name queries
    missing from ``queries.jsonl`` are dropped with a warning and counted in ``report``; so are exact
    duplicate qrels lines (see :func:`load_qrels`).
    """
    root = resolve_beir_dir(name_or_path, cache_dir=cache_dir, download=download)
    report = LoadReport()
    qrels = load_qrels(qrels_file(root, split), report)
    all_queries = load_queries(root / "queries.jsonl")
    unknown = sorted(q for q in qrels if q not in all_queries)
    if unknown:
        report.unknown_qrel_queries = len(unknown)
        report.warn(f"{len(unknown)} query id(s) in qrels/{split}.tsv are not in queries.jsonl "
                    f"(e.g. {unknown[:3]}); they are left out of the evaluation")
        for qid in unknown:
            del qrels[qid]
    queries = {qid: all_queries[qid] for qid in qrels}
    return BeirDataset(root=root, split=split, queries=queries, qrels=qrels, report=report)


def resolve_beir_dir(name_or_path: str | Path, cache_dir: str | Path | None = None, download: bool = True) -> Path:
    """Find a BEIR data set folder by path or by name (see the module docstring for the search order)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        _require_layout(path)
        return path.resolve()
    name = str(name_or_path)
    if path.is_file():
        raise MissingDataError(f"{path} is a file: give the BEIR folder that holds corpus.jsonl, queries.jsonl "
                               "and qrels/, or a data set name")
    if os.sep in name or name.startswith("."):
        raise MissingDataError(f"BEIR data set folder {name} does not exist")
    candidates = [Path(p) / "beir" / name for p in _data_roots()]
    cache = Path(cache_dir) if cache_dir else default_cache_dir() / "beir"
    candidates.append(cache / name)
    for candidate in candidates:
        if candidate.is_dir() and corpus_file(candidate, must_exist=False).exists():
            return candidate.resolve()
    if not download:
        raise MissingDataError(_where_to_put(name, candidates))
    return download_beir(name, cache)


def data_root() -> Path:
    """The first existing shared data root: ``$RETROMEM_DATA`` or ``<project>/../shared/data``."""
    for root in _data_roots():
        if Path(root).is_dir():
            return Path(root)
    raise MissingDataError("no data folder: set RETROMEM_DATA to the folder that holds beir/, kilt/, text/")


def default_cache_dir() -> Path:
    return Path(os.environ.get("RETROMEM_CACHE", Path.home() / ".cache" / "retromem"))


def download_beir(name: str, cache: Path) -> Path:
    """Download and unpack ``<name>.zip`` from the BEIR mirror into ``cache/<name>`` (atomically)."""
    url = os.environ.get("RETROMEM_BEIR_URL", BEIR_URL).format(name=name)
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache))
    try:
        archive = staging / f"{name}.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError) as err:
            raise MissingDataError(
                f"could not download BEIR data set {name!r} from {url} ({err}). "
                + _where_to_put(name, [Path(p) / "beir" / name for p in _data_roots()] + [cache / name])
            ) from err
        try:
            with zipfile.ZipFile(archive) as zf:
                _safe_extract(zf, staging)
        except zipfile.BadZipFile as err:
            raise DataError("downloaded file is not a zip archive", archive, fix=f"check {url}") from err
        archive.unlink()
        unpacked = staging / name if (staging / name).is_dir() else staging
        _require_layout(unpacked)
        target = cache / name
        usual_modes(unpacked)
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpacked, target)
        return target.resolve()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def corpus_file(root: Path, must_exist: bool = True) -> Path:
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (root / name).exists():
            return root / name
    if must_exist:
        raise MissingDataError(f"{root} has no corpus.jsonl: a BEIR folder holds corpus.jsonl, queries.jsonl "
                               "and qrels/<split>.tsv")
    return root / "corpus.jsonl"


def qrels_file(root: Path, split: str) -> Path:
    path = root / "qrels" / f"{split}.tsv"
    if not path.exists():
        available = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise MissingDataError(f"{path} does not exist: split {split!r} is not in {root.name}; "
                               f"available splits: {', '.join(available) or 'none'}")
    return path


def iter_corpus(path: str | Path, report: LoadReport | None = None) -> Iterator[Passage]:
    """Stream passages from a BEIR ``corpus.jsonl`` (``_id``, ``title``, ``text``).

    Errors (DataError with file and line): malformed JSON, a missing ``_id`` or ``text``, a duplicate
    ``_id``. Documents whose title and text are both empty are kept (their judgments must stay valid)
    but counted in ``report.empty_texts`` and warned about (count, first ids and lines) once the
    stream reaches the end of the file; a stream left unfinished counts nothing.
    """
    path = Path(path)
    report = report if report is not None else LoadReport()
    seen: dict[str, int] = {}
    empty_lines: list[int] = []
    empty_ids: list[str] = []   # the first few only: the warning names them
    empty_count = 0
    for lineno, obj in iter_jsonl(path):
        doc_id = _require_str(obj, "_id", path, lineno)
        if "text" not in obj:
            raise DataError("document has no 'text' field", path, lineno,
                            'each line needs {"_id": ..., "title": ..., "text": ...}')
        if doc_id in seen:
            raise DataError(f"duplicate document id {doc_id!r} (first seen on line {seen[doc_id]})", path, lineno,
                            "document ids must be unique; remove or rename one of them")
        seen[doc_id] = lineno
        text = obj.get("text") or ""
        title = obj.get("title") or ""
        if not isinstance(text, str) or not isinstance(title, str):
            raise DataError("'title' and 'text' must be strings", path, lineno)
        if not text.strip() and not title.strip():
            if len(empty_lines) < _EXAMPLES:
                empty_lines.append(lineno)
                empty_ids.append(doc_id)
            empty_count += 1
        yield Passage(id=doc_id, text=text, title=title)
    if not seen:
        raise DataError("the corpus has no documents", path, fix="check that the file is the right one")
    if empty_count:
        report.empty_texts = empty_count
        more = "..." if empty_count > _EXAMPLES else ""
        report.warn(f"{path}: {empty_count} document(s) with empty title and text (ids "
                    f"{', '.join(map(repr, empty_ids))}{more} on lines {', '.join(map(str, empty_lines))}{more}); "
                    "they are kept and indexed as empty strings")


def load_queries(path: str | Path) -> dict[str, str]:
    """Read ``queries.jsonl`` (``_id``, ``text``) into a dict; errors name the file and line."""
    path = Path(path)
    if not path.exists():
        raise MissingDataError(f"{path} does not exist: a BEIR folder holds queries.jsonl")
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        qid = _require_str(obj, "_id", path, lineno)
        text = obj.get("text")
        if not isinstance(text, str):
            raise DataError("query has no 'text' string", path, lineno, 'each line needs {"_id": ..., "text": ...}')
        if qid in queries:
            raise DataError(f"duplicate query id {qid!r} (first seen on line {first_line[qid]})", path, lineno,
                            "query ids must be unique")
        if not text.strip():
            raise DataError(f"query {qid!r} has empty text", path, lineno, "give the query a text or remove it")
        queries[qid] = text
        first_line[qid] = lineno
    return queries


def load_qrels(path: str | Path, report: LoadReport | None = None) -> Qrels:
    """Read a BEIR qrels TSV (``query-id  corpus-id  score``, header optional) into ``{qid: {docid: grade}}``.

    Errors (DataError with file and line): a line without three tab-separated columns (the fix says
    how to convert TREC qrels), a score that is not a number, a (query, document) pair judged twice
    with different grades (naming both lines). A pair repeated with the same grade is kept once,
    counted in ``report.duplicate_qrels`` and warned about.
    """
    path = Path(path)
    qrels: Qrels = {}
    first_line: dict[tuple[str, str], int] = {}
    duplicates: list[tuple[int, int]] = []   # (line, line it repeats), the first few only
    duplicate_count = 0
    with open_text(path) as handle:
        for lineno, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not row or not "".join(row).strip():
                continue
            if lineno == 1 and row[0].strip().lower() in {"query-id", "query_id", "qid"}:
                continue
            if len(row) != 3:
                raise DataError(f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(row)}",
                                path, lineno, _qrels_column_fix(row, path))
            qid, doc_id, grade = (c.strip() for c in row)
            try:
                value = int(float(grade))
            except ValueError as err:
                raise DataError(f"score {grade!r} is not a number", path, lineno) from err
            judged = qrels.setdefault(qid, {})
            if doc_id in judged:
                first = first_line[qid, doc_id]
                if judged[doc_id] != value:
                    raise DataError(
                        f"query {qid!r}, document {doc_id!r} is judged twice with different grades: "
                        f"grade {judged[doc_id]} at {path}:{first} and grade {value} at {path}:{lineno}",
                        path, lineno, "keep one line per (query, document) pair, with the grade you mean")
                duplicate_count += 1
                if len(duplicates) < _EXAMPLES:
                    duplicates.append((lineno, first))
                continue
            judged[doc_id] = value
            first_line[qid, doc_id] = lineno
    if not qrels:
        raise DataError("no judgments in qrels file", path, fix="check the split")
    if duplicate_count and report is not None:
        report.duplicate_qrels = duplicate_count
        examples = ", ".join(f"line {line} repeats line {first}" for line, first in duplicates)
        more = ", ..." if duplicate_count > _EXAMPLES else ""
        report.warn(f"{path}: {duplicate_count} duplicate judgment line(s) with the same grade ({examples}{more}); "
                    "each pair is counted once")
    return qrels


def _qrels_column_fix(row: list[str], path: Path) -> str:
    """A fix for a qrels line without three tab-separated columns, from what the line looks like."""
    words = "\t".join(row).split()
    if len(row) == 4 or len(words) == 4:
        program = 'BEGIN { OFS = "\\t"; print "query-id", "corpus-id", "score" } NF { print $1, $3, $4 }'
        return ("this looks like TREC qrels (qid iter docid grade), but this file must be a BEIR qrels TSV "
                f"(query-id<TAB>corpus-id<TAB>score, header optional): convert it with awk '{program}' "
                f"FILE.trec > NEW.tsv, then put NEW.tsv in place of {path}")
    if len(words) == 3:
        return "the columns are separated by spaces: separate query-id, corpus-id and score with tabs"
    return ("each line must be query-id<TAB>corpus-id<TAB>score (a header line query-id<TAB>corpus-id<TAB>score "
            "may come first); ids may not contain tabs")


def _require_str(obj: dict, key: str, path: Path, lineno: int) -> str:
    value = obj.get(key)
    if value is None:
        raise DataError(f"missing {key!r} field", path, lineno, f"every line needs a {key!r}")
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise DataError(f"{key!r} must be a non-empty string", path, lineno)
    if any(c.isspace() for c in value):
        raise DataError(f"{key!r} value {value!r} contains whitespace, which TREC run and qrels files cannot hold",
                        path, lineno, "replace the whitespace, e.g. with '_'")
    return value


def _data_roots() -> list[str]:
    roots = []
    if os.environ.get("RETROMEM_DATA"):
        roots.append(os.environ["RETROMEM_DATA"])
    roots.append(str(PROJECT_ROOT.parent / "shared" / "data"))
    return roots


def _require_layout(root: Path) -> None:
    corpus_file(root)
    if not (root / "queries.jsonl").exists():
        raise MissingDataError(f"{root} has no queries.jsonl")
    if not (root / "qrels").is_dir():
        raise MissingDataError(f"{root} has no qrels/ folder")


def _where_to_put(name: str, candidates: list[Path]) -> str:
    unique = list(dict.fromkeys(str(Path(c).resolve()) for c in candidates))
    hint = "" if os.environ.get("RETROMEM_DATA") else " (or set RETROMEM_DATA to a folder holding beir/)"
    return (f"Put corpus.jsonl, queries.jsonl and qrels/<split>.tsv of {name!r} in one of: "
            + ", ".join(unique) + hint)


def _safe_extract(zf: zipfile.ZipFile, dest: Path) -> None:
    dest = dest.resolve()
    for member in zf.namelist():
        target = (dest / member).resolve()
        if dest not in target.parents and target != dest:
            raise DataError(f"archive member {member!r} would be written outside {dest}")
    zf.extractall(dest)
