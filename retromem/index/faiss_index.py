"""FAISS indexes over stored embeddings: any ``index_factory`` string, on GPUs when there are any.

An index folder holds ``index.faiss``, ``ids.txt`` and ``index.json`` (the embeddings' metadata, which
names the encoder, plus the factory string and counts); searching checks that metadata against the
query encoder and refuses a mismatch. Indexes are always saved as CPU indexes; a GPU copy is made at
load time when ``faiss.get_num_gpus() > 0`` (sharded or replicated over all GPUs).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from retromem.artifacts import PASSAGE_VECTOR_FIELDS, QUERY_FIELDS, ArtifactMeta, require_compatible
from retromem.errors import ConfigError, DataError, MismatchError, MissingDataError, RetromemError
from retromem.index.embeddings import EmbeddingSet
from retromem.io import atomic_path, read_ids, read_json, refuse_a_file
from retromem.options import check_options, option

log = logging.getLogger(__name__)

KIND = "faiss_index"
METRICS = ("ip", "l2")
GPU_MODES = ("auto", "never", "always")


@dataclass
class IndexConfig:
    """How to build and use an index.

    ``factory`` is any FAISS ``index_factory`` string ("Flat", "HNSW32", "IVF1024,PQ32", "OPQ16,IVF256,PQ16"...).
    ``search_params`` is a FAISS ParameterSpace string such as "efSearch=128" or "nprobe=32".
    """

    factory: str = option("Flat", help="FAISS index_factory string: Flat, HNSW32, IVF1024,Flat, IVF4096,PQ64, "
                          "OPQ32,IVF1024,PQ32 ...")
    metric: str = option("ip", choices=METRICS, help="inner product (cosine when normalised) or L2")
    train_size: int = option(200_000, min=1, help="vectors sampled to train IVF/PQ indexes")
    add_batch: int = option(65_536, min=1, cli=False, help="vectors added to the index at a time")
    search_params: str = option("", help="FAISS search parameters, e.g. efSearch=128 or nprobe=32")
    gpu: str = option("auto", choices=GPU_MODES, help="auto = on all GPUs when faiss.get_num_gpus() > 0; always = "
                      "refuse to run without one; never = CPU")
    gpu_shard: bool = option(True, flag="--gpu-replicate", help="replicate the index on every GPU (throughput) "
                             "instead of sharding it (memory)")
    gpu_fp16: bool = option(False, help="store GPU index vectors in fp16")
    seed: int = option(0, cli=False, help="seed of the training sample")

    def __post_init__(self) -> None:
        check_options(self)


def build_index(embeddings: EmbeddingSet | str | Path, out_dir: str | Path, config: IndexConfig | None = None,
                show_progress: bool = False) -> DenseIndex:
    """Train (on a random sample of at most ``train_size`` vectors) and fill an index; save it atomically."""
    faiss = import_faiss()
    config = config or IndexConfig()
    emb = embeddings if isinstance(embeddings, EmbeddingSet) else EmbeddingSet.load(embeddings)
    if not emb.ids:
        raise MissingDataError(f"{emb.path} holds no vectors: encode a corpus with passages in it first")
    refuse_a_file(Path(out_dir), "--output", "a folder for the index")
    metric = faiss.METRIC_INNER_PRODUCT if config.metric == "ip" else faiss.METRIC_L2
    try:
        index = faiss.index_factory(emb.dim, config.factory, metric)
    except RuntimeError as err:
        raise ConfigError(f"FAISS cannot build {config.factory!r} (--factory): {_faiss_reason(err)}") from err
    work = to_gpu(index, config) if use_gpu(config) else index
    trained = not index.is_trained  # whether building trains it (IVF, PQ) on a sample
    if not index.is_trained:
        rng = np.random.default_rng(config.seed)
        n_train = min(config.train_size, len(emb.ids))
        sample = np.sort(rng.choice(len(emb.ids), size=n_train, replace=False))
        _check_enough_to_train(faiss, index, config.factory, n_train, len(emb.ids))
        log.info("training %s on %d vectors", config.factory, n_train)
        try:
            work.train(np.ascontiguousarray(emb.vectors[sample], dtype=np.float32))
        except RuntimeError as err:
            raise ConfigError(f"FAISS cannot train {config.factory!r} on {n_train} vectors: {_faiss_reason(err)} "
                              "(choose a smaller index, e.g. fewer IVF lists, or raise --train-size)") from err
    for start in tqdm(range(0, len(emb.ids), config.add_batch), desc="indexing", unit="batch",
                      disable=not show_progress, leave=False):
        work.add(np.ascontiguousarray(emb.vectors[start:start + config.add_batch], dtype=np.float32))
    if work is not index:
        index = faiss.index_gpu_to_cpu(work)
    artifact = ArtifactMeta(kind=KIND, encoder=emb.artifact.encoder, corpus=emb.artifact.corpus,
                            details={**emb.artifact.details, **_build_settings(config), "trained": trained,
                                     "ntotal": int(index.ntotal), "embeddings": str(emb.path)})
    save_index(index, emb.ids, artifact, out_dir)
    return DenseIndex(index=index, ids=emb.ids, meta=artifact.to_json(), config=config, path=Path(out_dir))


def build_or_reuse_index(embeddings: EmbeddingSet, out_dir: str | Path, config: IndexConfig | None = None,
                         show_progress: bool = False, replace_other: bool = False) -> tuple[DenseIndex, bool]:
    """The index in ``out_dir`` if it was built from ``embeddings`` with ``config``'s factory, metric and
    training sample (``(index, True)``), else a new one built there (``(index, False)``).

    An index of other embeddings or settings already in ``out_dir`` is refused (:class:`MismatchError`,
    saying what differs), unless ``replace_other`` (a work directory's cache), which rebuilds it.
    """
    config = config or IndexConfig()
    out_dir = Path(out_dir)
    if (out_dir / "index.json").exists():
        reason = index_differs(out_dir, embeddings, config)
        if reason is None:
            return DenseIndex.load(out_dir, config=config), True
        if not replace_other:
            raise MismatchError(f"{out_dir} already holds an index {reason}: choose another --output, or delete it "
                                "to build this one there")
        log.warning("%s holds an index %s: rebuilding it", out_dir, reason)
    return build_index(embeddings, out_dir, config, show_progress=show_progress), False  # search_params applied


def index_differs(index_dir: Path, embeddings: EmbeddingSet, config: IndexConfig) -> str | None:
    """Why the finished index in ``index_dir`` is not the one ``config`` would build from ``embeddings``
    (``"of other embeddings (...)"``, ``"built with other settings (...)"``), or None when it is."""
    found = ArtifactMeta.read(index_dir / "index.json", KIND)
    made_by = embeddings.artifact
    if found.encoder is None or made_by.encoder is None:
        return "whose encoder is not recorded"
    diffs = found.encoder.differences(made_by.encoder, PASSAGE_VECTOR_FIELDS)
    if diffs:
        return f"of another encoder's embeddings ({'; '.join(diffs)})"
    then, now = found.corpus, made_by.corpus
    then_digest, now_digest = (then.digest if then else None), (now.digest if now else None)
    same_folder = found.details.get("embeddings") == str(embeddings.path)
    if (then_digest is None or now_digest is None) and not (then_digest == now_digest and same_folder):
        return "whose corpus is not recorded (written by an older retromem)"
    if then_digest != now_digest:
        return f"of other embeddings (corpus digest {then_digest[:12]}, not {now_digest[:12]})"
    if found.details.get("ntotal") != len(embeddings.ids):
        return f"of other embeddings ({found.details.get('ntotal')} vectors, not {len(embeddings.ids)})"
    wanted = _build_settings(config)
    if not found.details.get("trained", True):  # the training sample's settings matter only to a trained index
        wanted = {k: v for k, v in wanted.items() if k not in ("train_size", "seed")}
    diffs = [f"{k}: {found.details.get(k)!r}, not {v!r}" for k, v in wanted.items()
             if found.details.get(k, v if k in ("train_size", "seed") else None) != v]
    return f"built with other settings ({'; '.join(diffs)})" if diffs else None


def save_index(index, ids: list[str], artifact: ArtifactMeta, out_dir: str | Path) -> None:
    """Write ``index.faiss``, ``ids.txt`` and ``index.json`` (last, so its presence means complete)."""
    faiss = import_faiss()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "index.json").unlink(missing_ok=True)
    with atomic_path(out_dir / "index.faiss") as tmp:
        faiss.write_index(index, str(tmp))
    with atomic_path(out_dir / "ids.txt") as tmp:
        tmp.write_text("\n".join(ids) + "\n", encoding="utf-8")
    artifact.write(out_dir / "index.json")


class DenseIndex:
    """A loaded index with its ids, ``meta`` (the JSON of ``index.json``) and ``artifact`` (the same, typed)."""

    def __init__(self, index, ids: list[str], meta: dict, config: IndexConfig | None = None,
                 path: Path | None = None):
        self.artifact = ArtifactMeta.from_json(meta, KIND, where=path)
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
        try:
            index = faiss.read_index(str(path / "index.faiss"))
        except RuntimeError as err:
            raise DataError(f"FAISS cannot read the index ({_faiss_reason(err)})", path / "index.faiss",
                            fix="the file is damaged or truncated: rebuild it with `retromem index build`") from err
        ids = read_ids(path / "ids.txt", fix="rebuild the index with `retromem index build`")
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
        where = f"the index {self.path}" if self.path else "the index"
        require_compatible(self.artifact, where, encoder=encoder_meta, fields=QUERY_FIELDS,
                           labels=("index", "query encoder"),
                           fix="search it with the encoder that built it, or rebuild the index")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` scores ``(n, k)`` and doc ids per query (fewer ids where the index has fewer hits)."""
        if k < 1:
            raise ConfigError(f"top_k (--top-k) must be at least 1, got {k}")
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
        raise ConfigError(f"cannot set search parameters {params!r} (--search-params): {_faiss_reason(err)}") from err


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


def _build_settings(config: IndexConfig) -> dict:
    """What of ``config`` shapes the built index (recorded in index.json, compared on reuse)."""
    return {"factory": config.factory, "metric": config.metric, "train_size": config.train_size, "seed": config.seed}


def _check_enough_to_train(faiss, index, factory: str, n_train: int, n_vectors: int) -> None:
    """Refuse an IVF index with more lists than training vectors, saying how many it needs."""
    try:
        nlist = faiss.extract_index_ivf(index).nlist
    except (RuntimeError, AttributeError):
        return
    if n_train < nlist:
        need = "raise --train-size" if n_train < n_vectors else "there are only that many vectors"
        raise ConfigError(f"factory (--factory) {factory!r} has {nlist} IVF lists, which need at least {nlist} "
                          f"training vectors (FAISS advises 39 per list, {39 * nlist}); it got {n_train} ({need}): "
                          f"use fewer lists, e.g. IVF{max(1, n_vectors // 39)},Flat, or Flat")


def _faiss_reason(err: Exception) -> str:
    """The last line of a FAISS error, without its C++ function and source location."""
    lines = str(err).strip().splitlines()
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", lines[-1]) if lines else type(err).__name__


def _is_gpu_index(index) -> bool:
    return "Gpu" in type(index).__name__ or "IndexShards" in type(index).__name__ \
        or "IndexReplicas" in type(index).__name__

