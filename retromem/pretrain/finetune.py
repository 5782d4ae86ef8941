"""Contrastive fine-tuning of an encoder into a retriever, on sentence-transformers' own trainer.

The loss is sentence-transformers' ``MultipleNegativesRankingLoss`` (InfoNCE over the other passages
of the batch plus each pair's hard negatives), or its ``Cached`` (GradCache) variant, which gives
the large batches contrastive learning likes in the memory of a small one.

Training pairs come from

- a BEIR-layout data set's qrels (e.g. SciFact ``train``): one (query, passage) pair for every
  judgment of grade >= 1, the passage formatted as retromem's encoder formats it (title + " " + text);
- JSONL files of ``{"query": ..., "positive": ..., "negative": ...}`` or ``"negatives": [...]`` (texts).

Hard negatives are mined with retromem's own index: the corpus is encoded by the *starting* encoder
(with the pooling, normalisation, prefixes and length the fine-tuning uses; or by ``mining_model``,
e.g. to give several models the same training tuples) into the same cached work
directory ``retromem eval beir`` uses, a Flat inner-product index is built, every training query's
top ``mine_top_k`` is retrieved, the query's positives (every judged document of grade >= 1, for
every query id with the same text) and the query itself (a document with the query's id or text, as
in Quora or ArguAna) are removed, the first ``mine_skip`` of the rest are skipped (the likeliest false
negatives), and
``hard_negatives`` per pair are taken from what remains (the highest ranked, or a seeded random
sample). ``mine_max_score_ratio`` also drops candidates scoring above that share of the pair's
positive (NV-Retriever's "TopK-PercPos" false-negative filter). JSONL records without enough
negatives of their own are completed the same way from the pool of passages in the files. BM25
negatives will join once retromem has a BM25 searcher.

Layout of ``output_dir``::

    retromem_finetune_run.json   the FinetuneConfig of the run (checked on resume) + the data key
                                 (settings and input digests that make the training tuples)
    train_examples.jsonl         the training tuples (anchor, positive, negative_1..n), reused by a rerun
    checkpoint-<step>/           trainer checkpoints (model, optimizer, scheduler, RNG, trainer_state.json last)
    final/                       the fine-tuned model: a sentence-transformers folder (Transformer +
                                 Pooling + optional Normalize, prompts = the prefixes) that
                                 ``SentenceTransformer`` and retromem's ``Encoder`` load alike, with
                                 finetune_run.json (settings, data counts, loss, timings)

``final/`` is written to a temporary folder and renamed into place. Under ``accelerate launch`` /
``torchrun`` every process encodes its share of the corpus for mining, the main process mines and
writes the examples, and the trainer trains data-parallel (in-batch negatives gathered across devices).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import platform
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MultipleNegativesRankingLoss,
)
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
from sentence_transformers.util import cos_sim, dot_score
from transformers import set_seed
from transformers.trainer import TRAINING_ARGS_NAME

from retromem.cpu_memory import keep_freed_memory
from retromem.data.beir import corpus_file, load_beir, qrels_file, resolve_beir_dir
from retromem.data.passage import Passage
from retromem.device import PRECISIONS, has_accelerator, resolve_precision
from retromem.errors import DataError, MismatchError, RetromemError
from retromem.index.embeddings import encode_corpus
from retromem.index.encoder import Encoder, EncoderConfig, read_sentence_transformers_config
from retromem.index.faiss_index import DenseIndex, IndexConfig, build_index
from retromem.io import atomic_path, count_lines, iter_jsonl, read_json, write_json_atomic
from retromem.model_paths import DEFAULT_MODEL, model_fingerprint, resolve_model_path
from retromem.pretrain.trainer_utils import (
    CurrentIntervalsCallback,
    atomic_folder,
    check_resume,
    checkpoint_step,
    checkpoint_to_resume,
    log_through_logging,
    options_from_dict,
    plot_training_losses,
    reporters,
    run_complete,
)
from retromem.workdir import work_directory

log = logging.getLogger(__name__)

LOSSES = ("mnrl", "cached-mnrl")
POOLINGS = ("auto", "cls", "mean")
NEGATIVE_SOURCES = ("dense",)  # "bm25" joins once retromem has a BM25 searcher
SAMPLINGS = ("top", "random")
RUN_FILE = "retromem_finetune_run.json"
EXAMPLES_FILE = "train_examples.jsonl"
FINAL_DIR = "final"
FINAL_INFO = "finetune_run.json"
#: Settings that change the training tuples: a rerun with the same values reuses train_examples.jsonl.
_DATA_KEYS = ("model", "beir", "beir_split", "jsonl", "pooling", "normalize", "max_length", "query_prefix",
              "passage_prefix", "hard_negatives", "negatives_source", "mine_top_k", "mine_skip", "mine_sampling",
              "mine_max_score_ratio", "mining_model", "precision", "seed")
#: Settings that must agree between a run and the checkpoint it resumes (the budget, epochs or
#: max_steps, may grow: see trainer_utils.run_complete).
_RESUME_MUST_MATCH = ("loss", "batch_size", "learning_rate", "scale", "weight_decay", "warmup_ratio", "max_grad_norm",
                      "no_duplicates", "trust_remote_code")
#: Files above this size are fingerprinted by size, modification time and their first and last MiB
#: instead of a full SHA-256 (an MS MARCO corpus would take seconds on every start).
_FULL_DIGEST_LIMIT = 256 << 20


@dataclass
class FinetuneConfig:
    """One fine-tuning run. Fields map to ``retromem finetune`` options of the same name with dashes,
    except ``beir_split`` (``--split``), ``learning_rate`` (``--lr``), ``output_dir`` (``--output``),
    ``no_duplicates`` (``--allow-duplicates`` turns it off) and ``show_progress`` (the library's own).

    Data: ``beir`` (a BEIR data set name or folder; its ``beir_split`` qrels give the pairs) and/or
    ``jsonl`` (files of query/positive/negative(s) texts). Model: ``model`` is an alias (``minilm``),
    a sentence-transformers folder (pretraining's output is one) or a bare Hugging Face encoder folder.
    ``pooling``/``max_length``/``query_prefix``/``passage_prefix``: ``auto``/``None`` = what the
    folder's sentence-transformers config says, else [CLS] pooling, the model's own length limit, no
    prefixes. ``normalize``: the loss scores cosine similarity and the saved model normalises, so that
    inner-product search ranks as training scored; with ``normalize=False`` the loss scores dot
    products and the saved model returns raw vectors (then a ``scale`` near 1 is usual).

    Loss: ``mnrl`` or ``cached-mnrl`` (GradCache: batches of any size in the memory of
    ``mini_batch_size``); ``scale`` = 1 / temperature. ``hard_negatives`` per pair (0 = in-batch
    negatives only), mined as the module docstring says, by the model being fine-tuned or, when
    ``mining_model`` names another encoder, by that one (with its own pooling and prefixes): e.g.
    to give several candidate models the same training tuples; ``mining_workdir`` holds mining's
    cached embeddings and index (default: the one ``retromem eval beir`` uses). ``no_duplicates``:
    batches never hold the same text twice (a duplicate would count as a false in-batch negative).
    ``trust_remote_code`` lets a model folder's own Python code run (off unless asked). Optimisation:
    ``max_steps`` > 0 overrides ``epochs``; ``warmup_ratio`` is a share of the steps; ``precision``
    ``auto`` = bf16 (else fp16) on CUDA, bf16 autocast on CPUs with AVX512-BF16/AMX, else fp32.
    ``resume``: ``auto`` continues from the newest complete checkpoint in ``output_dir``, ``never``
    refuses to train over existing checkpoints, a path resumes from that checkpoint; a finished run
    given more epochs or steps trains on from its last checkpoint.
    """

    output_dir: str = "runs/finetune"
    model: str = DEFAULT_MODEL
    # data
    beir: str | None = None
    beir_split: str = "train"
    jsonl: list[str] = field(default_factory=list)
    # encoder
    pooling: str = "auto"
    normalize: bool = True
    max_length: int | None = None
    query_prefix: str | None = None
    passage_prefix: str | None = None
    # loss
    loss: str = "mnrl"
    scale: float = 20.0
    mini_batch_size: int = 32
    no_duplicates: bool = True
    # hard negatives
    hard_negatives: int = 1
    negatives_source: str = "dense"
    mine_top_k: int = 30
    mine_skip: int = 0
    mine_sampling: str = "top"
    mine_max_score_ratio: float | None = None
    mining_model: str | None = None
    mining_workdir: str | None = None
    encode_batch_size: int = 64
    trust_remote_code: bool = False
    # optimisation
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    precision: str = "auto"
    seed: int = 42
    # bookkeeping
    save_steps: int = 500
    save_total_limit: int | None = 2
    logging_steps: int = 50
    report_to: str = "none"
    resume: str = "auto"
    show_progress: bool = True

    def validate(self) -> None:
        """Raise :class:`RetromemError` naming the bad option and its fix."""
        if not self.beir and not self.jsonl:
            raise RetromemError("no training data: give --beir (a BEIR data set with train qrels, e.g. scifact) "
                                "and/or --jsonl FILE (query/positive/negative records)")
        choices = {"pooling": POOLINGS, "loss": LOSSES, "precision": PRECISIONS,
                   "negatives_source": NEGATIVE_SOURCES, "mine_sampling": SAMPLINGS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                hint = " (BM25 negatives come once retromem has a BM25 searcher)" if name == "negatives_source" else ""
                raise RetromemError(f"unknown {name} {getattr(self, name)!r}: use one of {', '.join(allowed)}{hint}")
        reporters(self.report_to)  # raises on an unknown name
        for name in ("batch_size", "mini_batch_size", "mine_top_k", "encode_batch_size", "save_steps",
                     "logging_steps"):
            if getattr(self, name) < 1:
                raise RetromemError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.hard_negatives < 0 or self.mine_skip < 0:
            raise RetromemError("hard_negatives and mine_skip must be >= 0")
        if self.hard_negatives and self.mine_skip + self.hard_negatives > self.mine_top_k:
            raise RetromemError(f"mine_top_k {self.mine_top_k} leaves fewer than hard_negatives {self.hard_negatives} "
                                f"candidates after skipping {self.mine_skip}: raise --mine-top-k")
        if self.mine_max_score_ratio is not None and self.mine_max_score_ratio <= 0:
            raise RetromemError("mine_max_score_ratio must be > 0 (e.g. 0.95), or unset")
        if self.max_length is not None and self.max_length < 2:
            raise RetromemError("max_length must be at least 2")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise RetromemError("give max_steps > 0 or epochs > 0")
        if self.learning_rate <= 0 or self.scale <= 0:
            raise RetromemError("learning_rate and scale must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise RetromemError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        check_resume(self.resume)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FinetuneConfig:
        return options_from_dict(cls, values, "fine-tuning")

    def mining(self) -> MiningConfig:
        return MiningConfig(negatives=self.hard_negatives, top_k=self.mine_top_k, skip=self.mine_skip,
                            sampling=self.mine_sampling, max_score_ratio=self.mine_max_score_ratio, seed=self.seed)


@dataclass
class MiningConfig:
    """How hard negatives are picked from the encoder's ranking (see the module docstring)."""

    negatives: int = 1
    top_k: int = 30
    skip: int = 0
    sampling: str = "top"
    max_score_ratio: float | None = None
    seed: int = 42


@dataclass
class Candidates:
    """A query's mined negatives: ranked doc ids (positives removed, ranks [skip, top_k)) and their scores."""

    doc_ids: list[str]
    scores: list[float]
    positive_scores: dict[str, float]


@dataclass
class JsonlExample:
    """One JSONL training record, with where it came from (for error messages)."""

    query: str
    positive: str
    negatives: list[str]
    path: Path
    line: int


@dataclass
class ExampleReport:
    """What building the training tuples did; saved in ``final/finetune_run.json``."""

    pairs: int = 0
    examples: int = 0
    dropped_no_text: int = 0
    dropped_few_negatives: int = 0
    mined_queries: int = 0
    mining_seconds: float = 0.0
    sources: list[str] = field(default_factory=list)


def finetune(config: FinetuneConfig) -> Path:
    """Fine-tune ``config.model`` contrastively; return the ``final/`` sentence-transformers folder."""
    config.validate()
    output_dir = Path(config.output_dir)
    final = output_dir / FINAL_DIR
    inputs = input_digests(config)
    if _finished_before(final, config, inputs):
        log.info("%s already holds this fine-tuning run's result; nothing to do", final)
        return final
    precision = resolve_precision(config.precision)
    started = time.perf_counter()
    if not has_accelerator():
        keep_freed_memory()  # large tensors reuse freed heap memory instead of page-faulting in fresh mmaps
    model, settings = build_model(config, fingerprint=inputs["model"])
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        seed=config.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not has_accelerator(),
        batch_sampler=BatchSamplers.NO_DUPLICATES if config.no_duplicates else BatchSamplers.BATCH_SAMPLER,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        report_to=[r for r in reporters(config.report_to) if r != "none"] or "none",
        disable_tqdm=not config.show_progress,
        eval_strategy="no",
        dataloader_num_workers=0,
    )
    is_main = args.process_index == 0
    data_key = _data_key(config, settings, inputs)
    checkpoint = checkpoint_to_resume(config.resume, output_dir, RUN_FILE, is_main,
                                      functools.partial(_refuse_changed_run, config, data_key, args.world_size))
    if is_main:
        write_json_atomic(output_dir / RUN_FILE, {**asdict(config), "data_key": data_key,
                                                  "precision_resolved": precision, "model_settings": settings,
                                                  "world_size": args.world_size})

    examples, report = prepare_examples(config, settings, output_dir, data_key)
    set_seed(config.seed)
    train_data = Dataset.from_list(examples)
    loss = build_loss(config, model, settings, distributed=args.world_size > 1)
    prompts = _column_prompts(settings, train_data.column_names)
    if prompts:
        args.prompts = prompts
    log.info("fine-tuning %s on %d tuples (%d hard negative(s) each), batch %d, precision %s, %s", config.model,
             len(examples), config.hard_negatives, config.batch_size, precision,
             f"resuming from {checkpoint}" if checkpoint else "from step 0")

    trainer = _Trainer(model=model, args=args, train_dataset=train_data, loss=loss)
    trainer.add_callback(CurrentIntervalsCallback())
    log_through_logging(trainer, log)
    if checkpoint is not None and run_complete(checkpoint, config.max_steps, config.epochs):
        # the run ended at this checkpoint and crashed before final/ was written; resuming would train
        # one more step (transformers steps once before it checks max_steps)
        log.info("%s is the end of the run: saving it as %s", checkpoint, final)
        model.load_state_dict(SentenceTransformer(str(checkpoint), device="cpu").state_dict())
        global_step, metrics, train_loss = checkpoint_step(checkpoint), {}, None
    else:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        global_step, metrics, train_loss = trainer.state.global_step, result.metrics, result.training_loss

    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        info = {
            "config": asdict(config), "input_digests": inputs, "model_settings": settings,
            "precision": precision,
            "global_step": global_step, "metrics": metrics,
            "train_loss": train_loss, "examples": asdict(report),
            "resumed_from": str(checkpoint) if checkpoint else None, "world_size": args.world_size,
            "seconds": time.perf_counter() - started, "torch": torch.__version__,
            "python": platform.python_version(),
        }
        save_final(trainer.model, final, settings, info, trainer.state.log_history)
    trainer.accelerator.wait_for_everyone()
    return final


def build_model(config: FinetuneConfig, fingerprint: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The ``SentenceTransformer`` to train (Transformer + Pooling + optional Normalize) and its settings.

    A folder with ``modules.json`` loads through ``SentenceTransformer`` (its pooling, normalisation,
    length and prompts are the defaults); a bare Hugging Face folder gets Transformer + Pooling built
    here. Modules retromem's encoder cannot reproduce (Dense, LayerNorm...) are refused. The settings
    (pooling, normalize, max_length, query_prefix, passage_prefix, model_path, fingerprint) are what
    mining's encoder uses and what the saved model records; ``fingerprint``, when the caller already
    has the model's (:func:`input_digests`), saves hashing its weights again.
    """
    path = resolve_model_path(config.model)
    folder_settings = read_sentence_transformers_config(path) if Path(path).is_dir() else {}
    if (Path(path) / "modules.json").exists():
        loaded = SentenceTransformer(path, trust_remote_code=config.trust_remote_code, device="cpu")
        modules = list(loaded.children())
        if not modules or not isinstance(modules[0], Transformer) or not all(
                isinstance(m, (Pooling, Normalize)) for m in modules[1:]):
            names = [type(m).__name__ for m in modules]
            raise RetromemError(f"{path}: modules {names} are not Transformer + Pooling (+ Normalize), which is what "
                                "retromem's encoder can load; fine-tune a plain encoder folder instead")
        transformer = modules[0]
        prompts = dict(loaded.prompts or {})
    else:
        remote = {"trust_remote_code": True} if config.trust_remote_code else None
        transformer = Transformer(path, model_kwargs=remote, processor_kwargs=remote, config_kwargs=remote)
        prompts = {}
    settings = {
        "pooling": config.pooling if config.pooling != "auto" else folder_settings.get("pooling", "cls"),
        "normalize": config.normalize,
        "max_length": config.max_length or _default_max_length(transformer),
        "query_prefix": config.query_prefix if config.query_prefix is not None else prompts.get("query", ""),
        "passage_prefix": (config.passage_prefix if config.passage_prefix is not None
                           else prompts.get("document", prompts.get("passage", prompts.get("corpus", "")))),
        "model_path": path,
        "fingerprint": fingerprint or model_fingerprint(path),
    }
    transformer.max_seq_length = settings["max_length"]
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode=settings["pooling"])]
    if settings["normalize"]:
        modules.append(Normalize())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(modules=modules, device=device,
                                prompts={"query": settings["query_prefix"], "document": settings["passage_prefix"]},
                                similarity_fn_name="cosine" if settings["normalize"] else "dot")
    return model, settings


def build_loss(config: FinetuneConfig, model, settings: dict[str, Any], distributed: bool = False) -> torch.nn.Module:
    """(Cached)MultipleNegativesRankingLoss with ``config.scale``; cosine when normalising, else dot product."""
    similarity = cos_sim if settings["normalize"] else dot_score
    if config.loss == "cached-mnrl":
        return CachedMultipleNegativesRankingLoss(model, scale=config.scale, similarity_fct=similarity,
                                                  mini_batch_size=config.mini_batch_size,
                                                  gather_across_devices=distributed)
    return MultipleNegativesRankingLoss(model, scale=config.scale, similarity_fct=similarity,
                                        gather_across_devices=distributed)


def prepare_examples(config: FinetuneConfig, settings: dict[str, Any], output_dir: Path,
                     data_key: str) -> tuple[list[dict[str, str]], ExampleReport]:
    """The training tuples: reused from ``train_examples.jsonl`` when made with the same data settings.

    Under a launcher every process encodes its share of the corpus for mining; the main process
    mines and writes the file, the others read it.
    """
    state = PartialState()
    path = output_dir / EXAMPLES_FILE
    meta_path = output_dir / (EXAMPLES_FILE + ".json")
    if path.exists() and meta_path.exists() and read_json(meta_path).get("data_key") == data_key:
        log.info("reusing the training tuples in %s", path)
        return _read_examples(path), ExampleReport(**read_json(meta_path)["report"])
    examples, report = build_examples(config, settings, device=str(state.device),
                                      write=state.is_main_process)
    if state.is_main_process:
        _write_examples(path, examples)
        write_json_atomic(meta_path, {"data_key": data_key, "report": asdict(report)})
    state.wait_for_everyone()
    return (_read_examples(path) if not state.is_main_process else examples), report


def build_examples(config: FinetuneConfig, settings: dict[str, Any], device: str | None = None,
                   write: bool = True) -> tuple[list[dict[str, str]], ExampleReport]:
    """Make (anchor, positive, negative_1..n) tuples from ``config.beir`` and ``config.jsonl``."""
    report = ExampleReport()
    examples: list[dict[str, str]] = []
    encoder: Encoder | None = None

    def get_encoder() -> Encoder:
        nonlocal encoder
        if encoder is None:
            encoder = mining_encoder(config, settings, device)
        return encoder

    if config.beir:
        examples += beir_examples(config, get_encoder, report, write=write)
    if config.jsonl:
        examples += jsonl_examples(config, get_encoder, report, write=write)
    report.examples = len(examples)
    hint = "lower --hard-negatives or --mine-skip, raise --mine-top-k" + (
        ", or raise --mine-max-score-ratio" if config.mine_max_score_ratio is not None else "")
    if write and not examples:
        raise RetromemError(f"no training tuples were made ({report.pairs} pairs; {report.dropped_no_text} without "
                            f"text, {report.dropped_few_negatives} with fewer than {config.hard_negatives} negatives "
                            f"left after mining): check the data, or {hint}")
    if write and report.dropped_few_negatives:
        log.warning("%d of %d pairs (%.0f%%) had fewer than %d hard negatives left after mining and are left out; "
                    "to keep them, %s", report.dropped_few_negatives, report.pairs,
                    100 * report.dropped_few_negatives / max(report.pairs, 1), config.hard_negatives, hint)
    return examples, report


def mining_encoder(config: FinetuneConfig, settings: dict[str, Any], device: str | None = None) -> Encoder:
    """retromem's encoder with exactly the settings the fine-tuned model starts from (or ``mining_model``'s own)."""
    if config.mining_model:
        return Encoder(EncoderConfig(model=config.mining_model, precision=config.precision,
                                     batch_size=config.encode_batch_size, device=device,
                                     trust_remote_code=config.trust_remote_code))
    return Encoder(EncoderConfig(model=config.model, pooling=settings["pooling"], normalize=settings["normalize"],
                                 max_length=settings["max_length"], query_prefix=settings["query_prefix"],
                                 passage_prefix=settings["passage_prefix"], precision=config.precision,
                                 batch_size=config.encode_batch_size, device=device,
                                 trust_remote_code=config.trust_remote_code))


def beir_examples(config: FinetuneConfig, get_encoder, report: ExampleReport, write: bool = True) -> list[dict]:
    """Tuples from a BEIR data set's ``config.beir_split`` qrels (grade >= 1), negatives mined from its corpus."""
    dataset = load_beir(config.beir, split=config.beir_split)
    report.sources.append(f"beir:{dataset.name}/{config.beir_split}")
    positives = relevant_docs(dataset.qrels)
    queries = {qid: dataset.queries[qid] for qid in positives}
    candidates: dict[str, Candidates] = {}
    if config.hard_negatives:
        clock = time.perf_counter()
        never = never_negatives(queries, positives, dataset.iter_corpus)
        candidates = mine_negatives(queries, never, dataset.iter_corpus, get_encoder(), config.mining(),
                                    name=str(dataset.root), workdir=config.mining_workdir,
                                    total=count_lines(corpus_file(dataset.root)), show_progress=config.show_progress,
                                    write=write)
        report.mining_seconds += time.perf_counter() - clock
        report.mined_queries += len(candidates)
    if not write:
        return []
    rng = random.Random(config.seed)
    chosen: list[tuple[str, str, list[str]]] = []
    for qid in sorted(queries):
        for doc_id in positives[qid]:
            report.pairs += 1
            negatives: list[str] = []
            if config.hard_negatives:
                negatives = pick_negatives(candidates[qid], doc_id, config.mining(), rng)
                if negatives is None:
                    report.dropped_few_negatives += 1
                    continue
            chosen.append((qid, doc_id, negatives))
    needed = {d for _, pos, negs in chosen for d in (pos, *negs)}
    texts = {p.id: p.full_text() for p in dataset.iter_corpus() if p.id in needed}
    examples = []
    for qid, doc_id, negatives in chosen:
        if doc_id not in texts:  # judged but not in the corpus: no text to train on
            report.dropped_no_text += 1
            continue
        examples.append(_example(queries[qid], texts[doc_id], [texts[d] for d in negatives]))
    if report.dropped_no_text:
        log.warning("%d judged document(s) of %s are not in its corpus: their pairs are left out",
                    report.dropped_no_text, dataset.name)
    return examples


def jsonl_examples(config: FinetuneConfig, get_encoder, report: ExampleReport, write: bool = True) -> list[dict]:
    """Tuples from JSONL records: each record's first ``hard_negatives`` negatives (none with 0),
    completed with mined ones when it has fewer.

    Mining searches the pool of every positive and negative text in the files, excluding all the
    positives given for the same query text and the record's own negatives.
    """
    records = read_jsonl_examples(config.jsonl)
    report.sources += [f"jsonl:{p}" for p in config.jsonl]
    n = config.hard_negatives
    pool = list(dict.fromkeys(t for r in records for t in (r.positive, *r.negatives)))
    pool_ids = {text: f"p{i}" for i, text in enumerate(pool)}
    positives_of: dict[str, list[str]] = {}
    for r in records:
        positives_of.setdefault(r.query, []).append(pool_ids[r.positive])
    for query, ids in positives_of.items():  # the query's own text, if some record holds it, is no negative
        if query in pool_ids:
            ids.append(pool_ids[query])
    needs_mining = sorted({r.query for r in records if len(r.negatives) < n})
    candidates: dict[str, Candidates] = {}
    if needs_mining:
        queries = {f"q{i}": q for i, q in enumerate(needs_mining)}
        digest = hashlib.sha256("\n".join(pool).encode()).hexdigest()[:12]
        clock = time.perf_counter()
        mined = mine_negatives(queries, {qid: positives_of[q] for qid, q in queries.items()},
                               lambda: (Passage(id=pool_ids[t], text=t) for t in pool), get_encoder(),
                               config.mining(), name=f"jsonl-{digest}", workdir=config.mining_workdir,
                               total=len(pool), show_progress=config.show_progress, write=write)
        report.mining_seconds += time.perf_counter() - clock
        report.mined_queries += len(mined)
        candidates = {queries[qid]: c for qid, c in mined.items()}
    if not write:
        return []
    text_of = {doc_id: text for text, doc_id in pool_ids.items()}
    rng = random.Random(config.seed)
    examples = []
    for r in records:
        report.pairs += 1
        negatives = r.negatives[:n]
        if len(negatives) < n:
            own = {pool_ids[t] for t in negatives}
            cand = candidates[r.query]
            keep = [i for i, d in enumerate(cand.doc_ids) if d not in own]
            cand = Candidates([cand.doc_ids[i] for i in keep], [cand.scores[i] for i in keep], cand.positive_scores)
            extra = pick_negatives(cand, pool_ids[r.positive], config.mining(), rng, count=n - len(negatives))
            if extra is None:
                report.dropped_few_negatives += 1
                continue
            negatives = negatives + [text_of[d] for d in extra]
        examples.append(_example(r.query, r.positive, negatives))
    return examples


def read_jsonl_examples(paths: Sequence[str | Path]) -> list[JsonlExample]:
    """Read ``{"query", "positive", "negative" | "negatives"}`` records; a bad line raises a DataError naming it."""
    records: list[JsonlExample] = []
    form = '{"query": "...", "positive": "...", "negatives": ["...", ...]} (or "negative": "...")'
    for path in map(Path, paths):
        if not path.exists():
            raise DataError("training file does not exist", path, fix="check the --jsonl path")
        before = len(records)
        for lineno, obj in iter_jsonl(path):
            for key in ("query", "positive"):
                value = obj.get(key)
                if not isinstance(value, str) or not value.strip():
                    raise DataError(f"{key!r} must be a non-empty string, got {value!r}" if key in obj
                                    else f"missing {key!r}", path, lineno, f"each line needs {form}")
            if "negative" in obj and "negatives" in obj:
                raise DataError("give either 'negative' or 'negatives', not both", path, lineno)
            negatives = obj.get("negatives", [obj["negative"]] if "negative" in obj else [])
            if not isinstance(negatives, list) or not all(isinstance(t, str) and t.strip() for t in negatives):
                raise DataError("'negative' must be a non-empty string and 'negatives' a list of them", path, lineno,
                                f"each line needs {form}")
            if obj["positive"] in negatives:
                raise DataError("a negative is the same text as the positive", path, lineno,
                                "remove it from the negatives")
            if len(set(negatives)) < len(negatives):
                repeated = next(t for t in negatives if negatives.count(t) > 1)
                raise DataError(f"the negative {_clip(repeated)!r} is given twice", path, lineno,
                                "give each negative once")
            records.append(JsonlExample(query=obj["query"], positive=obj["positive"], negatives=list(negatives),
                                        path=path, line=lineno))
        if len(records) == before:
            raise DataError("no training records in the file", path, fix=f"each line needs {form}")
    _refuse_negatives_that_are_positives(records)
    return records


def _refuse_negatives_that_are_positives(records: Sequence[JsonlExample]) -> None:
    """A negative that another record gives as a positive of the same query would teach both ways."""
    positives: dict[str, dict[str, JsonlExample]] = {}
    for r in records:
        positives.setdefault(r.query, {}).setdefault(r.positive, r)
    for r in records:
        for negative in r.negatives:
            other = positives[r.query].get(negative)
            if other is not None:
                raise DataError(f"the negative {_clip(negative)!r} is a positive of the same query in "
                                f"{other.path}, line {other.line}", r.path, r.line,
                                "remove it from this record's negatives (or from that record)")


def never_negatives(queries: dict[str, str], positives: dict[str, list[str]], passages) -> dict[str, set[str]]:
    """Per query id, the documents mining must not return as its negatives.

    They are the positives of every query with the same text (SciFact train holds one claim under
    several ids, each judged against some of its documents) and the query's own twin in the corpus:
    a document with the query's id (BEIR's "identical ids", as in Quora, ArguAna, CQADupStack) or with
    its text (compared without case and spacing; ``passages()`` is streamed once for it).
    """
    by_text: dict[str, set[str]] = {}
    for qid, text in queries.items():
        by_text.setdefault(_normalized(text), set()).update(positives.get(qid, ()))
    twins: dict[str, set[str]] = {}
    for passage in passages():
        for text in {_normalized(passage.text), _normalized(passage.full_text())}:
            if text in by_text:
                twins.setdefault(text, set()).add(passage.id)
    return {qid: by_text[_normalized(text)] | twins.get(_normalized(text), set()) | {qid}
            for qid, text in queries.items()}


def relevant_docs(qrels: dict[str, dict[str, int]]) -> dict[str, list[str]]:
    """Query id -> the documents judged relevant (grade >= 1), in a stable order; queries without any left out."""
    relevant = {qid: sorted(d for d, grade in docs.items() if grade >= 1) for qid, docs in qrels.items()}
    return {qid: docs for qid, docs in relevant.items() if docs}


def mine_negatives(queries: dict[str, str], positives: dict[str, Iterable[str]], passages, encoder: Encoder,
                   config: MiningConfig, name: str, workdir: str | Path | None = None, total: int | None = None,
                   show_progress: bool = False, write: bool = True) -> dict[str, Candidates]:
    """Rank the corpus for each query with ``encoder`` through retromem's own Flat index.

    ``passages`` is a callable returning a fresh passage iterator (the corpus is streamed). Embeddings
    and the index are cached in ``<workdir>/<name>/<model>-<key>/`` (the layout ``retromem eval beir``
    uses, so the two share them). ``positives``: per query, the documents never to return (its
    positives, and whatever else :func:`never_negatives` adds). Returns, per query, the doc ids ranked
    by score with those removed, ranks ``[skip, top_k)`` of that list, and the scores of the removed
    documents (the pair's positive's among them, for ``max_score_ratio``). Under a launcher only the
    process with ``write=True`` searches; the others just encode their share and get ``{}``.
    """
    work = work_directory(workdir, name, encoder.metadata())
    embeddings = encode_corpus(passages(), encoder, work / "embeddings", total=total, show_progress=show_progress,
                               corpus_name=name)
    if not write or embeddings is None:
        return {}
    index_config = IndexConfig(factory="Flat", metric="ip")
    index_dir = work / "index-Flat-ip"
    if (index_dir / "index.json").exists():
        index = DenseIndex.load(index_dir, config=index_config)
    else:
        index = build_index(embeddings, index_dir, index_config, show_progress=show_progress)
    index.check_encoder(encoder.metadata())
    qids = sorted(queries)
    positive_sets = {qid: set(positives[qid]) for qid in qids}
    row_of = {doc_id: row for row, doc_id in enumerate(embeddings.ids)}
    depth = config.top_k + max((len(p) for p in positive_sets.values()), default=0)
    result: dict[str, Candidates] = {}
    for start in range(0, len(qids), 1024):
        batch = qids[start:start + 1024]
        vectors = encoder.encode_queries([queries[q] for q in batch], show_progress=show_progress)
        scores, doc_ids = index.search(vectors, depth)
        for qid, vector, row_scores, row_ids in zip(batch, vectors, scores, doc_ids):
            ranked = [(d, float(s)) for d, s in zip(row_ids, row_scores) if d not in positive_sets[qid]]
            ranked = ranked[config.skip:config.top_k]
            pos_scores = {d: float(np.dot(vector, embeddings.vectors[row_of[d]]))
                          for d in positive_sets[qid] if d in row_of}
            result[qid] = Candidates([d for d, _ in ranked], [s for _, s in ranked], pos_scores)
    return result


def pick_negatives(candidates: Candidates, positive: str, config: MiningConfig, rng: random.Random,
                   count: int | None = None) -> list[str] | None:
    """``count`` (default ``config.negatives``) negatives for the pair (query, ``positive``), or ``None`` if too few.

    ``top`` takes the highest-ranked candidates; ``random`` samples uniformly among them. With
    ``max_score_ratio`` candidates scoring above ``ratio * score(query, positive)`` are left out.
    """
    count = config.negatives if count is None else count
    eligible = candidates.doc_ids
    if config.max_score_ratio is not None and positive in candidates.positive_scores:
        limit = config.max_score_ratio * candidates.positive_scores[positive]
        eligible = [d for d, s in zip(candidates.doc_ids, candidates.scores) if s <= limit]
    if len(eligible) < count:
        return None
    if config.sampling == "random":
        picked = set(rng.sample(range(len(eligible)), count))
        return [d for i, d in enumerate(eligible) if i in picked]
    return list(eligible[:count])


def save_final(model, final: Path, settings: dict[str, Any], info: dict[str, Any],
               log_history: Sequence[dict[str, Any]] = ()) -> Path:
    """Save the ``SentenceTransformer`` to ``final`` atomically (sibling temp folder, then renames),
    with ``training_loss.png`` when the trainer's ``log_history`` holds losses."""
    with atomic_folder(final) as staging:
        model.prompts = {"query": settings["query_prefix"], "document": settings["passage_prefix"]}
        model.save(str(staging))
        write_json_atomic(staging / FINAL_INFO, info)
        plot_training_losses(log_history, staging / "training_loss.png", title="contrastive fine-tuning")
    log.info("saved the fine-tuned model to %s", final)
    return final


# ---- helpers -----------------------------------------------------------------------------------

class _Trainer(SentenceTransformerTrainer):
    """sentence-transformers' trainer, without the pickled ``training_args.bin`` in checkpoints."""

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        Path(output_dir or self.args.output_dir, TRAINING_ARGS_NAME).unlink(missing_ok=True)


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _example(query: str, positive: str, negatives: list[str]) -> dict[str, str]:
    example = {"anchor": query, "positive": positive}
    example.update({f"negative_{i}": text for i, text in enumerate(negatives, start=1)})
    return example


def _column_prompts(settings: dict[str, Any], columns: list[str]) -> dict[str, str]:
    if not settings["query_prefix"] and not settings["passage_prefix"]:
        return {}
    return {c: settings["query_prefix"] if c == "anchor" else settings["passage_prefix"] for c in columns}


def _write_examples(path: Path, examples: list[dict[str, str]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example, ensure_ascii=False) + "\n")


def _read_examples(path: Path) -> list[dict[str, str]]:
    return [obj for _, obj in iter_jsonl(path)]


def input_digests(config: FinetuneConfig) -> dict[str, Any]:
    """What the run reads, by content: the starting (and mining) model's weights and the training files.

    A model folder retrained in place, a BEIR file or a JSONL file edited in place, or a data set
    name that now resolves to another folder, all make another run. Files above 256 MiB are
    fingerprinted by size, modification time and their first and last MiB (see :func:`_file_digest`).
    """
    digests: dict[str, Any] = {"model": model_fingerprint(resolve_model_path(config.model))}
    if config.mining_model:
        digests["mining_model"] = model_fingerprint(resolve_model_path(config.mining_model))
    if config.beir:
        root = resolve_beir_dir(config.beir)
        files = [corpus_file(root), root / "queries.jsonl", qrels_file(root, config.beir_split)]
        digests["beir"] = {"root": str(root.resolve()), **{f.name: _file_digest(f) for f in files}}
    if config.jsonl:
        digests["jsonl"] = [_file_digest(p) for p in config.jsonl]
    return digests


def _data_key(config: FinetuneConfig, settings: dict[str, Any], inputs: dict[str, Any]) -> str:
    values = {k: getattr(config, k) for k in _DATA_KEYS}
    values.update(settings)
    values["inputs"] = inputs
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(path: str | Path) -> str:
    """SHA-256 of the file; above 256 MiB, of its size, modification time and first and last MiB."""
    digest = hashlib.sha256()
    try:
        size = Path(path).stat().st_size
        with open(path, "rb") as handle:
            if size <= _FULL_DIGEST_LIMIT:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            else:
                digest.update(f"{size}:{Path(path).stat().st_mtime_ns}".encode())
                digest.update(handle.read(1 << 20))
                handle.seek(size - (1 << 20))
                digest.update(handle.read())
    except OSError:
        return f"missing:{path}"
    return digest.hexdigest()


def _refuse_changed_run(config: FinetuneConfig, data_key: str, world_size: int, checkpoint: Path,
                        previous: dict[str, Any]) -> None:
    """Refuse to resume ``checkpoint`` of a run (its settings: ``previous``) that trained otherwise or on other data,
    or with another number of processes (which sets the batch and where in the data a step is)."""
    current = json.loads(json.dumps(asdict(config)))  # as it was written: tuples become lists
    changed = [f"{k}: {previous[k]!r} in that run, {current[k]!r} now" for k in _RESUME_MUST_MATCH
               if k in previous and previous[k] != current[k]]
    if previous.get("world_size", world_size) != world_size:
        changed.append(f"the number of processes: {previous['world_size']} in that run, {world_size} now")
    if previous.get("data_key") != data_key:
        changed.append("the training data or the mining settings")
    if changed:
        raise MismatchError(f"cannot resume {checkpoint}, written with other settings ({'; '.join(changed)}): use "
                            "the same options, or another --output to start afresh")


def _finished_before(final: Path, config: FinetuneConfig, inputs: dict[str, Any]) -> bool:
    """Whether ``final`` was written by a run with these settings (bookkeeping options aside) and inputs."""
    if not (final / FINAL_INFO).exists():
        return False
    info = read_json(final / FINAL_INFO)
    previous = info.get("config", {})
    ignore = {"show_progress", "logging_steps", "report_to", "resume", "save_steps", "save_total_limit",
              "mining_workdir", "encode_batch_size", "mini_batch_size"}
    current = json.loads(json.dumps(asdict(config)))  # as it was written
    same_inputs = info.get("input_digests") == json.loads(json.dumps(inputs))
    return same_inputs and all(previous.get(k) == v for k, v in current.items() if k not in ignore)


def _default_max_length(transformer) -> int:
    """The model's own limit: the tokenizer's (or sentence-transformers') length, within the position embeddings."""
    positions = getattr(transformer.auto_model.config, "max_position_embeddings", None) or 512
    limit = transformer.max_seq_length
    if not limit or limit > 100_000:  # tokenizers without a limit report a huge number
        limit = 512
    return int(min(limit, positions))
