"""The options of one pretraining run (:class:`PretrainConfig`), each declared beside its ``retromem pretrain``
flag and help; the run lifecycle's shared options come from :class:`retromem.pretrain.run_settings.RunSettings`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from retromem.errors import ConfigError
from retromem.model_paths import DEFAULT_MODEL
from retromem.options import named, option
from retromem.pretrain.run_settings import RunSettings, usable_cpus

#: The transformers schedules a run can use: step-wise, needing no options of their own.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")
#: Examples held in the shuffle buffer of streamed text unless shuffle_buffer says otherwise.
DEFAULT_SHUFFLE_BUFFER = 10_000


@dataclass
class PretrainConfig(RunSettings):
    """Everything one pretraining run needs; each field is a ``retromem pretrain`` option (its flag beside it)."""

    RUN_FILE = "retromem_pretrain_run.json"
    KIND = "pretraining"
    RESUME_MUST_MATCH = (*RunSettings.RESUME_MUST_MATCH, "model", "objective", "objective_options", "from_scratch",
                         "max_length", "per_device_batch_size", "gradient_accumulation_steps", "data", "tokenizer",
                         "text_field", "title_field", "min_segment_length", "streaming", "learning_rate",
                         "head_learning_rate", "head_warmup_steps", "lr_scheduler", "warmup", "seed")

    data: list[str] = option(default_factory=list, help="text sources: plain-text files (one paragraph a line), JSONL "
                             "files (--text-field), BEIR data set names or corpus.jsonl files, or kind:path with kind "
                             "in text, jsonl, beir, datasets; globs allowed")
    output_dir: str = option("runs/pretrain", flag="--output", metavar="OUTPUT",
                             help="run folder: checkpoints, logs, final/")
    model: str = option(DEFAULT_MODEL, help="encoder to start from: alias (minilm), folder or hub id")
    from_scratch: bool = option(False, help="random weights with --model's config: a folder or alias (whose own "
                                "tokenizer is used unless --tokenizer names another), or a config.json file (which "
                                "needs --tokenizer)")
    tokenizer: str | None = option(None, help="tokenizer folder or hub id, instead of the model's own (needed with "
                                   "--from-scratch and a config.json)")
    objective: str | None = option(None, help="objectives and weights, '+'-joined: mlm, retromae, dupmae, cotmae, "
                                   "bow, matryoshka; e.g. retromae, retromae+bow, mlm:1+bow:0.5, retromae+matryoshka "
                                   "(default: the objective saved in --model when it is a retromem pretraining "
                                   "folder and no --tokenizer is given, which continues with its heads and options; "
                                   "else retromae)")
    objective_options: dict[str, Any] = option(default_factory=dict, cli=False,
                                               help="ObjectiveOptions fields given explicitly, e.g. "
                                               "{'encoder_mask_ratio': 0.3, 'enhanced_decoding': False}")
    # -- text --
    text_field: str = option("text", help="JSONL / datasets field with the text")
    title_field: str | None = option(None, help="JSONL / datasets field put before the text")
    id_field: str | None = option(None, help="JSONL / datasets field with a document id")
    min_segment_length: int | None = option(None, min=2, help="shorter document pieces are not used (tokens; one "
                                            "to mask and one to see at least; unset: 16, or the segment length when "
                                            "shorter)")
    streaming: bool = option(False, help="tokenise while training instead of once into the cache (corpora larger "
                             "than disk; needs --max-steps)")
    num_proc: int | None = option(None, min=1, help="processes for tokenising (at most the CPUs here)")
    shuffle_buffer: int | None = option(None, min=1, help=f"--streaming: examples held in the shuffle buffer "
                                        f"(default {DEFAULT_SHUFFLE_BUFFER}; more mixes better and uses more memory)")
    dataloader_workers: int = option(0, min=0, help="processes that collate batches beside training (0: in the "
                                     "training process; at most the CPUs here)")
    cache_dir: str | None = option(None, help="tokenised-text cache (unset: $RETROMEM_CACHE/pretrain_text, "
                                   "~/.cache/retromem/pretrain_text without it)")
    # -- optimisation --
    max_length: int = option(128, min=4, help="tokens per encoder input, [CLS] and [SEP] included (CoT-MAE: per "
                             "span); at most the model's positions")
    per_device_batch_size: int = option(16, flag="--batch-size", metavar="BATCH_SIZE", min=1,
                                        help="examples per device per step")
    gradient_accumulation_steps: int = option(1, flag="--grad-accum", metavar="GRAD_ACCUM", min=1,
                                             help="gradient accumulation steps")
    learning_rate: float = option(1e-4, flag="--lr", metavar="LR", gt=0, help="peak learning rate")
    head_learning_rate: float | None = option(
        None, flag="--head-lr", metavar="HEAD_LR", gt=0, help="learning rate of the heads (decoders, MLM head "
        "transform and bias; default: --lr); heads the checkpoint lacks start random, and a higher rate lets them "
        "catch up in a short run from a trained encoder")
    # no declared bound: validate() says ">= 0" (and whether the encoder keeps some of the steps)
    head_warmup_steps: int = option(0, help="first steps in which only the heads train (encoder frozen), so that the "
                                    "encoder's first gradients come through trained heads; part of the step budget")
    lr_scheduler: str = option("linear", choices=LR_SCHEDULERS, help="transformers learning-rate schedule")
    warmup: float = option(0.1, min=0, help="warm-up: a fraction of the steps (below 1) or a whole number of steps "
                           "(1 or more)")

    def validate(self) -> None:
        """Raise :class:`retromem.errors.RetromemError` naming the bad option and its fix."""
        if not self.data:
            raise ConfigError("no pretraining data: give at least one --data source (text, JSONL, BEIR, datasets)")
        self.check_run_options()
        if self.streaming and self.max_steps <= 0:
            raise ConfigError(f"streaming text has no known length: give {named(self, 'max_steps')}")
        if self.shuffle_buffer is not None and not self.streaming:
            raise ConfigError(f"{named(self, 'shuffle_buffer')} acts on --streaming text only (a tokenised cache is "
                              "shuffled whole): drop it, or add --streaming")
        if self.warmup >= 1 and not float(self.warmup).is_integer():
            raise ConfigError(f"{named(self, 'warmup')} of 1 or more is a number of steps: give a whole number (or a "
                              f"fraction below 1), got {self.warmup}")
        if self.warmup >= 1 and 0 < self.max_steps < self.warmup:
            raise ConfigError(f"{named(self, 'warmup')} of {self.warmup:g} steps is longer than the run's "
                              f"{self.max_steps}: the learning rate would never reach --lr; give fewer warm-up steps")
        if self.head_warmup_steps < 0:
            raise ConfigError(f"{named(self, 'head_warmup_steps')} must be >= 0, got {self.head_warmup_steps}")
        if self.head_warmup_steps and 0 < self.max_steps <= self.head_warmup_steps:
            raise ConfigError(f"{named(self, 'head_warmup_steps')} {self.head_warmup_steps} leaves none of the "
                              f"{self.max_steps} steps to the encoder: give fewer head warm-up steps or more "
                              f"{named(self, 'max_steps')}")
        for name in ("num_proc", "dataloader_workers"):
            value, cpus = getattr(self, name), usable_cpus()
            if value is not None and value > cpus:
                raise ConfigError(f"{named(self, name)} {value} is more processes than the {cpus} CPUs here: give at "
                                  f"most {cpus}")
