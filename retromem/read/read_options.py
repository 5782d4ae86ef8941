"""What the ``retromem read`` commands read (:class:`ReadingOptions`: a KILT task, its retrieved passages and
their memory) and the options of ``read predict`` (:class:`ReaderPredictConfig`) and ``read memory``
(:class:`ReaderMemoryConfig`), each declared beside its flag. Light (no torch): the command builds its parsers
from these."""

from __future__ import annotations

from dataclasses import dataclass

from retromem.errors import ConfigError
from retromem.model_paths import DEFAULT_MODEL
from retromem.options import named, option


@dataclass
class ReadingOptions:
    """What a reader reads for each question: the task, its retrieved passages and their memory."""

    task: str | None = option(None, help="KILT task: scifact-train, squad-train... or a KILT-format .jsonl file")
    run: str | None = option(None, help="TREC run file of the task's retrieved passages (ids <wikipedia_id>#<i>), e.g. "
                      "the ranked passages `retromem eval kilt` writes")
    memory: str | None = option(None, help="token-memory folder holding those passages at the reader's layer "
                                "(`retromem read memory`); not needed with --k equal to the encoder's layers "
                                "(full re-encoding reads the text)")
    corpus: str | None = option(None, help="the corpus the run's passages come from: a KILT knowledge source (.jsonl "
                                "or a name: scifact-kilt, squad-kilt) cut as the run's passages were, or a BEIR corpus "
                                "(scifact) whose document ids are the page ids (default: the task's knowledge source)")
    passages: int = option(5, min=1, help="retrieved passages read per question (the top of the run)")
    passage_words: int = option(100, min=1, help="words per passage, as the run's passages were cut")
    passage_stride: int | None = option(None, min=1, help="words between passage starts (default: --passage-words)")
    limit: int | None = option(None, min=1, help="read only this many questions (a fixed random subsample, seed 0, the "
                              "same for every command)")
    trust_remote_code: bool = option(False, help="allow the encoder's own Python code (its config.json's auto_map) "
                                     "to run, and a reader folder's copy of it")


def check_reading(options: ReadingOptions) -> None:
    """Refuse reading options without a task or a run, or with a stride beyond the passage size."""
    for name in ("task", "run"):
        if not getattr(options, name):
            raise ConfigError(f"give {named(options, name)}")
    if options.passage_stride is not None and options.passage_stride > options.passage_words:
        raise ConfigError(f"{named(options, 'passage_stride')} {options.passage_stride} is above --passage-words "
                          f"{options.passage_words}: words would be skipped")


@dataclass
class ReadRerankOptions:
    """GLIMMER-style memory reranking before reading (``--rerank memory``): the first stage's top
    ``rerank_depth`` passages of each question are rescored by MaxSim over a token memory
    (:class:`retromem.retrieve.memory_rerank.MemoryReranker`) and the reader reads the top ``passages`` of the
    new order."""

    rerank: str | None = option(None, choices=("memory",), help="rerank each question's top --rerank-depth passages "
                                "of the run by late interaction (MaxSim) over a token memory before reading: the "
                                "reader's --memory, or --rerank-memory")
    rerank_depth: int = option(20, min=1, help="passages of each question reranked (at least the passages read, "
                               "--passages or eval kilt's --reader-passages; the memory must hold them)")
    rerank_weight: float = option(0.0, min=0, help="reranked score = MaxSim + this x the run's score (0: MaxSim "
                                  "alone)")
    rerank_memory: str | None = option(None, help="token memory folder to rerank from (any layer and codec of the "
                                       "reader's encoder, e.g. a binary memory from `retromem index memory`; "
                                       "default: --memory, or in eval kilt the memory computed on the fly); a full "
                                       "re-encoding reader (k = N) needs it")


#: The reranking options' field names (their own argument group on the command line).
RERANK_FIELDS = tuple(ReadRerankOptions.__dataclass_fields__)


def check_rerank(options: ReadRerankOptions, passages: int) -> None:
    """Refuse a rerank depth below the passages read, and a --rerank-memory without --rerank memory."""
    if options.rerank is None:
        if options.rerank_memory:
            raise ConfigError("--rerank-memory is read by memory reranking: give --rerank memory too, or leave it out")
        return
    if options.rerank_depth < passages:
        raise ConfigError(f"{named(options, 'rerank_depth')} {options.rerank_depth} is below the {passages} passages "
                          "read: rerank at least as many passages as the reader reads")


@dataclass
class ReaderPredictConfig(ReadRerankOptions, ReadingOptions):
    """One prediction run over a task (its fields: :class:`ReadingOptions`', :class:`ReadRerankOptions`', then
    these)."""

    reader: str | None = option(None, help="reader folder (the final/ of `retromem read train`)")
    output: str | None = option(None, help="KILT predictions file to write (.jsonl)")
    provenance: int = option(5, min=1, help="pages of the run's ranking given as each prediction's provenance")
    batch_size: int = option(16, min=1, help="questions read per forward pass")
    device: str | None = option(None, help="torch device (default: cuda when available, else cpu)")
    precision: str = option("auto", choices=("auto", "fp32", "bf16", "fp16"), help="auto: bf16 autocast on CPUs "
                            "with native bf16 and on GPUs, else fp32")
    show_progress: bool = option(True, cli=False, help="progress bar")

    def validate(self) -> None:
        check_reading(self)
        check_rerank(self, self.passages)


@dataclass
class ReaderMemoryConfig(ReadingOptions):
    """What ``retromem read memory`` builds."""

    output: str | None = option(None, help="memory folder to write")
    model: str = option(DEFAULT_MODEL, help="the encoder (the reader's)")
    live_layers: int = option(2, min=0, flag="--k", metavar="K", help="the reader's live layers: the memory holds "
                              "layer N - K of the encoder's N")
    codec: str = option("fp16", help="codec of the memory: fp16, fp32, int8, binary, pq:bytes=48, ...")
    codebook_of: str | None = option(None, metavar="READER", help="a reader folder trained with --tune-codebook: "
                                     "code the memory with the pq codebook its tuned one started from (the only "
                                     "codes it reads) instead of training a new one; --codec is then the reader's")
    force_gold: bool = option(False, help="add a gold passage of each question whose retrieved passages miss every "
                              "gold page (as `read train` forces one in)")
    precision: str = option("fp32", choices=("auto", "fp32", "bf16", "fp16"), help="precision of the encoder pass")
    batch_size: int = option(32, min=1, help="passages per forward pass")
    show_progress: bool = option(True, cli=False, help="progress bars")

    def validate(self) -> None:
        check_reading(self)
        if not self.output:
            raise ConfigError("give --output (the memory folder to write)")
