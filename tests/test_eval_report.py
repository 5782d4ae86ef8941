"""Reports: markdown tables, the result files of an evaluation, and the per-query PNG."""

from __future__ import annotations

import json

import pytest

from retromem import __version__
from retromem.eval.beir_metrics import evaluate
from retromem.eval.report import format_markdown_table, plot_per_query, write_results

QRELS = {"q1": {"d1": 1, "d2": 2}, "q2": {"d3": 1}, "q3": {"d4": 1}}
RUN = {"q1": {"d1": 0.9, "x": 0.8, "d2": 0.3}, "q2": {"y": 2.0, "d3": 1.0}}   # q3 missing


@pytest.fixture()
def scores():
    return evaluate(QRELS, RUN, k_values=(1, 10, 100))


def test_format_markdown_table_rows_columns_and_rounding():
    table = format_markdown_table(
        {"minilm": {"NDCG@10": 0.645123, "MRR@10": 0.6}, "bm|25": {"NDCG@10": 0.67894, "MRR@10": 1 / 3}},
        metrics=("NDCG@10", "MRR@10", "Recall@100"),
    )
    assert table.splitlines() == [
        "| system | NDCG@10 | MRR@10 | Recall@100 |",
        "|---|---:|---:|---:|",
        "| minilm | 0.6451 | 0.6000 | - |",
        "| bm\\|25 | 0.6789 | 0.3333 | - |",
    ]
    with pytest.raises(ValueError):
        format_markdown_table({"a": {}}, metrics=())


def test_write_results_files_hold_the_numbers(tmp_path, scores):
    meta = {"dataset": "scifact", "split": "test", "model": "minilm"}
    out = tmp_path / "out"
    path = write_results(out, scores, meta)
    assert path == out / "results.json"
    assert sorted(p.name for p in out.iterdir()) == ["per_query.json", "results.json", "results.md"]

    results = json.loads(path.read_text())
    assert results["metrics"] == scores.mean
    assert list(results["metrics"])[:3] == ["NDCG@1", "NDCG@10", "NDCG@100"]  # BEIR's order, not sorted
    assert results["metadata"] == meta
    assert results["counts"] == {"num_queries": 3, "num_missing": 1, "num_ignored": 0, "num_identical_removed": 0}
    assert results["missing_query_ids"] == ["q3"] and results["k_values"] == [1, 10, 100]
    assert results["retromem_version"] == __version__ and results["created"].endswith("+00:00")
    assert results["metrics"]["MRR@10"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)

    per_query = json.loads((out / "per_query.json").read_text())
    assert per_query == scores.per_query and per_query["q3"]["NDCG@10"] == 0.0

    markdown = (out / "results.md").read_text()
    assert markdown.startswith("# BEIR results: scifact test\n")
    assert f"| minilm | {scores.mean['NDCG@10']:.4f} | {scores.mean['MAP@10']:.4f} |" in markdown
    assert f"| MRR | {scores.mean['MRR@1']:.4f} | 0.5000 | 0.5000 |" in markdown
    assert "3 judged queries scored; 1 without results" in markdown


def test_write_results_without_metadata_names_the_row_run(tmp_path):
    scores = evaluate(QRELS, RUN, k_values=(5,))   # no headline metric at k=5: only the full table
    write_results(tmp_path, scores, None)
    markdown = (tmp_path / "results.md").read_text()
    assert markdown.startswith("# BEIR results\n") and "| NDCG | " in markdown and "| system |" not in markdown
    assert json.loads((tmp_path / "results.json").read_text())["metadata"] == {}


def test_plot_per_query_writes_a_png(tmp_path, scores):
    path = plot_per_query(scores, "NDCG@10", tmp_path / "plots" / "ndcg.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    assert sorted(p.name for p in path.parent.iterdir()) == ["ndcg.png"]
    with pytest.raises(ValueError, match="unknown metric 'NDCG@7'"):
        plot_per_query(scores, "NDCG@7", tmp_path / "x.png")
