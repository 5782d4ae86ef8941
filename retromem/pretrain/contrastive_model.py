"""The model and loss of contrastive fine-tuning: a ``SentenceTransformer`` (Transformer + Pooling + optional
Normalize) and sentence-transformers' (Cached)MultipleNegativesRankingLoss.

The loss is InfoNCE over the other passages of the batch plus each pair's hard negatives; its ``Cached``
(GradCache) variant gives the large batches contrastive learning likes in the memory of a small one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MultipleNegativesRankingLoss,
)
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
from sentence_transformers.util import cos_sim, dot_score

from retromem.errors import ConfigError, RetromemError
from retromem.index.encoder import read_sentence_transformers_config
from retromem.model_paths import model_fingerprint, remote_code_refusal, resolve_model_path
from retromem.options import named
from retromem.pretrain.finetune_config import DEFAULT_MINI_BATCH, FinetuneConfig


def build_model(config: FinetuneConfig, fingerprint: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The ``SentenceTransformer`` to train (Transformer + Pooling + optional Normalize) and its settings.

    A folder with ``modules.json`` loads through ``SentenceTransformer`` (its pooling, normalisation,
    length and prompts are the defaults); a bare Hugging Face folder gets Transformer + Pooling built
    here. Modules retromem's encoder cannot reproduce (Dense, LayerNorm...) are refused. The settings
    (pooling, normalize, max_length, query_prefix, passage_prefix, model_path, fingerprint) are what
    mining's encoder uses and what the saved model records; ``fingerprint``, when the caller already
    has the model's (:func:`retromem.pretrain.finetune_inputs.input_digests`), saves hashing its weights again.
    """
    path = resolve_model_path(config.model)
    folder_settings = read_sentence_transformers_config(path) if Path(path).is_dir() else {}
    if (Path(path) / "modules.json").exists():
        with remote_code_refusal(config.model):
            loaded = SentenceTransformer(path, trust_remote_code=config.trust_remote_code, device="cpu")
        modules = list(loaded.children())
        if not modules or not isinstance(modules[0], Transformer) or not all(
                isinstance(m, (Pooling, Normalize)) for m in modules[1:]):
            names = [type(m).__name__ for m in modules]
            raise RetromemError(f"{path}: modules {names} are not Transformer + Pooling (+ Normalize), which is what "
                                "retromem's encoder can load; fine-tune a plain encoder folder instead")
        transformer = modules[0]
        prompts = dict(loaded.prompts or {})
    else:
        remote = {"trust_remote_code": bool(config.trust_remote_code)}  # False: refused, never asked at a prompt
        with remote_code_refusal(config.model):
            transformer = Transformer(path, model_kwargs=remote, processor_kwargs=remote, config_kwargs=remote)
        prompts = {}
    settings = {
        "pooling": config.pooling if config.pooling != "auto" else folder_settings.get("pooling", "cls"),
        "normalize": config.normalize,
        "max_length": _max_length(config, transformer, path),
        "query_prefix": config.query_prefix if config.query_prefix is not None else prompts.get("query", ""),
        "passage_prefix": (config.passage_prefix if config.passage_prefix is not None
                           else prompts.get("document", prompts.get("passage", prompts.get("corpus", "")))),
        "model_path": path,
        "fingerprint": fingerprint or model_fingerprint(path),
    }
    transformer.max_seq_length = settings["max_length"]
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode=settings["pooling"])]
    if settings["normalize"]:
        modules.append(Normalize())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(modules=modules, device=device,
                                prompts={"query": settings["query_prefix"], "document": settings["passage_prefix"]},
                                similarity_fn_name="cosine" if settings["normalize"] else "dot")
    return model, settings


def build_loss(config: FinetuneConfig, model, settings: dict[str, Any], distributed: bool = False) -> torch.nn.Module:
    """(Cached)MultipleNegativesRankingLoss with ``config.scale``; cosine when normalising, else dot product."""
    similarity = cos_sim if settings["normalize"] else dot_score
    if config.loss == "cached-mnrl":
        return CachedMultipleNegativesRankingLoss(model, scale=config.scale, similarity_fct=similarity,
                                                  mini_batch_size=config.mini_batch_size or DEFAULT_MINI_BATCH,
                                                  gather_across_devices=distributed)
    return MultipleNegativesRankingLoss(model, scale=config.scale, similarity_fct=similarity,
                                        gather_across_devices=distributed)


# ---- helpers ------------------------------------------------------------------------------------

def _max_length(config: FinetuneConfig, transformer, path: str) -> int:
    """``config.max_length``, refused beyond the model's position embeddings; else the model's own limit."""
    positions = getattr(transformer.auto_model.config, "max_position_embeddings", None)
    if config.max_length is not None and positions and config.max_length > positions:
        raise ConfigError(f"{named(config, 'max_length')} {config.max_length} is more than the {positions} positions "
                          f"of {path}: give at most {positions}")
    return config.max_length or _default_max_length(transformer)


def _default_max_length(transformer) -> int:
    """The model's own limit: the tokenizer's (or sentence-transformers') length, within the position embeddings."""
    positions = getattr(transformer.auto_model.config, "max_position_embeddings", None) or 512
    limit = transformer.max_seq_length
    if not limit or limit > 100_000:  # tokenizers without a limit report a huge number
        limit = 512
    return int(min(limit, positions))
