"""The KILT metrics: hand-computed cases for each, gold against itself, and values pinned from KILT's own scripts.

The pinned values come from running KILT's official ``kilt/eval_downstream.py`` and ``kilt/eval_retrieval.py``
(facebookresearch/KILT; eval_retrieval.py at commit c730838c75612853421f8a9aaefd8ccb1f50b4f0, eval_downstream.py
at 847377e3b79be224fc23d30560056d3db9514089, kilt_utils.py at 2734b46bbc9b7d7a4d8c8bc8320e886aa38e9e2e, with
rouge 1.0.1) once by hand, outside the project, on the files :func:`perturb` writes (seed 14). They are
never imported here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retromem.data.kilt import KiltExample, Provenance, read_kilt_task
from retromem.errors import ConfigError, DataError
from retromem.eval.kilt import (
    KiltPrediction,
    answer_scores,
    normalize_answer,
    read_kilt_predictions,
    rouge_l,
    score_kilt,
    token_f1,
    write_kilt_predictions,
)

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "kilt" / "official"
SEED = 14


def example(evidence, answers=("x",), qid="q"):
    return KiltExample(id=qid, input="?", answers=tuple(answers),
                       evidence=tuple(tuple(Provenance(p) for p in ev) for ev in evidence), line=1)


def scores_of(ex, pages=(), answer=""):
    return score_kilt([ex], [KiltPrediction(ex.id, answer, tuple(pages))], ks=(1, 2, 5)).per_query[ex.id]


# ---- retrieval, by hand ----

def test_r_precision_is_per_evidence_set_max_over_sets():
    ex = example([["A", "B"], ["C"]])
    assert scores_of(ex, ["A", "X"])["R-Prec"] == 0.5       # set {A,B}: 1 of the first 2
    assert scores_of(ex, ["X", "C"])["R-Prec"] == 0.0       # set {C}: first 1 is X; {A,B}: none
    assert scores_of(ex, ["C", "A"])["R-Prec"] == 1.0       # set {C} complete within its R=1
    assert scores_of(ex, ["B", "A", "C"])["R-Prec"] == 1.0  # set {A,B} in the first 2


def test_recall_precision_count_an_evidence_set_once_at_its_last_page():
    ex = example([["A", "B"], ["C"]])
    s = scores_of(ex, ["A", "X", "B", "C"])
    # rank: A -> partial(set0), X -> False, B -> set0 complete: True (partial removed), C -> True
    # => [False, True, True]
    assert s["Recall@1"] == 0.0 and s["Precision@1"] == 0.0 and s["Success@1"] == 0.0
    assert s["Recall@2"] == 0.5 and s["Precision@2"] == 0.5 and s["Success@2"] == 1.0
    assert s["Recall@5"] == 1.0 and s["Precision@5"] == 2 / 5


def test_repeated_pages_are_counted_once():
    ex = example([["A"], ["B"]])
    s = scores_of(ex, ["A", "A", "A", "B"])
    assert s["R-Prec"] == 1.0 and s["Recall@2"] == 1.0 and s["Precision@2"] == 1.0


def test_empty_provenance_scores_zero_and_duplicate_sets_count_once():
    ex = example([["A"], ["A"], ["B", "C"]])
    s = scores_of(ex, [])
    assert all(s[m] == 0.0 for m in ("R-Prec", "Recall@5", "Precision@1", "Success@5"))
    s = scores_of(ex, ["A"])
    assert s["Recall@5"] == 0.5   # two distinct sets: {A} and {B, C}


def test_provenance_without_paragraph_ids_scores_on_pages(tmp_path):
    task = tmp_path / "t.jsonl"
    task.write_text(json.dumps({"id": "q", "input": "?", "output": [
        {"answer": "x", "provenance": [{"wikipedia_id": "A", "title": "a"}]},
        {"answer": "x", "provenance": [{"wikipedia_id": "A", "start_paragraph_id": 3, "end_paragraph_id": 4}]},
        {"answer": "x", "provenance": [{"title": "no page id"}]}]}) + "\n")
    ex = read_kilt_task(task)[0]
    assert ex.evidence[0] == (Provenance("A", "a"),) and ex.evidence[1] == (Provenance("A", None, 3, 4),)
    s = scores_of(ex, ["A"])
    # the first two sets are one page: one set; the third has no page id (KILT: the empty id): it never completes
    assert s["R-Prec"] == 1.0 and s["Recall@1"] == 0.5 and s["Precision@1"] == 1.0


# ---- answers, by hand ----

def test_answers_differing_in_articles_and_punctuation():
    assert normalize_answer("The  Carolina Panthers!") == "carolina panthers"
    s = answer_scores("the Carolina Panthers.", ["Carolina Panthers"])
    assert s["accuracy"] == 0.0 and s["em"] == 1.0 and s["f1"] == 1.0
    assert s["rougel"] < 1.0   # ROUGE-L is computed without normalisation
    assert answer_scores("Carolina Panthers", [" Carolina Panthers "])["accuracy"] == 1.0   # gold stripped


def test_several_gold_answers_take_the_best():
    s = answer_scores("Denver Broncos", ["Carolina Panthers", "the Broncos of Denver", "Denver"])
    assert s["em"] == 0.0
    assert s["f1"] == pytest.approx(max(token_f1("Denver Broncos", "broncos of denver"), 2 / 3))
    assert token_f1("Denver Broncos", "Broncos of Denver") == pytest.approx(2 * (1 * 2 / 3) / (1 + 2 / 3))
    assert s["rougel"] == pytest.approx(max(rouge_l("Denver Broncos", g) for g in
                                            ["Carolina Panthers", "the Broncos of Denver", "Denver"]))


def test_rouge_l_by_hand():
    # LCS("a b c d", "a c d e") = 3: P = R = 3/4
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75, abs=1e-6)
    assert rouge_l("", "a") == 0.0 and rouge_l("...", "a b") == 0.0


def test_empty_predicted_answer_and_kilt_variants():
    ex = example([["A"]], answers=("Paris",))
    s = scores_of(ex, ["A"], answer="   ")
    assert all(s[m] == 0.0 for m in ("accuracy", "em", "f1", "rougel", "kilt_em"))
    right_page = scores_of(ex, ["A"], answer="paris")
    assert right_page["em"] == 1.0 and right_page["kilt_em"] == 1.0 and right_page["kilt_ac"] == 0.0
    wrong_page = scores_of(ex, ["B", "A"], answer="Paris")
    assert wrong_page["accuracy"] == 1.0 and wrong_page["kilt_ac"] == 0.0 and wrong_page["kilt_rl"] == 0.0


def test_means_are_over_all_examples():
    a, b = example([["A"]], qid="a"), example([["B"]], qid="b")
    scores = score_kilt([a, b], [KiltPrediction("a", "x", ("A",)), KiltPrediction("b", "", ("X",))])
    assert scores.mean["R-Prec"] == 0.5 and scores.mean["em"] == 0.5 and scores.with_answers == 1
    assert scores.num_examples == 2 and set(scores.per_query) == {"a", "b"}


# ---- ids and files ----

def test_missing_unknown_and_duplicate_ids(tmp_path):
    ex = [example([["A"]], qid="a"), example([["B"]], qid="b")]
    with pytest.raises(DataError, match="no prediction for id 'b' \\(line 1 of the task\\)"):
        score_kilt(ex, [KiltPrediction("a")])
    with pytest.raises(DataError, match="'c' is not in the task") as err:
        score_kilt(ex, [KiltPrediction("a"), KiltPrediction("b"), KiltPrediction("c", line=3)], where="p.jsonl")
    assert str(err.value).startswith("p.jsonl:3:")
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "output": [{"answer": ""}]}\n{"id": "a", "output": [{"answer": ""}]}\n')
    with pytest.raises(DataError, match="'a' is predicted twice: on line 1 and on line 2"):
        read_kilt_predictions(path)
    path.write_text('{"id": "a", "output": [{"answer": "1"}, {"answer": "2"}]}\n')
    with pytest.raises(DataError, match="exactly one object"):
        read_kilt_predictions(path)
    with pytest.raises(ConfigError):
        score_kilt(ex, [], ks=(0,))


def test_predictions_round_trip(tmp_path):
    predictions = [KiltPrediction("a", "x", ("1", "2")), KiltPrediction("b", "", ())]
    path = write_kilt_predictions(tmp_path / "p.jsonl", predictions, titles={"1": "One"})
    assert read_kilt_predictions(path) == predictions
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {"id": "a", "output": [{"answer": "x", "provenance": [{"wikipedia_id": "1", "title": "One"},
                                                                           {"wikipedia_id": "2"}]}]}
    assert read_kilt_predictions(path)[1].line == 2


# ---- official files ----

def gold_predictions(path: Path) -> list[dict]:
    """The gold file as a predictions file: each record's first output, its answer and provenance pages."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        gold = json.loads(line)
        first = gold["output"][0]
        pages = [{"wikipedia_id": p["wikipedia_id"]} for p in first.get("provenance", [])]
        rows.append({"id": gold["id"], "output": [{"answer": first.get("answer", ""), "provenance": pages}]})
    return rows


def perturb(path: Path, seed: int = SEED) -> list[dict]:
    """Gold made into a flawed system's predictions, from ``seed`` alone (only ``random()`` draws, which Python
    keeps stable): some answers wrong, reworded (articles, punctuation, case), cut or empty; some provenance
    reordered, partly or wholly wrong, repeated, padded with distractors or empty."""
    import random

    rng = random.Random(seed)
    rows = gold_predictions(path)
    all_pages = sorted({p["wikipedia_id"] for r in rows for p in r["output"][0]["provenance"]})
    answers = [r["output"][0]["answer"] for r in rows]

    def pick(values):
        return values[int(rng.random() * len(values))]

    for row in rows:
        out = row["output"][0]
        a = rng.random()
        if a < 0.25:
            out["answer"] = pick(answers)                         # another question's answer
        elif a < 0.35:
            out["answer"] = "The " + out["answer"].lower() + "."   # differs in article, case, punctuation
        elif a < 0.45:
            out["answer"] = " ".join(out["answer"].split()[: max(1, len(out["answer"].split()) // 2)])
        elif a < 0.5:
            out["answer"] = ""
        pages = [p["wikipedia_id"] for p in out["provenance"]]
        r = rng.random()
        if r < 0.15:
            pages = pages[::-1] + [pick(all_pages)]                 # reordered, a distractor after
        elif r < 0.3:
            pages = [pick(all_pages)] + pages                       # a distractor first
        elif r < 0.45 and pages:
            pages[int(rng.random() * len(pages))] = pick(all_pages)  # one page wrong
        elif r < 0.55:
            pages = [pick(all_pages) for _ in range(3)]             # all wrong
        elif r < 0.62:
            pages = []
        elif r < 0.7 and pages:
            pages = [pages[0], pages[0]] + pages[1:]                # a page repeated
        out["provenance"] = [{"wikipedia_id": p} for p in pages]
    return rows


def _score_rows(path: Path, rows: list[dict], tmp_path: Path):
    pred_path = tmp_path / f"{path.stem}-pred.jsonl"
    pred_path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return score_kilt(read_kilt_task(path), read_kilt_predictions(pred_path), ks=(1, 5)).mean


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hotpotqa-dev-kilt", "wow-dev-kilt"])
def test_gold_against_itself_is_one_everywhere(name, tmp_path):
    path = OFFICIAL / f"{name}.jsonl"
    mean = _score_rows(path, gold_predictions(path), tmp_path)
    for metric in ("R-Prec", "Recall@5", "Precision@1", "Success@5", "accuracy", "em", "kilt_ac", "kilt_em"):
        assert mean[metric] == 1.0, metric
    # ROUGE-L's F of identical texts is 1 - 5e-9 (the rouge package's epsilon), as KILT's script prints it
    assert mean["rougel"] == mean["kilt_rl"] == pytest.approx(1.0, abs=1e-8)
    # F1 is 1.0 except where a gold answer normalises to nothing (HotpotQA has one: F1 0, as in KILT's script)
    assert mean["f1"] == mean["kilt_f1"] == pytest.approx(GOLD_F1[name], abs=1e-12)


GOLD_F1 = {"hotpotqa-dev-kilt": 0.9998214285714285, "wow-dev-kilt": 1.0}   # KILT's eval_downstream.py, gold vs gold


# What KILT's official scripts printed for perturb(path, seed=14) (eval_downstream.py: downstream, kilt and
# retrieval Rprec/recall@5; eval_retrieval.py --ks 1,5: precision@1, precision@5, success_rate@5).
OFFICIAL_VALUES = {
    "hotpotqa-dev-kilt": {
        "accuracy": 0.53125, "em": 0.6298214285714285, "f1": 0.6705008953979755, "rougel": 0.600549345431295,
        "KILT-accuracy": 0.28535714285714286, "KILT-em": 0.3392857142857143, "KILT-f1": 0.3608362403996774,
        "KILT-rougel": 0.32232151375351425, "Rprec": 0.6848214285714286, "recall@5": 0.7117857142857142,
        "precision@1": 0.5366071428571428, "precision@5": 0.14235714285715076, "success_rate@5": 0.7117857142857142},
    "wow-dev-kilt": {
        "accuracy": 0.5062213490504257, "em": 0.6051080550098232, "f1": 0.6844475208180547,
        "rougel": 0.6689828174193381, "KILT-accuracy": 0.2730844793713163, "KILT-em": 0.32481990831696134,
        "KILT-f1": 0.3653518165251896, "KILT-rougel": 0.3571986242598285, "Rprec": 0.5275049115913556,
        "recall@5": 0.679109364767518, "precision@1": 0.5275049115913556, "precision@5": 0.13582187295349868,
        "success_rate@5": 0.679109364767518},
}
_NAMES = {"Rprec": "R-Prec", "recall@5": "Recall@5", "precision@1": "Precision@1", "precision@5": "Precision@5",
          "success_rate@5": "Success@5", "accuracy": "accuracy", "em": "em", "f1": "f1", "rougel": "rougel",
          "KILT-accuracy": "kilt_ac", "KILT-em": "kilt_em", "KILT-f1": "kilt_f1", "KILT-rougel": "kilt_rl"}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OFFICIAL_VALUES))
def test_perturbed_predictions_match_the_official_scripts(name, tmp_path):
    path = OFFICIAL / f"{name}.jsonl"
    mean = _score_rows(path, perturb(path), tmp_path)
    expected = OFFICIAL_VALUES[name]
    assert expected
    for official, ours in _NAMES.items():
        assert mean[ours] == pytest.approx(expected[official], abs=1e-12), official
