"""A tiny KILT world for the reader's tests: a knowledge source, a claim task (SUPPORTS/REFUTES) and a QA task
whose answers are words of their gold passage, and run files that retrieve the gold page among others."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.conftest import WORDS


def write_kilt_world(root: Path, pages: int = 12, questions: int = 16, seed: int = 0) -> dict[str, Path]:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    texts = {}
    with open(root / "knowledge_source.jsonl", "w", encoding="utf-8") as handle:
        for i in range(pages):
            title = f"page {WORDS[i]}"
            body = " ".join(rng.choices(WORDS, k=30))
            texts[f"P{i}"] = body
            handle.write(json.dumps({"wikipedia_id": f"P{i}", "wikipedia_title": title, "text": [title, body]}) + "\n")
    claims, qa = [], []
    run_claims, run_qa = [], []
    for q in range(questions):
        page = q % pages
        others = [p for p in range(pages) if p != page]
        ranked = [page, *rng.sample(others, 2)]
        rng.shuffle(ranked)
        label = "SUPPORTS" if q % 3 else "REFUTES"
        word = texts[f"P{page}"].split()[q % 30]
        claims.append({"id": f"c{q}", "input": f"{WORDS[page]} claim {q}", "output": [
            {"answer": label, "provenance": [{"wikipedia_id": f"P{page}", "start_paragraph_id": 1,
                                              "end_paragraph_id": 1}]}]})
        qa.append({"id": f"q{q}", "input": f"which word {q} of {WORDS[page]}?", "output": [
            {"answer": word, "provenance": [{"wikipedia_id": f"P{page}", "start_paragraph_id": 1,
                                             "end_paragraph_id": 1}]}]})
        for rank, p in enumerate(ranked):
            run_claims.append(f"c{q} Q0 P{p}#0 {rank + 1} {10 - rank} t")
            run_qa.append(f"q{q} Q0 P{p}#0 {rank + 1} {10 - rank} t")
    for name, rows in (("claims-kilt.jsonl", claims), ("qa-kilt.jsonl", qa)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / "claims.run").write_text("\n".join(run_claims) + "\n", encoding="utf-8")
    (root / "qa.run").write_text("\n".join(run_qa) + "\n", encoding="utf-8")
    return {"source": root / "knowledge_source.jsonl", "claims": root / "claims-kilt.jsonl",
            "qa": root / "qa-kilt.jsonl", "claims_run": root / "claims.run", "qa_run": root / "qa.run"}
