"""Artifact metadata: what every artifact on disk records of what made it, and the one check that a later
stage runs before it uses one.

Each artifact folder (embeddings, FAISS index; next BM25 indexes, token memories, reader checkpoints)
holds a JSON file (``meta.json``, ``index.json``...) that :class:`ArtifactMeta` reads and writes. It is a
flat JSON object, so that older tools and people read it as they did::

    kind, schema, retromem          what it is, the layout version, the version that wrote it
    model, model_path, fingerprint, pooling, normalize, max_length, query_prefix, passage_prefix,
    precision, dim                  the encoder (:class:`EncoderInfo`), when vectors are involved
    corpus                          the corpus (:class:`CorpusRef`): name, count, a digest of every
                                    passage's id, title and text, and the file's size and mtime
    ...                             what the kind adds (count and dtype; factory, metric, ntotal...)

Files written before this module existed have no ``kind``/``schema`` (schema 0): they load, with no
corpus digest, and a stage that needs one says to rebuild them. The compatibility rules are named
once here: :data:`PASSAGE_VECTOR_FIELDS` (what makes stored passage vectors reusable) and
:data:`QUERY_FIELDS` (what a query encoder must share with the encoder of an index).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retromem import __version__
from retromem.data.passage import Passage
from retromem.errors import DataError, MismatchError
from retromem.io import read_json, write_json_atomic

#: The layout version this code writes; a newer one is refused (upgrade retromem).
SCHEMA_VERSION = 1
KINDS = ("embeddings", "faiss_index", "bm25_index", "token_memories", "reader")

#: Encoder settings that change passage vectors: stored vectors are reusable only where these agree.
#: Precision is one of them: a bf16 encode resumed in fp32 would mix two kinds of vector in one set.
PASSAGE_VECTOR_FIELDS = ("fingerprint", "pooling", "normalize", "max_length", "passage_prefix", "dim", "precision")
#: What a query encoder must share with the encoder that made an index's vectors (queries get their
#: own prefix, and may be encoded at another precision).
QUERY_FIELDS = ("fingerprint", "pooling", "normalize", "max_length", "dim")


@dataclass(frozen=True)
class EncoderInfo:
    """The encoder that made an artifact's vectors, as ``Encoder.metadata()`` reports it."""

    model: str
    model_path: str
    fingerprint: str
    pooling: str
    normalize: bool
    max_length: int
    query_prefix: str
    passage_prefix: str
    precision: str
    dim: int

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EncoderInfo:
        """From a flat metadata dict (other keys ignored; ones a legacy file lacks become None)."""
        return cls(**{f.name: values.get(f.name) for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def differences(self, other: EncoderInfo | Mapping[str, Any], fields: Iterable[str],
                    labels: tuple[str, str] | None = None) -> list[str]:
        """``name: mine != theirs`` (with ``labels``: ``name: label0 mine vs label1 theirs``) for each of
        ``fields`` where ``other`` differs."""
        theirs = other if isinstance(other, Mapping) else other.to_dict()
        mine_label, their_label = (f"{labels[0]} ", f" vs {labels[1]} ") if labels else ("", " != ")
        return [f"{name}: {mine_label}{getattr(self, name)!r}{their_label}{theirs.get(name)!r}" for name in fields
                if getattr(self, name) != theirs.get(name)]


@dataclass(frozen=True)
class CorpusRef:
    """The corpus an artifact was made from, by content.

    ``digest`` is a SHA-256 over every passage's id, title and text in order (:class:`CorpusDigest`), so
    a corpus edited in place is told apart from the one the artifact holds; ``file`` (path, size and
    modification time of the corpus file, when it came from one) lets a check skip re-reading an
    unchanged file. ``digest`` is None in files written before it was recorded.
    """

    name: str | None
    count: int
    digest: str | None = None
    file: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, value: Any, count: int | None) -> CorpusRef:
        if isinstance(value, Mapping):
            return cls(name=value.get("name"), count=int(value.get("count", count or 0)), digest=value.get("digest"),
                       file=value.get("file"))
        return cls(name=value, count=int(count or 0))  # legacy: the corpus's name only

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "count": self.count, "digest": self.digest, "file": self.file}

    def same_file(self, path: str | Path | None) -> bool:
        """Whether ``path`` is the very file recorded (same resolved path, size and mtime): no need to re-read it."""
        return path is not None and self.file is not None and self.file == file_stamp(path)


@dataclass
class ArtifactMeta:
    """The metadata of one artifact folder: its kind, what made it, and what its kind adds (``details``)."""

    kind: str
    encoder: EncoderInfo | None = None
    corpus: CorpusRef | None = None
    details: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION
    retromem: str = __version__

    @classmethod
    def read(cls, path: str | Path, kind: str) -> ArtifactMeta:
        """Read the JSON file ``path`` as an artifact of ``kind``; a file of another kind, or of a newer
        layout, is refused naming the file (a legacy file without ``kind`` is taken as ``kind``)."""
        return cls.from_json(read_json(path), kind, where=path)

    @classmethod
    def from_json(cls, values: Mapping[str, Any], kind: str, where: str | Path | None = None) -> ArtifactMeta:
        if not isinstance(values, Mapping) or not isinstance(values.get("schema", 0), int):
            raise DataError(f"not the metadata of a {kind} (a JSON object with an integer schema)", where,
                            fix="the file is damaged: delete the folder and make it again")
        found_kind = values.get("kind", kind)
        if found_kind != kind:
            raise MismatchError(f"{where}: this is the metadata of a {found_kind}, not of a {kind}")
        schema = int(values.get("schema", 0))
        if schema > SCHEMA_VERSION:
            raise DataError(f"written by retromem {values.get('retromem', '?')} in layout {schema}, newer than this "
                            f"retromem reads ({SCHEMA_VERSION})", where, fix="upgrade retromem, or rebuild it")
        encoder_keys = {f.name for f in dataclasses.fields(EncoderInfo)}
        encoder = EncoderInfo.from_dict(values) if "fingerprint" in values else None
        count = values.get("count", values.get("ntotal"))
        corpus = CorpusRef.from_json(values["corpus"], count) if "corpus" in values else None
        skip = encoder_keys | {"kind", "schema", "retromem", "corpus"}
        details = {k: v for k, v in values.items() if k not in skip}
        return cls(kind=kind, encoder=encoder, corpus=corpus, details=details, schema=schema,
                   retromem=values.get("retromem", "before 0.1.0"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "schema": self.schema, "retromem": self.retromem}
        if self.encoder is not None:
            out.update(self.encoder.to_dict())
        if self.corpus is not None:
            out["corpus"] = self.corpus.to_json()
        out.update(self.details)
        return out

    def write(self, path: str | Path) -> None:
        """Write atomically (a temporary file renamed into place)."""
        write_json_atomic(path, self.to_json())


def require_compatible(meta: ArtifactMeta, where: str | Path, *, encoder: EncoderInfo | Mapping[str, Any] | None = None,
                       fields: Iterable[str] = PASSAGE_VECTOR_FIELDS, corpus: CorpusRef | None = None,
                       what: str = "encoder", labels: tuple[str, str] | None = None,
                       fix: str = "rebuild it, or choose another folder") -> None:
    """Refuse (:class:`MismatchError`) an artifact made by another encoder (the ``fields`` that must agree) or
    from another corpus (by count and content digest), saying what differs and ``fix``.

    An artifact whose corpus has no recorded digest (written by an older retromem) is refused when a
    ``corpus`` is given, since its content cannot be checked.
    """
    if encoder is not None:
        if meta.encoder is None:
            raise MismatchError(f"{where} records no encoder; {fix}")
        diffs = meta.encoder.differences(encoder, fields, labels)
        if diffs:
            raise MismatchError(f"{where} was made by a different {what} ({'; '.join(diffs)}); {fix}")
    if corpus is not None:
        recorded = meta.corpus
        if recorded is None or recorded.digest is None:
            raise MismatchError(f"{where} was written by an older retromem that did not record the corpus's text, "
                                f"so it cannot be checked against this corpus; {fix}")
        if recorded.count != corpus.count or recorded.digest != corpus.digest:
            raise MismatchError(f"{where} was made from another corpus, or the corpus changed since "
                                f"({recorded.count} passages, digest {recorded.digest[:12]} then; {corpus.count}, "
                                f"{(corpus.digest or '?')[:12]} now); {fix}")


class CorpusDigest:
    """A streaming SHA-256 over passages (id, title, text, each length-prefixed) and their count."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.count = 0

    def update(self, passage: Passage) -> None:
        for part in (passage.id, passage.title or "", passage.text):
            data = part.encode("utf-8")
            self._hash.update(len(data).to_bytes(8, "little"))
            self._hash.update(data)
        self.count += 1

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def watch(self, passages: Iterable[Passage]) -> Iterator[Passage]:
        """Yield ``passages`` as they come, adding each to the digest."""
        for passage in passages:
            self.update(passage)
            yield passage

    def ref(self, name: str | None, path: str | Path | None = None) -> CorpusRef:
        return CorpusRef(name=name, count=self.count, digest=self.hexdigest(),
                         file=file_stamp(path) if path is not None else None)


def corpus_ref(passages: Iterable[Passage], name: str | None = None, path: str | Path | None = None) -> CorpusRef:
    """Stream ``passages`` once into a :class:`CorpusRef`."""
    digest = CorpusDigest()
    for passage in passages:
        digest.update(passage)
    return digest.ref(name, path)


def file_stamp(path: str | Path) -> dict[str, Any] | None:
    """A file's resolved path, size and modification time (ns), or None when it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def file_digest(path: str | Path, full_limit: int = 256 << 20) -> str:
    """SHA-256 of a file; above ``full_limit`` bytes, of its size, modification time and first and last MiB
    (a multi-GB corpus would take seconds to hash on every start). A missing file gives ``missing:<path>``."""
    digest = hashlib.sha256()
    try:
        stat = os.stat(path)
        with open(path, "rb") as handle:
            if stat.st_size <= full_limit:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            else:
                digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
                digest.update(handle.read(1 << 20))
                handle.seek(stat.st_size - (1 << 20))
                digest.update(handle.read())
    except OSError:
        return f"missing:{path}"
    return digest.hexdigest()
