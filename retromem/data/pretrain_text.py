"""Pretraining text: read documents, tokenise them once, cut them into fixed-length segments, cache.

The sources (text, JSONL, BEIR, ``datasets``) and their readers are in
:mod:`retromem.data.text_sources`. Every document keeps its id, and every segment is a
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

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
import pyarrow.compute

from retromem.data.beir import default_cache_dir
from retromem.data.text_sources import (
    DOCUMENT_FEATURES,
    TextSource,
    documents_from_datasets,
    files_under,
    read_documents,
    resolve_source,
)
from retromem.errors import ConfigError, DataError, RetromemError
from retromem.io import write_json_atomic

log = logging.getLogger(__name__)


#: Bump when the way segments are made changes, so that old cache entries are not reused.
SEGMENTER_VERSION = 1

#: Columns of the segment data set: token ids (no special tokens), the document id, the segment's index in it.
SEGMENT_FEATURES = datasets.Features({
    "input_ids": datasets.Sequence(datasets.Value("int32")),
    "doc_id": datasets.Value("string"),
    "segment": datasets.Value("int32"),
})


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
        raise ConfigError(f"segment_length must be positive, got {segment_length}")
    if not 1 <= min_segment_length <= segment_length:
        raise ConfigError(f"min_segment_length must be in [1, segment_length={segment_length}], "
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
            for file in files_under(Path(name)):
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
    if readers and next(read_documents(readers), None) is not None:  # datasets refuses an empty generator
        try:
            parts.append(datasets.Dataset.from_generator(
                read_documents, features=DOCUMENT_FEATURES, cache_dir=str(work / "read"),
                gen_kwargs={"sources": readers},
            ))
        except datasets.exceptions.DatasetGenerationError as err:
            if isinstance(err.__cause__, RetromemError):  # a bad line: report it, not the wrapper
                raise err.__cause__ from None
            raise
    for number, source in enumerate(sources):
        if source.kind == "datasets":
            parts.append(documents_from_datasets(source, streaming=False, cache_dir=work / "hf" / str(number)))
    if not parts:
        return datasets.Dataset.from_dict({"doc_id": [], "text": []}, features=DOCUMENT_FEATURES)
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _stream_segments(sources: list[TextSource], cut: dict, processes: int) -> datasets.IterableDataset:
    parts = []
    # one shard per file: under a launcher each process then reads whole files of its own when the files
    # split evenly among the processes (else every process reads the one stream and keeps every n-th batch)
    readers = [{**asdict(s), "files": [name]} for s in sources if s.kind != "datasets" for name in s.files]
    if readers:
        parts.append(datasets.IterableDataset.from_generator(
            read_documents, features=DOCUMENT_FEATURES, gen_kwargs={"sources": readers},
        ))
    for source in sources:
        if source.kind == "datasets":
            parts.append(documents_from_datasets(source, streaming=True, cache_dir=None))
    documents = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if processes > 1 and documents.n_shards % processes:
        # accelerate hands whole shards to the processes when there are at least as many shards as processes:
        # an uneven split (3 files, 2 processes) would give one process twice the text of the other, which the
        # other would then repeat twice as often. One shard instead, of which each process keeps every n-th batch.
        documents = datasets.IterableDataset.from_generator(_chain, features=DOCUMENT_FEATURES,
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


def _first_file(sources: Sequence[TextSource]) -> str | None:
    return sources[0].files[0] if sources and sources[0].files else None
