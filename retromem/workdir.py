"""The work directory: a cache of finished artifacts per (data set, encoder settings), so that a second
evaluation or a fine-tuning's mining reuses what the first one made::

    <root>/<dataset>-<where>/<model>-<key>/embeddings/        see retromem.index.embeddings
    <root>/<dataset>-<where>/<model>-<key>/index-<factory>-<metric>/   see retromem.index.faiss_index
    <root>/<dataset>-<where>/<model>-<key>/runs/, results/    run files and scores, named by what made them

``<where>`` hashes the data set folder's resolved path, so two data sets of the same name in different
places get different folders; ``<key>`` hashes the encoder settings that change passage vectors
(:data:`retromem.artifacts.PASSAGE_VECTOR_FIELDS`). What is cached is still checked before it is used:
embeddings of a corpus whose text changed since are encoded again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from retromem.artifacts import PASSAGE_VECTOR_FIELDS
from retromem.data.beir import default_cache_dir


def work_directory(root: Path | str | None, dataset: str | Path, encoder_meta: Mapping[str, Any]) -> Path:
    """``<root>/<dataset>-<where>/<model>-<key>`` (see the module docstring); ``root`` defaults to
    ``<cache>/work``. A ``dataset`` that is not an existing path (e.g. a name for a pool of texts) is
    used as it is."""
    root = Path(root) if root else default_cache_dir() / "work"
    key = _hash({k: encoder_meta.get(k) for k in PASSAGE_VECTOR_FIELDS})
    return root / dataset_key(dataset) / f"{slug(Path(str(encoder_meta['model'])).name)}-{key[:10]}"


def dataset_key(dataset: str | Path) -> str:
    """``<name>-<hash of the resolved path>`` for a folder or file, else ``dataset`` itself (slugged)."""
    path = Path(dataset)
    if not path.exists():
        return slug(str(dataset))
    return f"{slug(path.name)}-{_hash(str(path.resolve()))[:8]}"


def slug(text: str) -> str:
    """``text`` with every run of characters other than letters, digits, ``.``, ``_`` and ``-`` made ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
