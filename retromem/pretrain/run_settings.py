"""The options every training run has (:class:`RunSettings`), and their checks.

A run's options dataclass (pretraining's, fine-tuning's, next the reader's) subclasses
:class:`RunSettings`: it inherits the budget, precision, seed, checkpoint, logging and resume options,
declares its own with :func:`retromem.options.option`, and names in ``RESUME_MUST_MATCH`` the fields a
resumed run must share with the run it continues. This module stays light (no transformers), so that
the ``retromem`` command builds its parsers from these declarations quickly; the lifecycle that uses
them is :mod:`retromem.pretrain.run`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from retromem.device import PRECISIONS
from retromem.errors import ConfigError
from retromem.options import check_options, flag, named, option, option_specs

REPORTERS = ("none", "tensorboard", "wandb")

Settings = TypeVar("Settings", bound="RunSettings")


@dataclass
class RunSettings:
    """The options every training run has; a run's own options dataclass subclasses it."""

    #: The run file in ``output_dir``: the settings of the run, checked when a later run resumes it.
    RUN_FILE: ClassVar[str] = "retromem_run.json"
    #: What the run is, in messages ("unknown pretraining option...").
    KIND: ClassVar[str] = "training"
    #: Fields a resumed run must share with the run that wrote the checkpoint (the rest may change).
    RESUME_MUST_MATCH: ClassVar[tuple[str, ...]] = ("weight_decay", "max_grad_norm")
    #: Fields that never change what a run computes (logging, checkpoint keeping, progress bars).
    BOOKKEEPING: ClassVar[tuple[str, ...]] = ("show_progress", "logging_steps", "report_to", "resume", "save_steps",
                                              "save_total_limit")
    #: Extra words for a choice's "unknown" message, by field.
    CHOICE_HINTS: ClassVar[dict[str, str]] = {}

    max_steps: int = option(-1, min=1, special=(-1,), help="optimizer steps (-1: as many as --epochs make; "
                            "when set it overrides --epochs)")
    epochs: float = option(1.0, min=0, help="passes over the data (unless --max-steps is set)")
    weight_decay: float = option(0.01, min=0, help="AdamW weight decay")
    max_grad_norm: float = option(1.0, min=0, help="gradient clipping norm (0: no clipping)")
    precision: str = option("auto", choices=PRECISIONS, help="auto = bf16 (else fp16) on GPUs, bf16 autocast on "
                            "CPUs with native bf16, else fp32")
    seed: int = option(42, min=0, max=2**32 - 1, help="random seed")
    save_steps: int = option(500, min=1, help="checkpoint every N steps (and at the last step)")
    save_total_limit: int | None = option(2, min=1, help="checkpoints kept, the oldest deleted first (from Python: "
                                          "None keeps all)")
    logging_steps: int = option(50, min=1, help="log the losses every N steps (the loss plot draws these)")
    report_to: str = option("none", help="none, tensorboard, wandb (comma-separated; TensorBoard logs go to "
                            "<output>/tensorboard)")
    resume: str = option("auto", help="auto: continue from the newest complete checkpoint in --output; never: "
                         "refuse to start over existing checkpoints; or a checkpoint folder")
    show_progress: bool = option(True, cli=False, help="progress bars (tqdm, on stderr)")

    def check_run_options(self) -> None:
        """Raise :class:`ConfigError` for a field outside its declared choices or bounds, or against the rules
        every run shares (a budget, known reporters, a resume that exists)."""
        for name, spec in option_specs(self).items():
            value = getattr(self, name)
            if spec.choices is not None and value is not None and value not in spec.choices:
                raise ConfigError(f"unknown {name} {value!r} ({flag(self, name)}): use one of "
                                  f"{', '.join(map(str, spec.choices))}{self.CHOICE_HINTS.get(name, '')}")
        check_options(self)
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError(f"give {named(self, 'max_steps')} > 0 or {named(self, 'epochs')} > 0")
        reporters(self.report_to)  # raises on an unknown name
        check_resume(self.resume)

    @classmethod
    def from_dict(cls: type[Settings], values: dict[str, Any]) -> Settings:
        """The settings from a dict (a run file, a JSON config); unknown names raise, naming them."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown {cls.KIND} option(s): {', '.join(unknown)}")
        return cls(**values)

    def as_written(self) -> dict[str, Any]:
        """The settings as the run file holds them (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def reporters(report_to: str | Sequence[str]) -> list[str]:
    """The names in ``report_to`` (comma-separated, or a list); a name not in :data:`REPORTERS` raises."""
    items = report_to.split(",") if isinstance(report_to, str) else list(report_to)
    names = [item.strip() for item in items if item.strip()]
    unknown = [name for name in names if name not in REPORTERS]
    if unknown:
        raise ConfigError(f"unknown report_to {unknown} (--report-to): use one of {', '.join(REPORTERS)}")
    return names


def check_resume(resume: str) -> None:
    """Refuse a ``resume`` option that is not ``auto``, ``never`` or a folder (see
    :func:`retromem.pretrain.trainer_utils.checkpoint_to_resume`)."""
    if resume not in ("auto", "never") and not Path(resume).is_dir():
        raise ConfigError(f"resume must be 'auto', 'never' or a checkpoint folder (--resume); {resume} is none")
