"""``retromem finetune``: contrastive fine-tuning with sentence-transformers."""

from __future__ import annotations

import time
from pathlib import Path

from retromem.cli.common import HelpFormatter, check_output_folder, is_main_process, show_training_logs
from retromem.cli.options import add_options, config_from_args
from retromem.cli.training import RUN_OPTIONS, add_training_options
from retromem.errors import ConfigError
from retromem.options import flag
from retromem.pretrain.finetune_config import FinetuneConfig

DATA = ("beir", "jsonl")
NEGATIVES = ("hard_negatives", "negatives_source", "mine_top_k", "mine_skip", "mine_sampling", "mine_max_score_ratio",
             "mining_model", "mining_workdir", "encode_batch_size")
OPTIMISATION = ("batch_size", "learning_rate", "warmup_ratio")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "finetune", help="contrastive fine-tuning (in-batch + hard negatives) with sentence-transformers",
        description="Fine-tune an encoder into a retriever with sentence-transformers' trainer and "
                    "(Cached)MultipleNegativesRankingLoss: in-batch negatives plus hard negatives mined with "
                    "retromem's own index (top-k of the starting encoder, positives excluded). Training pairs come "
                    "from a BEIR data set's train qrels and/or from JSONL (query, positive, negatives). The result, "
                    "<output>/final, is a sentence-transformers folder. Rerunning the same command resumes; a "
                    "finished run given more --epochs or --max-steps trains on.",
        formatter_class=HelpFormatter)
    add_options(p.add_argument_group("training data (one or both)"), FinetuneConfig, only=DATA,
                defaults={"jsonl": None})
    add_options(p, FinetuneConfig, exclude=(*DATA, *NEGATIVES, *OPTIMISATION, *RUN_OPTIONS), required=("output_dir",))
    add_options(p.add_argument_group("hard negatives"), FinetuneConfig, only=NEGATIVES)
    add_training_options(p, FinetuneConfig, own=OPTIMISATION)
    p.set_defaults(func=run)


def run(args) -> int:
    from retromem.pretrain.finetune import finetune

    check_output_folder(Path(args.output_dir))
    config = config_from_args(FinetuneConfig, args, jsonl=args.jsonl or [])
    _refuse_unused_mining_options(config, getattr(args, "given", frozenset()))
    show_training_logs()
    start = time.perf_counter()
    final = finetune(config)
    if final is not None and is_main_process():
        print(f"fine-tuned in {time.perf_counter() - start:.1f}s -> {final}")
    return 0


def _refuse_unused_mining_options(config: FinetuneConfig, given: frozenset[str]) -> None:
    """With --hard-negatives 0 nothing is mined: a mining option given then is a mistake."""
    if config.hard_negatives:
        return
    unused = [flag(FinetuneConfig, name) for name in NEGATIVES if name != "hard_negatives"
              and flag(FinetuneConfig, name) in given]
    if unused:
        raise ConfigError(f"{', '.join(unused)} would not be used: --hard-negatives 0 trains on in-batch negatives "
                          "only and mines nothing; leave them out, or give --hard-negatives 1 or more")
