"""The memory-attending reader on KILT: full re-encoding vs LUMEN live layers vs pure memory, and the memory codecs.

One run, per task (SciFact-KILT: classification head; SQuAD-KILT: span head, or with ``squad-gen`` the generative
head), with BM25 retrieval over the task's knowledge source (100-word passages, top ``--passages`` read):

- rows: ``k=6`` (full re-encoding, MiniLM's 6 layers live over question + passage text), ``k=1,2,3`` on fp16
  memory, the best of those k on ``binary`` and on ``pq`` (16x smaller than fp16: 48 bytes per 384-d token),
  ``k=0`` (pure memory);
- each row trained with the same budget (``--steps`` x ``--batch-size`` questions, gold passage forced in) on a
  seeded subsample of the train file (``--train-limit``) and scored on (a subsample of, ``--dev-limit``) dev, for
  every seed; mean and a 95% t-interval over seeds;
- metrics: accuracy (or EM, F1), KILT-accuracy (KILT-EM), R-Precision and Recall@5 of the retrieved pages, reading
  throughput in questions/second (memory gather + batching + the reader; retrieval timed apart); the
  majority-class accuracy (classification) and the top-k answer-in-passages upper bound (span) printed beside.

Memories are computed once per layer in one pass of the encoder (fp32) over every passage read (train, with the
gold forced in, and dev), kept as fp16, and stored through each row's codec (binary and pq trained on them).
Results go to ``--out`` (``reader.json`` after every row, ``reader.md``, ``reader.png``).

    nice python benchmarks/reader.py --tasks scifact --seeds 0,1,2 --steps 60 --train-limit 240
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retromem.data.kilt import read_kilt_task, resolve_kilt_task  # noqa: E402
from retromem.data.kilt_source import iter_kilt_passages  # noqa: E402
from retromem.eval.kilt import normalize_answer, score_kilt  # noqa: E402
from retromem.eval.stats import estimate_mean  # noqa: E402
from retromem.io import write_json_atomic  # noqa: E402
from retromem.retrieve.runfile import write_trec_run  # noqa: E402

log = logging.getLogger("benchmarks.reader")
TASKS = {"scifact": ("scifact-train", "scifact-dev", "classification"),
         "squad": ("squad-train", "squad-dev", "span"),
         "squad-gen": ("squad-train", "squad-dev", "generative")}
LAYERS = 6


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logging()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "reader.json"
    results = json.loads(results_path.read_text()) if results_path.exists() and args.keep else {}
    results.setdefault("settings", {}).update(vars(args))
    for task in args.tasks.split(","):
        results.setdefault("tasks", {})[task] = run_task(task, args, results, results_path)
        write_json_atomic(results_path, results)
    write_report(results, out)
    return 0


def quiet_logging() -> None:
    """Timestamped INFO lines of the benchmark; only warnings from transformers and the training loops."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("transformers", "retromem.pretrain", "retromem.read.train"):
        logging.getLogger(name).setLevel(logging.WARNING)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="scifact,squad", help="comma-separated: scifact, squad (span head), squad-gen "
                   "(SQuAD-KILT with the generative head: a BERT-initialised FiD decoder)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rows", default="k6,k1,k2,k3,binary,pq,k0", help="rows to run, in order")
    p.add_argument("--best-k", type=int, default=None, help="k for the binary and pq rows (default: the best of "
                   "k1-k3 on fp16 in this run, else 2)")
    p.add_argument("--steps", type=int, default=60, help="training steps per row and seed")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--passages", type=int, default=5, help="retrieved passages read per dev question")
    p.add_argument("--train-passages", type=int, default=None, help="passages per training question (the gold "
                   "forced in; default: --passages). Fewer make a step cheaper, so a CPU budget covers more questions")
    p.add_argument("--train-limit", type=int, default=None, help="train questions (seeded subsample)")
    p.add_argument("--dev-limit", type=int, default=None, help="dev questions (fixed subsample, seed 0)")
    p.add_argument("--max-passage-length", type=int, default=192)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--freeze-question-encoder", action="store_true",
                   help="memory rows: keep the lower layers that encode the question frozen (default: fine-tuned, "
                   "as LUMEN's question encoder)")
    p.add_argument("--pq-bytes", type=int, default=48, help="pq code bytes per token (fp16/16 = 48 for 384-d)")
    p.add_argument("--work", default="work/reader-bench")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--keep", action="store_true", help="keep rows of an earlier run in --out's reader.json (each "
                   "task records the settings of the run that made it)")
    p.add_argument("--throughput-rounds", type=int, default=3, help="rounds of the interleaved throughput probe "
                   "(every row read in turn on the same dev questions, the median kept; 0: none)")
    return p.parse_args(argv)


def run_task(task: str, args, results: dict, results_path: Path) -> dict:
    import torch

    from retromem.index.encoder import Encoder, EncoderConfig
    from retromem.read.memory import states_at_layers
    from retromem.read.questions import reading_set
    from retromem.read.train_config import ReaderTrainConfig

    train_name, dev_name, head = TASKS[task]
    work = Path(args.work) / task
    work.mkdir(parents=True, exist_ok=True)
    source = resolve_kilt_task(train_name).source_path
    runs, retrieval = retrieve(task, [train_name, dev_name], source, work, max(args.passages, 20))
    log.info("%s: retrieval %s", task, retrieval)
    train_cfg = ReaderTrainConfig(task=train_name, run=str(runs[train_name]), limit=args.train_limit,
                                  passages=args.train_passages or args.passages,
                                  max_passage_length=args.max_passage_length)
    dev_cfg = ReaderTrainConfig(task=dev_name, run=str(runs[dev_name]), limit=args.dev_limit, passages=args.passages,
                                max_passage_length=args.max_passage_length)
    seeds = [int(s) for s in args.seeds.split(",")]
    passages = {}
    for seed in seeds:
        passages.update(reading_set(train_cfg, seed=seed, force_gold=True).passages)
    dev = reading_set(dev_cfg, seed=0)
    passages.update(dev.passages)
    encoder = Encoder(EncoderConfig(model="minilm", precision="fp32", batch_size=32))
    rows = args.rows.split(",")
    layers = sorted({LAYERS - int(r[1:]) for r in rows if r.startswith("k") and r != "k6"} | {LAYERS - 1, LAYERS - 2,
                                                                                              LAYERS - 3})
    started = time.perf_counter()
    ids = sorted(passages)
    states, token_ids = states_at_layers(encoder, [passages[i] for i in ids], layers, show_progress=False)
    memory_seconds = time.perf_counter() - started
    log.info("%s: memory states of %d passages at layers %s in %.0fs", task, len(ids), layers, memory_seconds)
    gold = read_kilt_task(resolve_kilt_task(dev_name).path)
    dev_ids = {q.qid for q in dev.questions}
    examples = [e for e in gold if e.id in dev_ids]
    summary = {"retrieval": retrieval, "memory": {"passages": len(ids), "tokens": int(sum(len(t) for t in token_ids)),
                                                  "seconds": memory_seconds},
               "train_questions": len(reading_set(train_cfg, seed=seeds[0]).questions), "dev_questions": len(examples),
               "head": head, "settings": dict(vars(args)), "rows": {}}
    if head == "classification":
        counts = Counter(e.answers[0] for e in examples)
        summary["majority"] = max(counts.values()) / len(examples)
        summary["page_memoriser"] = page_memoriser(read_kilt_task(resolve_kilt_task(train_name).path), examples)
    else:
        summary["answer_in_top_k"] = answer_upper_bound(examples, dev, args.passages)
    previous = results.get("tasks", {}).get(task, {}).get("rows", {}) if args.keep else {}
    summary["rows"].update(previous)
    if previous:
        summary["kept_rows"] = sorted(previous)
    for row in rows:
        k, codec = row_setting(row, args, summary)
        key = f"{row}" if row.startswith("k") else f"{row}@k{k}"
        if key in summary["rows"]:
            continue
        per_seed = []
        memory = row_memory(k, codec, args, encoder, states, token_ids, ids)  # one per row: the same for every seed
        for seed in seeds:
            torch.manual_seed(seed)
            per_seed.append(run_row(head, k, codec, seed, args, work, train_cfg, dev_cfg, memory, examples))
            log.info("%s %s seed %d: %s", task, key, seed, per_seed[-1])
        summary["rows"][key] = {"k": k, "codec": codec, "seeds": per_seed, "summary": summarise(per_seed)}
        results.setdefault("tasks", {})[task] = summary
        write_json_atomic(results_path, results)
    if args.throughput_rounds:
        summary["throughput"] = interleaved_throughput(summary, head, args, dev_cfg, encoder, states, token_ids, ids)
        results.setdefault("tasks", {})[task] = summary
        write_json_atomic(results_path, results)
    return summary


def interleaved_throughput(summary, head, args, dev_cfg, encoder, states, token_ids, ids) -> dict:
    """Reading throughput of every row on the same dev questions, the rows read in turn for several rounds and the
    median kept: on a shared machine, rows timed minutes apart (as in training order) see different loads.
    Untrained readers of each row's shape: reading costs the same whatever the weights."""
    import statistics

    from retromem.model_paths import resolve_model_path
    from retromem.read.checkpoint import memory_info
    from retromem.read.model import MemoryReader
    from retromem.read.predict import predict
    from retromem.read.read_options import ReaderPredictConfig
    from retromem.read.reader_config import ReaderSpec

    labels = ["REFUTES", "SUPPORTS"] if head == "classification" else []
    setups = {}
    for key, row in summary["rows"].items():
        memory = row_memory(row["k"], row["codec"], args, encoder, states, token_ids, ids)
        spec = ReaderSpec(encoder="minilm", num_layers=LAYERS, live_layers=row["k"], head=head, labels=labels,
                          max_passage_length=args.max_passage_length,
                          memory=memory_info(*memory.info()) if memory is not None else None)
        setups[key] = (MemoryReader.from_encoder(spec, resolve_model_path("minilm")).eval(), memory)
    config = ReaderPredictConfig(task=dev_cfg.task, run=dev_cfg.run, limit=dev_cfg.limit, passages=args.passages,
                                 batch_size=16, show_progress=False)
    timings = {key: [] for key in setups}
    for _ in range(args.throughput_rounds):
        for key, (reader, memory) in setups.items():
            timings[key].append(predict(config, memory=memory, reader=reader).questions_per_second)
    out = {key: {"median_qps": statistics.median(values), "qps": values} for key, values in timings.items()}
    log.info("interleaved throughput: %s", {k: round(v["median_qps"], 2) for k, v in out.items()})
    return out


def row_setting(row: str, args, summary: dict) -> tuple[int, str]:
    if row.startswith("k"):
        return int(row[1:]), "fp16"
    k = args.best_k
    if k is None:
        metric = "accuracy" if summary["head"] == "classification" else "em"
        scored = {int(key[1:]): v["summary"][metric]["mean"] for key, v in summary["rows"].items()
                  if key in ("k1", "k2", "k3")}
        k = max(scored, key=scored.get) if scored else 2
    return k, row


_MEMORIES: dict = {}


def row_memory(k, codec_name, args, encoder, states, token_ids, ids):
    """The memory a row reads (None for full re-encoding): layer 6 - k through the row's codec (built once)."""
    from retromem.index.memory_codecs import make_codec
    from retromem.read.memory import LiveMemory

    if k == LAYERS:
        return None
    if (k, codec_name) in _MEMORIES:
        return _MEMORIES[k, codec_name]
    params = {"bytes": args.pq_bytes} if codec_name == "pq" else {}
    codec = make_codec(codec_name, encoder.dim, **params)
    memory = LiveMemory.from_states(encoder.metadata(), ids, states[LAYERS - k], token_ids, LAYERS - k, codec)
    _MEMORIES[k, codec_name] = memory
    return memory


def run_row(head, k, codec_name, seed, args, work, train_cfg, dev_cfg, memory, examples) -> dict:
    import dataclasses
    import shutil

    from retromem.read.checkpoint import load_reader
    from retromem.read.predict import ReaderPredictConfig, predict
    from retromem.read.train import train_reader

    out = work / f"{codec_name}-k{k}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = dataclasses.replace(train_cfg, output_dir=str(out), live_layers=k, head=head, seed=seed,
                              max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                              head_learning_rate=args.head_lr, tune_question_encoder=not args.freeze_question_encoder,
                              save_steps=10 ** 6, logging_steps=5,
                              show_progress=False)
    started = time.perf_counter()
    final = train_reader(cfg, memory=memory)
    train_seconds = time.perf_counter() - started
    reader = load_reader(final)
    pred_cfg = ReaderPredictConfig(task=dev_cfg.task, run=dev_cfg.run, limit=dev_cfg.limit, passages=args.passages,
                                   batch_size=16, show_progress=False)
    outcome = predict(pred_cfg, memory=memory, reader=reader)
    scores = score_kilt(examples, outcome.predictions, ks=(1, 5)).mean
    shutil.rmtree(out, ignore_errors=True)
    metric_names = ("accuracy", "kilt_ac") if head == "classification" else ("em", "f1", "kilt_em", "kilt_f1")
    row = {name: scores[name] for name in (*metric_names, "R-Prec", "Recall@5")}
    row.update(qps=outcome.questions_per_second, train_seconds=train_seconds, seed=seed)
    answers = Counter(p.answer for p in outcome.predictions)  # a reader that learned nothing answers one thing
    row.update(distinct_answers=len(answers), common_answers=answers.most_common(3))
    return row


def summarise(per_seed: list[dict]) -> dict:
    out = {}
    for name in per_seed[0]:
        if name in ("seed", "common_answers"):
            continue
        estimate = estimate_mean([r[name] for r in per_seed])
        out[name] = {"mean": estimate.mean, "interval": estimate.interval}
    return out


def retrieve(task, names, source, work: Path, depth: int):
    """BM25 runs of the tasks over the knowledge source's passages (index built once in ``work``)."""
    from retromem.index.bm25 import build_or_reuse_bm25_index
    from retromem.retrieve.bm25 import BM25Searcher

    started = time.perf_counter()
    index = build_or_reuse_bm25_index(lambda: iter_kilt_passages(source), work / "bm25", corpus_path=source)
    if isinstance(index, tuple):
        index = index[0]
    built = time.perf_counter() - started
    searcher = BM25Searcher(index)
    runs, timing = {}, {"index_seconds": built}
    for name in names:
        examples = read_kilt_task(resolve_kilt_task(name).path)
        started = time.perf_counter()
        run = searcher.search({e.id: e.input for e in examples}, k=depth)
        timing[f"{name}_questions_per_second"] = len(examples) / (time.perf_counter() - started)
        runs[name] = write_trec_run(run, work / f"{name}-bm25.trec")
    return runs, timing


def page_memoriser(train, examples) -> float:
    """Accuracy of labelling each dev question with the majority train label of the questions sharing one of its
    gold pages (the overall train majority where none does): what learning the evidence page instead of the
    question gives. On SciFact-KILT it is below the majority class: many dev claims are the negation of a train
    claim on the same abstract (benchmarks/scifact_ceiling.py)."""
    by_page: dict[str, Counter] = {}
    for e in train:
        for page in e.gold_pages():
            by_page.setdefault(page, Counter())[e.answers[0]] += 1
    overall = Counter(e.answers[0] for e in train).most_common(1)[0][0]
    correct = 0
    for e in examples:
        seen = sum((by_page[p] for p in e.gold_pages() if p in by_page), Counter())
        correct += (seen.most_common(1)[0][0] if seen else overall) == e.answers[0]
    return correct / len(examples)


def answer_upper_bound(examples, dev, k: int) -> float:
    """EM of the best possible extractive reader: the share of questions whose answer occurs in a top-k passage."""
    by_id = {q.qid: q for q in dev.questions}
    hits = 0
    for e in examples:
        texts = [normalize_answer(dev.passages[p].full_text()) for p in by_id[e.id].passage_ids[:k]]
        answers = [normalize_answer(a) for a in e.answers if normalize_answer(a)]
        hits += any(a in t for a in answers for t in texts)
    return hits / len(examples)


def write_report(results: dict, out: Path) -> None:
    lines = ["# Reader benchmark", "", f"settings: `{json.dumps(results['settings'])}`", ""]
    points = []
    for task, summary in results.get("tasks", {}).items():
        head = summary["head"]
        metrics = ("accuracy", "kilt_ac") if head == "classification" else ("em", "f1", "kilt_em", "kilt_f1")
        lines += [f"## {task} ({head}; {summary['train_questions']} train questions, {summary['dev_questions']} dev)",
                  ""]
        if "settings" in summary:  # a task run apart from the others (--keep) records its own settings
            lines += [f"settings of this task's run: `{json.dumps(summary['settings'])}`", ""]
        if summary.get("kept_rows"):
            lines += [f"rows kept from an earlier run of the same settings (--keep): {', '.join(summary['kept_rows'])}",
                      ""]
        lines += [f"note: {note}" for note in summary.get("notes", [])] + ([""] if summary.get("notes") else [])
        if "majority" in summary:
            lines.append(f"majority-class accuracy on these dev questions: {summary['majority']:.3f}")
        if "page_memoriser" in summary:
            lines.append("each dev question labelled with its gold page's majority train label (learning the "
                         f"evidence, not the question): {summary['page_memoriser']:.3f}")
        if "answer_in_top_k" in summary:
            lines.append(f"answer in the top-k passages (EM upper bound): {summary['answer_in_top_k']:.3f}")
        lines.append(f"retrieval (BM25, apart from reading): {summary['retrieval']}")
        lines.append("")
        through = summary.get("throughput", {})
        header = ["row", *metrics, "R-Prec", "Recall@5", "questions/s (in training order)",
                  "questions/s (interleaved median)", "train s"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for key, row in sorted(summary["rows"].items(), key=lambda item: row_order(item[0])):
            s = row["summary"]
            fair = through.get(key, {}).get("median_qps")
            cells = [key] + [_cell(s[m]) for m in (*metrics, "R-Prec", "Recall@5")] + [
                f"{s['qps']['mean']:.1f}", f"{fair:.1f}" if fair else "-", f"{s['train_seconds']['mean']:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
            points.append((task, key, fair or s["qps"]["mean"], s[metrics[0]]["mean"]))
        lines.append("")
        for key, row in sorted(summary["rows"].items(), key=lambda item: row_order(item[0])):
            for seed_row in row["seeds"]:
                if "common_answers" in seed_row:
                    common = ", ".join(f"{answer[:60]!r} ({n})" for answer, n in seed_row["common_answers"])
                    lines.append(f"- {key} seed {seed_row['seed']}: {seed_row['distinct_answers']} distinct answers "
                                 f"on {summary['dev_questions']} questions; most common: {common}")
        lines.append("")
    (out / "reader.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(points, results, out / "reader.png")


def row_order(key: str) -> tuple[int, str]:
    """The issue's order: k=6, k=1..3, binary, pq, k=0."""
    first = {"k6": 0, "k1": 1, "k2": 2, "k3": 3, "k0": 9}.get(key)
    return (first, key) if first is not None else (5 if key.startswith("binary") else 6, key)


def _cell(estimate: dict) -> str:
    if estimate["interval"] is None:
        return f"{estimate['mean']:.3f}"
    low, high = estimate["interval"]
    return f"{estimate['mean']:.3f} [{low:.3f}, {high:.3f}]"


def plot(points, results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({p[0] for p in points})
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        summary = results["tasks"][task]
        for _, key, qps, score in [p for p in points if p[0] == task]:
            ax.scatter(qps, score)
            ax.annotate(key, (qps, score), textcoords="offset points", xytext=(4, 4))
        if "majority" in summary:
            ax.axhline(summary["majority"], linestyle="--", color="grey", label="majority class")
        if "page_memoriser" in summary:
            ax.axhline(summary["page_memoriser"], linestyle=":", color="grey", label="gold-page memoriser")
        if "answer_in_top_k" in summary:
            ax.axhline(summary["answer_in_top_k"], linestyle="--", color="grey", label="answer in top-k")
        ax.set_xscale("log")
        ax.set_xlabel("reading throughput (questions/s)")
        ax.set_ylabel("accuracy" if summary["head"] == "classification" else "EM")
        ax.set_title(f"{task}: quality vs throughput (mean over seeds)")
        ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
