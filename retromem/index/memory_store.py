"""The token memory store: per-token codes of every passage in sharded, memory-mapped files.

Layout of a memory folder::

    meta.json                 ArtifactMeta of kind "token_memories", written first (complete: false) and again
                              when the last shard is in (complete: true, counts, corpus digest): the
                              encoder, layer, codec (name, parameters, code size), token options
    codec-*.npy               the codec's trained arrays (see retromem.index.memory_codecs); no pickles
    lookup-hash.npy           (when complete) every passage id's 64-bit hash, sorted, uint64 [P]
    lookup-loc.npy            (when complete) where each is: shard << 32 | row, int64 [P]
    shards/shard-000042/      one shard: a chunk of passages in corpus order, written to a hidden
                              temporary folder and renamed into place (so a shard is there whole or not at all)
        codes.npy             uint8 [T, code_size]: the codes of the shard's T token vectors, passage after passage
        offsets.npy           int64 [P + 1]: passage i owns rows offsets[i]:offsets[i + 1]
        token_ids.npy         uint16 (vocabularies up to 65,536) or int32 [T]: the token id of each vector
        spans.npy             uint16 [T, 2], only when tokens were dropped or merged: the original token
                              positions [start, end) each vector stands for ([i, i + 1] otherwise)
        ids.bin, id_offsets.npy   the passage ids, UTF-8, concatenated, and where each starts (int64 [P + 1])
        id_hash.npy, id_rows.npy  the ids' 64-bit hashes sorted (uint64 [P]) and their rows (int32 [P])
        shard.json            counts and a digest of the shard's passages (ids, titles, texts)

Nothing is loaded whole: opening a store reads ``meta.json`` and lists the shard folders; every array
is memory-mapped when first used. Looking a passage up is a binary search in ``lookup-hash.npy``
(memory-mapped, about 25 page reads for 21M passages, the top ones cached) then one read of its
shard's offsets; shards added after the lookup table was written (a store still being written, or
read while another process adds shards) are searched in their own ``id_hash.npy``. Opening a
complete 21M-passage store therefore costs a few kilobytes of RAM plus one small object per shard;
the lookup table is 16 bytes per passage on disk (336 MB at 21M), paged in as used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from retromem.artifacts import PASSAGE_VECTOR_FIELDS, ArtifactMeta, EncoderInfo, require_compatible
from retromem.errors import DataError, MismatchError, MissingDataError
from retromem.index.memory_codecs import Codec, codec_from_json
from retromem.io import atomic_path, current_umask

KIND = "token_memories"
SHARDS = "shards"


@dataclass
class PassageMemory:
    """One passage's memory: ``vectors`` float32 ``[n, d]`` (decoded), ``token_ids`` int32 ``[n]``, ``spans`` int32
    ``[n, 2]`` (the original token positions ``[start, end)`` each vector stands for)."""

    passage_id: str
    vectors: np.ndarray
    token_ids: np.ndarray
    spans: np.ndarray

    def __len__(self) -> int:
        return len(self.token_ids)


def id_hashes(ids: Iterable[str]) -> np.ndarray:
    """64-bit hashes of passage ids (BLAKE2b), as uint64."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest(), "little")
                        for i in ids), dtype=np.uint64)


class Shard:
    """One shard folder; its arrays are memory-mapped when first used."""

    def __init__(self, path: Path, number: int):
        self.path = path
        self.number = number

    def _load(self, name: str) -> np.ndarray:
        try:
            return np.load(self.path / name, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError as err:
            raise MissingDataError(f"{self.path / name} is missing: the shard is damaged; delete {self.path} and "
                                   "rerun the memory build to rewrite it") from err
        except (ValueError, OSError, EOFError) as err:
            raise DataError(f"not a readable .npy array ({err})", self.path / name,
                            fix=f"delete {self.path} and rerun the memory build to rewrite it") from err

    @cached_property
    def codes(self) -> np.ndarray:
        return self._load("codes.npy")

    @cached_property
    def offsets(self) -> np.ndarray:
        return self._load("offsets.npy")

    @cached_property
    def token_ids(self) -> np.ndarray:
        return self._load("token_ids.npy")

    @cached_property
    def spans(self) -> np.ndarray | None:
        return self._load("spans.npy") if (self.path / "spans.npy").exists() else None

    @cached_property
    def id_offsets(self) -> np.ndarray:
        return self._load("id_offsets.npy")

    @cached_property
    def id_bytes(self) -> np.memmap:
        size = (self.path / "ids.bin").stat().st_size
        return np.memmap(self.path / "ids.bin", dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)

    @cached_property
    def id_hash(self) -> np.ndarray:
        return self._load("id_hash.npy")

    @cached_property
    def id_rows(self) -> np.ndarray:
        return self._load("id_rows.npy")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def passage_id(self, row: int) -> str:
        start, end = int(self.id_offsets[row]), int(self.id_offsets[row + 1])
        return bytes(self.id_bytes[start:end]).decode("utf-8")

    def ids(self) -> list[str]:
        data = bytes(self.id_bytes)
        offs = self.id_offsets
        return [data[offs[i]:offs[i + 1]].decode("utf-8") for i in range(len(self))]

    def find(self, hashes: np.ndarray) -> np.ndarray:
        """Rows of ``hashes`` in this shard (-1 where absent; the caller confirms the id)."""
        table = self.id_hash
        if len(table) == 0:
            return np.full(len(hashes), -1, dtype=np.int64)
        pos = np.searchsorted(table, hashes)
        pos_clipped = np.minimum(pos, len(table) - 1)
        hit = table[pos_clipped] == hashes
        return np.where(hit, np.asarray(self.id_rows)[pos_clipped], -1).astype(np.int64)


class MemoryStore:
    """A token memory folder (see the module docstring); :meth:`open` it, :meth:`gather` passages from it."""

    def __init__(self, path: Path, meta: ArtifactMeta, codec: Codec):
        self.path = path
        self.meta = meta
        self.codec = codec
        self.shards: list[Shard] = []
        self.reused = False  # set by build_memories when it found this very memory finished
        self._lookup_shards = 0
        self.refresh()

    @classmethod
    def open(cls, path: str | Path) -> MemoryStore:
        """Open the memory in ``path`` (complete, or being written: then only its finished shards are seen)."""
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.exists():
            raise MissingDataError(f"{path} holds no token memory: {meta_file} is missing (build one with "
                                   "`retromem index memory`)")
        meta = ArtifactMeta.read(meta_file, KIND)
        for key in ("codec", "layer"):
            if key not in meta.details:
                raise DataError(f"records no {key}", meta_file, fix="the metadata is damaged: build the memory again")
        return cls(path, meta, codec_from_json(meta.details["codec"], path))

    # what it holds
    @property
    def layer(self) -> int:
        return int(self.meta.details["layer"])

    @property
    def complete(self) -> bool:
        return bool(self.meta.details.get("complete"))

    @property
    def dim(self) -> int:
        return self.codec.dim

    def refresh(self) -> None:
        """See shards added since the store was opened (by another process still writing it)."""
        if (self.path / "meta.json").exists():
            self.meta = ArtifactMeta.read(self.path / "meta.json", KIND)
        known = {s.number: s for s in self.shards}
        self.shards = [known.get(n) or Shard(p, n) for n, p in list_shards(self.path)]
        lookup = self.meta.details.get("lookup_shards", 0)
        self._lookup_shards = lookup if (self.path / "lookup-loc.npy").exists() else 0
        self.__dict__.pop("_lookup", None)

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    @property
    def num_tokens(self) -> int:
        """Stored token vectors (after dropping and merging)."""
        return sum(s.num_tokens for s in self.shards)

    def ids(self) -> list[str]:
        """Every passage id, in corpus order (shard after shard)."""
        return [i for s in self.shards for i in s.ids()]

    def disk_bytes(self) -> int:
        """Bytes of every file of the memory: codes, offsets, ids, tables, codebooks, metadata."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    # reading
    def locate(self, passage_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, row) of each id; an id the memory does not hold raises :class:`MissingDataError`."""
        hashes = id_hashes(passage_ids)
        shard_of = np.full(len(hashes), -1, dtype=np.int64)
        row_of = np.full(len(hashes), -1, dtype=np.int64)
        if self._lookup_shards and self._lookup is not None:
            table, loc = self._lookup
            if len(table):
                pos = np.minimum(np.searchsorted(table, hashes), len(table) - 1)
                hit = table[pos] == hashes
                found = np.asarray(loc)[pos]
                shard_of = np.where(hit, found >> 32, -1)
                row_of = np.where(hit, found & 0xFFFFFFFF, -1)
        for index, shard in enumerate(self.shards[self._lookup_shards:], start=self._lookup_shards):
            todo = np.flatnonzero(shard_of < 0)
            if not len(todo):
                break
            rows = shard.find(hashes[todo])
            hit = rows >= 0
            shard_of[todo[hit]] = index
            row_of[todo[hit]] = rows[hit]
        for i, pid in enumerate(passage_ids):
            if shard_of[i] < 0 or self.shards[shard_of[i]].passage_id(int(row_of[i])) != pid:
                raise MissingDataError(f"passage {pid!r} is not in the token memory {self.path} "
                                       f"({'complete' if self.complete else 'still being written'}, {len(self)} "
                                       "passages): build the memory of the corpus that was searched")
        return shard_of, row_of

    def gather_codes(self, passage_ids: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per id, ``(codes uint8 [n, code_size], token_ids int32 [n], spans int32 [n, 2])``, undecoded."""
        shard_of, row_of = self.locate(passage_ids)
        out = []
        for s, r in zip(shard_of, row_of):
            shard = self.shards[s]
            start, end = int(shard.offsets[r]), int(shard.offsets[r + 1])
            spans = (np.asarray(shard.spans[start:end], dtype=np.int32) if shard.spans is not None
                     else np.stack([np.arange(end - start, dtype=np.int32),
                                    np.arange(1, end - start + 1, dtype=np.int32)], axis=1).reshape(-1, 2))
            out.append((np.asarray(shard.codes[start:end]), np.asarray(shard.token_ids[start:end], dtype=np.int32),
                        spans))
        return out

    def gather(self, passage_ids: Sequence[str]) -> list[PassageMemory]:
        """The decoded memories of ``passage_ids``, in that order (decoded in one batch)."""
        raw = self.gather_codes(passage_ids)
        if not raw:
            return []
        codes = np.concatenate([c for c, _, _ in raw]) if raw else np.zeros((0, self.codec.code_size), np.uint8)
        vectors = self.codec.decode(codes) if len(codes) else np.zeros((0, self.dim), np.float32)
        out, start = [], 0
        for pid, (c, tokens, spans) in zip(passage_ids, raw):
            out.append(PassageMemory(pid, vectors[start:start + len(c)], tokens, spans))
            start += len(c)
        return out

    @cached_property
    def _lookup(self) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            return (np.load(self.path / "lookup-hash.npy", mmap_mode="r", allow_pickle=False),
                    np.load(self.path / "lookup-loc.npy", mmap_mode="r", allow_pickle=False))
        except (OSError, ValueError):
            return None


def require_memory(store: MemoryStore, encoder_info: EncoderInfo | dict | None = None, layer: int | None = None,
                   codec: Codec | dict | str | None = None, fix: str = "build a memory with this encoder, layer and "
                   "codec (retromem index memory), or give the one it was built with") -> None:
    """Refuse (:class:`MismatchError`) a memory made by another encoder, at another layer, or with another codec
    (each that is given is checked)."""
    if encoder_info is not None:
        require_compatible(store.meta, store.path, encoder=encoder_info,
                           fields=tuple(f for f in PASSAGE_VECTOR_FIELDS if f != "precision"), fix=fix)
    if layer is not None and int(layer) != store.layer:
        raise MismatchError(f"{store.path} holds the states after layer {store.layer}, not layer {layer}; {fix}")
    if codec is not None:
        recorded = store.meta.details["codec"]
        if isinstance(codec, str):
            same = codec in (recorded.get("name"), recorded.get("label"))
        else:
            same = (codec.same_as(recorded) if isinstance(codec, Codec)
                    else codec.get("name") == recorded.get("name") and codec.get("params") == recorded.get("params"))
        if not same:
            wanted = codec if isinstance(codec, str) else (codec.label if isinstance(codec, Codec) else codec)
            raise MismatchError(f"{store.path} was written with codec {recorded.get('label')}, not {wanted}; {fix}")


def list_shards(path: Path) -> list[tuple[int, Path]]:
    """The finished shards of a memory folder, by number (hidden temporary folders are not shards)."""
    folder = Path(path) / SHARDS
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        if entry.name.startswith("shard-") and entry.is_dir():
            try:
                found.append((int(entry.name[6:]), entry))
            except ValueError:
                continue
    return sorted(found)


def shard_path(path: Path, number: int) -> Path:
    return Path(path) / SHARDS / f"shard-{number:06d}"


def write_shard(path: Path, number: int, ids: Sequence[str], codes: Sequence[np.ndarray],
                token_ids: Sequence[np.ndarray], spans: Sequence[np.ndarray] | None, code_size: int,
                token_dtype: str = "uint16", info: dict[str, Any] | None = None) -> Path:
    """Write one shard atomically: every file into a hidden folder beside, then one rename into place."""
    final = shard_path(path, number)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        lengths = np.array([len(c) for c in codes], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        all_codes = (np.concatenate(codes) if len(codes) and offsets[-1] else np.zeros((0, code_size), np.uint8))
        _save(tmp / "codes.npy", np.ascontiguousarray(all_codes, dtype=np.uint8).reshape(-1, code_size))
        _save(tmp / "offsets.npy", offsets)
        tokens = np.concatenate(token_ids) if offsets[-1] else np.zeros(0)
        _save(tmp / "token_ids.npy", tokens.astype(token_dtype))
        if spans is not None:
            all_spans = np.concatenate(spans) if offsets[-1] else np.zeros((0, 2))
            _save(tmp / "spans.npy", all_spans.astype(np.uint16).reshape(-1, 2))
        encoded = [i.encode("utf-8") for i in ids]
        (tmp / "ids.bin").write_bytes(b"".join(encoded))
        _save(tmp / "id_offsets.npy", np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.int64))
        hashes = id_hashes(ids)
        order = np.argsort(hashes, kind="stable")
        _save(tmp / "id_hash.npy", hashes[order])
        _save(tmp / "id_rows.npy", order.astype(np.int32))
        (tmp / "shard.json").write_text(json.dumps({"passages": len(ids), "tokens": int(offsets[-1]),
                                                    **(info or {})}, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o777 & ~current_umask())
        if final.exists():  # a stale shard being rewritten
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_lookup(path: Path) -> int:
    """Write the store-wide lookup table over every shard present; returns how many shards it covers."""
    shards = [Shard(p, n) for n, p in list_shards(path)]
    for index, shard in enumerate(shards):
        if shard.number != index:
            raise DataError(f"shard {index} is missing (found shard {shard.number} in its place)", path / SHARDS,
                            fix="rerun the memory build to write it")
    if shards:
        hashes = np.concatenate([np.asarray(s.id_hash) for s in shards])
        loc = np.concatenate([(np.int64(i) << 32) | np.asarray(s.id_rows, dtype=np.int64)
                              for i, s in enumerate(shards)])
    else:
        hashes, loc = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    order = np.argsort(hashes, kind="stable")
    if len(hashes) > 1 and np.any(hashes[order][1:] == hashes[order][:-1]):
        dup = hashes[order][1:][hashes[order][1:] == hashes[order][:-1]][0]
        raise DataError(f"two passages share the id hash {dup:#x} (the same id twice in the corpus?)", path,
                        fix="give every passage a distinct id")
    _save(path / "lookup-hash.npy", hashes[order])
    _save(path / "lookup-loc.npy", loc[order])
    return len(shards)


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
