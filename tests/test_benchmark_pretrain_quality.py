"""The quality benchmark's report: its summary of the arms, the goal's verdict, the table, and dropped checkpoints.

The statistics themselves (paired differences, intervals) are tested in test_eval_stats.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pretrain_quality.py"


@pytest.fixture(scope="module")
def pq():
    spec = importlib.util.spec_from_file_location("pretrain_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(scores: dict[str, list[float]]) -> dict[str, dict]:
    names = {"a": ("finetune", None), "b": ("mlm", "mlm"), "c": ("retromae", "retromae"), "f": ("dupmae", "dupmae")}
    rows = {}
    for arm, values in scores.items():
        for seed, value in zip((42, 43, 44, 45), values):
            rows[f"{arm}/{seed}"] = {"arm": arm, "seed": seed, "name": names[arm][0], "objective": names[arm][1],
                                     "NDCG@10": value, "Recall@100": 0.9}
    return rows


def test_summary_carries_the_paired_statistics_under_its_json_keys(pq):
    summary = pq.summarize(_rows({"a": [0.60, 0.62, 0.64], "b": [0.58, 0.61, 0.62], "c": [0.61, 0.64, 0.65]}))
    c = summary["c"]
    assert c["seeds"] == [42, 43, 44] and c["n"] == 3 and c["ndcg10"] == [0.61, 0.64, 0.65]
    assert c["ndcg10_mean"] == pytest.approx(1.9 / 3) and c["recall100_mean"] == pytest.approx(0.9)
    assert c["diff_vs_a"] == pytest.approx([0.01, 0.02, 0.01])
    assert c["diff_vs_a_mean"] == pytest.approx(0.013333, abs=1e-6)
    assert c["diff_vs_a_sd"] == pytest.approx(0.005774, abs=1e-6)
    low, high = c["diff_vs_a_ci95"]
    assert low == pytest.approx(0.013333 - 0.014343, abs=1e-5) and high == pytest.approx(0.013333 + 0.014343, abs=1e-5)
    assert c["wins_vs_a"] == 3 and c["wins_vs_b"] == 3
    assert "diff_vs_a" not in summary["a"] and summary["a"]["wins_vs_b"] == 3


def test_verdict_distinguishes_means_from_noise(pq):
    noisy = pq.summarize(_rows({"a": [0.60, 0.62, 0.64], "b": [0.58, 0.61, 0.62], "c": [0.61, 0.64, 0.65]}))
    assert "met on the paired means by (c) retromae, not beyond seed noise" in pq.verdict(noisy)
    clear = pq.summarize(_rows({"a": [0.60, 0.62, 0.64], "b": [0.58, 0.61, 0.62], "c": [0.62, 0.641, 0.659]}))
    assert "beyond seed noise (95%) by (c) retromae" in pq.verdict(clear)
    lost = pq.summarize(_rows({"a": [0.60, 0.62, 0.64], "b": [0.58, 0.61, 0.62], "c": [0.59, 0.63, 0.63]}))
    assert "not met" in pq.verdict(lost)
    assert "not measured" in pq.verdict(pq.summarize(_rows({"a": [0.6, 0.6], "c": [0.7, 0.7]})))
    # above (a) but below (b), or above (b) but below (a): beating one baseline is not the goal
    below_b = pq.summarize(_rows({"a": [0.60, 0.62, 0.64], "b": [0.70, 0.72, 0.74], "c": [0.65, 0.66, 0.67]}))
    assert "not met" in pq.verdict(below_b)
    below_a = pq.summarize(_rows({"a": [0.70, 0.72, 0.74], "b": [0.60, 0.62, 0.64], "c": [0.65, 0.66, 0.67]}))
    assert "not met" in pq.verdict(below_a)


def test_summary_table_shows_both_baselines_and_the_verdict(pq):
    table = pq.summary_table(pq.summarize(_rows({"a": [0.60, 0.62], "b": [0.58, 0.61], "f": [0.61, 0.63]})))
    assert "minus (a), paired" in table and "minus (b), paired" in table
    assert "| (f) dupmae | dupmae | 42,43 | 0.6200 |" in table
    assert table.rstrip().endswith("(a 95% interval includes 0)")


def test_a_finished_runs_checkpoints_are_dropped_and_its_models_kept(pq, tmp_path):
    arm = tmp_path / "arms" / "c-retromae" / "seed-42"
    for stage in ("pretrain", "finetune"):
        for folder in ("checkpoint-100", "checkpoint-200", "final"):
            (arm / stage / folder).mkdir(parents=True)
            (arm / stage / folder / "model.safetensors").write_bytes(b"x")
    (arm / "finetune" / "train_examples.jsonl").write_text("{}\n")
    pq.drop_checkpoints(arm)
    left = sorted(str(p.relative_to(arm)) for p in arm.rglob("*") if p.is_file())
    assert left == ["finetune/final/model.safetensors", "finetune/train_examples.jsonl",
                    "pretrain/final/model.safetensors"]
    assert "keep_checkpoints" in pq._RUN_ONLY_SETTINGS  # not a setting that makes other results
