"""The trainer-level pieces of the run lifecycle (:mod:`retromem.pretrain.run`), for the HF ``Trainer`` and
its subclasses (sentence-transformers' trainer):

- checkpoints: the ``checkpoint-<step>`` folders of a run, which are complete, and the one to resume
  from as a run's ``resume`` option says (:func:`checkpoint_to_resume`);
- ``final/``: written beside itself and swapped in by renames (:func:`atomic_folder`), so that an
  interrupted save leaves the previous folder (or none), never a broken one;
- logs: :func:`log_through_logging` sends a trainer's logs to ``logging`` instead of stdout, and
  :func:`plot_training_losses` draws them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from transformers import Trainer
from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from retromem.errors import RetromemError
from retromem.io import atomic_path, read_json, usual_modes

log = logging.getLogger(__name__)

def find_resume_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest *complete* ``checkpoint-<step>`` in ``output_dir``: one whose trainer_state.json (written
    last) reads."""
    complete = [c for c in _checkpoints(Path(output_dir)) if checkpoint_step(c) is not None]
    return complete[-1] if complete else None


def checkpoint_to_resume(resume: str, output_dir: Path, run_file: str, is_main: bool,
                         refuse_changed: Callable[[Path, dict[str, Any]], None]) -> Path | None:
    """The checkpoint to continue from as a run's ``resume`` option says, or None to start from step 0.

    ``never``: None, refusing an ``output_dir`` that already holds checkpoints; ``auto``: the newest
    complete checkpoint in ``output_dir``, if any; else the checkpoint folder ``resume``, which must be
    complete. The settings of the run that wrote the checkpoint (``run_file`` beside it, for a
    checkpoint of ``output_dir`` the one there) are checked by ``refuse_changed(checkpoint, settings)``,
    which raises if this run cannot continue that one; a checkpoint from elsewhere without them is
    resumed with a warning, into an ``output_dir`` that holds no checkpoints of its own. The main
    process (``is_main``) then deletes incomplete checkpoints and ones newer than the chosen one (left
    by a crash, they would confuse the trainer's rotation).
    """
    existing = _checkpoints(output_dir)
    if resume == "never":
        if existing:
            raise RetromemError(f"{output_dir} already holds checkpoints ({existing[-1].name}, ...): resume them with "
                                "--resume auto, or choose another --output")
        return None
    if resume != "auto":
        checkpoint = Path(resume)
        if checkpoint_step(checkpoint) is None:
            raise RetromemError(f"{checkpoint} is not a complete checkpoint (no readable trainer_state.json)")
    else:
        checkpoint = find_resume_checkpoint(output_dir)
        if checkpoint is None:
            return None
    foreign = checkpoint.resolve().parent != output_dir.resolve()
    if foreign and existing:
        raise RetromemError(f"{output_dir} already holds checkpoints ({existing[-1].name}, ...) of another run: resume "
                            f"{checkpoint} into an empty --output, or resume {output_dir}'s own with --resume auto")
    settings_file = checkpoint.parent / run_file if foreign else output_dir / run_file
    if settings_file.exists():
        refuse_changed(checkpoint, read_json(settings_file))
    elif foreign:
        log.warning("%s has no %s beside it: its run's settings cannot be checked against this one's", checkpoint,
                    run_file)
    if is_main:
        step = checkpoint_step(checkpoint)
        for stale in existing:
            stale_step = checkpoint_step(stale)
            if stale != checkpoint and (stale_step is None or stale_step > step):
                log.warning("removing checkpoint %s left by an interrupted run", stale)
                shutil.rmtree(stale, ignore_errors=True)
    return checkpoint


def run_complete(checkpoint: Path, max_steps: int, epochs: float) -> bool:
    """Whether ``checkpoint`` is the last step of a run of ``max_steps`` steps (when > 0), else of ``epochs`` epochs.

    A checkpoint short of that budget is not (resuming it trains on to the new end, so a finished run
    can be extended); one past it raises, since steps cannot be untrained. Epochs are read from the
    checkpoint's own ``epoch`` (the share of the data seen at its step), so the check does not depend
    on the budget the earlier run was given.
    """
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    step = state["global_step"]
    if max_steps > 0:
        if step > max_steps:
            raise RetromemError(f"{checkpoint} is at step {step}, past this run's {max_steps} steps: give --max-steps "
                                f"{step} or more to finish from it, or another --output to start afresh")
        complete = step == max_steps
    else:
        epoch = float(state.get("epoch") or 0.0)
        per_step = epoch / step if step else 0.0
        complete = epoch >= epochs * (1 - 1e-9)
        if complete and per_step and epoch - epochs >= per_step * (1 - 1e-6):
            raise RetromemError(f"{checkpoint} has trained {epoch:g} epochs, past this run's {epochs:g}: give "
                                f"--epochs {epoch:g} or more to finish from it, or another --output to start "
                                "afresh")
    if not complete and step >= state.get("max_steps", float("inf")):
        log.info("%s ended a run of %d steps: training on to this run's %s", checkpoint, step,
                 f"{max_steps} steps" if max_steps > 0 else f"{epochs:g} epochs")
    return complete


def checkpoint_step(checkpoint: Path) -> int | None:
    """The global step in ``checkpoint``'s trainer_state.json, or None when it does not read (incomplete)."""
    try:
        step = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) else None


@contextlib.contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``folder``; swap it in by renames only if the block succeeds.

    An exception or a crash leaves the previous ``folder`` (or none) in place, never a half-written one.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield staging
        usual_modes(staging)
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            os.replace(folder, old)
        os.replace(staging, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def log_through_logging(trainer: Trainer, logger: logging.Logger) -> None:
    """Send ``trainer``'s logs (loss, learning rate...) to ``logger`` instead of printing them to stdout.

    The progress bar stays (on stderr, when the trainer shows one), without its ``tqdm.write`` of every
    log; the ``print()`` of the logs that replaces the bar when it is off goes.
    """
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgressCallback())
    trainer.add_callback(LogCallback(logger))


class CurrentIntervalsCallback(TrainerCallback):
    """Save and log at this run's intervals after a resume.

    A resumed ``Trainer`` takes its state, the save and logging intervals included, from the
    checkpoint, so a changed ``--save-steps`` or ``--logging-steps`` would be ignored (with a warning
    only transformers' logger shows). This sets them again from the arguments.
    """

    def on_train_begin(self, args, state, control, **kwargs):
        state.compute_steps(args, state.max_steps)


class QuietProgressCallback(ProgressCallback):
    """The trainer's progress bar, without its ``tqdm.write`` of every log to stdout."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class LogCallback(TrainerCallback):
    """Training logs (loss, learning rate...) to ``logger``, on the main process."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.logger.info("step %d: %s", state.global_step, {k: v for k, v in logs.items() if k != "total_flos"})


# ---- helpers -----------------------------------------------------------------------------------

def plot_training_losses(log_history: Sequence[dict[str, Any]], path: Path, title: str = "training") -> Path | None:
    """Save a PNG of every logged loss (``loss`` and its ``loss_*`` components) against the step.

    Each logged point is marked, so that a run that logged once still shows its loss; returns ``None``
    (and draws nothing) when no loss was logged. Uses matplotlib's Agg canvas directly, so no pyplot
    state or display is touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series: dict[str, tuple[list[int], list[float]]] = {}
    for entry in log_history:
        for key, value in entry.items():
            if (key == "loss" or key.startswith("loss_")) and isinstance(value, (int, float)) and "step" in entry:
                steps, values = series.setdefault(key, ([], []))
                steps.append(int(entry["step"]))
                values.append(float(value))
    if not series:
        return None
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for key, (steps, values) in sorted(series.items()):
        axes.plot(steps, values, label=key, linewidth=2 if key == "loss" else 1, marker="o", markersize=3)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def _checkpoints(output_dir: Path) -> list[Path]:
    """The ``checkpoint-<step>`` folders in ``output_dir``, oldest first (complete or not)."""
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        prefix, _, number = path.name.partition("-")
        if prefix == PREFIX_CHECKPOINT_DIR and number.isdigit() and path.is_dir():
            found.append((int(number), path))
    return [path for _, path in sorted(found)]
