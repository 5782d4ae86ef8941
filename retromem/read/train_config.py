"""The options of one reader training run (:class:`ReaderTrainConfig`), each declared beside its
``retromem read train`` flag; what it reads comes from :class:`retromem.read.read_options.ReadingOptions`, the
options every run has from :class:`retromem.pretrain.run_settings.RunSettings`."""

from __future__ import annotations

from dataclasses import dataclass

from retromem.errors import ConfigError
from retromem.model_paths import DEFAULT_MODEL
from retromem.options import named, option
from retromem.pretrain.run_settings import RunSettings
from retromem.read.read_options import ReadingOptions, check_reading
from retromem.read.reader_config import HEADS

HEAD_CHOICES = ("auto", *HEADS)


@dataclass
class ReaderTrainConfig(ReadingOptions, RunSettings):
    """One reader training run (see :mod:`retromem.read.train`)."""

    RUN_FILE = "retromem_reader_run.json"
    KIND = "reader training"
    RESUME_MUST_MATCH = (*RunSettings.RESUME_MUST_MATCH, "model", "live_layers", "head", "passages", "force_gold",
                         "batch_size", "learning_rate", "head_learning_rate", "warmup_ratio", "limit",
                         "decoder_layers", "decoder_model", "max_question_length", "max_passage_length",
                         "max_answer_length", "tune_codebook", "codebook_learning_rate", "tune_question_encoder",
                         "init_head")

    output_dir: str = option("runs/reader", flag="--output", metavar="OUTPUT", help="run folder: checkpoints, final/")
    model: str = option(DEFAULT_MODEL, help="the encoder whose layers the reader splits (the memory's encoder)")
    live_layers: int = option(2, min=0, flag="--k", metavar="K", help="live layers: the top K of the encoder's N "
                              "run over [question; memory] (the memory holds layer N - K); K = N re-encodes the "
                              "passage text through every layer, K = 0 reads pure memory")
    head: str = option("auto", choices=HEAD_CHOICES, help="classification (labels pooled over passages), span "
                       "(extractive), generative (a decoder over all passages); auto: classification when the "
                       "task's answers are few labels, else span")
    force_gold: bool = option(True, flag="--no-force-gold", help="do not put a gold passage among a question's "
                              "passages when retrieval missed it (by default the last retrieved one is replaced)")
    decoder_layers: int = option(2, min=1, help="generative head: decoder layers (initialised from the encoder's "
                                 "lowest, cross-attention fresh)")
    decoder_model: str | None = option(None, help="generative head: a Hugging Face seq2seq model (T5, BART...) "
                                       "whose decoder reads the passages instead of the BERT-initialised one")
    max_question_length: int = option(64, min=4, help="question tokens")
    max_passage_length: int = option(192, min=4, help="memory tokens read per passage")
    max_answer_length: int = option(32, min=2, help="generative head: answer tokens")
    batch_size: int = option(4, min=1, help="questions per step (each with --passages passages)")
    learning_rate: float = option(5e-5, flag="--lr", metavar="LR", gt=0, help="learning rate of the live layers")
    head_learning_rate: float = option(1e-3, flag="--head-lr", metavar="LR", gt=0, help="learning rate of the "
                                       "fresh head")
    warmup_ratio: float = option(0.1, min=0, help="share of the steps spent warming up (below 1)")
    tune_question_encoder: bool = option(True, flag="--freeze-question-encoder", help="keep the lower N - K "
                                         "layers that encode the question frozen, in the memory encoder's space "
                                         "(by default they are fine-tuned with the live layers, as LUMEN's question "
                                         "encoder; the memory is never changed by training)")
    init_head: str | None = option(None, metavar="READER", help="start the head from this trained reader's "
                                   "(its final/ folder; the same head, labels and encoder size, any k) instead of "
                                   "a fresh one, e.g. the k = N reader whose exported encoder (`read "
                                   "export-encoder`) made the memory; it trains at --head-lr, which such a head "
                                   "wants lower (as --lr)")
    tune_codebook: bool = option(False, help="MEMORY-VQ-style: train the centroids of a pq --memory's codebook "
                                 "with the reader (it decodes the stored codes itself, the codes stay fixed: "
                                 "straight through); needs codec pq and --k below the encoder's layers")
    codebook_learning_rate: float | None = option(None, flag="--codebook-lr", metavar="LR", gt=0,
                                                  help="with --tune-codebook: learning rate of the pq centroids "
                                                  "(default: --head-lr)")

    def validate(self) -> None:
        check_reading(self)
        self.check_run_options()
        if self.warmup_ratio >= 1:
            raise ConfigError(f"{named(self, 'warmup_ratio')} must be below 1, got {self.warmup_ratio}")
        if self.codebook_learning_rate is not None and not self.tune_codebook:
            raise ConfigError(f"{named(self, 'codebook_learning_rate')} sets the learning rate of a tuned pq "
                              "codebook: give --tune-codebook too")
