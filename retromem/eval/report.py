"""Reports of BEIR scores: markdown tables, result files on disk, and a per-query plot.

``write_results`` lays out an output directory as::

    results.json    {"metrics": {...mean...}, "counts": {...}, "k_values": [...],
                     "ignore_identical_ids": true, "metadata": {...caller's...},
                     "created": "<UTC ISO time>", "retromem_version": "..."}
    per_query.json  {query id: {metric: value}}
    results.md      the headline table, every metric by k, and the counts

Every file is written atomically (temp file + rename), so a crash never leaves half a report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from retromem import __version__
from retromem.errors import ConfigError
from retromem.eval.beir_metrics import METRIC_FAMILIES, BeirScores
from retromem.io import atomic_path, write_text_atomic

DEFAULT_TABLE_METRICS: tuple[str, ...] = ("NDCG@10", "MAP@10", "Recall@100", "P@10", "MRR@10")
RESULTS_JSON = "results.json"
PER_QUERY_JSON = "per_query.json"
RESULTS_MD = "results.md"


def format_markdown_table(scores_by_system: Mapping[str, Mapping[str, float]],
                          metrics: Sequence[str] = DEFAULT_TABLE_METRICS, digits: int = 4) -> str:
    """A markdown table: one row per system, one column per metric, values to ``digits`` decimals.

    A metric a system lacks (for example a k it was not evaluated at) shows as ``-``.
    """
    if not metrics:
        raise ConfigError("no metrics to show: pass at least one metric name, e.g. ('NDCG@10',)")
    header = "| system | " + " | ".join(metrics) + " |"
    rule = "|---|" + "---:|" * len(metrics)
    rows = []
    for system, scores in scores_by_system.items():
        cells = [f"{scores[m]:.{digits}f}" if m in scores else "-" for m in metrics]
        rows.append(f"| {_escape(str(system))} | " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows]) + "\n"


def write_results(output_dir: str | Path, scores: BeirScores, extra_metadata: Mapping[str, Any] | None = None) -> Path:
    """Write results.json, per_query.json and results.md into ``output_dir``; return results.json's path.

    ``extra_metadata`` (JSON-serialisable) says what was evaluated; by convention it holds
    ``dataset``, ``split`` and ``model`` (or ``run_file`` for an external run), and anything else
    worth keeping (index factory, encoder fingerprint...). The ``model`` (else ``run_file``) value
    names the row of the markdown table.
    """
    output_dir = Path(output_dir)
    metadata = dict(extra_metadata or {})
    results = {
        "metrics": scores.mean,
        "counts": scores.counts(),
        "k_values": list(scores.k_values),
        "ignore_identical_ids": scores.ignore_identical_ids,
        "missing_query_ids": scores.missing_query_ids,
        "metadata": metadata,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "retromem_version": __version__,
    }
    results_path = output_dir / RESULTS_JSON
    # Metric order is meaningful (NDCG@1, @3, ... as BEIR prints), so keys are not sorted.
    write_text_atomic(output_dir / PER_QUERY_JSON, _to_json(scores.per_query))
    write_text_atomic(output_dir / RESULTS_MD, _results_markdown(scores, metadata))
    write_text_atomic(results_path, _to_json(results))
    return results_path


def plot_per_query(scores: BeirScores, metric: str, path: str | Path) -> Path:
    """Save a PNG of ``metric`` per query: sorted values (left) and their histogram (right).

    Drawn with matplotlib's Agg canvas directly, so the caller's pyplot backend and state are
    untouched; written atomically.
    """
    if metric not in scores.mean:
        raise ConfigError(f"unknown metric {metric!r}; available: {', '.join(scores.mean)}")
    values = sorted((per[metric] for per in scores.per_query.values()), reverse=True)
    if not values:
        raise ConfigError("no per-query scores to plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    sorted_ax, hist_ax = fig.subplots(1, 2, width_ratios=(2, 1))
    positions = range(1, len(values) + 1)
    sorted_ax.fill_between(positions, values, step="mid", alpha=0.7)
    sorted_ax.axhline(scores.mean[metric], color="black", linestyle="--", linewidth=1,
                      label=f"mean {scores.mean[metric]:.4f}")
    top = max(1.0, values[0]) * 1.02
    sorted_ax.set(xlabel="queries, sorted", ylabel=metric, xlim=(0.5, len(values) + 0.5), ylim=(0.0, top),
                  title=f"{metric} per query ({len(values)} queries)")
    sorted_ax.legend(loc="upper right")
    hist_ax.hist(values, bins=20, range=(min(0.0, values[-1]), max(1.0, values[0])))
    hist_ax.set(xlabel=metric, ylabel="queries", title="distribution")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def _results_markdown(scores: BeirScores, metadata: Mapping[str, Any]) -> str:
    system = str(metadata.get("model") or metadata.get("run_file") or "run")
    what = " ".join(str(metadata[key]) for key in ("dataset", "split") if metadata.get(key))
    lines = [f"# BEIR results{': ' + what if what else ''}", ""]
    headline = [m for m in DEFAULT_TABLE_METRICS if m in scores.mean]
    if headline:
        lines += [format_markdown_table({system: scores.mean}, headline).rstrip("\n"), ""]
    lines.append("| metric | " + " | ".join(f"@{k}" for k in scores.k_values) + " |")
    lines.append("|---|" + "---:|" * len(scores.k_values))
    for family in METRIC_FAMILIES:
        cells = [f"{scores.mean[f'{family}@{k}']:.4f}" for k in scores.k_values]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{scores.num_queries} judged queries scored; {scores.num_missing} without results in the run "
                 f"(counted as 0); {scores.num_ignored} run queries without judgments ignored; "
                 f"{scores.num_identical_removed} results whose id equals the query id removed"
                 + ("" if scores.ignore_identical_ids else " (rule off)") + ".")
    return "\n".join(lines) + "\n"


def _to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")
