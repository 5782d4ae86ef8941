"""Pretraining text: read documents, tokenise them once, cut them into fixed-length segments, cache.

Sources (each given as a path, a BEIR data-set name, or ``kind:path`` to force the kind):

- ``text``: plain-text files, one document (paragraph) a line; blank lines are skipped. ``.gz`` works.
- ``jsonl``: JSON-lines files; the text is ``text_field`` (optionally preceded by ``title_field``).
  A line without the text field is an error naming the file and the line.
- ``beir``: a BEIR corpus (a ``corpus.jsonl``, a folder holding one, or a data-set name resolved by
  :func:`retromem.data.beir.resolve_beir_dir`); title and text are joined as BEIR does.
- ``datasets``: anything ``datasets`` reads from local files (``.json/.jsonl/.csv/.parquet/.txt/.arrow``
  through ``datasets.load_dataset``, or a folder written by ``Dataset.save_to_disk``).

Paths may be glob patterns (``shards/*.jsonl``). Every document keeps its id, and every segment is a
contiguous run of ``segment_length`` ordinary tokens (no special tokens) of one document, so an
objective that needs two neighbouring spans (CoT-MAE) cuts them out of one document. The last piece of
a document is kept when it has at least ``min_segment_length`` tokens and dropped otherwise.

Tokenisation runs once, with the fast tokenizer in a batched ``datasets.map`` (``num_proc`` workers), and
the result is saved with ``save_to_disk`` under ``<cache>/pretrain_text/<fingerprint>``, where the
fingerprint covers the source files (path, size, modification time), the reading options, the tokenizer
and the segment lengths; a second run with the same inputs loads it instead of tokenising again. A
cache entry is built in a temporary folder and renamed into place, so an interrupted build leaves
nothing half-written. With ``streaming=True`` nothing is cached: documents are read and tokenised on
the fly while training (for corpora larger than the disk you want to spend on a copy).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow.compute

from retromem.data.beir import corpus_file, default_cache_dir, iter_corpus, resolve_beir_dir
from retromem.errors import DataError, MissingDataError, RetromemError
from retromem.io import iter_jsonl, open_text, write_json_atomic

log = logging.getLogger(__name__)

SOURCE_KINDS = ("text", "jsonl", "beir", "datasets")

#: Bump when the way segments are made changes, so that old cache entries are not reused.
SEGMENTER_VERSION = 1

#: Columns of the segment data set: token ids (no special tokens), the document id, the segment's index in it.
SEGMENT_FEATURES = datasets.Features({
    "input_ids": datasets.Sequence(datasets.Value("int32")),
    "doc_id": datasets.Value("string"),
    "segment": datasets.Value("int32"),
})

_DOCUMENT_FEATURES = datasets.Features({"doc_id": datasets.Value("string"), "text": datasets.Value("string")})
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


def load_pretrain_segments(
    sources: Sequence[str | TextSource],
    tokenizer: Any,
    segment_length: int,
    *,
    text_field: str = "text",
    title_field: str | None = None,
    id_field: str | None = None,
    min_segment_length: int = 16,
    streaming: bool = False,
    num_proc: int | None = None,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
    processes: int = 1,
) -> datasets.Dataset | datasets.IterableDataset:
    """Return the segments of every document of ``sources``, tokenised by ``tokenizer``.

    Each row is ``{"input_ids": list[int] (1..segment_length ordinary tokens), "doc_id": str,
    "segment": int}``. ``text_field``/``title_field``/``id_field`` apply to JSONL and ``datasets``
    sources given as strings. ``processes`` is the number of training processes that will read a
    streamed corpus: with as many files as processes, or a multiple, each reads whole files of its own;
    otherwise each reads the whole stream and keeps its share of the batches. Raises
    :class:`DataError` for an empty corpus or bad lines and :class:`MissingDataError` for a missing file.
    """
    if segment_length < 1:
        raise ValueError(f"segment_length must be positive, got {segment_length}")
    if not 1 <= min_segment_length <= segment_length:
        raise ValueError(f"min_segment_length must be in [1, segment_length={segment_length}], "
                         f"got {min_segment_length}")
    if not sources:
        raise DataError("no pretraining text given", fix="name at least one text, JSONL, BEIR or datasets source")
    resolved = [s if isinstance(s, TextSource) else resolve_source(s, text_field, title_field, id_field)
                for s in sources]
    if not getattr(tokenizer, "is_fast", False):
        log.warning("tokenizer %s is not a fast tokenizer: tokenising will be slow", type(tokenizer).__name__)
    cut = {"tokenizer": tokenizer, "segment_length": segment_length, "min_segment_length": min_segment_length}
    if streaming:
        return _stream_segments(resolved, cut, processes)
    fingerprint = segments_fingerprint(resolved, tokenizer, segment_length, min_segment_length)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "pretrain_text"
    entry = root / fingerprint
    if (entry / "retromem_text.json").exists():
        log.info("reusing tokenised text from %s", entry)
        return datasets.load_from_disk(str(entry))
    return _build_cache_entry(resolved, cut, entry, fingerprint, num_proc, show_progress)


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


def segments_fingerprint(sources: Sequence[TextSource], tokenizer: Any, segment_length: int,
                         min_segment_length: int) -> str:
    """A hex digest naming the segments these inputs produce (the cache key).

    Files are identified by path, size and modification time (not content, which would mean reading
    a large corpus twice); editing a file changes its modification time and so the key.
    """
    digest = hashlib.sha256()
    described = []
    for source in sources:
        files = []
        for name in source.files:
            for file in _files_under(Path(name)):
                stat = file.stat()
                files.append([str(file), stat.st_size, stat.st_mtime_ns])
        described.append({**asdict(source), "files": files})
    digest.update(json.dumps({
        "version": SEGMENTER_VERSION, "sources": described, "tokenizer": tokenizer_fingerprint(tokenizer),
        "segment_length": segment_length, "min_segment_length": min_segment_length,
    }, sort_keys=True).encode())
    return digest.hexdigest()[:24]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of what decides the token ids: the fast tokenizer's full JSON, or the slow one's vocabulary."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)  # per-call settings that transformers changes on the backend
        spec.pop("padding", None)
        digest.update(json.dumps(spec, sort_keys=True).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        digest.update(json.dumps(getattr(tokenizer, "init_kwargs", {}), sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


# ---- building ----------------------------------------------------------------------------------

def _build_cache_entry(sources: list[TextSource], cut: dict, entry: Path, fingerprint: str,
                       num_proc: int | None, show_progress: bool) -> datasets.Dataset:
    entry.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{fingerprint}.", dir=entry.parent))
    progress_was_enabled = datasets.is_progress_bar_enabled()
    if not show_progress:
        datasets.disable_progress_bars()
    try:
        documents = _document_dataset(sources, work)
        if len(documents) == 0:
            raise DataError("the pretraining corpus has no text", _first_file(sources),
                            fix="check the files and --text-field; blank lines and empty texts are skipped")
        segments = documents.map(
            _tokenize_and_cut, batched=True, batch_size=1000, num_proc=num_proc,
            remove_columns=documents.column_names, features=SEGMENT_FEATURES, fn_kwargs=cut,
            cache_file_name=str(work / "segments.arrow"), new_fingerprint=fingerprint,
            desc="tokenising pretraining text",
        )
        if len(segments) == 0:
            raise DataError(f"none of the {len(documents)} documents has {cut['min_segment_length']} tokens or more",
                            _first_file(sources), fix="use longer texts or a smaller min_segment_length")
        staged = work / "final"
        segments.save_to_disk(str(staged))
        write_json_atomic(staged / "retromem_text.json", {
            "sources": [asdict(s) for s in sources], "documents": len(documents), "segments": len(segments),
            "tokens": int(pyarrow.compute.sum(pyarrow.compute.list_value_length(segments.data.column("input_ids")))
                          .as_py()),
            "segment_length": cut["segment_length"], "min_segment_length": cut["min_segment_length"],
            "tokenizer": getattr(cut["tokenizer"], "name_or_path", ""), "fingerprint": fingerprint,
        })
        del segments, documents
        try:
            os.rename(staged, entry)
        except OSError:
            if not (entry / "retromem_text.json").exists():  # not a concurrent build that won the race
                raise
        log.info("tokenised pretraining text cached in %s", entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if progress_was_enabled and not show_progress:
            datasets.enable_progress_bars()
    return datasets.load_from_disk(str(entry))


def _document_dataset(sources: list[TextSource], work: Path) -> datasets.Dataset:
    """All documents as one ``{doc_id, text}`` data set (Arrow files under ``work``)."""
    parts = []
    readers = [asdict(s) for s in sources if s.kind != "datasets"]
    if readers and next(_read_documents(readers), None) is not None:  # datasets refuses an empty generator
        try:
            parts.append(datasets.Dataset.from_generator(
                _read_documents, features=_DOCUMENT_FEATURES, cache_dir=str(work / "read"),
                gen_kwargs={"sources": readers},
            ))
        except datasets.exceptions.DatasetGenerationError as err:
            if isinstance(err.__cause__, RetromemError):  # a bad line: report it, not the wrapper
                raise err.__cause__ from None
            raise
    for number, source in enumerate(sources):
        if source.kind == "datasets":
            parts.append(_from_datasets(source, streaming=False, cache_dir=work / "hf" / str(number)))
    if not parts:
        return datasets.Dataset.from_dict({"doc_id": [], "text": []}, features=_DOCUMENT_FEATURES)
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _stream_segments(sources: list[TextSource], cut: dict, processes: int) -> datasets.IterableDataset:
    parts = []
    # one shard per file: under a launcher each process then reads whole files of its own when the files
    # split evenly among the processes (else every process reads the one stream and keeps every n-th batch)
    readers = [{**asdict(s), "files": [name]} for s in sources if s.kind != "datasets" for name in s.files]
    if readers:
        parts.append(datasets.IterableDataset.from_generator(
            _read_documents, features=_DOCUMENT_FEATURES, gen_kwargs={"sources": readers},
        ))
    for source in sources:
        if source.kind == "datasets":
            parts.append(_from_datasets(source, streaming=True, cache_dir=None))
    documents = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if processes > 1 and documents.n_shards % processes:
        # accelerate hands whole shards to the processes when there are at least as many shards as processes:
        # an uneven split (3 files, 2 processes) would give one process twice the text of the other, which the
        # other would then repeat twice as often. One shard instead, of which each process keeps every n-th batch.
        documents = datasets.IterableDataset.from_generator(_chain, features=_DOCUMENT_FEATURES,
                                                            gen_kwargs={"streams": [documents]})
    segments = documents.map(_tokenize_and_cut, batched=True, batch_size=1000, remove_columns=["doc_id", "text"],
                             features=SEGMENT_FEATURES, fn_kwargs=cut)
    if next(iter(segments), None) is None:
        raise DataError(f"the pretraining corpus has no segment of {cut['min_segment_length']} tokens or more",
                        _first_file(sources), fix="check the files and --text-field")
    return segments


def _chain(streams: list) -> Iterator[dict]:
    for stream in streams:
        yield from stream


def _read_documents(sources: list[dict]) -> Iterator[dict]:
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


def _from_datasets(source: TextSource, streaming: bool, cache_dir: Path | None):
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
                      features=_DOCUMENT_FEATURES, fn_kwargs=fields, **extra)


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


def _tokenize_and_cut(batch: dict, tokenizer: Any, segment_length: int, min_segment_length: int) -> dict:
    """Tokenise a batch of documents (no special tokens) and cut each into consecutive segments."""
    keep = [i for i, text in enumerate(batch["text"]) if text and not text.isspace()]
    encoded = tokenizer([batch["text"][i] for i in keep], add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False, verbose=False)["input_ids"]
    out: dict[str, list] = {"input_ids": [], "doc_id": [], "segment": []}
    for i, ids in zip(keep, encoded):
        for number, start in enumerate(range(0, len(ids), segment_length)):
            piece = ids[start:start + segment_length]
            if len(piece) >= min_segment_length:
                out["input_ids"].append(piece)
                out["doc_id"].append(batch["doc_id"][i])
                out["segment"].append(number)
    return out


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


def _files_under(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def _first_file(sources: Sequence[TextSource]) -> str | None:
    return sources[0].files[0] if sources and sources[0].files else None
