"""What a fine-tuning run reads, by content, and what follows from it: the digests of its inputs, the data key
that names its training tuples, and whether ``final/`` already holds this very run.

A model folder retrained in place, a BEIR file or a JSONL file edited in place, or a data set name that
now resolves to another folder, all make another run. Files above 256 MiB are fingerprinted by size,
modification time and their first and last MiB (:func:`retromem.artifacts.file_digest`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from retromem.artifacts import file_digest
from retromem.data.beir import corpus_file, qrels_file, resolve_beir_dir
from retromem.io import read_json
from retromem.model_paths import model_fingerprint, resolve_model_path
from retromem.pretrain.finetune_config import FinetuneConfig

#: Settings that change the training tuples: a rerun with the same values reuses train_examples.jsonl.
DATA_KEYS = ("model", "beir", "beir_split", "jsonl", "pooling", "normalize", "max_length", "query_prefix",
             "passage_prefix", "hard_negatives", "negatives_source", "mine_top_k", "mine_skip", "mine_sampling",
             "mine_max_score_ratio", "mining_model", "precision", "seed")


def input_digests(config: FinetuneConfig) -> dict[str, Any]:
    """The starting (and mining) model's weights and the training files, by content."""
    digests: dict[str, Any] = {"model": model_fingerprint(resolve_model_path(config.model))}
    if config.mining_model:
        digests["mining_model"] = model_fingerprint(resolve_model_path(config.mining_model))
    if config.beir:
        root = resolve_beir_dir(config.beir)
        files = [corpus_file(root), root / "queries.jsonl", qrels_file(root, config.beir_split)]
        digests["beir"] = {"root": str(root.resolve()), **{f.name: file_digest(f) for f in files}}
    if config.jsonl:
        digests["jsonl"] = [file_digest(p) for p in config.jsonl]
    return digests


def data_key(config: FinetuneConfig, settings: dict[str, Any], inputs: dict[str, Any]) -> str:
    """A digest of everything that makes the training tuples: the data settings, the model's resolved
    settings and the inputs' digests."""
    values = {k: getattr(config, k) for k in DATA_KEYS}
    values.update(settings)
    values["inputs"] = inputs
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finished_before(final: Path, record_file: str, config: FinetuneConfig, inputs: dict[str, Any]) -> bool:
    """Whether ``final`` was written by a run with these settings (bookkeeping options aside) and inputs."""
    if not (final / record_file).exists():
        return False
    info = read_json(final / record_file)
    previous = info.get("config", {})
    current = config.as_written()
    same_inputs = info.get("input_digests") == json.loads(json.dumps(inputs))
    return same_inputs and all(previous.get(k) == v for k, v in current.items() if k not in config.BOOKKEEPING)
