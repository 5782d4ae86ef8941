"""The pretraining driver: text -> :class:`PretrainModel` -> HF ``Trainer`` -> a saved encoder.

Running on the HF ``Trainer`` means the usual launchers just work: ``python``/``retromem pretrain``
trains on one device; ``accelerate launch`` or ``torchrun`` train data-parallel (DDP) on several GPUs
or nodes, and on a machine without GPUs on several CPU processes (gloo), e.g.
``accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no -m retromem.cli pretrain ...``.

Layout of ``output_dir``::

    retromem_pretrain_run.json   the PretrainConfig of the run (checked on resume)
    checkpoint-<step>/           Trainer checkpoints: the full PretrainModel (encoder + heads, via
                                 save_pretrained), optimizer.pt, scheduler.pt, rng_state*.pth,
                                 trainer_state.json (written last: a checkpoint without a readable one
                                 is incomplete and ignored on resume)
    tensorboard/                 with report_to="tensorboard"
    final/                       the result: PretrainModel.save_pretrained (loads with AutoModel,
                                 SentenceTransformer and PretrainModel.from_pretrained) + training_run.json

``final/`` is written to a temporary folder and renamed into place, so an interrupted save leaves the
previous ``final/`` (or none), never a broken one.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, Trainer, TrainerCallback, TrainingArguments, get_scheduler, set_seed
from transformers.trainer import TRAINER_STATE_NAME

from retromem.cpu_memory import keep_freed_memory
from retromem.data.pretrain_text import load_pretrain_segments
from retromem.device import PRECISIONS, has_accelerator, resolve_precision
from retromem.errors import MismatchError, RetromemError
from retromem.io import read_json, write_json_atomic
from retromem.model_paths import DEFAULT_MODEL, resolve_model_path
from retromem.pretrain.model import CONFIG_FILE as PRETRAIN_CONFIG_FILE
from retromem.pretrain.model import PretrainModel
from retromem.pretrain.objective import check_options_apply
from retromem.pretrain.trainer_utils import (
    CurrentIntervalsCallback,
    atomic_folder,
    check_resume,
    checkpoint_to_resume,
    log_through_logging,
    options_from_dict,
    plot_training_losses,
    reporters,
    run_complete,
)

log = logging.getLogger(__name__)

RUN_FILE = "retromem_pretrain_run.json"
#: Shortest document piece kept as a training example unless min_segment_length says otherwise.
DEFAULT_MIN_SEGMENT = 16
FINAL_DIR = "final"
#: The objective of a run from a plain encoder when none is given.
DEFAULT_OBJECTIVE = "retromae"
#: Config fields that must agree between a run and the run it resumes (the rest may change, e.g. logging).
_RESUME_MUST_MATCH = ("model", "objective", "objective_options", "from_scratch", "max_length",
                      "per_device_batch_size", "gradient_accumulation_steps", "data", "tokenizer", "text_field",
                      "title_field", "min_segment_length", "streaming", "learning_rate", "head_learning_rate",
                      "head_warmup_steps", "lr_scheduler", "warmup", "weight_decay", "max_grad_norm", "seed")


#: The ``retromem pretrain`` flag of each config field whose name differs from it, for messages.
FLAGS = {"per_device_batch_size": "--batch-size", "gradient_accumulation_steps": "--grad-accum",
         "learning_rate": "--lr", "head_learning_rate": "--head-lr", "output_dir": "--output",
         "objective_options": "the objective options"}


def named(field_name: str) -> str:
    """A config field as a message names it: ``learning_rate (--lr)``."""
    return f"{field_name} ({FLAGS.get(field_name, '--' + field_name.replace('_', '-'))})"


@dataclass
class PretrainConfig:
    """Everything one pretraining run needs; each field maps to a ``retromem pretrain`` option."""

    #: Text sources: paths, globs, BEIR names or ``kind:path`` (see :mod:`retromem.data.pretrain_text`).
    data: list[str] = field(default_factory=list)
    #: Checkpoints, logs and ``final/`` go here.
    output_dir: str = "runs/pretrain"
    #: Encoder to start from: alias (``minilm``), folder or hub id; with ``from_scratch`` only its config is used.
    model: str = DEFAULT_MODEL
    #: Objective spec, e.g. ``retromae``, ``retromae+bow``, ``mlm:1+bow:0.5`` (see retromem.pretrain.objective).
    #: None: the objective (and its options) saved in ``model`` when it is a pretraining folder (continuing a
    #: run with its heads), else ``retromae``.
    objective: str | None = None
    #: ObjectiveOptions fields, e.g. {"encoder_mask_ratio": 0.3, "enhanced_decoding": False}.
    objective_options: dict[str, Any] = field(default_factory=dict)
    #: Fresh random weights with ``model``'s config (a folder, alias, or a config.json with ``tokenizer``).
    from_scratch: bool = False
    #: Tokenizer to use instead of the model's own (required with a bare config.json).
    tokenizer: str | None = None
    # -- text --
    #: JSONL/datasets field holding the text; optional title field put before it; optional id field.
    text_field: str = "text"
    title_field: str | None = None
    id_field: str | None = None
    #: Document pieces with fewer tokens are not used (default: 16, or what the objective needs if more).
    min_segment_length: int | None = None
    #: Read and tokenise while training instead of tokenising once into the cache (needs ``max_steps``).
    streaming: bool = False
    #: Shuffle buffer (examples) for streaming text.
    shuffle_buffer: int = 10_000
    #: Processes for tokenising; cache folder (default $RETROMEM_CACHE or ~/.cache/retromem, /pretrain_text).
    num_proc: int | None = None
    cache_dir: str | None = None
    # -- optimisation --
    #: Tokens per encoder input, [CLS] and [SEP] included (CoT-MAE: per span).
    max_length: int = 128
    per_device_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    #: Learning rate of the heads (objective decoders, the MLM head's transform and bias); None: learning_rate.
    #: Heads a checkpoint lacks start random: a higher rate lets them catch up in a short run from a trained
    #: encoder, so that the encoder's gradients come from a decoder that already reads the [CLS] bottleneck.
    head_learning_rate: float | None = None
    #: Steps at the start in which only the heads train (the encoder's learning rate is 0), so that the
    #: encoder's first gradients come through trained heads, not random ones (LP-FT, Kumar et al. 2022);
    #: the encoder's own warm-up and schedule then run over the remaining steps. Part of the step budget.
    head_warmup_steps: int = 0
    #: transformers scheduler name: linear, cosine, constant_with_warmup, ...
    lr_scheduler: str = "linear"
    #: Below 1: a fraction of the steps; 1 or more: a number of steps.
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    #: When > 0, overrides ``epochs``.
    max_steps: int = -1
    epochs: float = 1.0
    seed: int = 42
    #: auto | fp32 | bf16 | fp16. auto: bf16 on CUDA GPUs that support it, else fp16 on CUDA; bf16
    #: autocast on CPUs with AVX512-BF16 or AMX-BF16; fp32 otherwise.
    precision: str = "auto"
    # -- bookkeeping --
    save_steps: int = 500
    #: Checkpoints kept (oldest deleted first); None keeps all.
    save_total_limit: int | None = 2
    logging_steps: int = 50
    #: none | tensorboard | wandb (comma-separated for several); TensorBoard logs go to output_dir/tensorboard.
    report_to: str = "none"
    #: auto: continue from the newest complete checkpoint in output_dir if any; never: refuse to start
    #: over existing checkpoints; or the path of a checkpoint to resume from.
    resume: str = "auto"
    dataloader_workers: int = 0
    #: Progress bars (tqdm, on stderr) for tokenising and training.
    show_progress: bool = True

    def validate(self) -> None:
        """Raise :class:`RetromemError` naming the bad option and its fix."""
        if not self.data:
            raise RetromemError("no pretraining data: give at least one --data source (text, JSONL, BEIR, datasets)")
        if self.precision not in PRECISIONS:
            raise RetromemError(f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        reporters(self.report_to)  # raises on an unknown name
        for name in ("max_length", "per_device_batch_size", "gradient_accumulation_steps", "save_steps",
                     "logging_steps", "shuffle_buffer"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise RetromemError(f"{named(name)} must be at least 1, got {getattr(self, name)}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise RetromemError(f"give {named('max_steps')} > 0 or {named('epochs')} > 0")
        if self.streaming and self.max_steps <= 0:
            raise RetromemError(f"streaming text has no known length: give {named('max_steps')}")
        if self.warmup < 0:
            raise RetromemError(f"{named('warmup')} must be >= 0, got {self.warmup}")
        if self.learning_rate <= 0:
            raise RetromemError(f"{named('learning_rate')} must be > 0, got {self.learning_rate}")
        if self.head_learning_rate is not None and self.head_learning_rate <= 0:
            raise RetromemError(f"{named('head_learning_rate')} must be > 0 (or unset), got {self.head_learning_rate}")
        if self.min_segment_length is not None and self.min_segment_length < 2:
            raise RetromemError(f"{named('min_segment_length')} must be at least 2 (one token to mask, one to see), "
                                f"got {self.min_segment_length}")
        if self.max_grad_norm < 0 or self.weight_decay < 0 or self.dataloader_workers < 0:
            raise RetromemError(f"{named('max_grad_norm')} ({self.max_grad_norm}), {named('weight_decay')} "
                                f"({self.weight_decay}) and {named('dataloader_workers')} ({self.dataloader_workers}) "
                                "must be >= 0")
        if self.head_warmup_steps < 0:
            raise RetromemError(f"{named('head_warmup_steps')} must be >= 0, got {self.head_warmup_steps}")
        if self.head_warmup_steps and 0 < self.max_steps <= self.head_warmup_steps:
            raise RetromemError(f"head_warmup_steps ({self.head_warmup_steps}) leaves none of the {self.max_steps} "
                                "steps to the encoder: give fewer head warm-up steps or more max_steps")
        check_resume(self.resume)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PretrainConfig:
        return options_from_dict(cls, values, "pretraining")


def pretrain(config: PretrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> Path:
    """Pretrain ``config.model`` with ``config.objective`` on ``config.data``; return the ``final/`` folder.

    Resumes from a checkpoint as ``config.resume`` says. Under ``accelerate launch``/``torchrun`` every
    process calls this; the data are tokenised by the first process of each node (the others wait and
    reuse its cache) and ``final/`` is written by the main process. ``callbacks`` are extra
    ``TrainerCallback`` objects (their hooks receive the unwrapped model and the optimizer).
    """
    config.validate()
    output_dir = Path(config.output_dir)
    precision = resolve_precision(config.precision)
    args = _training_arguments(config, output_dir, precision)  # also sets up torch.distributed under a launcher
    _one_device_without_launcher(args)
    checkpoint = checkpoint_to_resume(config.resume, output_dir, RUN_FILE, args.process_index == 0,
                                      functools.partial(_refuse_changed_run, config, args.world_size))
    if args.process_index == 0:
        write_json_atomic(output_dir / RUN_FILE, {**asdict(config), "precision_resolved": precision,
                                                  "world_size": args.world_size})

    if args.device.type == "cpu":
        # Tiny gradients and optimizer moments become subnormal floats, which x86 CPUs compute on up to
        # 10x slower; flushing them to zero changes nothing measurable in training.
        torch.set_flush_denormal(True)
        keep_freed_memory()  # large tensors reuse freed heap memory instead of page-faulting in fresh mmaps
    set_seed(config.seed)
    model = _build_model(config)
    segment_length = model.segment_length(config.max_length)
    if config.min_segment_length is not None and config.min_segment_length < model.min_segment_length:
        raise RetromemError(f"min_segment_length {config.min_segment_length} is below the {model.min_segment_length} "
                            f"tokens that {model.objective} needs per example: give at least "
                            f"{model.min_segment_length} (or leave it unset)")
    min_length = config.min_segment_length or min(segment_length, max(DEFAULT_MIN_SEGMENT, model.min_segment_length))
    with args.main_process_first(local=True, desc="tokenising pretraining text"):
        segments = load_pretrain_segments(
            config.data, model.tokenizer, segment_length, text_field=config.text_field,
            title_field=config.title_field, id_field=config.id_field, min_segment_length=min_length,
            streaming=config.streaming, num_proc=config.num_proc, cache_dir=config.cache_dir,
            show_progress=config.show_progress, processes=args.world_size,
        )
    train_data = segments.select_columns(["input_ids"])
    if config.streaming:
        train_data = train_data.shuffle(seed=config.seed, buffer_size=config.shuffle_buffer)
        if args.world_size > 1:
            # Each process reads its own share of the stream, and shares seldom hold the same number of
            # batches: a process whose share ran out would end its epoch (and, with gradient accumulation,
            # step on a partial group) while the others go on, and their collective calls would no longer
            # pair up (a hang). An endless share per process keeps them in step; max_steps ends the run.
            train_data = train_data.repeat(None)
    log.info("pretraining %s (%s) on %s segments of up to %d tokens, precision %s, %s",
             config.model, model.objective, getattr(segments, "num_rows", "streamed"), segment_length, precision,
             f"resuming from {checkpoint}" if checkpoint else "from step 0")

    trainer = PretrainTrainer(model=model, args=args, train_dataset=train_data,
                              head_learning_rate=config.head_learning_rate,
                              head_warmup_steps=config.head_warmup_steps,
                              data_collator=model.collator(config.max_length, seed=config.seed),
                              callbacks=[ProgressFractionCallback(model), CurrentIntervalsCallback(),
                                         *_report_callbacks(config, output_dir),
                                         *callbacks])
    log_through_logging(trainer, log)
    final = output_dir / FINAL_DIR
    if checkpoint is not None and run_complete(checkpoint, config.max_steps, config.epochs):
        # the run ended at this checkpoint (and crashed before final/ was written, or is run again):
        # resuming would train one more step (transformers steps once before it checks max_steps)
        log.info("%s is the end of the run: saving it as %s", checkpoint, final)
        trainer._load_from_checkpoint(str(checkpoint))
        state = read_json(checkpoint / TRAINER_STATE_NAME)
        global_step, metrics, log_history = state["global_step"], {}, state.get("log_history", [])
    else:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        global_step, metrics, log_history = trainer.state.global_step, result.metrics, trainer.state.log_history

    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        save_final(trainer.accelerator.unwrap_model(trainer.model), final, {
            "config": asdict(config), "objective": model.objective, "precision": precision,
            "global_step": global_step, "resumed_from": str(checkpoint) if checkpoint else None, "metrics": metrics,
            "segments": getattr(segments, "num_rows", None), "world_size": args.world_size,
            "torch": torch.__version__, "python": platform.python_version(),
        }, log_history)
    trainer.accelerator.wait_for_everyone()
    return final


def save_final(model: Any, final: Path, run_info: dict[str, Any],
               log_history: Sequence[dict[str, Any]] = ()) -> Path:
    """Save ``model`` to ``final`` atomically: write a sibling temp folder, then swap it in by renames.

    With the trainer's ``log_history``, ``training_loss.png`` plots the loss and its components.
    """
    with atomic_folder(final) as staging:
        model.save_pretrained(str(staging))
        write_json_atomic(staging / "training_run.json", run_info)
        objective = getattr(model, "objective", None) or run_info.get("config", {}).get("objective", "")
        plot_training_losses(log_history, staging / "training_loss.png", title=f"pretraining: {objective}")
    log.info("saved the pretrained model to %s", final)
    return final


class PretrainTrainer(Trainer):
    """``Trainer`` for :class:`PretrainModel`: its own save/load, and the loss components in the logs.

    Checkpoints hold ``PretrainModel.save_pretrained`` (encoder + heads, safetensors, tied weights
    handled by the model) instead of a raw state dict, and no pickled ``training_args.bin``.
    """

    def __init__(self, *args: Any, head_learning_rate: float | None = None, head_warmup_steps: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_learning_rate = head_learning_rate
        self.head_warmup_steps = head_warmup_steps
        self.model_accepts_loss_kwargs = False  # our loss is a per-batch mean: Trainer divides it for accumulation
        self.loss_is_scaled_for_ga = False
        self._component_sums: dict[str, torch.Tensor] = {}
        self._component_batches = 0

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The trainer's optimizer, with the heads' parameters in groups of their own (marked ``heads``) at
        ``head_learning_rate``, when the heads train at their own rate or warm up alone."""
        optimizer = super().create_optimizer(model)
        separate = self.head_learning_rate is not None or self.head_warmup_steps > 0
        if not separate or any(g.get("heads") for g in optimizer.param_groups):
            return optimizer
        target = self.accelerator.unwrap_model(self.model if model is None else model)
        heads = {id(p) for p in target.head_parameters()}
        head_lr = self.head_learning_rate or self.args.learning_rate
        head_groups = []
        for group in optimizer.param_groups:
            moved = [p for p in group["params"] if id(p) in heads]
            if moved:
                group["params"] = [p for p in group["params"] if id(p) not in heads]
                head_groups.append({**{k: v for k, v in group.items() if k != "params"},
                                    "params": moved, "lr": head_lr, "heads": True})
        optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
        for group in head_groups:
            optimizer.add_param_group(group)
        log.info("heads train at learning rate %g (%d tensors)%s, the encoder at %g", head_lr,
                 sum(len(g["params"]) for g in head_groups),
                 f", alone for the first {self.head_warmup_steps} steps" if self.head_warmup_steps else "",
                 self.args.learning_rate)
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """With ``head_warmup_steps``: the heads follow the usual schedule over every step; the encoder's
        rate is 0 for the head warm-up, then the same kind of schedule (its warm-up included) over the rest."""
        if not self.head_warmup_steps or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        optimizer = self.optimizer if optimizer is None else optimizer
        frozen = self.head_warmup_steps
        if frozen >= num_training_steps:
            raise RetromemError(f"head_warmup_steps {frozen} is not below the run's {num_training_steps} steps: the "
                                "encoder would never train; give fewer warm-up steps, or more --epochs/--max-steps")
        heads = self._schedule(num_training_steps)
        encoder = self._schedule(num_training_steps - frozen)

        def encoder_after_warmup(step: int) -> float:
            return 0.0 if step < frozen else encoder(step - frozen)

        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, [heads if group.get("heads") else encoder_after_warmup for group in optimizer.param_groups])
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def _schedule(self, steps: int):
        """The multiplier function of the configured transformers schedule over ``steps`` steps."""
        probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        schedule = get_scheduler(self.args.lr_scheduler_type, probe,
                                 num_warmup_steps=self.args.get_warmup_steps(steps), num_training_steps=steps,
                                 scheduler_specific_kwargs=self.args.lr_scheduler_kwargs)
        if not isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):
            raise RetromemError(f"head warm-up needs a step-wise schedule (linear, cosine, constant_with_warmup, ...),"
                                f" not {self.args.lr_scheduler_type!r}")
        return schedule.lr_lambdas[0]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs["loss"]
        if model.training:
            for name, value in outputs.items():
                if name.startswith("loss_") and torch.is_tensor(value) and value.numel() == 1:
                    total = self._component_sums.get(name)
                    value = value.detach().float()
                    self._component_sums[name] = value if total is None else total + value
            self._component_batches += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._component_batches:
            for name, total in sorted(self._component_sums.items()):
                mean = total / self._component_batches
                if self.args.world_size > 1:
                    mean = self.accelerator.reduce(mean, reduction="mean")
                logs[name] = round(mean.item(), 4)
            self._component_sums, self._component_batches = {}, 0
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        saved = type(target).from_pretrained(resume_from_checkpoint)
        target.load_state_dict(saved.state_dict())
        log.info("loaded the model (encoder and heads) from %s", resume_from_checkpoint)


class ProgressFractionCallback(TrainerCallback):
    """Tell the model how far training is before every step (``bow`` decays its weight with it)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def on_step_begin(self, args, state, control, **kwargs):
        self.model.set_progress(state.global_step / max(state.max_steps, 1))


# ---- helpers -----------------------------------------------------------------------------------

def _build_model(config: PretrainConfig) -> PretrainModel:
    """The model to train: a PretrainModel folder continues with its heads; an encoder gets fresh heads.

    Options given for objectives the run does not train are refused."""
    model = _load_model(config)
    check_options_apply(model.plan, config.objective_options)
    return model


def _load_model(config: PretrainConfig) -> PretrainModel:
    options = dict(config.objective_options)
    objective = config.objective or DEFAULT_OBJECTIVE
    if not config.from_scratch:
        path = resolve_model_path(config.model)
        if (Path(path) / PRETRAIN_CONFIG_FILE).is_file() and not config.tokenizer:
            log.info("continuing pretraining from %s with its heads", path)
            return PretrainModel.from_pretrained(path, objective=config.objective, **options)
        return PretrainModel.from_encoder(path, objective=objective, tokenizer=config.tokenizer, **options)
    source = config.model if config.model.endswith(".json") else resolve_model_path(config.model)
    tokenizer = config.tokenizer or (None if source.endswith(".json") else source)
    if tokenizer is None:
        raise RetromemError(f"training from the config file {source} needs a tokenizer: give --tokenizer")
    return PretrainModel.from_encoder(AutoConfig.from_pretrained(source), objective=objective,
                                      tokenizer=tokenizer, **options)


def _implied_objective(config: PretrainConfig) -> str:
    """What ``objective=None`` trains: the objective saved in a pretraining folder given as ``model``, else retromae."""
    if not config.from_scratch and not config.tokenizer:
        saved = Path(resolve_model_path(config.model)) / PRETRAIN_CONFIG_FILE
        if saved.is_file():
            return read_json(saved)["objective"]
    return DEFAULT_OBJECTIVE


def _one_device_without_launcher(args: TrainingArguments) -> None:
    """Train on one GPU when several are visible but no launcher started one process per GPU.

    The HF Trainer would wrap the model in ``nn.DataParallel``, whose replicas split a batch by rows:
    the MLM head's tie to the word embeddings would point at the first GPU's copy from the others, and
    CoT-MAE's span pairs (rows i and n+i) would land on different GPUs.
    """
    if args.n_gpu > 1 and args.world_size == 1:
        log.warning("%d GPUs are visible but this is one process: training on one GPU; to use them all run "
                    "`accelerate launch --multi_gpu --num_processes %d -m retromem.cli pretrain ...` (or torchrun)",
                    args.n_gpu, args.n_gpu)
        args._n_gpu = 1


def _training_arguments(config: PretrainConfig, output_dir: Path, precision: str) -> TrainingArguments:
    report_to = [r for r in reporters(config.report_to) if r not in ("none", "tensorboard")]
    # Streamed text is an IterableDataset, which accelerate by default reads on the first process only and
    # dispatches as slices of the concatenated batches of all processes: that needs batches of one width and
    # row count, which the collator (each batch padded to its longest text, short texts dropped) does not
    # give, and slicing would split CoT-MAE's span pairs. Each process reads its own share instead
    # (whole data files when they split evenly among the processes, else every n-th batch).
    accelerator_config = {"dispatch_batches": False} if config.streaming else None
    return TrainingArguments(
        accelerator_config=accelerator_config,
        output_dir=str(output_dir),
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup if config.warmup < 1 else int(config.warmup),
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        num_train_epochs=config.epochs,
        seed=config.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not has_accelerator(),
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        report_to=report_to or "none",
        dataloader_num_workers=config.dataloader_workers,
        remove_unused_columns=False,
        disable_tqdm=not config.show_progress,
    )


def _refuse_changed_run(config: PretrainConfig, world_size: int, checkpoint: Path, previous: dict[str, Any]) -> None:
    """Refuse to resume ``checkpoint`` of a run (its settings: ``previous``) that differs in _RESUME_MUST_MATCH
    or in the number of processes (which sets the batch, and where in the data a step is)."""
    current = {**json.loads(json.dumps(asdict(config))), "world_size": world_size}  # as written: tuples -> lists
    # no objective means the same as naming the one it stands for (the model is the same, or refused)
    implied = _implied_objective(config)
    current["objective"] = current["objective"] or implied
    if "objective" in previous:
        previous = {**previous, "objective": previous["objective"] or implied}
    changed = [k for k in (*_RESUME_MUST_MATCH, "world_size") if k in previous and previous[k] != current[k]]
    if changed:
        what = "; ".join(f"{'the number of processes' if k == 'world_size' else named(k)}: {previous[k]!r} in "
                         f"that run, {current[k]!r} now" for k in changed)
        raise MismatchError(f"cannot resume {checkpoint}, written with other settings ({what}): use the same "
                            "options, or another --output to start afresh")


def _report_callbacks(config: PretrainConfig, output_dir: Path) -> list[TrainerCallback]:
    if "tensorboard" not in reporters(config.report_to):
        return []
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    callback.logging_dir = str(output_dir / "tensorboard")  # writer opens on the main process at train begin
    return [callback]
