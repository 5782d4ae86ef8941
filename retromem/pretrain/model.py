"""PretrainModel: an encoder, its MLM head and the objectives' heads, trained with one forward.

::

    model = PretrainModel.from_encoder("minilm", objective="retromae+bow")
    collator = model.collator(max_length=128)          # list[{"input_ids": [...]}] -> batch
    out = model(**collator(examples))                   # {"loss", "loss_mlm", "loss_retromae", "loss_bow"}
    model.save_pretrained("out/")                       # AutoModel + SentenceTransformer (CLS) + heads
    model = PretrainModel.from_pretrained("out/")       # continue with the same heads and objective

The MLM head is the checkpoint's own (``AutoModelForMaskedLM``'s head; when the checkpoint is a
bare encoder such as MiniLM, its transform starts fresh) with its output projection tied to the
encoder's word embeddings *through the module structure*: the head reads the embedding matrix at
call time instead of registering a second reference to it, so ``state_dict()`` holds each tensor
once and a plain HF ``Trainer`` (which saves a non-``PreTrainedModel`` with
``safetensors.save_file``, refusing shared tensors) checkpoints and resumes it as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from retromem import __version__
from retromem.errors import MismatchError, MissingDataError, RetromemError
from retromem.io import read_json, usual_modes, write_json_atomic
from retromem.model_paths import resolve_model_path
from retromem.pretrain.collators import PretrainCollator
from retromem.pretrain.masking import TokenMasker
from retromem.pretrain.mlm import shared_casts
from retromem.pretrain.mlm_head import MLMHead
from retromem.pretrain.objective import ObjectivePlan
from retromem.pretrain.objective_base import EncoderPass
from retromem.pretrain.objective_options import ObjectiveError

logger = logging.getLogger(__name__)

HEADS_FILE = "pretrain_heads.safetensors"
CONFIG_FILE = "pretrain_config.json"
FORMAT_VERSION = 1


class PretrainModel(nn.Module):
    """Encoder + tied MLM head + objective heads; ``forward(**batch)`` returns the weighted losses."""

    #: Tells HF Trainer not to pass ``num_items_in_batch``: the losses are means already.
    accepts_loss_kwargs = False

    def __init__(self, encoder: nn.Module, mlm_head: MLMHead, plan: ObjectivePlan, tokenizer: Any):
        super().__init__()
        if not hasattr(encoder, "embeddings"):
            raise RetromemError(
                f"{type(encoder).__name__} has no 'embeddings' module: pretraining supports BERT-like encoders"
            )
        self.encoder = encoder
        self.mlm_head = mlm_head
        self.plan = plan
        self.heads = nn.ModuleDict(plan.build_heads(encoder.config))
        self.tokenizer = tokenizer
        self.masker = TokenMasker.from_tokenizer(tokenizer)
        vocab = self.encoder.get_input_embeddings().weight.shape[0]
        if self.masker.vocab_size > vocab:
            raise MismatchError(
                f"the tokenizer has {self.masker.vocab_size} tokens but the encoder's embeddings only {vocab}: "
                "use the encoder's own tokenizer (or resize the embeddings)"
            )
        self._hidden_states = plan.hidden_layers_needed(int(encoder.config.num_hidden_layers))
        #: The sentence-transformers max_seq_length of the folder this model was loaded from (None: none),
        #: which the saved encoder keeps: pretraining does not lengthen the texts the encoder is meant for.
        self.source_max_seq_length: int | None = None
        _freeze_pooler(encoder)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_encoder(
        cls,
        name_or_config: str | os.PathLike | Any,
        objective: str = "retromae",
        *,
        tokenizer: str | Any | None = None,
        **objective_options: Any,
    ) -> PretrainModel:
        """Start pretraining from an encoder checkpoint (alias, folder, hub id) or a config (from scratch).

        With a ``transformers.PretrainedConfig`` every weight starts fresh and ``tokenizer`` (a
        name/path or a tokenizer object) is required. ``objective_options`` are the fields of
        :class:`retromem.pretrain.objective.ObjectiveOptions`.
        """
        from transformers import AutoModel, AutoModelForMaskedLM, PretrainedConfig

        plan = ObjectivePlan(objective, **objective_options)
        if isinstance(name_or_config, PretrainedConfig):
            if tokenizer is None:
                raise ObjectiveError("training from a config needs a tokenizer: pass tokenizer=<name, path or object>")
            tok = _load_tokenizer(tokenizer)
            with _unsupported_model(type(name_or_config).__name__):
                encoder = AutoModel.from_config(name_or_config)
                mlm_model = AutoModelForMaskedLM.from_config(name_or_config)
        else:
            path = resolve_model_path(str(name_or_config))
            with _unsupported_model(path):  # a model of its own code is refused (False: never asked at a prompt)
                tok = _load_tokenizer(tokenizer if tokenizer is not None else path)
                encoder = AutoModel.from_pretrained(path, trust_remote_code=False)
                with _quiet_transformers():  # its load report lists the head we know may be missing
                    mlm_model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True,
                                                                           trust_remote_code=False)
            fresh = [k for k in info.get("missing_keys", []) if not k.startswith(mlm_model.base_model_prefix + ".")]
            if fresh:
                logger.info("%s has no MLM head weights for %s: initialised fresh (output tied to the word embeddings)",
                            path, ", ".join(sorted(fresh)))
        mlm_head = MLMHead.from_masked_lm(mlm_model, encoder)
        del mlm_model
        model = cls(encoder, mlm_head, plan, tok)
        if not isinstance(name_or_config, PretrainedConfig):
            model.source_max_seq_length = _sentence_transformer_max_length(Path(path))
        return model

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, objective: str | None = None, **objective_options: Any
    ) -> PretrainModel:
        """Load a folder written by :meth:`save_pretrained`, heads included, to continue pretraining.

        With no ``objective`` (or the saved one) the saved options apply, updated by
        ``objective_options``; a different objective starts from its defaults, keeps the heads that
        it shares with the saved one (the MLM head always) and starts the others fresh.
        """
        from transformers import AutoModel, AutoModelForMaskedLM

        folder = Path(path)
        config_path = folder / CONFIG_FILE
        if not config_path.is_file():
            raise MissingDataError(
                f"{folder} has no {CONFIG_FILE}: it was not saved by PretrainModel.save_pretrained "
                "(start from a plain encoder with PretrainModel.from_encoder(path, objective=...))"
            )
        saved = read_json(config_path)
        objective_options = {k: v for k, v in objective_options.items() if v is not None}
        same = objective is None or ObjectivePlan(objective).spec == ObjectivePlan(saved["objective"]).spec
        options = {**saved["options"], **objective_options} if same else dict(objective_options)
        plan = ObjectivePlan(saved["objective"] if objective is None else objective, **options)
        if not same:
            now = plan.options.to_dict()
            dropped = {k: v for k, v in saved["options"].items() if k in now and now[k] != v}
            if dropped:
                logger.warning("%s: continuing with %s instead of %s, the saved options %s are not carried over "
                               "(now %s); give them again to keep them", folder, plan.spec, saved["objective"],
                               ", ".join(f"{k}={v!r}" for k, v in dropped.items()),
                               ", ".join(f"{k}={now[k]!r}" for k in dropped))
        tok = _load_tokenizer(str(folder))
        encoder = AutoModel.from_pretrained(str(folder), trust_remote_code=False)
        with torch.device("meta"):
            skeleton = AutoModelForMaskedLM.from_config(encoder.config)
        mlm_head = MLMHead.from_masked_lm(skeleton, encoder, tied=saved.get("tied_word_embeddings", True))
        del skeleton
        mlm_head.to_empty(device="cpu")
        model = cls(encoder, mlm_head, plan, tok)
        model._load_heads(folder / HEADS_FILE)
        model.source_max_seq_length = _sentence_transformer_max_length(folder)
        return model

    # -- the contract used by the training driver -------------------------------------------------

    @property
    def config(self):
        """The encoder's config."""
        return self.encoder.config

    @property
    def objective(self) -> str:
        """The canonical objective spec, e.g. ``"mlm:1+retromae:1+bow:1"``."""
        return self.plan.spec

    @property
    def min_segment_length(self) -> int:
        """Fewest ordinary tokens an example needs; the collator drops shorter ones (with a warning)."""
        return self.plan.min_tokens

    def segment_length(self, max_length: int) -> int:
        """Ordinary tokens (no specials) one example should carry for inputs of ``max_length`` tokens."""
        self._check_max_length(max_length)
        return self.plan.segment_length(max_length)

    def collator(
        self, max_length: int, pad_to_multiple_of: int | None = None, generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> PretrainCollator:
        """A batch collator: callable(list[{"input_ids": [...]}]) -> dict of tensors for ``forward``.

        Its random draws (the encoder's and a basic decoder's masks) come from ``generator``; else, with a
        ``seed``, from a generator seeded by it and each batch's tokens; else from torch's global one.
        """
        self._check_max_length(max_length)
        return PretrainCollator(self.plan, self.masker, max_length, pad_to_multiple_of, generator, seed)

    def head_parameters(self) -> list[nn.Parameter]:
        """The heads' parameters: the objectives' decoders and the MLM head (not the tied word embeddings)."""
        encoder = {id(p) for p in self.encoder.parameters()}
        params = [*self.heads.parameters(), *self.mlm_head.parameters()]
        unique = {id(p): p for p in params if id(p) not in encoder}
        return list(unique.values())

    def set_progress(self, fraction: float) -> None:
        """Where training is, in [0, 1] (global_step / max_steps); drives bow's weight decay."""
        self.plan.set_progress(fraction)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One encoder pass over the masked input, then every objective's losses.

        Returns ``loss`` (the weighted sum, to backpropagate) and ``loss_<component>`` for each
        component (unweighted, detached, for logging).
        """
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if decoder_input_ids is not None:
            batch["decoder_input_ids"] = decoder_input_ids
            batch["decoder_labels"] = decoder_labels
        with shared_casts():  # the vocabulary matrix is cast to the autocast dtype once for every loss
            return self._forward(batch)

    def _forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        output = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=self._hidden_states,
            return_dict=True,
        )
        encoded = EncoderPass(
            batch=batch,
            hidden=output.last_hidden_state,
            hidden_states=output.hidden_states if self._hidden_states else None,
            embeddings=self.encoder.embeddings,
            mlm_head=self.mlm_head,
            config=self.encoder.config,
            heads=dict(self.heads),
            objectives=self.plan.objectives,
        )
        losses = self.plan.losses(encoded)
        total = sum(loss * weight for loss, weight in losses.values())
        result = {"loss": total}
        result.update({f"loss_{name}": loss.detach() for name, (loss, _) in losses.items()})
        return result

    def save_pretrained(self, out_dir: str | os.PathLike, max_seq_length: int | None = None) -> None:
        """Write the encoder (AutoModel + SentenceTransformer with CLS pooling), tokenizer and heads.

        Files are staged in a temporary folder beside ``out_dir`` and each moved into place
        atomically (other files already in ``out_dir`` stay). ``max_seq_length`` is the
        SentenceTransformer's (default: the encoder's limit). Refuses a folder whose
        ``model.safetensors`` is this wrapper's whole state dict (what the stock ``Trainer._save``
        writes), since the encoder's weights would replace it.
        """
        out = Path(out_dir)
        if _holds_wrapper_state(out / "model.safetensors"):
            raise RetromemError(
                f"{out}/model.safetensors is a PretrainModel state dict (a stock Trainer checkpoint): "
                "save the encoder into another folder, e.g. checkpoint-N/encoder"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            self.encoder.save_pretrained(str(staging))
            self.tokenizer.save_pretrained(str(staging))
            dimension = int(self.encoder.config.hidden_size)
            _write_sentence_transformer(staging, dimension, self._st_max_length(max_seq_length))
            save_file(self._heads_state(), str(staging / HEADS_FILE), metadata={"format": "pt"})
            write_json_atomic(staging / CONFIG_FILE, {
                "format_version": FORMAT_VERSION,
                **self.plan.to_dict(),
                "tied_word_embeddings": self.mlm_head.weight is None,
                "encoder_class": type(self.encoder).__name__,
                "heads": ["mlm_head", *sorted(self.heads)],
                "sentence_embedding": "cls",
                "retromem_version": __version__,
            })
            usual_modes(staging)
            _move_tree(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute the encoder's activations in backward (what Trainer's gradient_checkpointing calls)."""
        self.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    # -- helpers ----------------------------------------------------------------------------------

    def _check_max_length(self, max_length: int) -> None:
        limit = getattr(self.encoder.config, "max_position_embeddings", None)
        if limit is not None and int(max_length) > int(limit):
            raise ObjectiveError(f"max_length (--max-length) {max_length} exceeds the encoder's {limit} positions: "
                                 f"give at most {limit}")

    def _st_max_length(self, max_seq_length: int | None) -> int | None:
        if max_seq_length is not None:
            return int(max_seq_length)
        if self.source_max_seq_length is not None:
            return int(self.source_max_seq_length)
        limits = [
            getattr(self.encoder.config, "max_position_embeddings", None),
            getattr(self.tokenizer, "model_max_length", None),
        ]
        limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
        return min(limits) if limits else None

    def _heads_state(self) -> dict[str, torch.Tensor]:
        state = {f"mlm_head.{k}": v for k, v in self.mlm_head.state_dict().items()}
        state.update({f"heads.{k}": v for k, v in self.heads.state_dict().items()})
        return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}

    def _load_heads(self, path: Path) -> None:
        if not path.is_file():
            raise MissingDataError(f"{path} is missing: the heads of {path.parent} cannot be restored")
        state = load_file(str(path))
        self.mlm_head.load_state_dict(_prefixed(state, "mlm_head."), strict=True)
        saved_names = {k.split(".")[1] for k in state if k.startswith("heads.")}
        for name, head in self.heads.items():
            part = _prefixed(state, f"heads.{name}.")
            if not part:
                logger.warning("%s has no saved %s head: it starts fresh", path.parent, name)
                continue
            try:
                head.load_state_dict(part, strict=True)
            except RuntimeError as err:
                raise MismatchError(
                    f"the saved {name} head in {path} does not fit the objective options "
                    f"(decoder_layers differs?): {err}"
                ) from err
        for name in sorted(saved_names - set(self.heads)):
            logger.warning("%s: saved %s head not used by objective %s", path.parent, name, self.plan.spec)


def _holds_wrapper_state(path: Path) -> bool:
    """True if ``path`` is a safetensors file of PretrainModel.state_dict() (keys of its MLM head)."""
    if not path.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return any(key.startswith("mlm_head.") for key in handle.keys())  # noqa: SIM118 (not a dict)


def _freeze_pooler(encoder: nn.Module) -> None:
    """The pooler is not trained by these objectives; freezing it keeps DDP from waiting on its gradients."""
    pooler = getattr(encoder, "pooler", None)
    if isinstance(pooler, nn.Module):
        for param in pooler.parameters():
            param.requires_grad_(False)


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' warnings for one call (restoring the previous verbosity)."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _load_tokenizer(tokenizer: str | Any):
    from transformers import AutoTokenizer

    if isinstance(tokenizer, (str, os.PathLike)):
        return AutoTokenizer.from_pretrained(resolve_model_path(str(tokenizer)), trust_remote_code=False)
    return tokenizer


def _sentence_transformer_max_length(folder: Path) -> int | None:
    """``max_seq_length`` of a sentence-transformers folder's ``sentence_bert_config.json`` (None: none)."""
    path = folder / "sentence_bert_config.json"
    if not path.is_file():
        return None
    value = read_json(path).get("max_seq_length")
    return int(value) if isinstance(value, int) and value > 0 else None


def _write_sentence_transformer(folder: Path, dimension: int, max_seq_length: int | None) -> None:
    """Have sentence-transformers write its own files for Transformer + Pooling(cls), no normalisation."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    kwargs = {"max_seq_length": max_seq_length} if max_seq_length else {}
    transformer = Transformer(str(folder), **kwargs)
    pooling = Pooling(dimension, pooling_mode="cls")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(folder), create_model_card=False)


def _move_tree(staging: Path, out: Path) -> None:
    """Move every file of ``staging`` to the same place under ``out`` (os.replace: atomic per file)."""
    for source in sorted(staging.rglob("*")):
        if source.is_file():
            target = out / source.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@contextlib.contextmanager
def _unsupported_model(what: str):
    """transformers' ValueError for a model kind it cannot build as an encoder with an MLM head, as one line."""
    try:
        yield
    except ValueError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MismatchError(f"{what} cannot be pretrained here: {first} (pretraining needs a BERT-like encoder "
                            "that transformers' AutoModelForMaskedLM can build)") from err
