"""Does bottlenecked pretraining help? The small replication of issue 3 on BEIR SciFact.

From ``minilm`` (all-MiniLM-L6-v2), each arm is:

    (a) finetune   fine-tune only
    (b) mlm        MLM pretraining on the SciFact corpus, then fine-tune
    (c) retromae   RetroMAE pretraining (enhanced decoding), then fine-tune
    (d) bow        "Drop your Decoder" bag-of-words pretraining, then fine-tune
    (e) cotmae     CoT-MAE pretraining, then fine-tune
    (f) dupmae     DupMAE pretraining, then fine-tune

Every pretrained arm runs the same number of steps with the same batch, length, learning rate and
seed on the SciFact corpus (``retromem.pretrain.train.pretrain``); every arm is then fine-tuned with
the same budget on the SciFact *train* qrels (``retromem.pretrain.finetune.finetune``: in-batch +
mined hard negatives) and scored on the SciFact *test* qrels with ``evaluate_dense_beir`` (nDCG@10,
Recall@100). To give every arm the same training tuples, hard negatives are mined once, by the
starting model (``--model``), instead of by each arm's pretrained encoder; the zero-shot score of the
starting model is reported beside the arms (it reuses the corpus embeddings the mining made). Every
arm fine-tunes with [CLS] pooling by default (the bottleneck these objectives train), so that pooling
is not a difference between arms; ``--finetune-pooling auto`` gives each arm its own (mean for MiniLM
as it was trained, [CLS] for the pretrained encoders).

Output (``--output DIR``)::

    results.json                    every finished run's scores, steps, timings, settings (this run's
                                    and earlier ones in the folder); per-arm summary over the seeds;
                                    the zero-shot reference
    results.md                      the same as markdown tables (also printed): one row per arm and
                                    seed, then per arm the mean, standard deviation and the paired
                                    difference to arm (a) (same seed, same fine-tuning order)
    ndcg10.png                      bar plot of mean nDCG@10 per arm, standard deviation and seeds
                                    (dashed line: zero-shot)
    arms/<arm>/seed-<N>/pretrain/   pretraining run (final/; its checkpoints while it runs, deleted when the
                                    arm and seed is finished unless --keep-checkpoints)
    arms/<arm>/seed-<N>/finetune/   fine-tuning run (train_examples.jsonl, final/; checkpoints likewise)
    arms/<arm>/seed-<N>/eval/       BEIR results of the fine-tuned model
    arms/<arm>/seed-<N>/result.json the run's row, written last: a run that has one is skipped by a rerun
    work/                           cached corpus embeddings and indexes (mining, evaluation)
    cache/                          the tokenised pretraining corpus (shared by the arms)

Rerunning the same command resumes: finished runs are skipped, a pretraining or fine-tuning run
continues from its newest checkpoint, finished stages are not redone. More arms or seeds can be added
to a folder later; other settings cannot (``settings.json`` and ``objectives.json`` record them, and
a rerun with different ones is refused: give a new ``--output``). Arm (a) and the zero-shot score do
not depend on the pretraining settings, so their folders (``arms/a-finetune/seed-<N>``,
``arms/zero-shot``) and ``work/`` may be copied into a new output folder to save their time.

Sizing. The defaults (one seed) take about 65 minutes on an idle 2-core AMD EPYC with AVX512-BF16
and about 40 on a 2-core Intel Xeon with AMX (bf16 autocast), from these times of MiniLM (fastest
steps; a busy machine is slower):

    pretraining, batch 16 x 128 tokens (EPYC / Xeon): mlm 0.58 / 0.53 s, bow 0.63 / 0.58 s,
        retromae 1.07 / 0.94 s, dupmae 1.31 / 1.12 s, cotmae 1.84 / 1.66 s (two spans)
    fine-tuning, batch 32 (query + positive + 1 hard negative, 128 tokens): 3.5 / 2.2 s a step
    evaluation: the 5,183 SciFact documents at 256 tokens: 1.5 / 0.8 minutes

    on the Xeon, per arm and seed (3 fine-tuning epochs = 87 steps, about 3 minutes): (a) 4 min,
    (b) mlm 6, (c) retromae 7, (d) bow 6, (e) cotmae 9, (f) dupmae 8; the zero-shot score 1 (mining
    reuses its corpus encoding)

``--finetune-epochs 1`` takes 12 minutes less (and scores every arm about 0.05 lower).
At this size (about 400k pretraining tokens, a quarter of an epoch of the SciFact corpus; three epochs
of 919 training pairs) the seed alone moves an arm by about 0.01-0.02 nDCG@10 (arm (a): 0.6914,
0.6828 and 0.6961 with seeds 42, 43 and 44): give several seeds (``--seeds 42,43,44``: every arm runs once per seed,
and the report gives each arm's mean, standard deviation and paired differences to arms (a) and (b)
with their 95% t-intervals, the same seed giving every arm the same masks and fine-tuning order)
before reading anything into a difference. The report ends with the goal's verdict: which bottlenecked
arms beat both (a) and (b) on the paired means, and which do so beyond seed noise.
``results.md`` covers every finished run in the output folder, so seeds can be added by later runs.

Run it:

    .venv/bin/python benchmarks/pretrain_quality.py --output runs/pretrain_quality
    .venv/bin/python benchmarks/pretrain_quality.py --arms a,c --output runs/pq   # two arms only
    .venv/bin/python benchmarks/pretrain_quality.py --seeds 42,43,44 --output runs/pq3seeds
    # an ablation: RetroMAE with a lighter encoder MLM loss in place of the paper's (any --objective spec)
    .venv/bin/python benchmarks/pretrain_quality.py --arms a,c --arm-objective c=retromae+mlm:0.1 --output runs/pq-abl
    # a smoke test of the whole pipeline in a few minutes (numbers meaningless):
    .venv/bin/python benchmarks/pretrain_quality.py --pretrain-steps 2 --finetune-steps 2 \\
        --dataset /path/to/small-beir --output /tmp/pq-smoke

Bigger, on GPUs: pretraining and fine-tuning run on the HF / sentence-transformers trainers, so they
use bf16 on GPUs that have it and every GPU of ``accelerate launch`` (data parallel; in-batch
negatives are gathered across GPUs); mining and evaluation encode on the GPU (under a launcher the
evaluation runs on the main process alone). A setting closer to the papers, on one GPU, with about
ten epochs of the SciFact corpus for pretraining and ten of the training pairs for fine-tuning:

    .venv/bin/python benchmarks/pretrain_quality.py --pretrain-steps 1000 --pretrain-batch-size 64 \
        --pretrain-max-length 256 --finetune-epochs 10 --batch-size 64 --max-length 256 \
        --finetune-lr 2e-5 --hard-negatives 3 --mine-skip 3 --seeds 1,2,3 --output runs/pq-gpu

On N GPUs, prefix ``accelerate launch --multi_gpu --num_processes N`` and divide the batch sizes
(which are per GPU) by N to keep the same recipe in less time; ``--loss cached-mnrl`` keeps larger
fine-tuning batches within memory. Pretraining on a larger in-domain corpus than
SciFact's own 5k abstracts (``--pretrain-data``: any source ``retromem pretrain`` reads, e.g. a
folder of biomedical abstracts) is where the papers saw the bottlenecked objectives pay off.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: arm key -> (name, pretraining objective or None)
ARMS = {
    "a": ("finetune", None),
    "b": ("mlm", "mlm"),
    "c": ("retromae", "retromae"),
    "d": ("bow", "bow"),
    "e": ("cotmae", "cotmae"),
    "f": ("dupmae", "dupmae"),
}
ZERO_SHOT = "zero-shot"
#: the arms the goal compares against: fine-tuning alone and MLM pretraining
BASELINE_ARMS = ("a", "b")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "sentence_transformers", "accelerate", "datasets", "faiss", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from accelerate import PartialState

    state = PartialState()
    out = Path(args.output)
    arms = parse_arms(args.arms)
    if state.is_main_process:
        check_settings(args, out)
    rows: dict[str, dict] = {}
    if args.zero_shot:
        rows[ZERO_SHOT] = run_zero_shot(args, out)
    for seed in args.seeds:  # seed by seed, so that a partial run already has whole comparisons
        for key in arms:
            rows[f"{key}/{seed}"] = run_arm(key, seed, args, out)
    if state.is_main_process and rows:
        report(with_earlier_runs(rows, out), args, out)
    state.wait_for_everyone()
    return 0


def with_earlier_runs(rows: dict[str, dict], out: Path) -> dict[str, dict]:
    """``rows`` and every other finished run in ``out`` (same settings: check_settings), by arm and seed."""
    from retromem.io import read_json

    every = dict(rows)
    for path in sorted(out.glob("arms/*/seed-*/result.json")):
        row = read_json(path)
        every.setdefault(f"{row['arm']}/{row['seed']}", row)
    return dict(sorted(every.items(), key=lambda item: (item[0] != ZERO_SHOT, item[1].get("arm", ""),
                                                        item[1].get("seed") or 0)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default="a,b,c,d,e,f",
                        help="comma-separated arm keys or names: " + ", ".join(f"{k}={v[0]}" for k, v in ARMS.items()))
    parser.add_argument("--arm-objective", action="append", default=[], metavar="ARM=SPEC",
                        help="give an arm another objective spec, e.g. 'c=retromae+mlm:0.1' (repeatable; any spec "
                             "'retromem pretrain --objective' takes)")
    parser.add_argument("--model", default="minilm", help="the starting encoder of every arm")
    parser.add_argument("--dataset", default="scifact", help="BEIR data set (name or folder) with train and test qrels")
    parser.add_argument("--pretrain-data", default=None,
                        help="pretraining text sources (comma-separated; default: the data set's corpus)")
    parser.add_argument("--output", required=True, help="output folder (rerun the same command to resume)")
    parser.add_argument("--seeds", type=parse_seeds, default=[42], metavar="N[,N...]",
                        help="comma-separated seeds (default 42): every arm runs once per seed (its pretraining masks "
                             "and fine-tuning order), and the report gives each arm's mean and standard deviation "
                             "and its paired differences to arms (a) and (b)")
    parser.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16 (pretraining, fine-tuning, "
                        "evaluation); auto = bf16 on GPUs that support it and on CPUs with AVX512-BF16/AMX")
    pre = parser.add_argument_group("pretraining (arms b-f)")
    pre.add_argument("--pretrain-steps", type=int, default=200)
    pre.add_argument("--pretrain-batch-size", type=int, default=16)
    pre.add_argument("--pretrain-max-length", type=int, default=128)
    pre.add_argument("--pretrain-lr", type=float, default=2e-5,
                     help="the encoder's learning rate (2e-5: low, for a short run from a trained retriever such as "
                          "MiniLM; the papers use 1e-4 from BERT)")
    pre.add_argument("--pretrain-head-lr", type=float, default=3e-4,
                     help="learning rate of the heads, which start random (decoders, MLM head transform)")
    pre.add_argument("--pretrain-head-warmup-steps", type=int, default=0,
                     help="first pretraining steps in which only the heads train (encoder frozen)")
    ft = parser.add_argument_group("fine-tuning (every arm)")
    budget = ft.add_mutually_exclusive_group()
    budget.add_argument("--finetune-epochs", type=float, default=3.0,
                        help="epochs over the training pairs (3: one epoch left every arm, (a) included, 0.05 "
                             "nDCG@10 short of what more fine-tuning gives)")
    budget.add_argument("--finetune-steps", type=int, default=None, help="overrides --finetune-epochs")
    ft.add_argument("--batch-size", type=int, default=32)
    ft.add_argument("--max-length", type=int, default=128, help="tokens per text while fine-tuning")
    ft.add_argument("--finetune-lr", type=float, default=5e-5)
    ft.add_argument("--loss", default="mnrl", choices=("mnrl", "cached-mnrl"))
    ft.add_argument("--hard-negatives", type=int, default=1)
    ft.add_argument("--mine-top-k", type=int, default=30)
    ft.add_argument("--mine-skip", type=int, default=0)
    ft.add_argument("--finetune-pooling", default="cls", choices=("auto", "cls", "mean"),
                    help="pooling of every arm; auto: each arm's own (MiniLM mean, pretrained encoders [CLS])")
    ev = parser.add_argument_group("evaluation")
    ev.add_argument("--eval-max-length", type=int, default=256, help="tokens per text when encoding for evaluation")
    ev.add_argument("--eval-batch-size", type=int, default=64)
    ev.add_argument("--no-zero-shot", dest="zero_shot", action="store_false",
                    help="skip the zero-shot score of --model")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each finished run's trainer checkpoints (by default only its final/ models stay)")
    args = parser.parse_args(argv)
    try:
        args.objectives = arm_objectives(args.arm_objective)
    except ValueError as err:
        parser.error(str(err))
    return args


def arm_objectives(overrides: list[str]) -> dict[str, str | None]:
    """Each arm's objective spec: the defaults of ARMS, then ``ARM=SPEC`` overrides (checked by the parser)."""
    from retromem.pretrain.objective import ObjectiveError, ObjectiveOptions, ObjectivePlan

    objectives = {key: objective for key, (_, objective) in ARMS.items()}
    for item in overrides:
        key, sep, spec = item.partition("=")
        key = key.strip()
        if not sep or not spec.strip():
            raise ValueError(f"--arm-objective {item!r}: give ARM=SPEC, e.g. c=retromae+mlm:0.1")
        if key not in ARMS or ARMS[key][1] is None:
            raise ValueError(f"--arm-objective {item!r}: the arm must be one of the pretrained arms "
                             + ", ".join(k for k, (_, o) in ARMS.items() if o))
        try:
            ObjectivePlan(spec.strip(), ObjectiveOptions())
        except ObjectiveError as err:
            raise ValueError(f"--arm-objective {item!r}: {err}") from err
        objectives[key] = spec.strip()
    return objectives


#: settings that do not change any arm's result (which arms and seeds run, where, and zero-shot or not)
_RUN_ONLY_SETTINGS = ("arms", "seeds", "output", "zero_shot", "arm_objective", "objectives", "keep_checkpoints")


def check_settings(args: argparse.Namespace, out: Path) -> None:
    """Refuse to mix runs of other settings into an output folder: finished runs in it are reused as they are."""
    from retromem.io import read_json, write_json_atomic

    path = out / "settings.json"
    settings = {k: v for k, v in vars(args).items() if k not in _RUN_ONLY_SETTINGS}
    if path.exists():
        before = read_json(path)
        changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
            raise SystemExit(f"{path}: this output folder holds runs made with other settings ({detail}); "
                             "give a new --output (finished runs are reused, so settings cannot change in place)")
    else:
        write_json_atomic(path, settings)
    objectives_path = out / "objectives.json"
    objectives = read_json(objectives_path) if objectives_path.exists() else {}
    for key in parse_arms(args.arms):
        if key in objectives and objectives[key] != args.objectives[key]:
            raise SystemExit(f"{objectives_path}: arm {key} ran here with objective {objectives[key]!r}, not "
                             f"{args.objectives[key]!r}; give a new --output")
        objectives[key] = args.objectives[key]
    write_json_atomic(objectives_path, objectives)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(item) for item in text.split(",") if item.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from err
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"give one or more distinct seeds, got {text!r}")
    return seeds


def parse_arms(spec: str) -> list[str]:
    by_name = {name: key for key, (name, _) in ARMS.items()}
    keys = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        key = item if item in ARMS else by_name.get(item)
        if key is None:
            known = ", ".join(f"{k}={v[0]}" for k, v in ARMS.items())
            raise SystemExit(f"unknown arm {item!r}: use keys or names of {known}")
        if key not in keys:
            keys.append(key)
    return keys


def run_arm(key: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    """Pretrain (if the arm has an objective), fine-tune, evaluate; each stage skipped when already done."""
    from retromem.io import read_json, write_json_atomic
    from retromem.pretrain.finetune import FINAL_DIR, finetune

    name, objective = ARMS[key][0], args.objectives[key]
    arm_dir = out / "arms" / f"{key}-{name}" / f"seed-{seed}"
    result_path = arm_dir / "result.json"
    if result_path.exists():
        logging.info("arm %s (%s), seed %d: done before, skipped (%s)", key, name, seed, result_path)
        return read_json(result_path)
    timings_path = arm_dir / "timings.json"
    timings = read_json(timings_path) if timings_path.exists() else {}

    start_model, pretrain_info = args.model, None
    if objective:
        final = arm_dir / "pretrain" / FINAL_DIR
        if not _finished(final / "training_run.json", args.pretrain_steps):
            clock = time.perf_counter()
            final = pretrain_arm(objective, seed, args, arm_dir / "pretrain")
            timings["pretrain_s"] = timings.get("pretrain_s", 0.0) + time.perf_counter() - clock
            write_json_atomic(timings_path, timings)
        pretrain_info = read_json(final / "training_run.json")
        start_model = str(final)

    ft_final = arm_dir / "finetune" / FINAL_DIR
    if not (ft_final / "finetune_run.json").exists():
        clock = time.perf_counter()
        ft_final = finetune(finetune_config(start_model, seed, args, arm_dir / "finetune", out))
        timings["finetune_s"] = timings.get("finetune_s", 0.0) + time.perf_counter() - clock
        write_json_atomic(timings_path, timings)
    ft_info = read_json(ft_final / "finetune_run.json")

    clock = time.perf_counter()
    scores = evaluate(str(ft_final), args, out, arm_dir / "eval")
    if scores is None:  # not the main process of a launcher
        return {}
    timings["eval_s"] = time.perf_counter() - clock
    row = {
        "arm": key, "name": name, "objective": objective, "start_model": args.model, "seed": seed,
        "pretrain_steps": pretrain_info["global_step"] if pretrain_info else 0,
        "pretrain_batch_size": args.pretrain_batch_size if objective else None,
        "pretrain_max_length": args.pretrain_max_length if objective else None,
        "finetune_steps": ft_info["global_step"], "finetune_examples": ft_info["examples"]["examples"],
        "finetune_loss": ft_info["train_loss"], "pooling": ft_info["model_settings"]["pooling"],
        "precision": ft_info["precision"], **scores, **timings,
        "total_s": sum(v for k, v in timings.items() if k.endswith("_s")),
        "model": str(ft_final),
    }
    write_json_atomic(timings_path, timings)
    write_json_atomic(result_path, row)
    logging.info("arm %s (%s), seed %d: nDCG@10 %.4f", key, name, seed, row["NDCG@10"])
    if not args.keep_checkpoints:
        drop_checkpoints(arm_dir)
    return row


def drop_checkpoints(arm_dir: Path) -> None:
    """Delete a finished run's trainer checkpoints (model, optimizer and scheduler states: about 1 GB an arm and
    seed for MiniLM, 60 GB for six arms over five seeds); its ``final/`` models and results stay."""
    import shutil

    for checkpoint in sorted(arm_dir.glob("*/checkpoint-*")):
        if checkpoint.is_dir():
            shutil.rmtree(checkpoint)


def pretrain_arm(objective: str, seed: int, args: argparse.Namespace, output_dir: Path) -> Path:
    from retromem.data.beir import resolve_beir_dir
    from retromem.pretrain.train import PretrainConfig, pretrain

    data = (args.pretrain_data.split(",") if args.pretrain_data
            else [f"beir:{resolve_beir_dir(args.dataset)}"])
    config = PretrainConfig(
        data=data, output_dir=str(output_dir), model=args.model, objective=objective,
        max_length=args.pretrain_max_length, per_device_batch_size=args.pretrain_batch_size,
        learning_rate=args.pretrain_lr, head_learning_rate=args.pretrain_head_lr,
        head_warmup_steps=args.pretrain_head_warmup_steps,
        max_steps=args.pretrain_steps, seed=seed, precision=args.precision,
        save_steps=max(1, min(200, args.pretrain_steps // 2)), logging_steps=max(1, min(25, args.pretrain_steps)),
        cache_dir=str(Path(args.output) / "cache"),
    )
    return pretrain(config)


def finetune_config(start_model: str, seed: int, args: argparse.Namespace, output_dir: Path, out: Path):
    from retromem.pretrain.finetune import FinetuneConfig

    return FinetuneConfig(
        output_dir=str(output_dir), model=start_model, beir=args.dataset, beir_split="train",
        pooling=args.finetune_pooling, max_length=args.max_length, loss=args.loss,
        hard_negatives=args.hard_negatives, mine_top_k=args.mine_top_k, mine_skip=args.mine_skip,
        mining_model=args.model, mining_workdir=str(out / "work"), encode_batch_size=args.eval_batch_size,
        epochs=args.finetune_epochs, max_steps=args.finetune_steps or -1, batch_size=args.batch_size,
        learning_rate=args.finetune_lr, precision=args.precision, seed=seed,
        save_steps=50, logging_steps=5,
    )


def run_zero_shot(args: argparse.Namespace, out: Path) -> dict:
    from retromem.io import read_json, write_json_atomic

    result_path = out / "arms" / ZERO_SHOT / "result.json"
    if result_path.exists():
        return read_json(result_path)
    clock = time.perf_counter()
    scores = evaluate(args.model, args, out, result_path.parent / "eval", max_length=None)
    if scores is None:
        return {}
    row = {"arm": ZERO_SHOT, "name": f"{args.model} zero-shot", "objective": None, "start_model": args.model,
           "seed": None, "pretrain_steps": 0, "finetune_steps": 0, **scores, "eval_s": time.perf_counter() - clock}
    row["total_s"] = row["eval_s"]
    write_json_atomic(result_path, row)
    return row


def evaluate(model: str, args: argparse.Namespace, out: Path, output_dir: Path,
             max_length: int | None | str = "arg") -> dict | None:
    """nDCG@10, Recall@100 and MRR@10 on the test split (work/ caches embeddings per encoder).

    Under a launcher the main process evaluates alone (on its own device) while the others wait,
    and they get ``None``.
    """
    from accelerate import PartialState

    from retromem.eval.beir_pipeline import BeirEvalConfig, evaluate_dense_beir
    from retromem.index.encoder import EncoderConfig

    state = PartialState()
    scores = None
    if state.is_main_process:
        encoder = EncoderConfig(model=model, precision=args.precision, batch_size=args.eval_batch_size,
                                max_length=args.eval_max_length if max_length == "arg" else max_length,
                                device=str(state.device))
        with _single_process():
            result = evaluate_dense_beir(BeirEvalConfig(dataset=args.dataset, split="test", encoder=encoder,
                                                        workdir=out / "work", output_dir=output_dir,
                                                        show_progress=True))
        scores = {m: result.scores.mean[m] for m in ("NDCG@10", "Recall@100", "MRR@10") if m in result.scores.mean}
    state.wait_for_everyone()
    return scores


def report(rows: dict[str, dict], args: argparse.Namespace, out: Path) -> None:
    """results.json, results.md (printed) and ndcg10.png."""
    from retromem.io import write_json_atomic, write_text_atomic

    summary = summarize(rows)
    tables = markdown_table(rows) + "\n" + summary_table(summary)
    settings = dict(vars(args))
    write_json_atomic(out / "results.json", {"arms": rows, "summary": summary, "settings": settings,
                                             "python": platform.python_version(), "cpu_count": os.cpu_count()})
    write_text_atomic(out / "results.md", f"# pretrain_quality on {args.dataset} (from {args.model})\n\n{tables}\n"
                                          f"Settings: `{json.dumps(settings, sort_keys=True)}`\n")
    plot(rows, summary, out / "ndcg10.png")
    print(tables)
    print(f"results: {out / 'results.json'}, {out / 'results.md'}, {out / 'ndcg10.png'}")


def summarize(rows: dict[str, dict]) -> dict[str, dict]:
    """Per arm over its seeds: mean and sample standard deviation of nDCG@10 and Recall@100, and the paired
    differences to arms (a) and (b) (same seed: same masks and fine-tuning order), whose spread is what a
    comparison has to beat: their mean, sd, the seeds above, and the 95% t-interval of the mean
    (``retromem.eval.stats.compare_arms``)."""
    import statistics

    from retromem.eval.stats import compare_arms

    by_arm: dict[str, dict[int, dict]] = {}
    for label, row in rows.items():
        if label != ZERO_SHOT and row:
            by_arm.setdefault(row["arm"], {})[row["seed"]] = row
    compared = compare_arms({key: {seed: r["NDCG@10"] for seed, r in runs.items()} for key, runs in by_arm.items()},
                            BASELINE_ARMS)
    summary = {}
    for key, runs in by_arm.items():
        arm, first = compared[key], runs[next(iter(runs))]
        entry = {
            "name": first["name"], "objective": first["objective"], "seeds": list(arm.seeds), "n": arm.score.n,
            "ndcg10": list(arm.score.values), "ndcg10_mean": arm.score.mean, "ndcg10_sd": arm.score.sd,
            "recall100_mean": statistics.fmean(r.get("Recall@100", float("nan")) for r in runs.values()),
        }
        for base, diff in arm.versus.items():
            entry[f"diff_vs_{base}"] = list(diff.values)
            entry[f"diff_vs_{base}_mean"] = diff.mean
            entry[f"diff_vs_{base}_sd"] = diff.sd
            entry[f"diff_vs_{base}_ci95"] = diff.interval
            entry[f"wins_vs_{base}"] = diff.n_positive
        summary[key] = entry
    return summary


def verdict(summary: dict[str, dict]) -> str:
    """The issue's goal, read from the summary: which bottlenecked arms beat both (a) and (b) on the paired
    mean, and which of them do so beyond seed noise (the 95% interval of each paired difference above 0)."""
    from retromem.eval.stats import BEYOND_NOISE, NOT_ABOVE, estimate_mean, outcome

    bottlenecked = [k for k, e in summary.items() if k not in BASELINE_ARMS]
    if not bottlenecked or any(base not in summary for base in BASELINE_ARMS):
        return "goal (a bottlenecked arm beats (a) and (b)): not measured (needs arms a, b and one of c-f)"
    outcomes = {k: outcome(estimate_mean(summary[k][f"diff_vs_{b}"]) if f"diff_vs_{b}" in summary[k] else None
                           for b in BASELINE_ARMS) for k in bottlenecked}
    on_means = [k for k in bottlenecked if outcomes[k] != NOT_ABOVE]
    beyond = [k for k in on_means if outcomes[k] == BEYOND_NOISE]
    if not on_means:
        return "goal (a bottlenecked arm beats (a) and (b)): not met (no arm's paired mean is above both)"
    names = ", ".join(f"({k}) {summary[k]['name']}" for k in on_means)
    if beyond:
        strong = ", ".join(f"({k}) {summary[k]['name']}" for k in beyond)
        return f"goal (a bottlenecked arm beats (a) and (b)): met by {names}; beyond seed noise (95%) by {strong}"
    return (f"goal (a bottlenecked arm beats (a) and (b)): met on the paired means by {names}, "
            "not beyond seed noise (a 95% interval includes 0)")


def markdown_table(rows: dict[str, dict]) -> str:
    header = ("| arm | objective | pooling | pretrain steps | finetune steps | nDCG@10 | Recall@100 | pretrain s | "
              "finetune s | eval s | total s | seed |")
    lines = [header, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows.values():
        if not row:
            continue
        cells = [row["arm"], row.get("objective") or "-", row.get("pooling", "-"), row.get("pretrain_steps", 0),
                 row.get("finetune_steps", 0), f"{row['NDCG@10']:.4f}", f"{row.get('Recall@100', float('nan')):.4f}",
                 _seconds(row.get("pretrain_s")), _seconds(row.get("finetune_s")), _seconds(row.get("eval_s")),
                 _seconds(row.get("total_s")), row.get("seed") if row.get("seed") is not None else "-"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def summary_table(summary: dict[str, dict]) -> str:
    head, rule = ["| arm | objective | seeds | nDCG@10 mean | sd |"], ["|---|---|---|---:|---:|"]
    for base in BASELINE_ARMS:
        head.append(f" minus ({base}), paired: mean | 95% interval | seeds above ({base}) |")
        rule.append("---:|---|---:|")
    lines = ["".join(head) + " Recall@100 mean |", "".join(rule) + "---:|"]
    for key, e in summary.items():
        cells = [f"({key}) {e['name']}", e["objective"] or "-", ",".join(map(str, e["seeds"])),
                 f"{e['ndcg10_mean']:.4f}", _number(e["ndcg10_sd"])]
        for base in BASELINE_ARMS:
            diff = e.get(f"diff_vs_{base}_mean")
            if diff is None:
                cells += ["-", "-", "-"]
                continue
            low, high = e[f"diff_vs_{base}_ci95"] or (None, None)
            interval = "-" if low is None else f"[{low:+.4f}, {high:+.4f}]"
            cells += [f"{diff:+.4f}", interval, f"{e[f'wins_vs_{base}']}/{len(e[f'diff_vs_{base}'])}"]
        cells.append(f"{e['recall100_mean']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + verdict(summary) + "\n"


def plot(rows: dict[str, dict], summary: dict[str, dict], path: Path) -> None:
    """Bars: each arm's mean nDCG@10, error bars its standard deviation, dots the seeds; dashed: zero-shot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retromem.io import atomic_path

    keys = list(summary)
    fig, ax = plt.subplots(figsize=(1.2 * max(len(keys), 3) + 1.5, 3.6))
    labels = [f"({k}) {summary[k]['name']}\n{summary[k]['n']} seed{'s' if summary[k]['n'] > 1 else ''}" for k in keys]
    means = [summary[k]["ndcg10_mean"] for k in keys]
    errors = [summary[k]["ndcg10_sd"] or 0.0 for k in keys]
    colors = ["#888888" if summary[k]["objective"] in (None, "mlm") else "#3a6ea5" for k in keys]
    bars = ax.bar(labels, means, yerr=errors, capsize=3, color=colors)
    for i, k in enumerate(keys):
        values = summary[k]["ndcg10"]
        if len(values) > 1:
            ax.scatter([i] * len(values), values, color="black", s=8, zorder=3)
    for bar, value in zip(bars, means):
        ax.annotate(f"{value:.3f}", (bar.get_x() + bar.get_width() / 2, value), xytext=(0, -4),
                    textcoords="offset points", ha="center", va="top", fontsize=8, color="white")
    every = [v for k in keys for v in summary[k]["ndcg10"]]
    if rows.get(ZERO_SHOT):
        zero = rows[ZERO_SHOT]
        ax.axhline(zero["NDCG@10"], color="black", linestyle="--", linewidth=1,
                   label=f"{zero['name']} {zero['NDCG@10']:.3f}")
        ax.legend(loc="lower right", fontsize=8)
        every.append(zero["NDCG@10"])
    ax.set_ylim(max(0.0, min(every) - 0.05), min(1.0, max(every) + 0.03))
    seeds = sorted({s for k in keys for s in summary[k]["seeds"]})
    ax.set_ylabel("nDCG@10 (test)")
    ax.set_title(f"pretrain then fine-tune: nDCG@10 per arm (seeds {', '.join(map(str, seeds))})", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


@contextlib.contextmanager
def _single_process():
    """Hide a launcher's WORLD_SIZE, so that corpus encoding runs in this process alone (no collective calls)."""
    saved = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["WORLD_SIZE"]
        else:
            os.environ["WORLD_SIZE"] = saved


def _finished(run_file: Path, steps: int) -> bool:
    if not run_file.exists():
        return False
    return json.loads(run_file.read_text(encoding="utf-8")).get("global_step", -1) >= steps


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    sys.exit(main())
