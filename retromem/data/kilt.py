"""KILT tasks: one question (claim, dialogue...) a line, with gold answers and the pages that hold the evidence.

A task line is ``{"id": ..., "input": ..., "output": [{"answer": ..., "provenance": [{"wikipedia_id": ...,
"title": ..., "start_paragraph_id": ..., ...}, ...]}, ...]}`` (KILT's format). Every output that has a
``provenance`` list is one evidence set: KILT's retrieval metrics score each set and keep the best. Tasks are
named by a path or by one of :data:`KILT_TASKS` (found under ``$RETROMEM_DATA/kilt`` or
``../shared/data/kilt``), each with the knowledge source its provenance points into.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from retromem.data.beir import data_root
from retromem.errors import DataError, MissingDataError
from retromem.io import iter_jsonl

log = logging.getLogger(__name__)

KILT_TASKS: dict[str, tuple[str, str]] = {
    "scifact-train": ("scifact/scifact-train-kilt.jsonl", "scifact/knowledge_source.jsonl"),
    "scifact-dev": ("scifact/scifact-dev-kilt.jsonl", "scifact/knowledge_source.jsonl"),
    "squad-train": ("squad/squad-train-kilt.jsonl", "squad/knowledge_source.jsonl"),
    "squad-dev": ("squad/squad-dev-kilt.jsonl", "squad/knowledge_source.jsonl"),
}
"""Task name -> (task file, knowledge source), relative to ``<data>/kilt``."""

KILT_SOURCES: dict[str, str] = {
    "scifact-kilt": "scifact/knowledge_source.jsonl",
    "squad-kilt": "squad/knowledge_source.jsonl",
}
"""Knowledge-source name -> file, relative to ``<data>/kilt``."""

_EXAMPLES = 5   # how many ids a warning names


@dataclass(frozen=True)
class Provenance:
    """One piece of evidence: a page (``wikipedia_id``) and, where given, the paragraphs and characters in it.

    ``wikipedia_id`` is ``None`` where a provenance entry has none (KILT's metrics skip such entries).
    """

    wikipedia_id: str | None
    title: str | None = None
    start_paragraph_id: int | None = None
    end_paragraph_id: int | None = None
    start_character: int | None = None
    end_character: int | None = None


@dataclass(frozen=True)
class KiltExample:
    """One task line: ``answers`` are the outputs' answers in file order (as given: the metrics strip them and
    drop empty ones); ``evidence`` one tuple of provenance per output that has a provenance list."""

    id: str
    input: str
    answers: tuple[str, ...]
    evidence: tuple[tuple[Provenance, ...], ...]
    line: int

    def gold_pages(self) -> set[str]:
        """Every page any evidence set names."""
        return {p.wikipedia_id for ev in self.evidence for p in ev if p.wikipedia_id is not None}


@dataclass(frozen=True)
class KiltTask:
    """A task file and the knowledge source its provenance points into (``None``: not known)."""

    name: str
    path: Path
    source_path: Path | None


@dataclass
class ProvenanceReport:
    """Gold pages that the knowledge source lacks: such evidence can never be retrieved (it counts as missed)."""

    missing_pages: int = 0
    examples_affected: int = 0
    examples_unreachable: int = 0   # every evidence set names a missing page
    warnings: list[str] = field(default_factory=list)


def resolve_kilt_task(name_or_path: str | Path) -> KiltTask:
    """A task by name (:data:`KILT_TASKS`) or by file; a file's knowledge source is a ``knowledge_source.jsonl``
    beside it when there is one."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        source = path.parent / "knowledge_source.jsonl"
        return KiltTask(name=path.stem, path=path.resolve(), source_path=source.resolve() if source.is_file() else None)
    name = str(name_or_path)
    if name not in KILT_TASKS:
        if path.exists() or "/" in name or name.endswith(".jsonl"):
            raise MissingDataError(f"KILT task file {name} does not exist" if not path.exists()
                                   else f"{name} is a folder: give a KILT task .jsonl file")
        raise MissingDataError(f"unknown KILT task {name!r}: give a task file or one of {', '.join(KILT_TASKS)}")
    task_file, source_file = KILT_TASKS[name]
    root = data_root() / "kilt"
    task_path, source_path = root / task_file, root / source_file
    if not task_path.is_file():
        raise MissingDataError(f"{task_path} does not exist: put the {name} task there (or set RETROMEM_DATA to the "
                               "folder that holds kilt/)")
    return KiltTask(name=name, path=task_path.resolve(),
                    source_path=source_path.resolve() if source_path.is_file() else None)


def resolve_kilt_source(name: str) -> Path | None:
    """The knowledge source named ``name`` (:data:`KILT_SOURCES`, or a task name), or ``None`` if it is neither."""
    if name in KILT_SOURCES:
        relative = KILT_SOURCES[name]
    elif name in KILT_TASKS:
        relative = KILT_TASKS[name][1]
    else:
        return None
    path = data_root() / "kilt" / relative
    if not path.is_file():
        raise MissingDataError(f"{path} does not exist: put the {name} knowledge source there (or set RETROMEM_DATA "
                               "to the folder that holds kilt/)")
    return path.resolve()


def read_kilt_task(path: str | Path) -> list[KiltExample]:
    """Read a KILT task file (see the module docstring), in file order.

    Errors (DataError naming the file and line): malformed JSON, a missing ``id`` or ``input``, an id given twice
    (naming both lines), an ``output`` that is not a list, an answer that is not a string, a provenance entry
    that is not an object or whose paragraph/character positions are not integers, a file without lines.
    """
    path = Path(path)
    examples: list[KiltExample] = []
    first_line: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        example = _read_example(obj, path, lineno)
        if example.id in first_line:
            raise DataError(f"id {example.id!r} is given twice: on line {first_line[example.id]} and on line {lineno}",
                            path, lineno, "ids must be unique; remove or rename one of them")
        first_line[example.id] = lineno
        examples.append(example)
    if not examples:
        raise DataError("the task file has no examples", path, fix="check that the file is the right one")
    return examples


def check_provenance(examples: Iterable[KiltExample], page_ids: set[str] | frozenset[str], where: str | Path = "",
                     report: ProvenanceReport | None = None) -> ProvenanceReport:
    """Count (and warn about) gold pages absent from the knowledge source whose page ids are ``page_ids``.

    They stay in the gold (KILT scores them as missed); ``examples_unreachable`` counts examples none of whose
    evidence sets can be retrieved whole.
    """
    report = report if report is not None else ProvenanceReport()
    missing: set[str] = set()
    affected = unreachable = 0
    for example in examples:
        gone = example.gold_pages() - page_ids
        if not gone:
            continue
        missing |= gone
        affected += 1
        if all(any(p.wikipedia_id not in page_ids for p in ev) for ev in example.evidence):
            unreachable += 1
    report.missing_pages, report.examples_affected, report.examples_unreachable = len(missing), affected, unreachable
    if missing:
        shown = ", ".join(map(repr, sorted(missing)[:_EXAMPLES])) + (", ..." if len(missing) > _EXAMPLES else "")
        message = (f"{where + ': ' if where else ''}{len(missing)} gold page(s) are not in the knowledge source "
                   f"({shown}), named by {affected} example(s), {unreachable} of which have no evidence set that "
                   "can be retrieved; they stay in the gold and count as missed")
        if message not in report.warnings:
            report.warnings.append(message)
            log.warning(message)
    return report


def _read_example(obj: dict, path: Path, lineno: int) -> KiltExample:
    example_id = obj.get("id")
    if isinstance(example_id, int) and not isinstance(example_id, bool):
        example_id = str(example_id)
    if not isinstance(example_id, str) or not example_id.strip():
        raise DataError("missing or empty 'id'", path, lineno,
                        'each line needs {"id": ..., "input": ..., "output": [...]}')
    example_id = example_id.strip()   # KILT compares ids stripped
    text = obj.get("input")
    if not isinstance(text, str):
        raise DataError(f"example {example_id!r} has no 'input' string", path, lineno)
    outputs = obj.get("output", [])
    if not isinstance(outputs, list):
        raise DataError(f"example {example_id!r}: 'output' must be a list", path, lineno)
    answers: list[str] = []
    evidence: list[tuple[Provenance, ...]] = []
    for output in outputs:
        if not isinstance(output, dict):
            raise DataError(f"example {example_id!r}: each output must be an object", path, lineno)
        if "answer" in output:
            if not isinstance(output["answer"], str):
                raise DataError(f"example {example_id!r}: an answer must be a string, got "
                                f"{type(output['answer']).__name__}", path, lineno)
            answers.append(output["answer"])
        if "provenance" in output:
            if not isinstance(output["provenance"], list):
                raise DataError(f"example {example_id!r}: 'provenance' must be a list", path, lineno)
            evidence.append(tuple(read_provenance(p, path, lineno, example_id) for p in output["provenance"]))
    return KiltExample(id=example_id, input=text, answers=tuple(answers), evidence=tuple(evidence), line=lineno)


def read_provenance(entry: object, path: Path, lineno: int, example_id: str) -> Provenance:
    """One provenance object (task or prediction file); positions must be integers where given."""
    if not isinstance(entry, dict):
        raise DataError(f"example {example_id!r}: each provenance entry must be an object", path, lineno)
    page = entry.get("wikipedia_id")
    page = str(page).strip() if page is not None else None
    title = entry.get("title")
    positions = {}
    for key in ("start_paragraph_id", "end_paragraph_id", "start_character", "end_character"):
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise DataError(f"example {example_id!r}: provenance {key!r} must be an integer, got {value!r}",
                            path, lineno)
        positions[key] = value
    return Provenance(wikipedia_id=page, title=title if isinstance(title, str) else None, **positions)
