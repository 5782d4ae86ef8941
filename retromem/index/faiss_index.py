"""FAISS indexes over stored embeddings: any ``index_factory`` string, on GPUs when there are any.

An index folder holds ``index.faiss``, ``ids.txt`` and ``index.json`` (the embeddings' metadata, which
names the encoder, plus the factory string and counts); searching checks that metadata against the
query encoder and refuses a mismatch. Indexes are always saved as CPU indexes; a GPU copy is made at
load time when ``faiss.get_num_gpus() > 0`` (sharded or replicated over all GPUs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from retromem.errors import MismatchError, MissingDataError, RetromemError
from retromem.index.embeddings import VECTOR_KEYS, EmbeddingSet
from retromem.io import atomic_path, read_json, write_json_atomic

log = logging.getLogger(__name__)

METRICS = ("ip", "l2")
GPU_MODES = ("auto", "never", "always")


@dataclass
class IndexConfig:
    """How to build and use an index.

    ``factory`` is any FAISS ``index_factory`` string ("Flat", "HNSW32", "IVF1024,PQ32", "OPQ16,IVF256,PQ16"...).
    ``search_params`` is a FAISS ParameterSpace string such as "efSearch=128" or "nprobe=32".
    """

    factory: str = "Flat"
    metric: str = "ip"
    train_size: int = 200_000
    add_batch: int = 65_536
    search_params: str = ""
    gpu: str = "auto"
    gpu_shard: bool = True
    gpu_fp16: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.gpu not in GPU_MODES:
            raise ValueError(f"gpu must be one of {GPU_MODES}, got {self.gpu!r}")


def build_index(embeddings: EmbeddingSet | str | Path, out_dir: str | Path, config: IndexConfig | None = None,
                show_progress: bool = False) -> DenseIndex:
    """Train (on a random sample of at most ``train_size`` vectors) and fill an index; save it atomically."""
    faiss = import_faiss()
    config = config or IndexConfig()
    emb = embeddings if isinstance(embeddings, EmbeddingSet) else EmbeddingSet.load(embeddings)
    metric = faiss.METRIC_INNER_PRODUCT if config.metric == "ip" else faiss.METRIC_L2
    try:
        index = faiss.index_factory(emb.dim, config.factory, metric)
    except RuntimeError as err:
        raise ValueError(f"FAISS cannot build {config.factory!r}: {str(err).strip().splitlines()[-1]}") from err
    work = to_gpu(index, config) if use_gpu(config) else index
    if not index.is_trained:
        rng = np.random.default_rng(config.seed)
        n_train = min(config.train_size, len(emb.ids))
        sample = np.sort(rng.choice(len(emb.ids), size=n_train, replace=False))
        log.info("training %s on %d vectors", config.factory, n_train)
        work.train(np.ascontiguousarray(emb.vectors[sample], dtype=np.float32))
    for start in tqdm(range(0, len(emb.ids), config.add_batch), desc="indexing", unit="batch",
                      disable=not show_progress, leave=False):
        work.add(np.ascontiguousarray(emb.vectors[start:start + config.add_batch], dtype=np.float32))
    if work is not index:
        index = faiss.index_gpu_to_cpu(work)
    meta = {key: emb.meta.get(key) for key in emb.meta}
    meta.update(factory=config.factory, metric=config.metric, ntotal=int(index.ntotal), embeddings=str(emb.path))
    save_index(index, emb.ids, meta, out_dir)
    return DenseIndex(index=index, ids=emb.ids, meta=meta, config=config, path=Path(out_dir))


def save_index(index, ids: list[str], meta: dict, out_dir: str | Path) -> None:
    """Write ``index.faiss``, ``ids.txt`` and ``index.json`` (last, so its presence means complete)."""
    faiss = import_faiss()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "index.json").unlink(missing_ok=True)
    with atomic_path(out_dir / "index.faiss") as tmp:
        faiss.write_index(index, str(tmp))
    with atomic_path(out_dir / "ids.txt") as tmp:
        tmp.write_text("\n".join(ids) + "\n", encoding="utf-8")
    write_json_atomic(out_dir / "index.json", meta)


class DenseIndex:
    """A loaded index with its ids and metadata."""

    def __init__(self, index, ids: list[str], meta: dict, config: IndexConfig | None = None,
                 path: Path | None = None):
        self.config = config or IndexConfig(factory=meta.get("factory", "Flat"), metric=meta.get("metric", "ip"))
        self.ids = ids
        self.meta = meta
        self.path = path
        self.cpu_index = index
        self.index = to_gpu(index, self.config) if use_gpu(self.config) else index
        if self.config.search_params:
            set_search_params(self.index, self.config.search_params)

    @classmethod
    def load(cls, path: str | Path, config: IndexConfig | None = None, **options) -> DenseIndex:
        """Load an index folder. Without ``config``, the factory and metric come from ``index.json`` and
        ``options`` (``search_params``, ``gpu``, ``gpu_shard``, ``gpu_fp16``) set the rest."""
        faiss = import_faiss()
        path = Path(path)
        if not (path / "index.json").exists():
            raise MissingDataError(f"{path} holds no finished index (index.json is missing): build it with "
                                   "`retromem index build`")
        meta = read_json(path / "index.json")
        index = faiss.read_index(str(path / "index.faiss"))
        ids = (path / "ids.txt").read_text(encoding="utf-8").splitlines()
        if len(ids) != index.ntotal:
            raise MismatchError(f"{path}: ids.txt has {len(ids)} ids but the index holds {index.ntotal} vectors; "
                                "rebuild the index")
        if config is None:
            config = IndexConfig(factory=meta.get("factory", "Flat"), metric=meta.get("metric", "ip"), **options)
        return cls(index, ids, meta, config=config, path=path)

    @property
    def dim(self) -> int:
        return int(self.cpu_index.d)

    def check_encoder(self, encoder_meta: dict) -> None:
        """Refuse a query encoder that differs from the one that made the indexed vectors."""
        keys = [k for k in VECTOR_KEYS if k != "passage_prefix"]
        diffs = [f"{k}: index {self.meta.get(k)!r} vs query encoder {encoder_meta.get(k)!r}"
                 for k in keys if self.meta.get(k) != encoder_meta.get(k)]
        if diffs:
            where = f" {self.path}" if self.path else ""
            raise MismatchError(f"the index{where} was built by a different encoder ({'; '.join(diffs)}); "
                                "search it with the encoder that built it, or rebuild the index")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` scores ``(n, k)`` and doc ids per query (fewer ids where the index has fewer hits)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise MismatchError(f"query vectors have shape {queries.shape}, the index has dimension {self.dim}")
        k = min(k, len(self.ids))
        scores, rows = self.index.search(queries, k)
        doc_ids = [[self.ids[r] for r in row if r >= 0] for row in rows]
        return scores, doc_ids


def set_search_params(index, params: str) -> None:
    """Apply a FAISS ParameterSpace string ("efSearch=128,nprobe=16") to a CPU or GPU index."""
    faiss = import_faiss()
    space = faiss.GpuParameterSpace() if _is_gpu_index(index) else faiss.ParameterSpace()
    try:
        space.set_index_parameters(index, params)
    except RuntimeError as err:
        raise ValueError(f"cannot set search parameters {params!r}: {str(err).strip().splitlines()[-1]}") from err


def use_gpu(config: IndexConfig) -> bool:
    faiss = import_faiss()
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if config.gpu == "never":
        return False
    if config.gpu == "always" and n_gpus == 0:
        raise RetromemError("--gpu always was asked for, but FAISS sees no GPU (install faiss-gpu on a GPU machine)")
    return n_gpus > 0


def to_gpu(index, config: IndexConfig):
    """Copy a CPU index onto all GPUs: sharded (memory adds up) or replicated (throughput adds up)."""
    faiss = import_faiss()
    options = faiss.GpuMultipleClonerOptions()
    options.shard = config.gpu_shard
    options.useFloat16 = config.gpu_fp16
    try:
        return faiss.index_cpu_to_all_gpus(index, co=options)
    except RuntimeError as err:  # e.g. HNSW has no GPU implementation
        log.warning("FAISS cannot move %s to GPU (%s); searching on CPU", type(index).__name__,
                    str(err).strip().splitlines()[-1])
        return index


def import_faiss():
    try:
        import faiss
    except ImportError as err:
        raise ImportError("retromem needs FAISS: pip install 'retromem[cpu]' (faiss-cpu) or "
                          "'retromem[gpu]' (faiss-gpu)") from err
    return faiss


def _is_gpu_index(index) -> bool:
    return "Gpu" in type(index).__name__ or "IndexShards" in type(index).__name__ \
        or "IndexReplicas" in type(index).__name__

