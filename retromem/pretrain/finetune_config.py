"""The options of one contrastive fine-tuning run (:class:`FinetuneConfig`), each declared beside its
``retromem finetune`` flag and help; the run lifecycle's shared options come from
:class:`retromem.pretrain.run_settings.RunSettings`."""

from __future__ import annotations

from dataclasses import dataclass

from retromem.errors import ConfigError
from retromem.model_paths import DEFAULT_MODEL
from retromem.options import named, option
from retromem.pretrain.run_settings import RunSettings
from retromem.retrieve.hard_negatives import SAMPLINGS, MiningConfig

LOSSES = ("mnrl", "cached-mnrl")
POOLINGS = ("auto", "cls", "mean")
NEGATIVE_SOURCES = ("dense", "bm25", "bm25+dense")  # retromem.retrieve.negative_sources.SOURCES
#: Texts per forward pass of cached-mnrl unless mini_batch_size says otherwise.
DEFAULT_MINI_BATCH = 32


@dataclass
class FinetuneConfig(RunSettings):
    """One fine-tuning run; each field is a ``retromem finetune`` option (its flag beside it).

    Data: ``beir`` (a BEIR data set name or folder; its ``beir_split`` qrels give the pairs) and/or
    ``jsonl`` (files of query/positive/negative(s) texts). Model: ``model`` is an alias (``minilm``),
    a sentence-transformers folder (pretraining's output is one) or a bare Hugging Face encoder folder.
    ``pooling``/``max_length``/``query_prefix``/``passage_prefix``: ``auto``/``None`` = what the
    folder's sentence-transformers config says, else [CLS] pooling, the model's own length limit, no
    prefixes. ``normalize``: the loss scores cosine similarity and the saved model normalises, so that
    inner-product search ranks as training scored; with ``normalize=False`` the loss scores dot
    products and the saved model returns raw vectors (then a ``scale`` near 1 is usual).

    Hard negatives are mined by the model being fine-tuned or, when ``mining_model`` names another
    encoder, by that one (with its own pooling and prefixes): e.g. to give several candidate models the
    same training tuples (see :mod:`retromem.pretrain.contrastive_examples`). ``resume``: a finished run
    given more epochs or steps trains on from its last checkpoint.
    """

    RUN_FILE = "retromem_finetune_run.json"
    KIND = "fine-tuning"
    RESUME_MUST_MATCH = (*RunSettings.RESUME_MUST_MATCH, "loss", "batch_size", "learning_rate", "scale",
                         "warmup_ratio", "no_duplicates", "trust_remote_code")
    BOOKKEEPING = (*RunSettings.BOOKKEEPING, "mining_workdir", "encode_batch_size", "mini_batch_size")

    output_dir: str = option("runs/finetune", flag="--output", metavar="OUTPUT",
                             help="run folder: mined examples, checkpoints, final/")
    model: str = option(DEFAULT_MODEL, help="encoder to fine-tune: alias, folder (e.g. <pretrain>/final), hub id")
    # data
    beir: str | None = option(None, help="BEIR data set name or folder: pairs from its --split qrels (grade >= 1)")
    beir_split: str = option("train", flag="--split", metavar="SPLIT", help="qrels split of --beir used for training")
    jsonl: list[str] = option(default_factory=list, help='JSONL files of {"query": ..., "positive": ..., '
                              '"negatives": [...]} (negatives optional)')
    # encoder
    pooling: str = option("auto", choices=POOLINGS, help="pooling of the fine-tuned model (auto: the folder's "
                          "sentence-transformers config, else cls)")
    normalize: bool = option(True, flag="--no-normalize", help="do not L2-normalise: the loss scores dot products "
                             "and the saved model returns raw vectors (a dot-product retriever); by default it "
                             "scores cosine similarity and the model normalises")
    max_length: int | None = option(None, min=2, help="tokens per text (default: the model's; at most its "
                                    "positions)")
    query_prefix: str | None = option(None, help="text put before queries (default: the folder's 'query' prompt)")
    passage_prefix: str | None = option(None, help="text put before passages (default: the folder's prompt)")
    trust_remote_code: bool = option(False, help="allow the model folder's own Python code to run")
    # loss
    loss: str = option("mnrl", choices=LOSSES, help="MultipleNegativesRankingLoss, or its cached (GradCache) form: "
                       "large batches in small memory")
    scale: float = option(20.0, gt=0, help="similarity scale (1 / temperature)")
    mini_batch_size: int | None = option(None, min=1, help=f"cached-mnrl: texts per forward pass (default "
                                         f"{DEFAULT_MINI_BATCH}; one at least the batch makes one pass)")
    no_duplicates: bool = option(True, flag="--allow-duplicates", help="let a batch hold the same text twice (by "
                                 "default batches avoid it: a duplicate would be a false in-batch negative)")
    # hard negatives
    hard_negatives: int = option(1, min=0, help="hard negatives per pair: a JSONL record's own first (any beyond "
                                 "this number unused), mined ones fill up (0 = in-batch negatives only)")
    negatives_source: str = option("dense", choices=NEGATIVE_SOURCES, flag="--negatives",
                                   help="where negatives come from: retromem's dense index of the starting encoder, "
                                   "a BM25 index of the corpus (pyserini), or the two fused by RRF")
    mine_top_k: int = option(30, min=1, help="candidates searched per query (at most the whole corpus)")
    mine_skip: int = option(0, min=0, help="top-ranked candidates skipped (likely false negatives)")
    mine_sampling: str = option("top", choices=SAMPLINGS, help="take the best-ranked remaining candidates, or "
                                "sample among them")
    mine_max_score_ratio: float | None = option(None, gt=0, help="drop candidates scoring above this fraction of "
                                                "the positive's score (e.g. 0.95)")
    mining_model: str | None = option(None, help="encoder used for mining (default: --model)")
    mining_workdir: str | None = option(None, help="cache of mining's corpus embeddings and index (default: the "
                                        "one `eval beir` uses)")
    encode_batch_size: int = option(64, min=1, help="texts per forward pass when mining")
    # optimisation
    batch_size: int = option(32, min=1, help="training tuples per device per step")
    learning_rate: float = option(2e-5, flag="--lr", metavar="LR", gt=0, help="peak learning rate")
    warmup_ratio: float = option(0.1, min=0, help="share of the steps spent warming up (below 1)")

    def validate(self) -> None:
        """Raise :class:`retromem.errors.RetromemError` naming the bad option and its fix."""
        if not self.beir and not self.jsonl:
            raise ConfigError("no training data: give --beir (a BEIR data set with train qrels, e.g. scifact) "
                              "and/or --jsonl FILE (query/positive/negative records)")
        self.check_run_options()
        if self.hard_negatives and self.mine_skip + self.hard_negatives > self.mine_top_k:
            raise ConfigError(f"{named(self, 'mine_top_k')} {self.mine_top_k} leaves fewer than "
                              f"{named(self, 'hard_negatives')} {self.hard_negatives} candidates after skipping "
                              f"{named(self, 'mine_skip')} {self.mine_skip}: raise --mine-top-k")
        if self.warmup_ratio >= 1:
            raise ConfigError(f"{named(self, 'warmup_ratio')} must be below 1 (a share of the steps), got "
                              f"{self.warmup_ratio}")
        if self.mini_batch_size is not None and self.loss != "cached-mnrl":
            raise ConfigError(f"{named(self, 'mini_batch_size')} acts on --loss cached-mnrl only, and the loss is "
                              f"{self.loss}: drop it, or add --loss cached-mnrl")

    def mining(self) -> MiningConfig:
        return MiningConfig(negatives=self.hard_negatives, top_k=self.mine_top_k, skip=self.mine_skip,
                            sampling=self.mine_sampling, max_score_ratio=self.mine_max_score_ratio, seed=self.seed)
