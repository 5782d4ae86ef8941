"""How fast can a fresh bag-of-words head learn to read a frozen encoder's sentence vector?

The ``bow`` objective (and DupMAE's bag-of-words loss) trains the encoder through the MLM head: the
sentence vector goes through the head's transform and is projected onto the word embeddings, and
the softmax over the vocabulary should predict the bag of the passage's tokens. When the encoder
ships without an MLM head (all-MiniLM-L6-v2), that head starts random, and until it has learnt to
read the vector the loss cannot tell the encoder what to put into it.

This probe freezes the encoder, encodes ``--passages`` passages of a BEIR corpus once, and trains
only a fresh head (the transform and bias ``PretrainModel`` gives the encoder, the word embeddings
fixed) on them, for each input (the [CLS] vector, the mean of the token vectors) and learning rate.
It prints the held-out bag-of-words loss (nats) after some steps next to the unigram baseline (the
corpus's token frequencies, which any head learns first through its bias): how far below that
baseline the head gets in the number of steps a short pretraining run has is how much the
bottleneck can say to the encoder in such a run.

Run by hand (a few minutes on 2 CPU cores):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bow_head_probe.py
    .venv/bin/python benchmarks/bow_head_probe.py --lrs 3e-4,1e-3,3e-3 --steps 100,200,400,800
"""

from __future__ import annotations

import argparse
import copy
import itertools

import torch

from retromem.data.beir import corpus_file, iter_corpus, resolve_beir_dir
from retromem.errors import RetromemError
from retromem.pretrain.bow import bag_of_words_loss
from retromem.pretrain.model import PretrainModel


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        corpus = corpus_file(resolve_beir_dir(args.dataset))
        model = PretrainModel.from_encoder(args.model, objective="bow")
    except RetromemError as err:
        raise SystemExit(f"error: {err}") from None
    ids, ordinary, features = encode_passages(model, corpus, args)
    n_train = args.passages - args.held_out
    train, test = slice(0, n_train), slice(n_train, args.passages)
    baseline = unigram_loss(ids, ordinary, train, test, len(model.tokenizer))
    steps = sorted(int(s) for s in args.steps.split(","))
    print(f"{args.model} on {args.dataset}: {n_train} passages to train the head, {args.held_out} held out; "
          f"batch {args.batch_size}; held-out bag-of-words loss (nats); unigram baseline {baseline:.3f}")
    print("| input | lr | " + " | ".join(f"{s} steps" for s in steps) + " |")
    print("|---|---:|" + "---:|" * len(steps))
    for name, vectors in features.items():
        for lr in (float(x) for x in args.lrs.split(",")):
            losses = train_head(model, vectors, ids, ordinary, train, test, lr, steps, args)
            print(f"| {name} | {lr:g} | " + " | ".join(f"{loss:.3f}" for loss in losses) + " |", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="the encoder (alias, folder or hub id)")
    parser.add_argument("--dataset", default="scifact", help="BEIR data set (name or folder) whose corpus is read")
    parser.add_argument("--passages", type=int, default=2400, help="passages read (the first ones of the corpus)")
    parser.add_argument("--held-out", type=int, default=400, help="of those, passages kept to score the head")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per passage")
    parser.add_argument("--batch-size", type=int, default=16, help="passages per head training step")
    parser.add_argument("--lrs", default="3e-4,3e-3", help="comma-separated AdamW learning rates of the head")
    parser.add_argument("--steps", default="100,200,400", help="comma-separated steps at which to score the head")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 < args.held_out < args.passages:
        parser.error("--held-out must be between 0 and --passages")
    return args


def encode_passages(model: PretrainModel, corpus, args: argparse.Namespace):
    """Token ids (N, T), the ordinary-token mask, and the frozen [CLS] and mean-pooled vectors of ``corpus``."""
    texts = [p.full_text() for p in itertools.islice(iter_corpus(corpus), args.passages)]
    if len(texts) < args.passages:
        raise SystemExit(f"{corpus} has only {len(texts)} passages: give --passages {len(texts)} or fewer")
    tokenizer = model.tokenizer
    batch = tokenizer(texts, max_length=args.max_length, truncation=True, padding="max_length", return_tensors="pt")
    ids, attention = batch["input_ids"], batch["attention_mask"]
    ordinary = attention.bool() & (ids != tokenizer.cls_token_id) & (ids != tokenizer.sep_token_id)
    model.encoder.eval()
    cls, mean = [], []
    with torch.no_grad():
        for start in range(0, len(texts), 64):
            part = slice(start, start + 64)
            hidden = model.encoder(input_ids=ids[part], attention_mask=attention[part]).last_hidden_state
            weights = attention[part].unsqueeze(-1).float()
            cls.append(hidden[:, 0])
            mean.append((hidden * weights).sum(1) / weights.sum(1))
    return ids, ordinary, {"[CLS]": torch.cat(cls), "mean pooling": torch.cat(mean)}


def unigram_loss(ids, ordinary, train: slice, test: slice, vocab: int) -> float:
    """Held-out loss of the training passages' token frequencies (add-0.01 smoothing)."""
    counts = torch.bincount(ids[train][ordinary[train]], minlength=vocab).float() + 0.01
    log_probs = torch.log(counts / counts.sum())
    rows = ids[test].shape[0]
    return bag_of_words_loss(log_probs.expand(rows, -1), ids[test], ordinary[test]).item()


def train_head(model: PretrainModel, vectors, ids, ordinary, train: slice, test: slice, lr: float,
               steps: list[int], args: argparse.Namespace) -> list[float]:
    """Train a fresh copy of the MLM head's transform and bias; the held-out loss at each of ``steps``."""
    transform = copy.deepcopy(model.mlm_head.transform)
    bias = torch.nn.Parameter(torch.zeros_like(model.mlm_head.bias))
    words = model.mlm_head.vocab_weight.detach()
    optimizer = torch.optim.AdamW([*transform.parameters(), bias], lr=lr)
    generator = torch.Generator().manual_seed(args.seed)
    n_train = train.stop - train.start
    losses = []
    for step in range(1, steps[-1] + 1):
        rows = torch.randint(0, n_train, (args.batch_size,), generator=generator)
        loss = bag_of_words_loss(transform(vectors[rows]) @ words.T + bias, ids[rows], ordinary[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in steps:
            with torch.no_grad():
                logits = transform(vectors[test]) @ words.T + bias
                losses.append(bag_of_words_loss(logits, ids[test], ordinary[test]).item())
    return losses


if __name__ == "__main__":
    main()
