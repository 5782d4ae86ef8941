"""Where pretraining text comes from: sources, resolved to files, read as ``{doc_id, text}`` documents.

Sources (each given as a path, a BEIR data-set name, or ``kind:path`` to force the kind):

- ``text``: plain-text files, one document (paragraph) a line; blank lines are skipped. ``.gz`` works.
- ``jsonl``: JSON-lines files; the text is ``text_field`` (optionally preceded by ``title_field``).
  A line without the text field is an error naming the file and the line.
- ``beir``: a BEIR corpus (a ``corpus.jsonl``, a folder holding one, or a data-set name resolved by
  :func:`retromem.data.beir.resolve_beir_dir`); title and text are joined as BEIR does.
- ``datasets``: anything ``datasets`` reads from local files (``.json/.jsonl/.csv/.parquet/.txt/.arrow``
  through ``datasets.load_dataset``, or a folder written by ``Dataset.save_to_disk``).

Paths may be glob patterns (``shards/*.jsonl``). :mod:`retromem.data.pretrain_text` tokenises and cuts
what these readers give.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets

from retromem.data.beir import corpus_file, iter_corpus, resolve_beir_dir
from retromem.errors import DataError, MissingDataError
from retromem.io import iter_jsonl, open_text

log = logging.getLogger(__name__)

SOURCE_KINDS = ("text", "jsonl", "beir", "datasets")
DOCUMENT_FEATURES = datasets.Features({"doc_id": datasets.Value("string"), "text": datasets.Value("string")})
_TEXT_SUFFIXES = (".txt", ".txt.gz", ".text", ".raw")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")
_DATASETS_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet",
                      ".txt": "text", ".arrow": "arrow"}


@dataclass(frozen=True)
class TextSource:
    """One place pretraining text comes from: a kind (see the module docstring) and its files.

    ``files`` are resolved, existing paths (one folder for a saved ``datasets`` data set).
    """

    kind: str
    files: tuple[str, ...]
    text_field: str = "text"
    title_field: str | None = None
    id_field: str | None = None


def resolve_source(spec: str, text_field: str = "text", title_field: str | None = None,
                   id_field: str | None = None) -> TextSource:
    """Turn ``spec`` (a path, a glob, a BEIR name, or ``kind:path``) into a :class:`TextSource`."""
    kind, _, rest = spec.partition(":")
    if kind in SOURCE_KINDS and rest:
        spec = rest
    else:
        kind = "auto"
    path = Path(spec).expanduser()
    if any(ch in spec for ch in "*?["):
        files = tuple(sorted(glob.glob(str(path))))
        if not files:
            raise MissingDataError(f"no file matches {spec}")
    elif path.exists():
        files = (str(path.resolve()),)
    elif kind == "beir" or (kind == "auto" and os.sep not in spec and not spec.startswith(".")
                            and not spec.lower().endswith(_TEXT_SUFFIXES + _JSONL_SUFFIXES + (".gz",))):
        files, kind = (str(corpus_file(resolve_beir_dir(spec))),), "beir"
    else:
        raise MissingDataError(f"pretraining text {spec} does not exist")
    if kind == "auto":
        kind = _guess_kind(Path(files[0]))
    if kind == "beir":
        files = tuple(str(corpus_file(Path(f))) if Path(f).is_dir() else f for f in files)
    if kind != "datasets" and any(Path(f).is_dir() for f in files):
        raise DataError(f"{spec} is a folder", fix="give files (or a glob) for text/jsonl sources, a folder with "
                        "corpus.jsonl for BEIR, or a save_to_disk folder as datasets:<folder>")
    if kind == "beir":
        return TextSource("beir", files, text_field="text", title_field="title", id_field="_id")
    return TextSource(kind, files, text_field=text_field, title_field=title_field, id_field=id_field)


def read_documents(sources: list[dict]) -> Iterator[dict]:
    """Yield ``{"doc_id", "text"}`` for every non-empty document of the text, JSONL and BEIR sources."""
    for source in sources:
        for name in source["files"]:
            path = Path(name)
            if source["kind"] == "text":
                yield from _read_text_file(path)
            elif source["kind"] == "jsonl":
                yield from _read_jsonl_file(path, source["text_field"], source["title_field"], source["id_field"])
            else:
                for passage in iter_corpus(path):
                    text = passage.full_text()
                    if text:
                        yield {"doc_id": passage.id, "text": text}


def documents_from_datasets(source: TextSource, streaming: bool, cache_dir: Path | None):
    """Load a ``datasets`` source and project it onto ``{doc_id, text}``.

    Each file is loaded and projected on its own, so that a bad row is reported in its file, with its
    row number there; nothing is written beside the user's files (the projection's Arrow file goes to
    ``cache_dir``).
    """
    first = Path(source.files[0])
    if first.is_dir():
        if not (first / "state.json").exists() and not (first / "dataset_dict.json").exists():
            raise DataError("not a folder written by Dataset.save_to_disk", first,
                            fix="give files (json, jsonl, csv, parquet, txt, arrow) or a save_to_disk folder")
        loaded = datasets.load_from_disk(str(first))
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
        parts = [(first, loaded.to_iterable_dataset() if streaming else loaded)]
    else:
        suffix = first.suffix if first.suffix != ".gz" else Path(first.stem).suffix
        builder = _DATASETS_BUILDERS.get(suffix)
        if builder is None:
            raise DataError(f"datasets cannot read {suffix!r} files here", first,
                            fix=f"use one of {', '.join(sorted(_DATASETS_BUILDERS))}")
        parts = [(Path(name), datasets.load_dataset(builder, data_files=[name], split="train", streaming=streaming,
                                                    cache_dir=str(cache_dir / "load") if cache_dir else None))
                 for name in source.files]
    projected = [_project(loaded, where, source, cache_dir / f"projected-{index}.arrow" if cache_dir else None)
                 for index, (where, loaded) in enumerate(parts)]
    return projected[0] if len(projected) == 1 else datasets.concatenate_datasets(projected)


def files_under(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def _read_text_file(path: Path) -> Iterator[dict]:
    with open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            text = line.strip()
            if text:
                yield {"doc_id": f"{path.name}:{lineno}", "text": text}


def _read_jsonl_file(path: Path, text_field: str, title_field: str | None, id_field: str | None) -> Iterator[dict]:
    """The documents of a JSONL file. A title or id field that no line has is an error (a misspelt name)."""
    missing = {f for f in (title_field, id_field) if f}
    fields: set[str] = set()
    for lineno, obj in iter_jsonl(path):
        if missing:
            missing -= obj.keys()
            if len(fields) < 1000:
                fields.update(obj)
        if text_field not in obj:
            raise DataError(f"no {text_field!r} field", path, lineno,
                            f"every line needs it; or pick the text field with --text-field "
                            f"(this line has: {', '.join(sorted(obj)) or 'no fields'})")
        text = obj[text_field]
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise DataError(f"{text_field!r} must be a string, got {type(text).__name__}", path, lineno)
        title = obj.get(title_field) if title_field else None
        if title is not None and not isinstance(title, str):
            raise DataError(f"{title_field!r} must be a string, got {type(title).__name__}", path, lineno)
        text = f"{title} {text}".strip() if title else text.strip()
        if not text:
            continue
        doc_id = obj.get(id_field) if id_field else obj.get("_id", obj.get("id"))
        yield {"doc_id": str(doc_id) if doc_id is not None else f"{path.name}:{lineno}", "text": text}
    if missing:
        flags = {title_field: "--title-field", id_field: "--id-field"}
        raise DataError(f"no line has the field(s) {', '.join(repr(f) for f in sorted(missing))}", path,
                        fix=f"check {', '.join(flags[f] for f in sorted(missing))}; the lines have: "
                            f"{', '.join(sorted(fields)) or 'no fields'}")


def _project(loaded, where: Path, source: TextSource, cache_file: Path | None):
    """One loaded file (or saved folder) as ``{doc_id, text}`` rows."""
    columns = loaded.column_names
    if columns is None:  # a streamed CSV or text file knows its columns only once read
        first_row = next(iter(loaded), None)
        if first_row is None:
            raise DataError("no rows", where, fix="remove the empty file from the sources")
        columns = list(first_row)
    if source.text_field not in columns:
        raise DataError(f"no {source.text_field!r} column (columns: {', '.join(columns)})", where,
                        fix="pick the text column with --text-field")
    for field, flag in ((source.title_field, "--title-field"), (source.id_field, "--id-field")):
        if field and field not in columns:
            raise DataError(f"no {field!r} column (columns: {', '.join(columns)})", where,
                            fix=f"check {flag}, or leave it out")
    fields = {"text_field": source.text_field, "title_field": source.title_field, "id_field": source.id_field,
              "where": str(where)}
    extra = {"cache_file_name": str(cache_file)} if cache_file is not None else {}
    return loaded.map(_project_rows, batched=True, with_indices=True, remove_columns=columns,
                      features=DOCUMENT_FEATURES, fn_kwargs=fields, **extra)


def _project_rows(batch: dict, indices: list[int], text_field: str, title_field: str | None, id_field: str | None,
                  where: str) -> dict:
    texts, ids = [], []
    for i, index in enumerate(indices):
        text = batch[text_field][i]
        if text is None:
            raise DataError(f"row {index + 1} (counting data rows from 1) has no {text_field!r}", where,
                            fix="every row needs the text field")
        title = batch[title_field][i] if title_field else None
        texts.append(f"{title} {text}".strip() if title else str(text).strip())
        ids.append(str(batch[id_field][i]) if id_field else str(index))
    return {"doc_id": ids, "text": texts}


def _guess_kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        if corpus_file(path, must_exist=False).exists():
            return "beir"
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return "datasets"
        raise DataError("cannot tell what this folder holds", path,
                        fix="a BEIR folder has corpus.jsonl; a saved data set has state.json; or name files")
    if name in ("corpus.jsonl", "corpus.jsonl.gz"):
        return "beir"
    if name.endswith(_TEXT_SUFFIXES):
        return "text"
    if name.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith((".csv", ".parquet", ".arrow")):
        return "datasets"
    raise DataError("cannot tell the format from the file name", path,
                    fix="prefix the source with its kind: text:, jsonl:, beir: or datasets:")
