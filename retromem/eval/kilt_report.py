"""Reports of KILT scores: results.json, per_query.json, results.md and a per-question plot, as ``eval beir`` writes.

::

    results.json    {"metrics": {...mean...}, "passage_metrics": {...}, "counts": {...}, "ks": [...],
                     "metadata": {...}, "created": "<UTC ISO time>", "retromem_version": "..."}
    per_query.json  {example id: {metric: value}}
    results.md      the headline table and the counts
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from retromem import __version__
from retromem.eval.kilt import ANSWER_METRICS, KILT_METRICS, KiltScores
from retromem.eval.report import PER_QUERY_JSON, RESULTS_JSON, RESULTS_MD, format_markdown_table, plot_per_query
from retromem.io import write_text_atomic
from retromem.workdir import slug


def headline_metrics(scores: KiltScores, answers: bool | None = None) -> list[str]:
    """R-Prec and Recall@k (k > 1, as KILT reports it; Recall@1 where 1 is the only k), then, where answers were
    given, the answer metrics and their KILT variants."""
    recall = [f"Recall@{k}" for k in scores.ks if k > 1] or [f"Recall@{scores.ks[0]}"]
    names = ["R-Prec", *recall]
    if answers if answers is not None else scores.with_answers:
        names += [*ANSWER_METRICS, *KILT_METRICS]
    return names


def write_kilt_results(output_dir: str | Path, scores: KiltScores, metadata: Mapping[str, Any] | None = None,
                       passage_metrics: Mapping[str, float] | None = None, plot_metric: str | None = "R-Prec") -> Path:
    """Write the report files (atomically) into ``output_dir``; return results.json's path."""
    output_dir = Path(output_dir)
    metadata = dict(metadata or {})
    results = {
        "metrics": scores.mean,
        "passage_metrics": dict(passage_metrics or {}),
        "counts": {"examples": scores.num_examples, "with_answers": scores.with_answers},
        "ks": list(scores.ks),
        "metadata": metadata,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "retromem_version": __version__,
    }
    write_text_atomic(output_dir / PER_QUERY_JSON, _json(scores.per_query))
    write_text_atomic(output_dir / RESULTS_MD, results_markdown(scores, metadata, passage_metrics))
    write_text_atomic(output_dir / RESULTS_JSON, _json(results))
    if plot_metric and plot_metric in scores.mean:
        plot_per_query(scores, plot_metric, output_dir / f"per_query_{slug(plot_metric)}.png")
    return output_dir / RESULTS_JSON


def results_markdown(scores: KiltScores, metadata: Mapping[str, Any],
                     passage_metrics: Mapping[str, float] | None = None) -> str:
    system = str(metadata.get("system") or metadata.get("model") or metadata.get("predictions") or "run")
    lines = [f"# KILT results{': ' + str(metadata['task']) if metadata.get('task') else ''}", ""]
    lines += [format_markdown_table({system: scores.mean}, headline_metrics(scores)).rstrip("\n"), ""]
    lines += [format_markdown_table({system: scores.mean}, scores.retrieval_metrics()).rstrip("\n"), ""]
    if passage_metrics:
        lines += ["Passage level (before pages are merged):", "",
                  format_markdown_table({system: passage_metrics}, list(passage_metrics)).rstrip("\n"), ""]
    lines.append(f"{scores.num_examples} examples scored; {scores.with_answers} predictions with an answer"
                 + ("" if scores.with_answers else " (retrieval only: the answer metrics are 0)") + ".")
    return "\n".join(lines) + "\n"


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
