"""Training a reader (``retromem read train``) on a KILT task's questions with their retrieved passages, read
from the decoded memory of the codec it will read (codec-aware: what the memory's codec loses, training sees),
on the run lifecycle of pretraining and fine-tuning (:mod:`retromem.pretrain.run`).

Layout of ``output_dir``::

    retromem_reader_run.json   the ReaderTrainConfig (checked on resume) + the data key
    checkpoint-<step>/         trainer checkpoints (model.safetensors, optimizer, scheduler, RNG, trainer_state.json)
    final/                     the reader folder (:mod:`retromem.read.checkpoint`) with reader_run.json (settings,
                               data counts, loss) and training_loss.png
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments, set_seed

from retromem.artifacts import file_digest
from retromem.device import resolve_precision
from retromem.errors import ConfigError, DataError, MismatchError
from retromem.model_paths import model_fingerprint, resolve_model_path
from retromem.pretrain.run import FINAL_DIR, save_final_folder, start_run, trainer_arguments
from retromem.read.batch import ReadItem, collate
from retromem.read.checkpoint import WEIGHTS_FILE, memory_info, require_memory, save_reader, start_head_from
from retromem.read.codebook import check_tunable, codebook_digest, pq_centroids
from retromem.read.memory import PassageReader
from retromem.read.memory_open import open_memory
from retromem.read.model import MemoryReader
from retromem.read.questions import Question, ReadingSet, reading_set, resolve_run
from retromem.read.reader_config import ReaderSpec
from retromem.read.span import find_answer_span
from retromem.read.train_config import ReaderTrainConfig

log = logging.getLogger(__name__)

FINAL_INFO = "reader_run.json"
#: A task with at most this many distinct answers (each on many questions) is a classification task.
MAX_LABELS = 20


def train_reader(config: ReaderTrainConfig, memory: Any = None, callbacks: Sequence[Any] = ()) -> Path:
    """Train a reader as ``config`` says; return ``final/``. ``memory``: a memory object to read instead of the
    folder ``config.memory`` (e.g. :class:`retromem.read.memory.LiveMemory`); ``callbacks``: trainer callbacks."""
    config.validate()
    started = time.perf_counter()
    model_path = resolve_model_path(config.model)
    layers = encoder_layers(model_path, config.model, config.trust_remote_code)
    check_k(config.live_layers, layers, config.model)
    if config.tune_codebook and config.live_layers == layers:
        raise ConfigError(f"--tune-codebook tunes the pq codebook of the memory the reader reads, and --k {layers} "
                          "re-encodes the passage text (no memory): give a --k below the encoder's layers")
    data = reading_set(config, force_gold=config.force_gold)
    head = choose_head(config.head, data)
    labels = task_labels(data) if head == "classification" else []
    if head == "generative":
        require_answers(data)
    spec = ReaderSpec(encoder=config.model, num_layers=layers, live_layers=config.live_layers, head=head,
                      labels=labels, max_question_length=config.max_question_length,
                      max_passage_length=config.max_passage_length, max_answer_length=config.max_answer_length,
                      decoder_layers=config.decoder_layers, decoder_model=config.decoder_model,
                      tune_question_encoder=config.tune_question_encoder)
    memory, where, memory_meta = _memory(config, spec, memory, model_path)
    precision = resolve_precision(config.precision)
    args = TrainingArguments(**trainer_arguments(config, precision), per_device_train_batch_size=config.batch_size,
                             learning_rate=config.learning_rate, warmup_steps=config.warmup_ratio,
                             remove_unused_columns=False, dataloader_num_workers=0, eval_strategy="no")
    key = _data_key(config, memory_meta)
    run = start_run(config, args, precision, extra={"data_key": key},
                    opaque={"data_key": "the task, the run, the knowledge source or the memory"})
    set_seed(config.seed)
    reader = MemoryReader.from_encoder(spec, model_path, config.trust_remote_code)
    if config.init_head:
        start_head_from(reader, config.init_head)  # a resumed run then loads its checkpoint's head over it
    if reader.codebook is not None:
        reader.codebook.start_from(memory.codec)  # the memory's own centroids, then trained with the reader
    source = PassageReader(spec, reader.tokenizer, data.passages, memory, where,
                           max_length=int(memory_meta.get("encoder", {}).get("max_length") or 512))
    forced = {q.passage_ids[-1] for q in data.questions if q.forced}
    retrieved = {pid for q in data.questions for pid in (q.passage_ids[:-1] if q.forced else q.passage_ids)}
    source.require(retrieved, path=resolve_run(config.run))
    source.require(forced - retrieved, what="gold passages forced in (retrieval missed their page)",
                   fix="build the memory with `retromem read memory --force-gold`, or train with --no-force-gold")
    collator = ReadingCollator(spec, reader, source, data.questions)
    _refuse_inexpressible(spec, collator, data)
    if config.batch_size * args.world_size > len(data.questions):
        raise ConfigError(f"one step takes {config.batch_size * args.world_size} questions (--batch-size), more than "
                          f"the {len(data.questions)} there are: give a smaller --batch-size or more questions")
    log.info("training a %s reader (k = %d of %d layers%s) on %d questions x %d passages (%d gold forced in), "
             "precision %s, %s", head, spec.live_layers, layers,
             "" if spec.full else f", memory layer {spec.memory_layer} in {memory_meta.get('codec', {}).get('name')}",
             len(data.questions), config.passages, data.forced, precision, run.resuming())
    trainer = ReaderTrainer(model=reader, args=args, train_dataset=list(range(len(data.questions))),
                            data_collator=collator, head_learning_rate=config.head_learning_rate,
                            codebook_learning_rate=config.codebook_learning_rate, callbacks=list(callbacks))
    run.attach(trainer, log)
    run.accept()
    outcome = run.train(trainer, lambda checkpoint: _load_weights(reader, checkpoint))
    counts = {"questions": len(data.questions), "gold_forced": data.forced, "passages": len(data.passages),
              "labels": dict(Counter(q.answers[0] for q in data.questions if q.answers)) if labels else None}
    record = run.record(outcome, data=counts, spec=spec.to_json(), seconds=time.perf_counter() - started)
    final = Path(config.output_dir) / FINAL_DIR

    def save() -> None:
        save_final_folder(final, lambda folder: save_reader(reader, folder, {"training": counts}), FINAL_INFO,
                          record, outcome.log_history, title="reader training")
    return run.finish(trainer, save)


class ReadingCollator:
    """Question indices -> a batch: the passages read (memory or text) and the head's targets."""

    def __init__(self, spec: ReaderSpec, reader: MemoryReader, source: PassageReader, questions: Sequence[Question]):
        self.spec, self.source, self.questions = spec, source, questions
        self.tokenizer = reader.tokenizer
        self.answer_tokenizer = getattr(reader.head, "answer_tokenizer", None)

    def item(self, question: Question, train: bool = True) -> ReadItem:
        passages = tuple(self.source.read(question.passage_ids))
        if not train:
            return ReadItem(question.qid, question.text, passages)
        if self.spec.head == "classification":
            return ReadItem(question.qid, question.text, passages, label=self.spec.labels.index(question.answers[0]))
        if self.spec.head == "span":
            for j, passage in enumerate(passages):
                found = find_answer_span(passage, question.answers, self.tokenizer)
                if found is not None:
                    return ReadItem(question.qid, question.text, passages, span=(j, *found))
            return ReadItem(question.qid, question.text, passages)
        return ReadItem(question.qid, question.text, passages, answer=question.answers[0])

    def __call__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        items = [self.item(self.questions[int(i)]) for i in indices]
        return collate(self.spec, self.tokenizer, items, answer_tokenizer=self.answer_tokenizer, targets=True)


class ReaderTrainer(Trainer):
    """``Trainer`` for the reader: the fresh head at its own learning rate (and a tuned pq codebook at its own,
    default the head's), checkpoints as safetensors of the reader's weights (no pickled ``training_args.bin``)."""

    def __init__(self, *args: Any, head_learning_rate: float | None = None,
                 codebook_learning_rate: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_learning_rate = head_learning_rate
        self.codebook_learning_rate = codebook_learning_rate
        self.model_accepts_loss_kwargs = False

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        target = self.accelerator.unwrap_model(self.model if model is None else model)
        head = {id(p) for p in target.head.parameters()}
        codebook = {id(p) for p in target.codebook.parameters()} if target.codebook is not None else set()
        params = [p for p in target.parameters() if p.requires_grad]
        head_lr = self.head_learning_rate or self.args.learning_rate
        groups = [{"params": [p for p in params if id(p) not in head | codebook], "lr": self.args.learning_rate},
                  {"params": [p for p in params if id(p) in head], "lr": head_lr},
                  {"params": [p for p in params if id(p) in codebook], "lr": self.codebook_learning_rate or head_lr}]
        for group in groups:
            group["weight_decay"] = self.args.weight_decay
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], betas=(self.args.adam_beta1,
                                           self.args.adam_beta2), eps=self.args.adam_epsilon)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        from safetensors.torch import save_file

        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        target = self.accelerator.unwrap_model(self.model)
        state = {k: v.detach().contiguous().cpu().clone() for k, v in target.state_dict().items()}
        save_file(state, os.path.join(output_dir, WEIGHTS_FILE), metadata={"format": "pt"})

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        _load_weights(self.accelerator.unwrap_model(model if model is not None else self.model),
                      Path(resume_from_checkpoint))


def encoder_layers(model_path: str, model: str, trust_remote_code: bool = False) -> int:
    from transformers import AutoConfig

    from retromem.model_paths import remote_code_refusal

    with remote_code_refusal(model):
        return int(AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code).num_hidden_layers)


def check_k(k: int, layers: int, model: str) -> None:
    if not 0 <= k <= layers:
        raise ConfigError(f"--k {k}: the encoder {model} has {layers} layers, so give 0 (pure memory) to {layers} "
                          "(full re-encoding)")


def choose_head(head: str, data: ReadingSet) -> str:
    """``auto``: classification when the task's answers are a few labels shared by many questions, else span."""
    if head != "auto":
        return head
    answers = Counter(q.answers[0] for q in data.questions if q.answers)
    few = len(answers) <= MAX_LABELS and len(answers) >= 2 and sum(answers.values()) >= 5 * len(answers)
    return "classification" if few else "span"


def task_labels(data: ReadingSet) -> list[str]:
    """The classification labels of a task: its questions' first answers (sorted)."""
    require_answers(data)
    labels = sorted({q.answers[0] for q in data.questions})
    if len(labels) > MAX_LABELS:
        raise DataError(f"a classification head over {len(labels)} distinct answers: the task's answers are not a "
                        f"label set (e.g. {', '.join(labels[:3])})", data.task.path,
                        fix="use --head span or --head generative for free-text answers")
    if len(labels) < 2:
        raise DataError(f"the task has one label only ({labels}): a classifier has nothing to tell apart",
                        data.task.path, fix="train on questions of at least two labels (a larger --limit, or the "
                                            "whole train file)")
    return labels


def require_answers(data: ReadingSet) -> None:
    """Refuse questions without a non-blank answer (a classification or generative head learns from answers)."""
    unanswered = [q for q in data.questions if not q.answers]
    if unanswered:
        raise DataError(f"{len(unanswered)} question(s) have no answer to learn from (e.g. {unanswered[0].qid}, "
                        "on this line)", data.task.path, data.first_line(unanswered),
                        fix="give a task whose examples have outputs with non-blank answers, or drop those lines")


def _memory(config: ReaderTrainConfig, spec: ReaderSpec, memory: Any, model_path: str
            ) -> tuple[Any, str, dict[str, Any]]:
    """The memory to read and its (encoder, layer, codec), checked against the reader's encoder and layer."""
    if spec.full:
        return None, "", {}
    if memory is None:
        if not config.memory:
            raise ConfigError(f"--k {spec.live_layers} reads a token memory of layer {spec.memory_layer}: give "
                              "--memory (`retromem read memory` builds one), or --k "
                              f"{spec.num_layers} to re-encode the passage text")
        memory = open_memory(config.memory)
    encoder, layer, codec = memory.info()
    where = config.memory or "the memory"
    fingerprint = model_fingerprint(model_path)
    if encoder.get("fingerprint") != fingerprint:
        raise MismatchError(f"{where} was made by another encoder ({encoder.get('model')}, fingerprint "
                            f"{encoder.get('fingerprint')}) than --model {config.model} ({fingerprint}): give the "
                            "memory's encoder as --model, or build the memory with this one")
    spec.memory = memory_info(encoder, layer, codec)
    spec.passage_prefix = encoder.get("passage_prefix") or ""
    require_memory(spec, encoder, layer, codec, where)
    if config.tune_codebook:
        check_tunable(codec, where)
        if getattr(memory, "codec", None) is None or not hasattr(memory, "gather_codes"):
            raise ConfigError(f"--tune-codebook reads the pq codes of {where}, which gives none (no codec and "
                              "gather_codes)")
        spec.memory.tuned_codebook = codebook_digest(pq_centroids(memory.codec))
    return memory, where, {"encoder": encoder, "layer": layer, "codec": codec}


def _refuse_inexpressible(spec: ReaderSpec, collator: ReadingCollator, data: ReadingSet) -> None:
    """A span head over a task none of whose answers occurs in its passages cannot learn anything."""
    if spec.head != "span":
        return
    probe = data.questions[:50]
    found = sum(collator.item(q).span is not None for q in probe)
    if not found:
        raise DataError(f"the span head cannot express this task's answers: none of the first {len(probe)} "
                        "questions' answers occurs in its passages (labels such as SUPPORTS/REFUTES are no spans)",
                        data.task.path, fix="use --head classification (or generative)")


def _data_key(config: ReaderTrainConfig, memory_meta: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for path in (config.task, resolve_run(config.run), config.corpus):
        digest.update(str(file_digest(path) if path and Path(path).is_file() else path).encode())
    digest.update(json.dumps(memory_meta, sort_keys=True, default=str).encode())
    digest.update(f"{config.passage_words}/{config.passage_stride}".encode())
    return digest.hexdigest()[:16]


def _load_weights(reader: torch.nn.Module, checkpoint: Path) -> None:
    from safetensors.torch import load_file

    reader.load_state_dict(load_file(str(Path(checkpoint) / WEIGHTS_FILE)))
