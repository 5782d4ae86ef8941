"""``retromem pretrain``: pretraining with the RetroMAE family of objectives."""

from __future__ import annotations

import time
from pathlib import Path

from retromem.cli.common import HelpFormatter, check_output_folder, is_main_process, show_training_logs
from retromem.cli.options import add_options, config_from_args, values_from_args
from retromem.cli.training import RUN_OPTIONS, add_training_options
from retromem.options import option_specs
from retromem.pretrain.objective_options import ObjectiveOptions
from retromem.pretrain.pretrain_config import PretrainConfig

TEXT = ("text_field", "title_field", "id_field", "min_segment_length", "streaming", "num_proc", "shuffle_buffer",
        "dataloader_workers", "cache_dir")
OPTIMISATION = ("max_length", "per_device_batch_size", "gradient_accumulation_steps", "learning_rate",
                "head_learning_rate", "head_warmup_steps", "lr_scheduler", "warmup")
#: The objective options the command has (the 80/10/10 replacement shares are the library's only).
OBJECTIVE_OPTIONS = tuple(name for name, spec in option_specs(ObjectiveOptions).items() if spec.cli)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="pretrain an encoder with a bottlenecked MAE objective (RetroMAE, DupMAE, CoT-MAE, bow, MLM, "
                                 "2D-Matryoshka)",
        description="Pretrain any BERT-like encoder (or a fresh one from a config) on text with the objectives of the "
                    "RetroMAE family, on the HF Trainer: `accelerate launch` / `torchrun` give multi-GPU and "
                    "multi-node data parallelism. Checkpoints go to --output; a rerun resumes from the newest one. "
                    "The result, <output>/final, loads with AutoModel and SentenceTransformer ([CLS] pooling) and "
                    "with `retromem eval beir --model <output>/final`.",
        formatter_class=HelpFormatter)
    add_options(p, PretrainConfig, exclude=(*TEXT, *OPTIMISATION, *RUN_OPTIONS), required=("data", "output_dir"))
    # unset (None) = the objective's default; the switches can only turn an option off, so False is "given"
    add_options(p.add_argument_group("objective options (unset = the objective's default)"), ObjectiveOptions,
                only=OBJECTIVE_OPTIONS, defaults={name: None for name in OBJECTIVE_OPTIONS
                                                  if not isinstance(getattr(ObjectiveOptions(), name), bool)})
    add_options(p.add_argument_group("text"), PretrainConfig, only=TEXT)
    add_training_options(p, PretrainConfig, own=OPTIMISATION)
    p.set_defaults(func=run)


def run(args) -> int:
    from retromem.pretrain.train import pretrain

    check_output_folder(Path(args.output_dir))
    config = config_from_args(PretrainConfig, args, objective_options=_given_objective_options(args))
    show_training_logs()
    start = time.perf_counter()
    final = pretrain(config)
    if final is not None and is_main_process():
        from retromem.io import read_json

        objective = read_json(final / "training_run.json").get("objective", config.objective)
        print(f"pretrained {objective} in {time.perf_counter() - start:.1f}s -> {final}")
    return 0


def _given_objective_options(args) -> dict:
    """The objective options the user gave: set values, and switches turned off."""
    defaults = ObjectiveOptions()
    values = values_from_args(ObjectiveOptions, args, only=OBJECTIVE_OPTIONS)
    return {name: value for name, value in values.items()
            if value is not None and not (isinstance(value, bool) and value == getattr(defaults, name))}
