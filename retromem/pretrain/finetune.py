"""Contrastive fine-tuning of an encoder into a retriever, on sentence-transformers' own trainer.

The pieces: the options (:class:`retromem.pretrain.finetune_config.FinetuneConfig`), the training tuples
with their mined hard negatives (:mod:`retromem.pretrain.contrastive_examples`, mining itself in
:mod:`retromem.retrieve.hard_negatives`), the model and loss (:mod:`retromem.pretrain.contrastive_model`),
the digests of what the run reads (:mod:`retromem.pretrain.finetune_inputs`), and the lifecycle every
training run shares (:mod:`retromem.pretrain.run`); this module drives them.

Layout of ``output_dir``::

    retromem_finetune_run.json   the FinetuneConfig of the run (checked on resume) + the data key
                                 (settings and input digests that make the training tuples), written
                                 once the run is accepted (a refused run leaves none)
    train_examples.jsonl         the training tuples (anchor, positive, negative_1..n), reused by a rerun
    checkpoint-<step>/           trainer checkpoints (model, optimizer, scheduler, RNG, trainer_state.json last)
    tensorboard/                 with report_to="tensorboard"
    final/                       the fine-tuned model: a sentence-transformers folder (Transformer +
                                 Pooling + optional Normalize, prompts = the prefixes) that
                                 ``SentenceTransformer`` and retromem's ``Encoder`` load alike, with
                                 finetune_run.json (settings, data counts, loss, timings) and
                                 training_loss.png (when a loss was logged)

``final/`` is written to a temporary folder and renamed into place. Under ``accelerate launch`` /
``torchrun`` every process encodes its share of the corpus for mining, the main process mines and
writes the examples, and the trainer trains data-parallel (in-batch negatives gathered across devices).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.sampler import BatchSamplers
from transformers import set_seed
from transformers.trainer import TRAINING_ARGS_NAME

from retromem.device import resolve_precision
from retromem.errors import ConfigError
from retromem.options import named
from retromem.pretrain.contrastive_examples import prepare_examples
from retromem.pretrain.contrastive_model import build_loss, build_model
from retromem.pretrain.finetune_config import FinetuneConfig
from retromem.pretrain.finetune_inputs import data_key, finished_before, input_digests
from retromem.pretrain.run import FINAL_DIR, save_final_folder, start_run, trainer_arguments

log = logging.getLogger(__name__)

FINAL_INFO = "finetune_run.json"


def finetune(config: FinetuneConfig) -> Path:
    """Fine-tune ``config.model`` contrastively; return the ``final/`` sentence-transformers folder."""
    config.validate()
    final = Path(config.output_dir) / FINAL_DIR
    inputs = input_digests(config)
    if finished_before(final, FINAL_INFO, config, inputs):
        log.info("%s already holds this fine-tuning run's result; nothing to do", final)
        return final
    started = time.perf_counter()
    model, settings = build_model(config, fingerprint=inputs["model"])
    precision = resolve_precision(config.precision)
    args = SentenceTransformerTrainingArguments(
        **trainer_arguments(config, precision),
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,
        batch_sampler=BatchSamplers.NO_DUPLICATES if config.no_duplicates else BatchSamplers.BATCH_SAMPLER,
        eval_strategy="no",
        dataloader_num_workers=0,
    )
    key = data_key(config, settings, inputs)
    run = start_run(config, args, precision, extra={"data_key": key, "model_settings": settings},
                    opaque={"data_key": "the training data or the mining settings"})

    examples, report = prepare_examples(config, settings, run.output_dir, key)
    if config.batch_size * args.world_size > len(examples):
        raise ConfigError(f"one step takes {config.batch_size * args.world_size} training tuples "
                          f"({named(config, 'batch_size')} x {args.world_size} process(es)), more than the "
                          f"{len(examples)} there are: give a smaller --batch-size or more training data")
    set_seed(config.seed)
    train_data = Dataset.from_list(examples)
    loss = build_loss(config, model, settings, distributed=args.world_size > 1)
    prompts = _column_prompts(settings, train_data.column_names)
    if prompts:
        args.prompts = prompts
    log.info("fine-tuning %s on %d tuples (%d hard negative(s) each), batch %d, precision %s, %s", config.model,
             len(examples), config.hard_negatives, config.batch_size, precision, run.resuming())

    trainer = _Trainer(model=model, args=args, train_dataset=train_data, loss=loss)
    run.attach(trainer, log)
    run.accept()
    outcome = run.train(trainer, lambda checkpoint: model.load_state_dict(
        SentenceTransformer(str(checkpoint), device="cpu").state_dict()))
    record = run.record(outcome, input_digests=inputs, model_settings=settings, examples=asdict(report),
                        seconds=time.perf_counter() - started)
    return run.finish(trainer, lambda: save_final(trainer.model, final, settings, record, outcome.log_history))


def save_final(model, final: Path, settings: dict[str, Any], info: dict[str, Any],
               log_history: Sequence[dict[str, Any]] = ()) -> Path:
    """Save the ``SentenceTransformer`` to ``final`` atomically (sibling temp folder, then renames),
    with ``training_loss.png`` when the trainer's ``log_history`` holds losses."""
    def save_model(folder: Path) -> None:
        model.prompts = {"query": settings["query_prefix"], "document": settings["passage_prefix"]}
        model.save(str(folder))

    save_final_folder(final, save_model, FINAL_INFO, info, log_history, title="contrastive fine-tuning")
    log.info("saved the fine-tuned model to %s", final)
    return final


# ---- helpers -----------------------------------------------------------------------------------

class _Trainer(SentenceTransformerTrainer):
    """sentence-transformers' trainer, without the pickled ``training_args.bin`` in checkpoints."""

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        Path(output_dir or self.args.output_dir, TRAINING_ARGS_NAME).unlink(missing_ok=True)


def _column_prompts(settings: dict[str, Any], columns: list[str]) -> dict[str, str]:
    if not settings["query_prefix"] and not settings["passage_prefix"]:
        return {}
    return {c: settings["query_prefix"] if c == "anchor" else settings["passage_prefix"] for c in columns}
