"""One way to name a corpus for every command: a BEIR data set or a KILT knowledge source.

``open_corpus(spec)`` takes

- a BEIR name (``scifact``) or folder, or a BEIR ``corpus.jsonl`` (``_id``, ``title``, ``text``): kind ``beir``,
  one passage a document;
- a KILT knowledge-source ``.jsonl`` (told apart by its first line having ``wikipedia_id``) or a KILT name
  (``scifact-kilt``, ``squad-kilt``, or a task name such as ``squad-dev`` meaning its knowledge source): kind
  ``kilt``, the pages cut into ``passage_words``-word passages (:mod:`retromem.data.kilt_source`).

Either way the passages are streamed afresh on each call of :meth:`Corpus.passages`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from retromem.data.beir import corpus_file, iter_corpus, resolve_beir_dir
from retromem.data.kilt import resolve_kilt_source
from retromem.data.kilt_source import DEFAULT_PASSAGE_WORDS, check_passage_size, iter_kilt_passages
from retromem.data.passage import Passage
from retromem.errors import DataError, MissingDataError
from retromem.io import count_lines, open_text

_COUNT_LIMIT = 256 << 20   # a KILT source up to this size is read once to count its passages (for progress bars)


@dataclass(frozen=True)
class Corpus:
    """A corpus on disk: ``path`` is the file read; ``passage_words``/``passage_stride`` apply to ``kilt`` only."""

    name: str
    path: Path
    kind: Literal["beir", "kilt"]
    passage_words: int = DEFAULT_PASSAGE_WORDS
    passage_stride: int | None = None

    def passages(self) -> Iterator[Passage]:
        """A fresh stream of the corpus's passages."""
        if self.kind == "kilt":
            return iter_kilt_passages(self.path, self.passage_words, self.passage_stride)
        return iter_corpus(self.path)

    def count(self) -> int | None:
        """How many passages (for progress bars): lines of a BEIR file; a KILT source is counted by reading it when
        it is small (under 256 MiB), else ``None``."""
        if self.kind == "beir":
            return count_lines(self.path)
        if self.path.suffix == ".gz" or self.path.stat().st_size > _COUNT_LIMIT:
            return None
        return sum(1 for _ in self.passages())

    def passage_key(self) -> str:
        """What names the cut of the passages (``w100``, ``w100s50``): empty for BEIR, whose documents are not cut."""
        if self.kind == "beir":
            return ""
        stride = check_passage_size(self.passage_words, self.passage_stride)
        return f"w{self.passage_words}" + (f"s{stride}" if stride != self.passage_words else "")


def open_corpus(spec: str | Path, passage_words: int = DEFAULT_PASSAGE_WORDS,
                passage_stride: int | None = None) -> Corpus:
    """Resolve ``spec`` to a :class:`Corpus` (see the module docstring for what it may be)."""
    check_passage_size(passage_words, passage_stride)
    cut = {"passage_words": passage_words, "passage_stride": passage_stride}
    path = Path(spec).expanduser()
    if path.is_file():
        kind = sniff_kind(path)
        name = path.parent.name if kind == "beir" and path.name.startswith("corpus.jsonl") else path.stem
        return Corpus(name=name, path=path.resolve(), kind=kind, **cut)
    if not path.exists():
        source = resolve_kilt_source(str(spec))
        if source is not None:
            return Corpus(name=str(spec), path=source, kind="kilt", **cut)
    root = resolve_beir_dir(spec, download=not path.exists() and _looks_like_name(str(spec)))
    return Corpus(name=root.name, path=corpus_file(root).resolve(), kind="beir", **cut)


def sniff_kind(path: Path) -> Literal["beir", "kilt"]:
    """``kilt`` if the first non-blank line has ``wikipedia_id``, ``beir`` if it has ``_id``; else a DataError."""
    with open_text(path) as lines:
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"malformed JSON ({err.msg})", path, lineno,
                                "a corpus is a JSONL file, one JSON object a line") from err
            if isinstance(obj, dict) and "wikipedia_id" in obj:
                return "kilt"
            if isinstance(obj, dict) and "_id" in obj:
                return "beir"
            raise DataError("neither a BEIR corpus line (with '_id') nor a KILT knowledge-source line (with "
                            "'wikipedia_id')", path, lineno,
                            "give a BEIR corpus.jsonl or folder, or a KILT knowledge source")
    raise DataError("the corpus file is empty", path)


def _looks_like_name(spec: str) -> bool:
    """A bare name (downloaded from BEIR when not found) rather than a path that does not exist."""
    if "/" in spec or spec.startswith(".") or spec.endswith((".jsonl", ".gz", ".json")):
        raise MissingDataError(f"corpus {spec} does not exist: give a BEIR name or folder, a corpus.jsonl, a KILT "
                               "knowledge-source .jsonl, or scifact-kilt / squad-kilt")
    return True
