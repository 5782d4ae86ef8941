"""Generative head: answer generation with the encoder-decoder key/value cache vs without it (the baseline).

The reader's ``GenerativeHead.generate`` over random live outputs at MiniLM's width (384-d), a BERT decoder of
``--decoder-layers`` layers with cross-attention (random weights, so every answer runs to ``--answer-tokens``:
the cache's worst case for the baseline is its best case, and trained readers stop earlier), ``--questions``
questions x ``--passages`` passages x ``--passage-tokens`` tokens. Prints the median seconds of ``--rounds``
rounds of each, interleaved, the ratio, and whether the greedy outputs are identical.

    python benchmarks/generate_cache.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from transformers import AutoTokenizer, BertConfig, BertLMHeadModel

    from retromem.model_paths import resolve_model_path
    from retromem.read import heads

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = BertConfig(hidden_size=384, num_hidden_layers=args.decoder_layers, num_attention_heads=12,
                        intermediate_size=1536, vocab_size=tokenizer.vocab_size, is_decoder=True,
                        add_cross_attention=True)
    head = heads.GenerativeHead(384, BertLMHeadModel(config), tokenizer,
                                SimpleNamespace(max_answer_length=args.answer_tokens)).eval()
    hidden = torch.randn(args.questions, args.passages, args.passage_tokens, 384)
    mask = torch.ones(args.questions, args.passages, args.passage_tokens, dtype=torch.long)
    mask[:, :, args.passage_tokens * 3 // 4:] = 0  # padding, as short passages have
    cached_setting = heads._cross_attention_cache

    def run(cached: bool):
        heads._cross_attention_cache = cached_setting if cached else (lambda: {"use_cache": False})
        started = time.perf_counter()
        with torch.no_grad():
            out = head.generate(hidden, mask)
        return time.perf_counter() - started, out

    times = {"without cache (baseline)": [], "with cache": []}
    outputs = {}
    try:
        for _ in range(args.rounds):
            for name, cached in (("without cache (baseline)", False), ("with cache", True)):
                seconds, outputs[name] = run(cached)
                times[name].append(seconds)
    finally:
        heads._cross_attention_cache = cached_setting
    base, fast = (statistics.median(times[n]) for n in ("without cache (baseline)", "with cache"))
    print(f"{args.questions} questions x {args.passages} passages x {args.passage_tokens} tokens, "
          f"{args.answer_tokens} answer tokens, {args.decoder_layers} decoder layers, median of {args.rounds}")
    print(f"without cache (baseline): {base:.3f} s")
    print(f"with cache:               {fast:.3f} s   {base / fast:.2f}x")
    same = torch.equal(outputs["without cache (baseline)"], outputs["with cache"])
    print(f"greedy outputs identical: {same}; generated length {outputs['with cache'].shape[1]}")
    return 0 if same else 1


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=_at_least(1), default=16)
    p.add_argument("--passages", type=_at_least(1), default=5)
    p.add_argument("--passage-tokens", type=_at_least(4), default=200)
    p.add_argument("--answer-tokens", type=_at_least(1), default=32)
    p.add_argument("--decoder-layers", type=_at_least(1), default=2)
    p.add_argument("--rounds", type=_at_least(1), default=3)
    return p.parse_args(argv)


def _at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value}: must be at least {low}")
        return value
    return parse


if __name__ == "__main__":
    raise SystemExit(main())
