"""Lucene BM25 indexes built with pyserini (Anserini's ``IndexCollection``) from any corpus retromem reads.

:func:`build_bm25_index` streams passages into Anserini's ``JsonCollection`` files (one per indexing thread)
in a temporary folder beside the output, indexes them in-process with ``IndexCollection`` (ids stored, the
default English analyzer: Porter stemming and Lucene's English stopwords, as pyserini's BEIR indexes), and
renames the finished folder into place, so a killed build leaves a hidden ``.<name>.tmp-*`` folder and never
an index that looks complete. Two layouts, pyserini's two BEIR settings:

- ``flat``: one ``contents`` field holding title and text (``title + " " + text``, as ``BeirFlatCollection``);
- ``multifield``: ``contents`` holds the text and ``title`` the title, searched with both fields at boost 1.

An index folder::

    <dir>/bm25.json     ArtifactMeta kind bm25_index: the corpus (name, count, digest of ids/titles/texts,
                        file stamp), layout, analyzer, BM25-relevant counts, pyserini/Anserini/Lucene versions
    <dir>/lucene/       the Lucene index (pyserini's LuceneSearcher opens it)

Passages whose text is empty after analysis are not indexed (Anserini counts them as empty; they could never
be retrieved); the metadata says how many. An empty corpus is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from retromem.artifacts import ArtifactMeta, CorpusDigest, CorpusRef, file_stamp, require_compatible
from retromem.data.beir import default_cache_dir
from retromem.data.passage import Passage
from retromem.errors import DataError, MismatchError, MissingDataError
from retromem.io import read_json, refuse_a_file, usual_modes
from retromem.options import check_options, option
from retromem.workdir import dataset_key

log = logging.getLogger(__name__)

KIND = "bm25_index"
META_FILE = "bm25.json"
LUCENE_DIR = "lucene"
LAYOUTS = ("flat", "multifield")
STEMMERS = ("porter", "krovetz", "none")
#: The fields searched in each layout, with their boosts (pyserini's BEIR multifield runs use contents=1 title=1).
FIELDS = {"flat": {"contents": 1.0}, "multifield": {"contents": 1.0, "title": 1.0}}


@dataclass
class BM25IndexConfig:
    """How a BM25 index is built."""

    multifield: bool = option(False, help="index title and text as two fields (pyserini's BEIR 'multifield') "
                              "instead of one 'contents' field holding both ('flat')")
    threads: int = option(min(4, os.cpu_count() or 1), min=1, max=256, help="indexing threads (and collection files)")
    stemmer: str = option("porter", choices=STEMMERS, help="stemmer of the English analyzer")
    keep_stopwords: bool = option(False, help="index stopwords too (default: Lucene's English stopwords are dropped)")
    memory_buffer_mb: int = option(1024, min=16, max=32768, flag="--memory-buffer", help="Lucene's indexing buffer "
                                   "in MB")
    jvm_heap: str | None = option(None, help="JVM heap, e.g. 6g (default: $RETROMEM_JVM_HEAP, else 6g)")

    def __post_init__(self) -> None:
        check_options(self)

    @property
    def layout(self) -> str:
        return "multifield" if self.multifield else "flat"

    def analyzer(self) -> dict:
        """What the analyzer does, as recorded in the metadata (queries are analyzed the same way)."""
        return {"language": "en", "stemmer": self.stemmer, "keep_stopwords": self.keep_stopwords}


def build_bm25_index(passages: Callable[[], Iterable[Passage]], output: str | Path,
                     config: BM25IndexConfig | None = None, corpus_name: str | None = None,
                     corpus_path: str | Path | None = None, total: int | None = None,
                     show_progress: bool = False) -> BM25Index:
    """Index the passages ``passages()`` yields into ``output`` (see the module docstring); return the index.

    ``output`` must not exist yet (see :func:`build_or_reuse_bm25_index` to reuse or replace one).
    ``corpus_path``: the corpus file, whose stamp (taken before reading) lets a later check skip rereading it.
    """
    from retromem.index.java import start_jvm, versions

    config = config or BM25IndexConfig()
    output = Path(output)
    refuse_a_file(output, "--output", "a folder for the BM25 index")
    if output.exists():
        raise DataError("already exists", output, fix="choose a new folder, or delete it to rebuild")
    start_jvm(config.jvm_heap)
    stamp = file_stamp(corpus_path) if corpus_path is not None else None
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        collection = staging / "collection"
        digest = write_json_collection(passages(), collection, config, total=total, show_progress=show_progress)
        if digest.count == 0:
            raise DataError("the corpus holds no passages", corpus_path or corpus_name,
                            fix="give a corpus with at least one passage")
        counters = _index_collection(collection, staging / LUCENE_DIR, config, show_progress=show_progress)
        shutil.rmtree(collection)
        corpus = CorpusRef(name=corpus_name, count=digest.count, digest=digest.hexdigest(), file=stamp)
        details = {"layout": config.layout, "fields": FIELDS[config.layout], "analyzer": config.analyzer(),
                   "count": digest.count, "indexed": counters["indexed"], "empty": counters["empty"],
                   **versions()}
        ArtifactMeta(kind=KIND, corpus=corpus, details=details).write(staging / META_FILE)
        usual_modes(staging)
        os.replace(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return BM25Index.open(output)


def build_or_reuse_bm25_index(passages: Callable[[], Iterable[Passage]], output: str | Path,
                              config: BM25IndexConfig | None = None, corpus_name: str | None = None,
                              corpus_path: str | Path | None = None, total: int | None = None,
                              show_progress: bool = False, replace_other: bool = False) -> tuple[BM25Index, bool]:
    """``(index, reused)``: the index in ``output`` when it holds this corpus in this layout and analyzer, else a
    new one. An ``output`` holding another index (or one of a changed corpus) is refused, or with
    ``replace_other`` (a work directory's cache) rebuilt."""
    config = config or BM25IndexConfig()
    output = Path(output)
    if (output / META_FILE).exists():
        index = BM25Index.open(output)
        reason = index.differs(config)
        if reason is None:
            try:
                index.check_corpus(passages, corpus_path=corpus_path)
                return index, True
            except MismatchError as err:
                reason = str(err)
        if not replace_other:
            raise MismatchError(f"{output} holds another BM25 index ({reason}); choose another --output, or "
                                "delete it to rebuild")
        log.info("rebuilding %s: %s", output, reason)
        shutil.rmtree(output)
    elif output.exists() and any(output.iterdir()):
        if not replace_other:
            raise DataError("is not empty and holds no BM25 index", output, fix="choose a new folder")
        shutil.rmtree(output)
    elif output.exists():
        output.rmdir()
    return build_bm25_index(passages, output, config, corpus_name=corpus_name, corpus_path=corpus_path,
                            total=total, show_progress=show_progress), False


def bm25_work_directory(root: Path | str | None, dataset: str | Path, index_config: BM25IndexConfig) -> Path:
    """``<root>/<dataset>-<where>/bm25-<layout>-<key>`` (``key`` hashes the analyzer)."""
    root = Path(root) if root else default_cache_dir() / "work"
    key = hashlib.sha256(json.dumps(index_config.analyzer(), sort_keys=True).encode()).hexdigest()[:10]
    return root / dataset_key(dataset) / f"bm25-{index_config.layout}-{key}"


def write_json_collection(passages: Iterable[Passage], folder: Path, config: BM25IndexConfig,
                          total: int | None = None, show_progress: bool = False) -> CorpusDigest:
    """Write ``passages`` as Anserini ``JsonCollection`` files (``docs-<i>.jsonl``, one per thread, passages dealt
    round-robin); return the digest of what was written."""
    folder.mkdir(parents=True)
    digest = CorpusDigest()
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open(folder / f"docs-{i:02d}.jsonl", "w", encoding="utf-8"))
                   for i in range(config.threads)]
        bar = tqdm(passages, total=total, desc="BM25 collection", unit="passage", disable=not show_progress)
        for i, passage in enumerate(bar):
            digest.update(passage)
            handles[i % len(handles)].write(json.dumps(lucene_document(passage, config.layout),
                                                       ensure_ascii=False) + "\n")
    return digest


def lucene_document(passage: Passage, layout: str) -> dict:
    """The JsonCollection record of a passage: ``flat`` = title and text in ``contents`` (``BeirFlatCollection``'s
    ``title + " " + text``), ``multifield`` = text in ``contents``, title in ``title``."""
    if layout == "multifield":
        return {"id": passage.id, "contents": passage.text, "title": passage.title or ""}
    return {"id": passage.id, "contents": f"{passage.title} {passage.text}" if passage.title else passage.text}


class BM25Index:
    """A BM25 index folder: its metadata, read and checked; :class:`retromem.retrieve.bm25.BM25Searcher` searches it."""

    def __init__(self, path: Path, meta: ArtifactMeta):
        self.path = path
        self.meta = meta

    @classmethod
    def open(cls, path: str | Path) -> BM25Index:
        path = Path(path)
        meta_file = path / META_FILE
        if not meta_file.exists():
            what = "does not exist" if not path.exists() else f"holds no {META_FILE}"
            raise MissingDataError(f"{path} {what}: it is not a BM25 index; build one with `retromem index bm25`")
        meta = ArtifactMeta.from_json(read_json(meta_file), KIND, where=meta_file)
        if not (path / LUCENE_DIR).is_dir():
            raise MissingDataError(f"{path / LUCENE_DIR} is missing: the index is damaged; build it again")
        return cls(path, meta)

    @property
    def lucene_dir(self) -> Path:
        return self.path / LUCENE_DIR

    @property
    def layout(self) -> str:
        return self.meta.details.get("layout", "flat")

    @property
    def fields(self) -> dict[str, float]:
        return dict(self.meta.details.get("fields") or FIELDS[self.layout])

    def differs(self, config: BM25IndexConfig) -> str | None:
        """Why this index is not what ``config`` builds (layout or analyzer), or None."""
        if self.layout != config.layout:
            return f"layout {self.layout}, not {config.layout}"
        if self.meta.details.get("analyzer") != config.analyzer():
            return f"analyzer {self.meta.details.get('analyzer')}, not {config.analyzer()}"
        return None

    def check_corpus(self, passages: Callable[[], Iterable[Passage]] | CorpusRef,
                     corpus_path: str | Path | None = None) -> None:
        """Refuse (:class:`MismatchError`) when the index was built from another corpus or the corpus changed since.

        ``passages`` is the corpus (a callable streaming it) or its :class:`CorpusRef`; an unchanged corpus file
        (``corpus_path`` with the recorded size and mtime) is not reread."""
        recorded = self.meta.corpus
        if isinstance(passages, CorpusRef):
            ref = passages
        elif recorded is not None and recorded.same_file(corpus_path):
            return
        else:
            digest = CorpusDigest()
            for passage in passages():
                digest.update(passage)
            ref = digest.ref(None)
        require_compatible(self.meta, self.path, corpus=ref,
                           fix="build the index again from this corpus (`retromem index bm25`)")


def iter_collection_ids(folder: Path) -> Iterator[str]:
    """The ids in a JsonCollection folder (used by tests and checks)."""
    for file in sorted(folder.glob("*.jsonl")):
        with open(file, encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)["id"]


def _index_collection(collection: Path, index_dir: Path, config: BM25IndexConfig,
                      show_progress: bool = False) -> dict[str, int]:
    """Run Anserini's IndexCollection in this process's JVM; its counters (indexed, empty, ...)."""
    from jnius import autoclass

    args = ["-collection", "JsonCollection", "-generator", "DefaultLuceneDocumentGenerator",
            "-input", str(collection), "-index", str(index_dir), "-threads", str(config.threads),
            "-memoryBuffer", str(config.memory_buffer_mb), "-stemmer", config.stemmer, "-language", "en"]
    if config.multifield:
        args += ["-fields", "title"]
    if config.keep_stopwords:
        args.append("-keepStopwords")
    if not log.isEnabledFor(logging.INFO):  # Anserini's own progress log only with -v; tqdm shows the collection
        args.append("-quiet")
    JArgs = autoclass("io.anserini.index.IndexCollection$Args")
    parsed = JArgs()
    jargs = autoclass("java.util.ArrayList")()
    for arg in args:
        jargs.add(arg)
    autoclass("org.kohsuke.args4j.CmdLineParser")(parsed).parseArgument(jargs)
    indexer = autoclass("io.anserini.index.IndexCollection")(parsed)
    log.info("indexing %s with %d threads", collection, config.threads)
    indexer.run()
    counters = indexer.getCounters()
    result = {name: int(getattr(counters, name).get()) for name in ("indexed", "empty", "unindexable", "skipped",
                                                                    "errors")}
    if result["errors"] or result["unindexable"]:
        raise DataError(f"Anserini failed on {result['errors']} documents ({result['unindexable']} unindexable)",
                        collection, fix="see the log above (-v) for the documents it names")
    return result
