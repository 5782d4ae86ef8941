"""How well can MiniLM tell SciFact's SUPPORTS from REFUTES at all, with the reader out of the picture?

The reader benchmark (``benchmarks/reader.py``) finds every SciFact-KILT row at or below the majority class. This
separates "the reader cannot learn" from "MiniLM cannot learn this from 505 claims": two plain baselines given the
*gold* evidence abstract (no retrieval, no memory, no retromem reader code):

- a linear probe: logistic regression on MiniLM's sentence embeddings of the claim and the abstract,
  ``[c, a, c * a, |c - a|]`` (and of the claim alone), its regularisation chosen by 5-fold cross-validation on
  train, scored on dev;
- a cross-encoder: Hugging Face ``BertForSequenceClassification`` initialised from MiniLM over
  ``[CLS] claim [SEP] abstract [SEP]``, fine-tuned on the 505 train claims (AdamW, linear schedule, 10% warm-up)
  for each ``--lrs`` and ``--seeds``, dev accuracy after every epoch.

Beside them the majority-class accuracy of dev (0.660: 124 of 188 claims are SUPPORTS). Results go to
``--out``/scifact_ceiling.{json,md}.

    nice python benchmarks/scifact_ceiling.py --lrs 1e-5,3e-5 --epochs 4 --max-length 256
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retromem.data.kilt import read_kilt_task, resolve_kilt_task  # noqa: E402
from retromem.data.kilt_source import read_page  # noqa: E402
from retromem.io import write_json_atomic  # noqa: E402

LABELS = ("REFUTES", "SUPPORTS")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    train, dev = claims("scifact-train"), claims("scifact-dev")
    majority = max(sum(y for _, _, y in dev), sum(1 - y for _, _, y in dev)) / len(dev)
    print(f"train {len(train)} claims, dev {len(dev)}; dev majority-class accuracy {majority:.3f}", flush=True)
    results = {"settings": vars(args), "train": len(train), "dev": len(dev), "majority": majority}
    results["linear_probe"] = linear_probe(train, dev)
    print(f"linear probe: {results['linear_probe']}", flush=True)
    runs = []
    for lr in [float(x) for x in args.lrs.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            runs.append(cross_encoder(train, dev, lr, seed, args))
            print(f"cross-encoder lr {lr} seed {seed}: dev accuracy by epoch {runs[-1]['dev_accuracy']}", flush=True)
    results["cross_encoder"] = runs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "scifact_ceiling.json", results)
    (out / "scifact_ceiling.md").write_text(report(results), encoding="utf-8")
    print(report(results))
    return 0


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lrs", default="1e-5,3e-5", help="cross-encoder learning rates")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256, help="claim + abstract tokens")
    p.add_argument("--out", default="benchmarks/results")
    return p.parse_args(argv)


def claims(name: str) -> list[tuple[str, str, int]]:
    """(claim, its first gold abstract's text, 1 for SUPPORTS) for every claim of a SciFact-KILT file."""
    task = resolve_kilt_task(name)
    abstracts = {}
    with open(task.source_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            page_id, _, paragraphs = read_page(json.loads(line), task.source_path, lineno)
            abstracts[page_id] = " ".join(paragraphs[1:])
    out = []
    for example in read_kilt_task(task.path):
        page = next(p.wikipedia_id for evidence in example.evidence for p in evidence)
        out.append((example.input, abstracts[page], LABELS.index(example.answers[0])))
    return out


def linear_probe(train, dev) -> dict:
    import numpy as np
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegressionCV

    from retromem.model_paths import resolve_model_path

    model = SentenceTransformer(resolve_model_path("minilm"), device="cpu")
    model.max_seq_length = 256

    def features(rows):
        c = model.encode([r[0] for r in rows], normalize_embeddings=True)
        a = model.encode([r[1] for r in rows], normalize_embeddings=True)
        return np.hstack([c, a, c * a, np.abs(c - a)]), c, np.array([r[2] for r in rows])

    pair_train, claim_train, y_train = features(train)
    pair_dev, claim_dev, y_dev = features(dev)
    out = {}
    for name, (x_train, x_dev) in {"claim_and_abstract": (pair_train, pair_dev),
                                   "claim_only": (claim_train, claim_dev)}.items():
        probe = LogisticRegressionCV(Cs=[0.001, 0.01, 0.1, 1, 10], cv=5, max_iter=5000).fit(x_train, y_train)
        predicted = probe.predict(x_dev)
        out[name] = {"dev_accuracy": float((predicted == y_dev).mean()), "C": float(probe.C_[0]),
                     "share_predicted_supports": float(predicted.mean())}
    return out


def cross_encoder(train, dev, lr: float, seed: int, args) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    from retromem.model_paths import resolve_model_path

    torch.manual_seed(seed)
    rng = random.Random(seed)
    path = resolve_model_path("minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = args.epochs * -(-len(train) // args.batch_size)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)

    def encode(rows):
        return tokenizer([r[0] for r in rows], [r[1] for r in rows], truncation="only_second",
                         max_length=args.max_length, padding=True, return_tensors="pt")

    def evaluate() -> tuple[float, float]:
        model.eval()
        predicted = []
        with torch.inference_mode():
            for i in range(0, len(dev), 32):
                predicted += model(**encode(dev[i:i + 32])).logits.argmax(-1).tolist()
        model.train()
        correct = sum(p == r[2] for p, r in zip(predicted, dev))
        return correct / len(dev), sum(predicted) / len(predicted)

    order = list(train)
    accuracy, supports, losses = [], [], []
    started = time.perf_counter()
    model.train()
    for _ in range(args.epochs):
        rng.shuffle(order)
        total = 0.0
        for i in range(0, len(order), args.batch_size):
            rows = order[i:i + args.batch_size]
            loss = model(**encode(rows), labels=torch.tensor([r[2] for r in rows])).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            total += loss.item() * len(rows)
        losses.append(total / len(order))
        acc, share = evaluate()
        accuracy.append(acc)
        supports.append(share)
        print(f"  lr {lr:g} seed {seed} epoch {len(accuracy)}: train loss {losses[-1]:.3f}, dev accuracy {acc:.3f} "
              f"(SUPPORTS predicted for {share:.0%}), {time.perf_counter() - started:.0f} s", flush=True)
    return {"lr": lr, "seed": seed, "dev_accuracy": accuracy, "share_predicted_supports": supports,
            "train_loss": losses, "seconds": time.perf_counter() - started}


def report(results: dict) -> str:
    lines = ["# Can MiniLM learn SciFact's labels? (gold abstract given, no reader)", "",
             f"settings: `{json.dumps(results['settings'])}`", "",
             f"{results['train']} train claims, {results['dev']} dev claims; dev majority class "
             f"(SUPPORTS): **{results['majority']:.3f}**", "", "| baseline | dev accuracy | share predicted SUPPORTS |",
             "|---|---|---|"]
    for name, row in results["linear_probe"].items():
        lines.append(f"| linear probe on sentence embeddings, {name.replace('_', ' ')} (C={row['C']:g}, 5-fold CV on "
                     f"train) | {row['dev_accuracy']:.3f} | {row['share_predicted_supports']:.2f} |")
    for run in results["cross_encoder"]:
        acc = ", ".join(f"{a:.3f}" for a in run["dev_accuracy"])
        share = ", ".join(f"{s:.2f}" for s in run["share_predicted_supports"])
        lines.append(f"| cross-encoder lr {run['lr']:g} seed {run['seed']}, by epoch (train loss "
                     f"{', '.join(f'{x:.3f}' for x in run['train_loss'])}) | {acc} | {share} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
