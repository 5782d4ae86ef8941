"""LUMEN with a task-tuned memory encoder, against LUMEN on MiniLM's own memory and full re-encoding, on SQuAD-KILT.

For each seed, three rows with the same budget as ``benchmarks/reader.py`` (span head, BM25 top passages, gold
forced in during training):
- ``k6``: full re-encoding (MiniLM's 6 layers live over question + passage text);
- ``k2``: LUMEN k = 2 on the fp16 memory of MiniLM's layer 4 (the reader starts from MiniLM);
- ``k2-tuned``: the ``k6`` reader's encoder exported (:func:`retromem.read.export.export_encoder`, as
  ``retromem read export-encoder`` does) and made the memory encoder: the memory is its layer 4 over each passage
  alone and the k = 2 reader starts from its weights. Its training cost is k6's plus k2's; its reading cost is k2's.
Prints EM, F1 and reading throughput per seed, the mean and 95% interval over seeds, and each k2 row's EM as a
share of k6's (the baseline, measured in the same run). Results: ``--out``/reader_tuned_memory.{json,md}.

    nice python benchmarks/reader_tuned_memory.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reader import TASKS, quiet_logging, retrieve  # noqa: E402

from retromem.data.kilt import read_kilt_task, resolve_kilt_task  # noqa: E402
from retromem.eval.kilt import score_kilt  # noqa: E402
from retromem.eval.stats import estimate_mean  # noqa: E402
from retromem.io import write_json_atomic, write_text_atomic  # noqa: E402

log = logging.getLogger("benchmarks.reader_tuned_memory")
ROWS = ("k6", "k2", "k2-tuned")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logging()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "reader_tuned_memory.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["settings"] = dict(vars(args))
    bench = Bench(args)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for row in ROWS:
            key = f"{row}/seed{seed}"
            if key not in results.setdefault("runs", {}):
                results["runs"][key] = bench.run(row, seed)
                log.info("%s: %s", key, results["runs"][key])
                write_json_atomic(path, results)
    results["summary"] = summarise(results["runs"])
    write_json_atomic(path, results)
    report = format_report(results)
    write_text_atomic(out / "reader_tuned_memory.md", report)
    print(report)
    return 0


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=240, help="training steps per row and seed")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--train-limit", type=int, default=1920, help="train questions (seeded subsample)")
    p.add_argument("--dev-limit", type=int, default=300, help="dev questions (fixed subsample, seed 0)")
    p.add_argument("--train-passages", type=int, default=2)
    p.add_argument("--passages", type=int, default=5, help="retrieved passages read per dev question")
    p.add_argument("--max-passage-length", type=int, default=160)
    p.add_argument("--work", default="work/reader-bench")
    p.add_argument("--out", default="benchmarks/results")
    return p.parse_args(argv)


class Bench:
    """The task, its retrieval and passages, set up once; :meth:`run` trains and scores one row for one seed."""

    def __init__(self, args):
        from retromem.read.questions import reading_set
        from retromem.read.train_config import ReaderTrainConfig

        self.args = args
        train_name, dev_name, self.head = TASKS["squad"]
        self.work = Path(args.work) / "squad"
        self.work.mkdir(parents=True, exist_ok=True)
        runs, self.retrieval = retrieve("squad", [train_name, dev_name], resolve_kilt_task(train_name).source_path,
                                        self.work, max(args.passages, 20))
        self.train_cfg = ReaderTrainConfig(task=train_name, run=str(runs[train_name]), limit=args.train_limit,
                                           passages=args.train_passages, max_passage_length=args.max_passage_length)
        self.dev_cfg = ReaderTrainConfig(task=dev_name, run=str(runs[dev_name]), limit=args.dev_limit,
                                         passages=args.passages, max_passage_length=args.max_passage_length)
        self.dev = reading_set(self.dev_cfg, seed=0)
        dev_ids = {q.qid for q in self.dev.questions}
        self.examples = [e for e in read_kilt_task(resolve_kilt_task(dev_name).path) if e.id in dev_ids]
        self.reading_set = reading_set

    def run(self, row: str, seed: int) -> dict:
        from retromem.model_paths import resolve_model_path
        from retromem.read.export import export_encoder

        if row == "k6":
            return self._train_and_score(resolve_model_path("minilm"), 6, None, seed, keep=True)
        if row == "k2":
            return self._train_and_score(resolve_model_path("minilm"), 2, self._memory("minilm"), seed)
        tuned = self.work / f"tuned-encoder-seed{seed}"
        shutil.rmtree(tuned, ignore_errors=True)
        export_encoder(self.work / f"k6-seed{seed}" / "final", tuned)
        return self._train_and_score(str(tuned), 2, self._memory(str(tuned)), seed)

    def _memory(self, model: str):
        """The fp16 memory of layer 4 of ``model`` over every passage training (the same ``--train-limit``
        subsample for every seed, as ``read train`` draws it) and dev read."""
        from retromem.index.encoder import Encoder, EncoderConfig
        from retromem.index.memory_codecs import make_codec
        from retromem.read.memory import LiveMemory, states_at_layers

        passages = dict(self.reading_set(self.train_cfg, force_gold=True).passages)  # training's: every seed's
        passages.update(self.dev.passages)
        ids = sorted(passages)
        # MiniLM's 256 tokens (its sentence-transformers length) for the exported folder too, which has no such config
        encoder = Encoder(EncoderConfig(model=model, precision="fp32", batch_size=32, max_length=256))
        states, token_ids = states_at_layers(encoder, [passages[i] for i in ids], [4])
        return LiveMemory.from_states(encoder.metadata(), ids, states[4], token_ids, 4, make_codec("fp16", encoder.dim))

    def _train_and_score(self, model: str, k: int, memory, seed: int, keep: bool = False) -> dict:
        import torch

        from retromem.read.checkpoint import load_reader
        from retromem.read.predict import ReaderPredictConfig, predict
        from retromem.read.train import train_reader

        args = self.args
        out = self.work / f"k{k}-seed{seed}" if keep else self.work / f"tmp-k{k}-seed{seed}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = dataclasses.replace(self.train_cfg, output_dir=str(out), model=model, live_layers=k, head=self.head,
                                  seed=seed, max_steps=args.steps, batch_size=args.batch_size,
                                  learning_rate=args.lr, head_learning_rate=args.head_lr, save_steps=10 ** 6,
                                  logging_steps=5, show_progress=False)
        torch.manual_seed(seed)
        started = time.perf_counter()
        final = train_reader(cfg, memory=memory)
        train_seconds = time.perf_counter() - started
        outcome = predict(ReaderPredictConfig(task=self.dev_cfg.task, run=self.dev_cfg.run, limit=args.dev_limit,
                                              passages=args.passages, batch_size=16, show_progress=False),
                          memory=memory, reader=load_reader(final))
        scores = score_kilt(self.examples, outcome.predictions, ks=(1, 5)).mean
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
        return {"em": scores["em"], "f1": scores["f1"], "kilt_em": scores["kilt_em"],
                "qps": outcome.questions_per_second, "train_seconds": train_seconds}


def summarise(runs: dict) -> dict:
    out = {}
    for row in ROWS:
        seeds = sorted(key for key in runs if key.split("/")[0] == row)
        if seeds:
            estimates = {m: estimate_mean([runs[key][m] for key in seeds]) for m in ("em", "f1", "qps")}
            out[row] = {m: {"mean": e.mean, "interval": e.interval} for m, e in estimates.items()}
            out[row]["seeds"] = len(seeds)
    return out


def format_report(results: dict) -> str:
    summary = results["summary"]
    base = summary.get("k6", {}).get("em", {}).get("mean")
    lines = ["# LUMEN k=2 with a task-tuned memory encoder (SQuAD-KILT, span head)", "",
             f"Settings: {json.dumps(results['settings'])}", "",
             "| row | seeds | EM (95% interval) | F1 | EM / k6 | q/s |", "|---|---|---|---|---|---|"]
    for row, s in summary.items():
        em = s["em"]
        interval = em.get("interval") or [em["mean"], em["mean"]]
        share = f"{em['mean'] / base:.0%}" if base else "-"
        lines.append(f"| {row} | {s['seeds']} | {em['mean']:.3f} [{interval[0]:.3f}, {interval[1]:.3f}] | "
                     f"{s['f1']['mean']:.3f} | {share} | {s['qps']['mean']:.1f} |")
    lines += ["", "Per seed:", "", "| run | EM | F1 | q/s | train s |", "|---|---|---|---|---|"]
    for key, r in sorted(results["runs"].items()):
        lines.append(f"| {key} | {r['em']:.3f} | {r['f1']:.3f} | {r['qps']:.1f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
