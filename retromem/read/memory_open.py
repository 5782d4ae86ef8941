"""Opening a token-memory store folder for reading (:func:`open_memory`): the store of
:mod:`retromem.index.memory_store`, seen through the three things the reader asks of a memory --
``ids()``, ``gather(ids)`` (decoded vectors, token ids, spans) and ``info()`` (encoder, layer, codec); and
``codec`` with ``gather_codes(ids)`` (undecoded) for a reader with a tuned pq codebook."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retromem.errors import MissingDataError


class StoreMemory:
    """A :class:`retromem.index.memory_store.MemoryStore` as the reader reads it."""

    def __init__(self, store: Any, path: Path):
        self.store = store
        self.path = path

    def ids(self) -> list[str]:
        return list(self.store.ids())

    @property
    def codec(self) -> Any:
        return self.store.codec

    def gather(self, ids: Sequence[str]) -> list[Any]:
        return self.store.gather(list(ids))

    def gather_codes(self, ids: Sequence[str]) -> list[Any]:
        """Undecoded ``(codes, token_ids, spans)`` per id (for a reader that decodes with its tuned codebook)."""
        return self.store.gather_codes(list(ids))

    def info(self) -> tuple[dict[str, Any], int, dict[str, Any]]:
        meta = self.store.meta
        encoder = meta.encoder.to_dict() if meta.encoder is not None else {}
        codec = meta.details.get("codec")
        if codec is None and hasattr(self.store, "codec"):
            codec = self.store.codec.to_json()
        return encoder, int(meta.details["layer"]), dict(codec or {})


def open_memory(path: str | Path) -> StoreMemory:
    """The token-memory store at ``path`` (a folder made by ``retromem read memory`` or ``retromem memory build``)."""
    path = Path(path)
    if not path.is_dir():
        raise MissingDataError(f"--memory {path}: no such folder (build one with `retromem read memory`)")
    try:
        from retromem.index.memory_store import MemoryStore
    except ImportError as err:  # pragma: no cover - the store lands with the token-memory issue
        raise MissingDataError("reading a memory folder needs retromem.index.memory_store, which this retromem lacks"
                               ) from err
    return StoreMemory(MemoryStore.open(path), path)
