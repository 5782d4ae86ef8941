"""Passage embeddings on disk: encoded in chunks (resumable, data-parallel), then merged.

Layout of an embeddings folder::

    encoder.json             the encoder's metadata, written first; a rerun must match it
    chunks/chunk-000042.npy  vectors of passages [42*chunk_size, 43*chunk_size), with
    chunks/chunk-000042.ids  their ids, one a line; each file written atomically
    embeddings.npy           after the merge: all vectors, in corpus order (memory-mappable)
    ids.txt                  the passage ids, one a line, in the same order
    meta.json                written last: encoder metadata + count, dim, dtype, corpus

An interrupted encode leaves finished chunks behind; the next run skips them and encodes the rest,
giving the same vectors (a chunk is sorted and batched the same way every time). Under
``accelerate launch`` / ``torchrun`` chunk *i* goes to rank ``i % world_size``; every rank writes its
own chunks and rank 0 merges them once all ranks are done.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from retromem.data.passage import Passage
from retromem.errors import MismatchError, MissingDataError, RetromemError
from retromem.index.encoder import Encoder
from retromem.io import atomic_path, read_json, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

#: Encoder settings that change the vectors; the rest of the metadata is informative.
VECTOR_KEYS = ("fingerprint", "pooling", "normalize", "max_length", "passage_prefix", "dim")


@dataclass
class EmbeddingSet:
    """Merged embeddings: ``vectors`` (memory-mapped float32 ``(n, dim)``), ``ids`` and ``meta``."""

    path: Path
    vectors: np.ndarray
    ids: list[str]
    meta: dict

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> EmbeddingSet:
        path = Path(path)
        if not (path / "meta.json").exists():
            hint = " (an unfinished encode: run it again to resume)" if (path / "chunks").is_dir() else ""
            raise MissingDataError(f"{path} holds no finished embeddings: meta.json is missing{hint}")
        meta = read_json(path / "meta.json")
        vectors = np.load(path / "embeddings.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
        ids = (path / "ids.txt").read_text(encoding="utf-8").splitlines()
        if len(ids) != vectors.shape[0] or vectors.shape[0] != meta["count"]:
            raise MismatchError(f"{path}: {len(ids)} ids, {vectors.shape[0]} vectors, meta says {meta['count']}; "
                                "delete the folder and encode again")
        return cls(path=path, vectors=vectors, ids=ids, meta=meta)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def is_complete(path: str | Path) -> bool:
    return (Path(path) / "meta.json").exists()


def encode_corpus(passages: Iterable[Passage], encoder: Encoder, out_dir: str | Path, chunk_size: int = 4096,
                  total: int | None = None, show_progress: bool = False, corpus_name: str | None = None,
                  keep_chunks: bool = False) -> EmbeddingSet | None:
    """Encode a (streamed) corpus into ``out_dir``; returns the merged set (``None`` on ranks other than 0).

    Finished chunks of an earlier, interrupted run with the same encoder are reused. A folder made by
    another encoder raises :class:`MismatchError` (delete it or choose another folder), and so does a
    finished folder whose ids are not the corpus's (the corpus changed; checked by streaming the ids).
    """
    out_dir = Path(out_dir)
    rank, world_size, barrier = _distributed_context()
    encoder_meta = encoder.metadata()
    if is_complete(out_dir):
        _check_same_encoder(read_json(out_dir / "meta.json"), encoder_meta, out_dir)
        if rank != 0:
            return None
        finished = EmbeddingSet.load(out_dir)
        _check_same_ids(passages, finished.ids, out_dir)
        return finished
    chunks_dir = out_dir / "chunks"
    if rank == 0:
        chunks_dir.mkdir(parents=True, exist_ok=True)
        if (out_dir / "encoder.json").exists():
            _check_same_encoder(read_json(out_dir / "encoder.json"), encoder_meta, out_dir)
        else:
            write_json_atomic(out_dir / "encoder.json", encoder_meta)
    barrier()
    _check_same_encoder(read_json(out_dir / "encoder.json"), encoder_meta, out_dir)

    n_chunks = 0
    reused = 0
    bar = tqdm(total=total, desc=f"encoding (rank {rank})" if world_size > 1 else "encoding", unit="passage",
               disable=not show_progress or rank != 0, dynamic_ncols=True)
    with bar:
        for index, chunk in enumerate(_chunked(passages, chunk_size)):
            n_chunks += 1
            if index % world_size != rank:
                bar.update(len(chunk) if world_size > 1 else 0)
                continue
            vec_file, ids_file = _chunk_files(chunks_dir, index)
            ids = [p.id for p in chunk]
            if vec_file.exists() and ids_file.exists():
                if ids_file.read_text(encoding="utf-8").splitlines() != ids:
                    raise MismatchError(f"{ids_file} does not hold the ids the corpus gives for chunk {index}: "
                                        f"the corpus changed since the interrupted run; delete {out_dir}")
                reused += 1
                bar.update(len(chunk))
                continue
            vectors = encoder.encode_passages(chunk)
            write_text_atomic(ids_file, "\n".join(ids) + "\n")
            with atomic_path(vec_file) as tmp, open(tmp, "wb") as handle:
                np.save(handle, vectors, allow_pickle=False)
            bar.update(len(chunk))
    if reused:
        log.info("reused %d finished chunk(s) in %s", reused, chunks_dir)
    barrier()
    if rank != 0:
        barrier()
        return None
    result = merge_chunks(out_dir, n_chunks, encoder_meta, corpus_name=corpus_name, keep_chunks=keep_chunks)
    barrier()
    return result


def merge_chunks(out_dir: str | Path, n_chunks: int, encoder_meta: dict, corpus_name: str | None = None,
                 keep_chunks: bool = False) -> EmbeddingSet:
    """Join ``chunks/chunk-*.npy`` into ``embeddings.npy`` + ``ids.txt`` and write ``meta.json`` last."""
    out_dir = Path(out_dir)
    chunks_dir = out_dir / "chunks"
    files = [_chunk_files(chunks_dir, i) for i in range(n_chunks)]
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
    meta = dict(encoder_meta, count=count, dtype="float32", corpus=corpus_name)
    write_json_atomic(out_dir / "meta.json", meta)
    if not keep_chunks:
        shutil.rmtree(chunks_dir, ignore_errors=True)
    return EmbeddingSet.load(out_dir)


def _check_same_encoder(found: dict, expected: dict, where: Path) -> None:
    # precision too: resuming an fp32 encode in bf16 would mix vectors of both kinds in one folder
    keys = VECTOR_KEYS + ("precision",)
    diffs = [f"{k}: {found.get(k)!r} != {expected.get(k)!r}" for k in keys if found.get(k) != expected.get(k)]
    if diffs:
        raise MismatchError(f"{where} was made by a different encoder ({'; '.join(diffs)}); "
                            "use another output folder or delete this one")


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


def _chunk_files(chunks_dir: Path, index: int) -> tuple[Path, Path]:
    return chunks_dir / f"chunk-{index:06d}.npy", chunks_dir / f"chunk-{index:06d}.ids"


def _chunked(items: Iterable[Passage], size: int) -> Iterator[list[Passage]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _distributed_context():
    """(rank, world_size, barrier) from accelerate's state when launched with several processes."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # PartialState() alone picks a distributed backend only on accelerators: launched on a machine
    # without one (or with `accelerate launch --cpu`), it must be asked for CPU (gloo), or every
    # process believes it is alone and they all encode and merge the whole corpus.
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not has_accelerator)
    if state.num_processes != int(os.environ["WORLD_SIZE"]):
        raise RetromemError(f"launched as {os.environ['WORLD_SIZE']} processes, but accelerate set up "
                            f"{state.num_processes} ({state.distributed_type}); check the launch options")
    return state.process_index, state.num_processes, state.wait_for_everyone
