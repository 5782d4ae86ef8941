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

Beside them the majority-class accuracy of dev (0.660: 124 of 188 claims are SUPPORTS), and how many dev claims
cite an abstract train claims cite too, with which labels, and what predicting each dev claim from its abstract's
train labels alone scores (the "memoriser": what learning the abstract instead of the claim gives on this split).
Results go to ``--out``/scifact_ceiling.{json,md}.

    nice python benchmarks/scifact_ceiling.py --lrs 3e-5 --epochs 12 --max-length 256
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
    results["shared_abstracts"] = shared_abstracts(train, dev)
    print(f"abstracts shared by train and dev: {results['shared_abstracts']}", flush=True)
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


def shared_abstracts(train, dev) -> dict:
    """How many dev claims cite a gold abstract that train claims cite too, and with which labels: SciFact writes
    a negated (REFUTES) claim beside many SUPPORTS ones on the same abstract, and its split puts some of each pair
    on either side. ``memoriser_accuracy``: the dev accuracy of predicting, for each dev claim, the majority train
    label of its abstract (the overall train majority for an unseen abstract): what learning the abstract instead
    of the claim gives."""
    by_abstract = train_labels_by_abstract(train)
    shared = same = opposite = 0
    for _, abstract, label in dev:
        seen = by_abstract.get(abstract)
        if seen is not None:
            shared += 1
            same += all(y == label for y in seen)
            opposite += all(y != label for y in seen)
    memorised = memoriser(train, dev)
    correct = sum(m == label for m, (_, _, label) in zip(memorised, dev))
    return {"dev_claims_with_a_train_abstract": shared, "same_label_as_every_train_claim": same,
            "opposite_label_to_every_train_claim": opposite, "memoriser_accuracy": correct / len(dev)}


def train_labels_by_abstract(train) -> dict[str, list[int]]:
    by_abstract: dict[str, list[int]] = {}
    for _, abstract, label in train:
        by_abstract.setdefault(abstract, []).append(label)
    return by_abstract


def memoriser(train, dev) -> list[int]:
    """Each dev claim's label predicted as its abstract's majority train label (the train majority if unseen)."""
    by_abstract = train_labels_by_abstract(train)
    overall = int(2 * sum(label for _, _, label in train) >= len(train))
    return [int(2 * sum(seen) >= len(seen)) if (seen := by_abstract.get(abstract)) else overall
            for _, abstract, _ in dev]


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

    memorised = memoriser(train, dev)
    seen = train_labels_by_abstract(train)
    unseen = [i for i, (_, abstract, _) in enumerate(dev) if abstract not in seen]

    def evaluate() -> tuple[float, float, float, float]:
        """Dev accuracy, share predicted SUPPORTS, share agreeing with the memoriser, accuracy on unseen abstracts."""
        model.eval()
        predicted = []
        with torch.inference_mode():
            for i in range(0, len(dev), 32):
                predicted += model(**encode(dev[i:i + 32])).logits.argmax(-1).tolist()
        model.train()
        correct = sum(p == r[2] for p, r in zip(predicted, dev))
        agree = sum(p == m for p, m in zip(predicted, memorised)) / len(dev)
        fresh = sum(predicted[i] == dev[i][2] for i in unseen) / max(1, len(unseen))
        return correct / len(dev), sum(predicted) / len(predicted), agree, fresh

    order = list(train)
    accuracy, supports, losses, agreement, unseen_accuracy = [], [], [], [], []
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
        acc, share, agree, fresh = evaluate()
        accuracy.append(acc)
        supports.append(share)
        agreement.append(agree)
        unseen_accuracy.append(fresh)
        print(f"  lr {lr:g} seed {seed} epoch {len(accuracy)}: train loss {losses[-1]:.3f}, dev accuracy {acc:.3f} "
              f"(SUPPORTS predicted for {share:.0%}; agrees with the memoriser on {agree:.0%}; {fresh:.3f} on the "
              f"{len(unseen)} claims of unseen abstracts), {time.perf_counter() - started:.0f} s", flush=True)
    return {"lr": lr, "seed": seed, "dev_accuracy": accuracy, "share_predicted_supports": supports,
            "agreement_with_memoriser": agreement, "unseen_abstracts": len(unseen),
            "dev_accuracy_on_unseen_abstracts": unseen_accuracy, "train_loss": losses,
            "seconds": time.perf_counter() - started}


def report(results: dict) -> str:
    lines = ["# Can MiniLM learn SciFact's labels? (gold abstract given, no reader)", "",
             f"settings: `{json.dumps(results['settings'])}`", "",
             f"{results['train']} train claims, {results['dev']} dev claims; dev majority class "
             f"(SUPPORTS): **{results['majority']:.3f}**", ""]
    shared = results.get("shared_abstracts")
    if shared:
        n, same = shared["dev_claims_with_a_train_abstract"], shared["same_label_as_every_train_claim"]
        opposite, memoriser = shared["opposite_label_to_every_train_claim"], shared["memoriser_accuracy"]
        lines += [f"{n} of the {results['dev']} dev claims cite a gold abstract that train claims cite too: {same} "
                  f"with the label of every train claim on it, {opposite} with the opposite label to every one "
                  "(SciFact's negated claims, split across train and dev). Predicting each dev claim's label as its "
                  f"abstract's majority train label (learning the abstract, not the claim) scores **{memoriser:.3f}**.",
                  ""]
    lines += ["| baseline | dev accuracy | share predicted SUPPORTS |", "|---|---|---|"]
    for name, row in results["linear_probe"].items():
        lines.append(f"| linear probe on sentence embeddings, {name.replace('_', ' ')} (C={row['C']:g}, 5-fold CV on "
                     f"train) | {row['dev_accuracy']:.3f} | {row['share_predicted_supports']:.2f} |")
    for run in results["cross_encoder"]:
        acc = ", ".join(f"{a:.3f}" for a in run["dev_accuracy"])
        share = ", ".join(f"{s:.2f}" for s in run["share_predicted_supports"])
        lines.append(f"| cross-encoder lr {run['lr']:g} seed {run['seed']}, by epoch (train loss "
                     f"{', '.join(f'{x:.3f}' for x in run['train_loss'])}) | {acc} | {share} |")
    runs = [run for run in results["cross_encoder"] if "agreement_with_memoriser" in run]
    if runs:
        lines += ["", "| cross-encoder, by epoch | agrees with the memoriser | accuracy on dev claims of abstracts no "
                  "train claim cites | accuracy on dev claims of abstracts train claims cite |", "|---|---|---|---|"]
        for run in runs:
            unseen, seen = run["unseen_abstracts"], results["dev"] - run["unseen_abstracts"]
            on_seen = [(a * results["dev"] - u * unseen) / seen
                       for a, u in zip(run["dev_accuracy"], run["dev_accuracy_on_unseen_abstracts"])]
            lines.append(f"| lr {run['lr']:g} seed {run['seed']} | "
                         f"{', '.join(f'{a:.2f}' for a in run['agreement_with_memoriser'])} | "
                         f"{', '.join(f'{a:.3f}' for a in run['dev_accuracy_on_unseen_abstracts'])} "
                         f"({unseen} claims) | "
                         f"{', '.join(f'{a:.3f}' for a in on_seen)} ({seen} claims) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
