"""One training run's lifecycle, shared by pretraining (:mod:`retromem.pretrain.train`), contrastive
fine-tuning (:mod:`retromem.pretrain.finetune`) and, next, the reader's training::

    settings.validate()                        declared choices and bounds, then the run's own cross-field rules
    args = Arguments(**trainer_arguments(settings, precision), ...)     the driver adds batch, rate, warm-up
    run = start_run(settings, args, precision)  the checkpoint to resume; a changed run is refused
    ...                                         the driver's own part: model, data, trainer (run.attach(trainer))
    run.accept()                                writes the run file: only a run that is going to train leaves one
    outcome = run.train(trainer, load)          trains, or takes a checkpoint that already ends the run
    run.finish(trainer, save)                   the main process writes final/, every process waits

A run's options dataclass subclasses :class:`retromem.pretrain.run_settings.RunSettings`: it inherits the
options every run has (the budget, precision, seed, checkpoints, logging, resuming), declares its own
with :func:`retromem.options.option`, and names in ``RESUME_MUST_MATCH`` the fields that a resumed run
must share with the run it continues.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME

from retromem.cpu_memory import keep_freed_memory
from retromem.device import has_accelerator
from retromem.errors import MismatchError
from retromem.io import read_json, write_json_atomic
from retromem.options import flag, option_specs
from retromem.pretrain.run_settings import RunSettings, reporters
from retromem.pretrain.trainer_utils import (
    CurrentIntervalsCallback,
    atomic_folder,
    checkpoint_to_resume,
    log_through_logging,
    plot_training_losses,
    run_complete,
)

log = logging.getLogger(__name__)

FINAL_DIR = "final"
LOSS_PLOT = "training_loss.png"


def trainer_arguments(settings: RunSettings, precision: str) -> dict[str, Any]:
    """The ``TrainingArguments`` every run sets from its settings; the driver adds its own (batch, rate, warm-up)."""
    return dict(
        output_dir=str(settings.output_dir),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps if settings.max_steps > 0 else -1,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        seed=settings.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not has_accelerator(),
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        logging_strategy="steps",
        logging_steps=settings.logging_steps,
        # TensorBoard is attached by TrainingRun.attach, to write into <output>/tensorboard
        report_to=[r for r in reporters(settings.report_to) if r not in ("none", "tensorboard")] or "none",
        disable_tqdm=not settings.show_progress,
    )


def start_run(settings: RunSettings, args: Any, precision: str, *, extra: Mapping[str, Any] | None = None,
              opaque: Mapping[str, str] | None = None,
              refuse_changed: Callable[[Path, dict[str, Any]], None] | None = None) -> TrainingRun:
    """Begin a run: find the checkpoint to resume (as ``settings.resume`` says) and prepare the process.

    ``extra``: more values the run file records (e.g. a digest of the training data); those named in
    ``opaque`` (key -> what it stands for, in messages) must also be the same to resume. A resumed run that
    differs is refused by ``refuse_changed(checkpoint, previous settings)`` (default:
    :func:`refuse_changed_run` over ``RESUME_MUST_MATCH``, the number of processes and ``opaque``).
    """
    extra = dict(extra or {})
    if refuse_changed is None:
        current = {**settings.as_written(), "world_size": args.world_size, **json.loads(json.dumps(extra))}

        def refuse_changed(checkpoint: Path, previous: dict[str, Any]) -> None:
            refuse_changed_run(settings, checkpoint, previous, current, opaque or {})

    output_dir = Path(settings.output_dir)
    _refuse_another_kind(settings, output_dir, "--output")
    if settings.resume not in ("auto", "never"):
        _refuse_another_kind(settings, Path(settings.resume).parent, "--resume")
    checkpoint = checkpoint_to_resume(settings.resume, output_dir, settings.RUN_FILE, args.process_index == 0,
                                      refuse_changed)
    if checkpoint is not None:
        run_complete(checkpoint, settings.max_steps, settings.epochs)  # a budget below the checkpoint's step raises
    if args.device.type == "cpu":
        # Tiny gradients and optimizer moments become subnormal floats, which x86 CPUs compute on up to
        # 10x slower; flushing them to zero changes nothing measurable in training.
        torch.set_flush_denormal(True)
        keep_freed_memory()  # large tensors reuse freed heap memory instead of page-faulting in fresh mmaps
    return TrainingRun(settings=settings, args=args, precision=precision, checkpoint=checkpoint, extra=extra)


def refuse_changed_run(settings: RunSettings, checkpoint: Path, previous: Mapping[str, Any],
                       current: Mapping[str, Any], opaque: Mapping[str, str] | None = None) -> None:
    """Refuse (:class:`MismatchError`) to resume ``checkpoint`` of a run whose run file holds ``previous``, when it
    differs from ``current`` in a ``RESUME_MUST_MATCH`` field, in the number of processes (which sets the batch
    and where in the data a step is) or in an ``opaque`` value (described by its words)."""
    changed = []
    for key in (*type(settings).RESUME_MUST_MATCH, "world_size"):
        if key in previous and previous[key] != current[key]:
            changed.append(_difference(settings, key, previous[key], current[key]))
    changed += [words for key, words in (opaque or {}).items() if previous.get(key) != current[key]]
    if changed:
        raise MismatchError(f"cannot resume {checkpoint}, written with other settings ({'; '.join(changed)}): use "
                            "the same options, or another --output to start afresh")


@dataclass
class TrainOutcome:
    """What training (or the checkpoint that ended the run) left: for ``final/``'s run record."""

    global_step: int
    metrics: dict[str, Any]
    log_history: list[dict[str, Any]]
    train_loss: float | None = None


@dataclass
class TrainingRun:
    """A started run: its settings, trainer arguments, resolved precision and the checkpoint it resumes."""

    settings: RunSettings
    args: Any
    precision: str
    checkpoint: Path | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def output_dir(self) -> Path:
        return Path(self.settings.output_dir)

    @property
    def final(self) -> Path:
        return self.output_dir / FINAL_DIR

    def resuming(self) -> str:
        """``resuming from <checkpoint>`` or ``from step 0``, for the driver's log line."""
        return f"resuming from {self.checkpoint}" if self.checkpoint else "from step 0"

    def attach(self, trainer: Any, logger: logging.Logger) -> None:
        """Give ``trainer`` what every run has: this run's save/logging intervals after a resume, TensorBoard
        in ``<output>/tensorboard``, and its logs through ``logger`` instead of stdout."""
        trainer.add_callback(CurrentIntervalsCallback())
        for callback in _report_callbacks(self.settings, self.output_dir):
            trainer.add_callback(callback)
        log_through_logging(trainer, logger)

    def accept(self) -> None:
        """Write the run file, now that the run is checked and its model and data are built: a run refused
        before this point leaves none (nor a changed one)."""
        if self.args.process_index == 0:
            write_json_atomic(self.output_dir / self.settings.RUN_FILE, {
                **asdict(self.settings), "precision_resolved": self.precision, "world_size": self.args.world_size,
                **self.extra})

    def train(self, trainer: Any, load_checkpoint: Callable[[Path], None]) -> TrainOutcome:
        """Train (from the checkpoint, if any); or, when the checkpoint is the run's last step (the run ended and
        crashed before final/, or is run again), load it with ``load_checkpoint`` and train no further step
        (transformers steps once before it checks max_steps)."""
        checkpoint = self.checkpoint
        if checkpoint is not None and run_complete(checkpoint, self.settings.max_steps, self.settings.epochs):
            log.info("%s is the end of the run: saving it as %s", checkpoint, self.final)
            load_checkpoint(checkpoint)
            state = read_json(checkpoint / TRAINER_STATE_NAME)
            return TrainOutcome(state["global_step"], {}, state.get("log_history", []))
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        return TrainOutcome(trainer.state.global_step, result.metrics, trainer.state.log_history,
                            result.training_loss)

    def record(self, outcome: TrainOutcome, **more: Any) -> dict[str, Any]:
        """The run record saved in ``final/``: settings, precision, steps, metrics, resume, versions, and ``more``."""
        return {"config": asdict(self.settings), "precision": self.precision, "global_step": outcome.global_step,
                "metrics": outcome.metrics, "train_loss": outcome.train_loss,
                "resumed_from": str(self.checkpoint) if self.checkpoint else None,
                "world_size": self.args.world_size, **more,
                "torch": torch.__version__, "python": platform.python_version()}

    def finish(self, trainer: Any, save: Callable[[], Any]) -> Path:
        """``save()`` (writing ``final/``) on the main process, between barriers; return ``final/``."""
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            save()
        trainer.accelerator.wait_for_everyone()
        return self.final


def save_final_folder(final: Path, save_model: Callable[[Path], None], record_file: str, record: dict[str, Any],
                      log_history: Sequence[dict[str, Any]] = (), title: str = "training") -> Path:
    """Write ``final`` atomically (a sibling temporary folder, then renames): the model (``save_model(folder)``),
    ``training_loss.png`` of the logged losses and the run ``record`` (as ``record_file``), which says when there
    is no plot because no loss was logged."""
    with atomic_folder(final) as staging:
        save_model(staging)
        plotted = plot_training_losses(log_history, staging / LOSS_PLOT, title=title)
        record = {**record, "loss_plot": LOSS_PLOT if plotted else None}
        if not plotted:
            steps = record.get("global_step")
            record["loss_plot_note"] = (f"no loss was logged in the run's {steps} step(s): losses are logged every "
                                        "--logging-steps steps; a smaller --logging-steps logs and plots them")
            log.warning("%s has no %s: %s", final, LOSS_PLOT, record["loss_plot_note"])
        write_json_atomic(staging / record_file, record)
    return final


# ---- helpers -----------------------------------------------------------------------------------

def _refuse_another_kind(settings: RunSettings, folder: Path, option: str) -> None:
    """Refuse a run folder that holds another kind of run (a pretraining's checkpoints are no fine-tuning's)."""
    if not folder.is_dir():
        return
    others = sorted(p.name for p in folder.glob("retromem_*_run.json") if p.name != settings.RUN_FILE)
    if others:
        raise MismatchError(f"{option} {folder} holds another kind of run ({others[0]}), not a {settings.KIND} run: "
                            "give another --output (or a checkpoint of this kind of run)")


def _difference(settings: RunSettings, key: str, then: Any, now: Any) -> str:
    if key == "world_size":
        return f"the number of processes: {then!r} in that run, {now!r} now"
    spec = option_specs(settings).get(key)
    where = f" ({flag(settings, key)})" if spec is not None and spec.cli else ""
    return f"{key}: {then!r} in that run, {now!r} now{where}"


def _report_callbacks(settings: RunSettings, output_dir: Path) -> list[TrainerCallback]:
    if "tensorboard" not in reporters(settings.report_to):
        return []
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    callback.logging_dir = str(output_dir / "tensorboard")  # writer opens on the main process at train begin
    return [callback]
