"""Objective specs: parsing, weights, implied MLM, defaults, incompatible combinations, options."""

from __future__ import annotations

import pytest

from retromem.errors import RetromemError
from retromem.pretrain.objective import ObjectivePlan, parse_objective_spec
from retromem.pretrain.objective_base import REGISTRY
from retromem.pretrain.objective_options import ObjectiveError, ObjectiveOptions, parse_submodels


def test_parse_names_and_weights():
    assert parse_objective_spec("retromae") == [("retromae", None)]
    assert parse_objective_spec(" MLM:1.0 + bow:0.5 ") == [("mlm", 1.0), ("bow", 0.5)]
    assert parse_objective_spec("mlm:0+bow:.5+retromae:2e-1") == [("mlm", 0.0), ("bow", 0.5), ("retromae", 0.2)]
    assert set(REGISTRY) == {"mlm", "retromae", "dupmae", "cotmae", "bow", "matryoshka"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty objective"),
        ("retromea", "did you mean 'retromae'"),
        ("retromae+", "empty part"),
        ("mlm:abc", "plain number"),
        ("mlm:-1", ">= 0"),
        ("mlm:nan", ">= 0"),
        ("retromae:", "leave out the ':'"),
        ("retromae:1_0", "plain number"),  # float() would read 10
        ("retromae:1e-400", "too small"),  # would be 0: the loss silently off
        ("bow:1e400", "too large"),
        ("bow+bow:2", "appears twice"),
    ],
)
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(ObjectiveError, match=message):
        parse_objective_spec(spec)


def test_errors_are_retromem_value_errors():
    with pytest.raises(RetromemError):
        ObjectivePlan("nope")
    with pytest.raises(ValueError):
        ObjectivePlan("nope")


def test_bottleneck_objectives_include_the_encoder_mlm():
    assert ObjectivePlan("retromae").spec == "mlm:1+retromae:1"
    assert ObjectivePlan("retromae+bow").spec == "mlm:1+retromae:1+bow:1"
    assert ObjectivePlan("mlm:1.0+bow:0.5").spec == "mlm:1+bow:0.5"
    assert ObjectivePlan("retromae+mlm:0.5").spec == "retromae:1+mlm:0.5"
    no_mlm = ObjectivePlan("bow+mlm:0")
    assert no_mlm.spec == "bow:1+mlm:0" and [o.name for o in no_mlm.objectives] == ["bow"]
    assert ObjectivePlan(no_mlm.spec).spec == no_mlm.spec, "the canonical spec round-trips"
    assert ObjectivePlan("mlm").spec == "mlm:1"
    with pytest.raises(ObjectiveError, match="nothing to train"):
        ObjectivePlan("mlm:0")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("retromae+dupmae", "dupmae already is retromae"),
        ("retromae+cotmae", "at most one decoder objective"),
        ("dupmae+cotmae", "at most one decoder objective"),
        ("matryoshka", "needs a bottleneck objective"),
        ("mlm+matryoshka", "needs a bottleneck objective"),
        ("bow:0+matryoshka", "needs a bottleneck objective"),  # a weight-0 bottleneck trains nothing
        ("retromae:0+matryoshka", "needs a bottleneck objective"),
    ],
)
def test_incompatible_combinations_are_refused(spec, message):
    with pytest.raises(ObjectiveError, match=message):
        ObjectivePlan(spec)


@pytest.mark.parametrize(
    "spec", ["cotmae+bow", "dupmae+bow", "retromae+bow+matryoshka", "cotmae+matryoshka", "bow+matryoshka"]
)
def test_allowed_combinations(spec):
    plan = ObjectivePlan(spec)
    assert {o.name for o in plan.objectives} == {"mlm", *spec.split("+")}


def test_a_weight_0_part_keeps_its_place_but_neither_trains_nor_sets_defaults():
    plan = ObjectivePlan("retromae:0+cotmae")  # one decoder trains: cotmae's
    assert [o.name for o in plan.objectives] == ["mlm", "cotmae"]
    assert (plan.options.decoder_mask_ratio, plan.options.decoder_layers) == (0.45, 2)
    assert plan.spec == "mlm:1+retromae:0+cotmae:1"
    assert ObjectivePlan(plan.spec).spec == plan.spec
    assert ObjectivePlan("mlm+bow:0").options.encoder_mask_ratio == 0.15  # bow's 30% does not apply


def test_defaults_follow_the_papers():
    assert ObjectivePlan("mlm").options.encoder_mask_ratio == 0.15
    def resolved(spec):
        o = ObjectivePlan(spec).options
        return o.encoder_mask_ratio, o.decoder_mask_ratio, o.decoder_layers

    assert resolved("retromae") == (0.3, 0.5, 1)
    assert resolved("cotmae") == (0.3, 0.45, 2)
    assert ObjectivePlan("mlm+bow").options.encoder_mask_ratio == 0.3
    assert ObjectivePlan("retromae", encoder_mask_ratio=0.4).options.encoder_mask_ratio == 0.4


def test_segment_lengths():
    assert ObjectivePlan("retromae").segment_length(128) == 126
    assert ObjectivePlan("cotmae").segment_length(128) == 252
    assert ObjectivePlan("cotmae").min_tokens == 4
    with pytest.raises(ObjectiveError, match="too short"):
        ObjectivePlan("mlm").segment_length(3)


def test_bad_options_are_refused():
    with pytest.raises(ObjectiveError, match="did you mean 'encoder_mask_ratio'"):
        ObjectivePlan("mlm", encoder_mask_rate=0.2)
    with pytest.raises(ObjectiveError, match="bow_decay"):
        ObjectivePlan("bow", bow_decay="linear")
    with pytest.raises(ObjectiveError, match="decoder_layers"):
        ObjectivePlan("retromae", decoder_layers=0)
    with pytest.raises(ObjectiveError, match="matryoshka_samples"):
        ObjectivePlan("retromae+matryoshka", matryoshka_samples=-1)


def test_bow_weight_decays_with_a_cosine():
    plan = ObjectivePlan("bow")
    bow = next(o for o in plan.objectives if o.name == "bow")
    factors = []
    for fraction in (0.0, 0.5, 1.0, 7.0):
        plan.set_progress(fraction)
        factors.append(bow.bottleneck_scale())
    assert factors == pytest.approx([1.0, 0.5, 0.0, 0.0])
    constant = ObjectivePlan("bow", bow_decay="none")
    constant.set_progress(0.9)
    assert next(o for o in constant.objectives if o.name == "bow").bottleneck_scale() == 1.0


def test_submodels_parse_and_round_trip():
    assert parse_submodels("3:384, 6x128") == [(3, 384), (6, 128)]
    with pytest.raises(ObjectiveError, match="layer:dim"):
        parse_submodels("3-384")
    assert ObjectiveOptions.from_dict({"whole_word_mask": None, "bow_decay": None}) == ObjectiveOptions()
    options = ObjectiveOptions.from_dict({"matryoshka_submodels": "2:32"})
    assert options.matryoshka_submodels == [(2, 32)]
    assert ObjectiveOptions.from_dict(options.to_dict()) == options
