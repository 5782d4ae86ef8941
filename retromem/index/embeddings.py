"""Passage embeddings on disk: encoded in chunks (resumable, data-parallel), then merged.

Layout of an embeddings folder::

    encoder.json             the encoder's metadata and the chunk size, written first; a rerun must match it
    chunks/chunk-000042.npy  vectors of passages [42*chunk_size, 43*chunk_size), with
    chunks/chunk-000042.ids  their ids, one a line, and
    chunks/chunk-000042.sha256  a digest of their ids, titles and texts; each file written atomically
    embeddings.npy           after the merge: all vectors, in corpus order (memory-mappable)
    ids.txt                  the passage ids, one a line, in the same order
    meta.json                written last: an ArtifactMeta of kind "embeddings" (retromem.artifacts):
                             the encoder, the corpus (count, content digest, file stamp), count, dtype

An interrupted encode leaves finished chunks behind; the next run skips those whose passages are
unchanged and encodes the rest,
giving the same vectors (a chunk is sorted and batched the same way every time). Under
``accelerate launch`` / ``torchrun`` chunk *i* goes to rank ``i % world_size``; every rank writes its
own chunks and rank 0 merges them once all ranks are done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from retromem.artifacts import (
    PASSAGE_VECTOR_FIELDS,
    ArtifactMeta,
    CorpusDigest,
    CorpusRef,
    EncoderInfo,
    corpus_ref,
    file_stamp,
    require_compatible,
)
from retromem.data.passage import Passage
from retromem.device import has_accelerator
from retromem.errors import ConfigError, DataError, MismatchError, MissingDataError, RetromemError
from retromem.index.encoder import Encoder
from retromem.io import atomic_path, read_ids, read_json, refuse_a_file, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

KIND = "embeddings"
#: Passages, or a callable that returns a fresh iterator over them each time it is called.
PassageSource = Iterable[Passage] | Callable[[], Iterable[Passage]]
#: Passages per chunk: the unit of resuming and of the work shared between processes.
DEFAULT_CHUNK_SIZE = 4096


@dataclass
class EmbeddingSet:
    """Merged embeddings: ``vectors`` (memory-mapped float32 ``(n, dim)``), ``ids``, ``meta`` (the JSON of
    ``meta.json``) and ``artifact`` (the same, typed: encoder, corpus, details). ``reused``: the set was
    finished already when :func:`encode_corpus` was asked for it."""

    path: Path
    vectors: np.ndarray
    ids: list[str]
    meta: dict
    artifact: ArtifactMeta
    reused: bool = False

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> EmbeddingSet:
        path = Path(path)
        if not (path / "meta.json").exists():
            hint = " (an unfinished encode: run it again to resume)" if (path / "chunks").is_dir() else ""
            raise MissingDataError(f"{path} holds no finished embeddings: meta.json is missing{hint}")
        meta = read_json(path / "meta.json")
        artifact = ArtifactMeta.from_json(meta, KIND, where=path / "meta.json")
        vectors = _load_vectors(path / "embeddings.npy", mmap)
        ids = read_ids(path / "ids.txt", fix="delete the folder and encode again")
        count = artifact.details.get("count")
        if len(ids) != vectors.shape[0] or vectors.shape[0] != count:
            raise MismatchError(f"{path}: {len(ids)} ids, {vectors.shape[0]} vectors, meta says {count}; "
                                "delete the folder and encode again")
        if artifact.encoder is not None and vectors.shape[1] != artifact.encoder.dim:
            raise MismatchError(f"{path}: vectors of dimension {vectors.shape[1]}, meta says {artifact.encoder.dim}; "
                                "delete the folder and encode again")
        return cls(path=path, vectors=vectors, ids=ids, meta=meta, artifact=artifact)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def is_complete(path: str | Path) -> bool:
    return (Path(path) / "meta.json").exists()


def encode_corpus(passages: PassageSource, encoder: Encoder, out_dir: str | Path,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, total: int | None = None, show_progress: bool = False,
                  corpus_name: str | None = None, corpus_path: str | Path | None = None, keep_chunks: bool = False,
                  replace_stale: bool = False) -> EmbeddingSet | None:
    """Encode a (streamed) corpus into ``out_dir``; returns the merged set (``None`` on ranks other than 0).

    ``passages`` is an iterable, or a callable returning a fresh iterator (needed with ``replace_stale``,
    which may read the corpus twice).

    Finished chunks of an earlier, interrupted run with the same encoder and the same passages are
    reused. A folder made by another encoder raises :class:`MismatchError` (delete it or choose another
    folder), and so does a finished folder made from another corpus: other ids, or the same ids with
    other titles or texts (checked by streaming the corpus against the recorded digest, which is
    skipped when ``corpus_path`` is the very file recorded, same size and modification time). With
    ``replace_stale`` (a work directory's cache) such a folder is deleted and encoded afresh instead.
    """
    if chunk_size < 1:
        raise ConfigError(f"chunk_size (--chunk-size) must be at least 1, got {chunk_size}")
    out_dir = Path(out_dir)
    rank, world_size, barrier = _distributed_context()
    encoder_meta = encoder.metadata()
    if replace_stale and not callable(passages):
        raise TypeError("replace_stale needs passages as a callable that returns a fresh iterator each time")
    if is_complete(out_dir):
        try:
            finished = _reuse_finished(out_dir, _fresh(passages), encoder_meta, corpus_path)
            return finished if rank == 0 else None
        except MismatchError as err:
            if not replace_stale:
                raise
            if rank == 0:
                log.warning("%s: encoding it afresh", str(err).rsplit("; ", 1)[0])
                shutil.rmtree(out_dir)
            barrier()
    chunks_dir = out_dir / "chunks"
    # the batch size too: texts padded in other batches give vectors that differ in the last bits (bf16)
    progress = {**encoder_meta, "chunk_size": chunk_size, "batch_size": encoder.config.batch_size}
    stamp = file_stamp(corpus_path) if corpus_path is not None else None
    if rank == 0:
        refuse_a_file(out_dir, "--output", "a folder for the embeddings")
        chunks_dir.mkdir(parents=True, exist_ok=True)
        if (out_dir / "encoder.json").exists():
            _check_same_progress(read_json(out_dir / "encoder.json"), progress, out_dir)
        else:
            write_json_atomic(out_dir / "encoder.json", progress)
    barrier()
    _check_same_progress(read_json(out_dir / "encoder.json"), progress, out_dir)

    digest = CorpusDigest()
    n_chunks = 0
    reused = 0
    bar = tqdm(total=total, desc=f"encoding (rank {rank})" if world_size > 1 else "encoding", unit="passage",
               disable=not show_progress or rank != 0, dynamic_ncols=True)
    with bar, _cleaned_up_if_empty(out_dir, rank == 0):
        for index, chunk in enumerate(_chunked(digest.watch(_fresh(passages)), chunk_size)):
            n_chunks += 1
            if index % world_size != rank:
                bar.update(len(chunk) if world_size > 1 else 0)
                continue
            vec_file, ids_file, sum_file = _chunk_files(chunks_dir, index)
            ids = [p.id for p in chunk]
            chunk_sum = corpus_ref(chunk).digest
            if vec_file.exists() and ids_file.exists():
                if ids_file.read_text(encoding="utf-8").splitlines() != ids:
                    raise MismatchError(f"{ids_file} does not hold the ids the corpus gives for chunk {index}: "
                                        f"the corpus changed since the interrupted run; delete {out_dir}")
                if sum_file.exists() and sum_file.read_text(encoding="utf-8").strip() != chunk_sum:
                    raise MismatchError(f"{sum_file}: the titles or texts of chunk {index} differ from the corpus's: "
                                        f"the corpus changed since the interrupted run; delete {out_dir}")
                if sum_file.exists():
                    reused += 1
                    bar.update(len(chunk))
                    continue
            vectors = encoder.encode_passages(chunk)
            write_text_atomic(ids_file, "\n".join(ids) + "\n")
            write_text_atomic(sum_file, chunk_sum + "\n")
            with atomic_path(vec_file) as tmp, open(tmp, "wb") as handle:
                np.save(handle, vectors, allow_pickle=False)
            bar.update(len(chunk))
    if reused:
        log.info("reused %d finished chunk(s) in %s", reused, chunks_dir)
    if digest.count == 0:
        if rank == 0:
            _remove_if_empty(out_dir)
        raise DataError("the corpus holds no passages: nothing to encode", corpus_path or corpus_name,
                        fix="check the corpus file")
    barrier()
    if rank != 0:
        barrier()
        return None
    corpus = digest.ref(corpus_name)
    if stamp is not None and file_stamp(corpus_path) == stamp:  # a file edited while it was read gets no stamp
        corpus = dataclasses.replace(corpus, file=stamp)
    result = merge_chunks(out_dir, n_chunks, encoder_meta, corpus=corpus, keep_chunks=keep_chunks)
    barrier()
    return result


def merge_chunks(out_dir: str | Path, n_chunks: int, encoder_meta: dict, corpus: CorpusRef | None = None,
                 keep_chunks: bool = False) -> EmbeddingSet:
    """Join ``chunks/chunk-*.npy`` into ``embeddings.npy`` + ``ids.txt`` and write ``meta.json`` last."""
    out_dir = Path(out_dir)
    chunks_dir = out_dir / "chunks"
    files = [_chunk_files(chunks_dir, i)[:2] for i in range(n_chunks)]
    missing = [str(v) for v, i in files if not (v.exists() and i.exists())]
    if missing:
        raise MissingDataError(f"cannot merge: {len(missing)} chunk(s) missing, e.g. {missing[0]}; "
                               "run the encode again")
    shapes = [np.load(v, mmap_mode="r").shape for v, _ in files]
    count = sum(s[0] for s in shapes)
    dim = encoder_meta["dim"]
    with atomic_path(out_dir / "embeddings.npy") as tmp:
        merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(count, dim))
        offset = 0
        for (vec_file, _), shape in zip(files, shapes):
            merged[offset:offset + shape[0]] = np.load(vec_file, mmap_mode="r")
            offset += shape[0]
        merged.flush()
        del merged
    with atomic_path(out_dir / "ids.txt") as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for _, ids_file in files:
            handle.write(ids_file.read_text(encoding="utf-8"))
    ArtifactMeta(kind=KIND, encoder=EncoderInfo.from_dict(encoder_meta), corpus=corpus,
                 details={"count": count, "dtype": "float32"}).write(out_dir / "meta.json")
    if not keep_chunks:
        shutil.rmtree(chunks_dir, ignore_errors=True)
    return EmbeddingSet.load(out_dir)


def _reuse_finished(out_dir: Path, passages: Iterable[Passage], encoder_meta: dict, corpus_path) -> EmbeddingSet:
    """The finished set in ``out_dir`` if it was made by this encoder from these passages, else raise.

    Every process of a launch checks for itself (they read the same files, so they agree)."""
    artifact = ArtifactMeta.read(out_dir / "meta.json", KIND)
    require_compatible(artifact, out_dir, encoder=encoder_meta, fields=PASSAGE_VECTOR_FIELDS,
                       fix="use another output folder or delete this one")
    finished = EmbeddingSet.load(out_dir)
    finished.reused = True
    if artifact.corpus is None or artifact.corpus.digest is None:
        raise MismatchError(f"{out_dir} was written by an older retromem that did not record the corpus's text, so "
                            "it cannot be checked against this corpus: delete it and encode again")
    if artifact.corpus.same_file(corpus_path):
        return finished
    digest = CorpusDigest()
    _check_same_ids(digest.watch(passages), finished.ids, out_dir)
    require_compatible(artifact, out_dir, corpus=digest.ref(None),
                       fix=f"the titles or texts changed: delete {out_dir} or choose another folder")
    return finished


def _fresh(passages: PassageSource) -> Iterable[Passage]:
    return passages() if callable(passages) else passages


def _check_same_progress(found: dict, expected: dict, where: Path) -> None:
    """An unfinished encode resumes only with the same encoder, chunk size and batch size."""
    diffs = EncoderInfo.from_dict(found).differences(expected, PASSAGE_VECTOR_FIELDS)
    if diffs:
        raise MismatchError(f"{where} was made by a different encoder ({'; '.join(diffs)}); "
                            "use another output folder or delete this one")
    for key in ("chunk_size", "batch_size"):
        option = "--" + key.replace("_", "-")
        if key in found and found[key] != expected[key]:
            raise MismatchError(f"{where} holds an unfinished encode with {option} {found[key]}, and this run asks "
                                f"for {expected[key]}: rerun with {option} {found[key]} to resume it, or delete the "
                                "folder to start over")


def _check_same_ids(passages: Iterable[Passage], ids: list[str], where: Path) -> None:
    """Stream the corpus's ids against a finished folder's ``ids.txt``; a difference means the corpus changed."""
    count = 0
    for count, passage in enumerate(passages, start=1):
        if count > len(ids) or passage.id != ids[count - 1]:
            found = ids[count - 1] if count <= len(ids) else "nothing (the corpus is longer)"
            raise MismatchError(f"{where} holds embeddings of another corpus: passage {count} is {passage.id!r} in "
                                f"the corpus but {found!r} in ids.txt; delete {where} or choose another folder")
    if count != len(ids):
        raise MismatchError(f"{where} holds embeddings of another corpus: {len(ids)} ids in ids.txt, {count} passages "
                            f"in the corpus; delete {where} or choose another folder")


@contextlib.contextmanager
def _cleaned_up_if_empty(out_dir: Path, is_main: bool) -> Iterator[None]:
    """On an error before any chunk was written (e.g. the corpus reader refusing its file), remove what
    this encode made, so that nothing half-made is left."""
    try:
        yield
    except BaseException:
        if is_main:
            _remove_if_empty(out_dir)
        raise


def _remove_if_empty(out_dir: Path) -> None:
    """Remove what an encode of nothing made: ``encoder.json``, an empty ``chunks/`` (and the folder, if empty)."""
    chunks = out_dir / "chunks"
    if chunks.is_dir() and not any(chunks.iterdir()):
        chunks.rmdir()
        (out_dir / "encoder.json").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            out_dir.rmdir()


def _load_vectors(path: Path, mmap: bool) -> np.ndarray:
    """``embeddings.npy`` as a float32 (n, dim) array; a damaged file is a one-line error naming it."""
    try:
        vectors = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError as err:
        raise MissingDataError(f"{path} is missing: encode the corpus again") from err
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"not a readable .npy array ({err})", path,
                        fix="the file is damaged or truncated: delete the folder and encode again") from err
    if vectors.ndim != 2 or vectors.dtype != np.float32:
        raise DataError(f"holds a {vectors.dtype} array of shape {vectors.shape}, not float32 vectors", path,
                        fix="delete the folder and encode again")
    return vectors


def _chunk_files(chunks_dir: Path, index: int) -> tuple[Path, Path, Path]:
    stem = chunks_dir / f"chunk-{index:06d}"
    return stem.with_suffix(".npy"), stem.with_suffix(".ids"), stem.with_suffix(".sha256")


def _chunked(items: Iterable[Passage], size: int) -> Iterator[list[Passage]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _distributed_context():
    """(rank, world_size, barrier) from accelerate's state when launched with several processes."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # PartialState() alone picks a distributed backend only on accelerators: launched on a machine
    # without one (or with `accelerate launch --cpu`), it must be asked for CPU (gloo), or every
    # process believes it is alone and they all encode and merge the whole corpus.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not has_accelerator())
    if state.num_processes != int(os.environ["WORLD_SIZE"]):
        raise RetromemError(f"launched as {os.environ['WORLD_SIZE']} processes, but accelerate set up "
                            f"{state.num_processes} ({state.distributed_type}); check the launch options")
    return state.process_index, state.num_processes, state.wait_for_everyone
