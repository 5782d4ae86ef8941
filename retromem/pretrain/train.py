"""The pretraining driver: text -> :class:`PretrainModel` -> HF ``Trainer`` -> a saved encoder.

Running on the HF ``Trainer`` means the usual launchers just work: ``python``/``retromem pretrain``
trains on one device; ``accelerate launch`` or ``torchrun`` train data-parallel (DDP) on several GPUs
or nodes, and on a machine without GPUs on several CPU processes (gloo), e.g.
``accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no -m retromem.cli pretrain ...``.

Layout of ``output_dir``::

    retromem_pretrain_run.json   the PretrainConfig of the run (checked on resume), written once the run is
                                 accepted (its options checked, its model and text loaded): a refused run
                                 leaves none
    checkpoint-<step>/           Trainer checkpoints: the full PretrainModel (encoder + heads, via
                                 save_pretrained), optimizer.pt, scheduler.pt, rng_state*.pth,
                                 trainer_state.json (written last: a checkpoint without a readable one
                                 is incomplete and ignored on resume)
    tensorboard/                 with report_to="tensorboard"
    final/                       the result: PretrainModel.save_pretrained (loads with AutoModel,
                                 SentenceTransformer and PretrainModel.from_pretrained) + training_run.json
                                 + training_loss.png (when a loss was logged; training_run.json says so)

``final/`` is written to a temporary folder and renamed into place, so an interrupted save leaves the
previous ``final/`` (or none), never a broken one. The steps every training run shares (resuming,
the run file, saving ``final/``) are :mod:`retromem.pretrain.run`'s; the options are
:class:`retromem.pretrain.pretrain_config.PretrainConfig`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, Trainer, TrainerCallback, TrainingArguments, get_scheduler, set_seed

from retromem.data.pretrain_text import load_pretrain_segments
from retromem.device import resolve_precision
from retromem.errors import ConfigError, RetromemError
from retromem.io import read_json
from retromem.model_paths import resolve_model_path
from retromem.options import named
from retromem.pretrain.model import CONFIG_FILE as PRETRAIN_CONFIG_FILE
from retromem.pretrain.model import PretrainModel
from retromem.pretrain.objective import check_options_apply
from retromem.pretrain.pretrain_config import DEFAULT_SHUFFLE_BUFFER, PretrainConfig
from retromem.pretrain.run import (
    TrainingRun,
    refuse_changed_run,
    save_final_folder,
    start_run,
    trainer_arguments,
)

log = logging.getLogger(__name__)

#: Shortest document piece kept as a training example unless min_segment_length says otherwise.
DEFAULT_MIN_SEGMENT = 16
#: The objective of a run from a plain encoder when none is given.
DEFAULT_OBJECTIVE = "retromae"


def pretrain(config: PretrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> Path:
    """Pretrain ``config.model`` with ``config.objective`` on ``config.data``; return the ``final/`` folder.

    Resumes from a checkpoint as ``config.resume`` says. Under ``accelerate launch``/``torchrun`` every
    process calls this; the data are tokenised by the first process of each node (the others wait and
    reuse its cache) and ``final/`` is written by the main process. ``callbacks`` are extra
    ``TrainerCallback`` objects (their hooks receive the unwrapped model and the optimizer).
    """
    config.validate()
    precision = resolve_precision(config.precision)
    args = _training_arguments(config, precision)  # also sets up torch.distributed under a launcher
    _one_device_without_launcher(args)
    run = start_run(config, args, precision, refuse_changed=functools.partial(_refuse_changed_run, config,
                                                                              args.world_size))
    set_seed(config.seed)
    model = _build_model(config)
    segments, train_data = _training_data(config, model, run)
    _check_head_warmup_fits(config, train_data, args)
    log.info("pretraining %s (%s) on %s segments of up to %d tokens, precision %s, %s", config.model,
             model.objective, getattr(segments, "num_rows", "streamed"), model.segment_length(config.max_length),
             precision, run.resuming())

    trainer = PretrainTrainer(model=model, args=args, train_dataset=train_data,
                              head_learning_rate=config.head_learning_rate,
                              head_warmup_steps=config.head_warmup_steps,
                              data_collator=model.collator(config.max_length, seed=config.seed),
                              callbacks=[ProgressFractionCallback(model), *callbacks])
    run.attach(trainer, log)
    run.accept()
    outcome = run.train(trainer, lambda checkpoint: trainer._load_from_checkpoint(str(checkpoint)))
    record = run.record(outcome, objective=model.objective, segments=getattr(segments, "num_rows", None))
    return run.finish(trainer, lambda: save_final(trainer.accelerator.unwrap_model(trainer.model), run.final, record,
                                                  outcome.log_history))


def save_final(model: Any, final: Path, run_info: dict[str, Any],
               log_history: Sequence[dict[str, Any]] = ()) -> Path:
    """Save ``model`` to ``final`` atomically: write a sibling temp folder, then swap it in by renames.

    With the trainer's ``log_history``, ``training_loss.png`` plots the loss and its components.
    """
    objective = getattr(model, "objective", None) or run_info.get("config", {}).get("objective", "")
    save_final_folder(final, lambda folder: model.save_pretrained(str(folder)), "training_run.json", run_info,
                      log_history, title=f"pretraining: {objective}")
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
    return PretrainModel.from_encoder(AutoConfig.from_pretrained(source, trust_remote_code=False), objective=objective,
                                      tokenizer=tokenizer, **options)


def _implied_objective(config: PretrainConfig) -> str:
    """What ``objective=None`` trains: the objective saved in a pretraining folder given as ``model``, else retromae."""
    if not config.from_scratch and not config.tokenizer:
        saved = Path(resolve_model_path(config.model)) / PRETRAIN_CONFIG_FILE
        if saved.is_file():
            return read_json(saved)["objective"]
    return DEFAULT_OBJECTIVE


def _check_head_warmup_fits(config: PretrainConfig, train_data: Any, args: TrainingArguments) -> None:
    """Refuse, before the run is accepted, a head warm-up as long as an ``--epochs`` run (the trainer counts
    ``ceil(epochs * max(batches // grad_accum, 1))`` steps; with ``--max-steps`` validate() has checked it)."""
    if not config.head_warmup_steps or config.max_steps > 0 or not hasattr(train_data, "__len__"):
        return
    batches = math.ceil(len(train_data) / (config.per_device_batch_size * args.world_size))
    steps = math.ceil(config.epochs * max(batches // config.gradient_accumulation_steps, 1))
    if config.head_warmup_steps >= steps:
        raise ConfigError(f"head_warmup_steps {config.head_warmup_steps} is not below the run's {steps} steps "
                          f"({config.epochs:g} epoch(s)): the encoder would never train; give fewer "
                          "--head-warmup-steps, or more --epochs/--max-steps")


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


def _training_data(config: PretrainConfig, model: PretrainModel, run: TrainingRun):
    """The tokenised segments (by the first process of each node; the others reuse its cache) and the dataset
    the trainer reads; a step that would need more segments than there are is refused."""
    segment_length = model.segment_length(config.max_length)
    if config.min_segment_length is not None and config.min_segment_length < model.min_segment_length:
        raise ConfigError(f"min_segment_length {config.min_segment_length} is below the {model.min_segment_length} "
                          f"tokens that {model.objective} needs per example: give at least "
                          f"{model.min_segment_length} (or leave it unset)")
    if config.min_segment_length is not None and config.min_segment_length > segment_length:
        raise ConfigError(f"{named(config, 'min_segment_length')} {config.min_segment_length} is more than the "
                          f"{segment_length} tokens of a segment ({named(config, 'max_length')} {config.max_length}): "
                          f"give at most {segment_length}, or a longer --max-length")
    min_length = config.min_segment_length or min(segment_length, max(DEFAULT_MIN_SEGMENT, model.min_segment_length))
    args = run.args
    with args.main_process_first(local=True, desc="tokenising pretraining text"):
        segments = load_pretrain_segments(
            config.data, model.tokenizer, segment_length, text_field=config.text_field,
            title_field=config.title_field, id_field=config.id_field, min_segment_length=min_length,
            streaming=config.streaming, num_proc=config.num_proc, cache_dir=config.cache_dir,
            show_progress=config.show_progress, processes=args.world_size,
        )
    per_step = config.per_device_batch_size * config.gradient_accumulation_steps * args.world_size
    rows = getattr(segments, "num_rows", None)
    if rows is not None and per_step > rows:
        raise ConfigError(f"one optimizer step takes {per_step} examples ({named(config, 'per_device_batch_size')} x "
                          f"{named(config, 'gradient_accumulation_steps')} x {args.world_size} process(es)), more "
                          f"than the {rows} segments of the text: give a smaller batch or more text")
    train_data = segments.select_columns(["input_ids"])
    if config.streaming:
        train_data = train_data.shuffle(seed=config.seed, buffer_size=config.shuffle_buffer or DEFAULT_SHUFFLE_BUFFER)
        if args.world_size > 1:
            # Each process reads its own share of the stream, and shares seldom hold the same number of
            # batches: a process whose share ran out would end its epoch (and, with gradient accumulation,
            # step on a partial group) while the others go on, and their collective calls would no longer
            # pair up (a hang). An endless share per process keeps them in step; max_steps ends the run.
            train_data = train_data.repeat(None)
    return segments, train_data


def _training_arguments(config: PretrainConfig, precision: str) -> TrainingArguments:
    # Streamed text is an IterableDataset, which accelerate by default reads on the first process only and
    # dispatches as slices of the concatenated batches of all processes: that needs batches of one width and
    # row count, which the collator (each batch padded to its longest text, short texts dropped) does not
    # give, and slicing would split CoT-MAE's span pairs. Each process reads its own share instead
    # (whole data files when they split evenly among the processes, else every n-th batch).
    accelerator_config = {"dispatch_batches": False} if config.streaming else None
    return TrainingArguments(
        **trainer_arguments(config, precision),
        accelerator_config=accelerator_config,
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup if config.warmup < 1 else int(config.warmup),
        dataloader_num_workers=config.dataloader_workers,
        remove_unused_columns=False,
    )


def _refuse_changed_run(config: PretrainConfig, world_size: int, checkpoint: Path, previous: dict[str, Any]) -> None:
    """Refuse to resume ``checkpoint`` of a run (its settings: ``previous``) that differs in RESUME_MUST_MATCH
    or in the number of processes (:func:`retromem.pretrain.run.refuse_changed_run`); no objective means the
    same as naming the one it stands for (the model is the same, or refused)."""
    current = {**config.as_written(), "world_size": world_size}
    implied = _implied_objective(config)
    current["objective"] = current["objective"] or implied
    if "objective" in previous:
        previous = {**previous, "objective": previous["objective"] or implied}
    refuse_changed_run(config, checkpoint, previous, current)
