"""A trial's plan: what each phase trains on, decided once from the spec (and the built model's cut)."""

import pytest

from benchmark.errors import BenchmarkError
from benchmark.plan import Phase, builds_head_only, plan_trial
from benchmark.spec import load_experiment


def ci_spec(strategy="frozen", sections: dict | None = None, **values):
    """The ci experiment's vgg16 trial, with values (TrialSpec.with_values) and section updates."""
    spec = load_experiment("ci").resolve("vgg16", strategy).with_values(**values)
    for section, updates in (sections or {}).items():
        spec = spec.model_copy(update={section: getattr(spec, section).model_validate(
            {**getattr(spec, section).model_dump(), **updates})})
    return spec


def two_phase(unfreeze=3, **sections):
    return ci_spec("top", {"strategy": {"schedule": "two_phase", "head_epochs": 2, "epochs": 4}, **sections},
                   unfreeze=unfreeze, learning_rate=0.01, finetune_lr_scale=0.1)


def test_a_frozen_trial_trains_only_a_head_on_cached_features_and_is_tested_there():
    plan = plan_trial(ci_spec(learning_rate=0.01))
    assert plan.phases == (Phase(0, 0.01, 3, "features"),)
    assert plan.solver == "keras" and plan.builds_head_only and not plan.trains_backbone
    assert plan.test_inputs == "features" and plan.no_features is None
    assert plan.no_activations == "no layer of the backbone trains"


def test_a_top_n_trial_trains_the_part_above_its_cut_once_the_cut_is_known():
    plan = plan_trial(ci_spec("top", unfreeze=2, learning_rate=0.01))
    assert plan.phases == (Phase(2, 0.01, 3, "activations"),) and plan.trains_backbone
    assert not plan.builds_head_only and plan.no_features == "the backbone trains (unfreeze > 0) in every epoch"
    assert plan.at_cut("block5_conv1").cut == "block5_conv1" and plan.at_cut("block5_conv1").test_inputs == "activations"
    through = plan.at_cut(None)  # no block boundary below the trainable layers
    assert through.phases == (Phase(2, 0.01, 3, "images"),) and through.test_inputs == "images"
    assert through.no_activations == "no block boundary below the trainable layers"


def test_two_phase_is_the_head_at_the_learning_rate_on_features_then_the_unfrozen_layers_at_its_fraction():
    plan = plan_trial(two_phase())
    assert plan.phases == (Phase(0, 0.01, 2, "features"), Phase(3, pytest.approx(0.001), 4, "activations"))
    assert plan.trains_backbone and not plan.builds_head_only and plan.test_inputs == "activations"
    augmented = plan_trial(two_phase(data={"augment": {"flip": True, "crop_padding": 0}}))
    assert [p.inputs for p in augmented.phases] == ["images", "images"]
    everything = plan_trial(two_phase(unfreeze="all"))
    assert [p.inputs for p in everything.phases] == ["features", "images"]


def test_one_phase_gets_training_epochs_unless_the_strategy_sets_its_own():
    assert plan_trial(ci_spec("top", unfreeze=3)).phases[0].epochs == 3
    assert plan_trial(ci_spec("top", {"strategy": {"epochs": 7}}, unfreeze=3)).phases[0].epochs == 7


def test_the_linear_probe_is_its_own_solver_and_refuses_what_it_cannot_fit():
    probe = plan_trial(ci_spec(sections={"training": {"optimizer": "lbfgs"}}))
    assert probe.solver == "lbfgs" and probe.phases[0].inputs == "features"
    with pytest.raises(BenchmarkError, match=r"training.feature_cache: .*lbfgs"):
        plan_trial(ci_spec(sections={"training": {"optimizer": "lbfgs", "feature_cache": "off"}}))


def test_a_depth_still_to_search_is_not_planned():
    spec = ci_spec("top").model_copy(update={"strategy": ci_spec("top").strategy.model_copy(update={"unfreeze": "search"})})
    with pytest.raises(ValueError, match="resolve unfreeze"):
        plan_trial(spec)
    assert not builds_head_only(spec) and builds_head_only(ci_spec())


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({}, None),
        ({"training": {"feature_cache": "off"}}, "training.feature_cache = off"),
        ({"strategy": {"unfreeze": 2}}, "the backbone trains"),
        ({"strategy": {"unfreeze": 2, "schedule": "two_phase", "head_epochs": 1}}, None),  # its head phase
        ({"strategy": {"unfreeze": "all"}}, "the backbone trains"),
        ({"strategy": {"train_batchnorm": True}}, "BatchNorm"),
        ({"data": {"augment": {"flip": True, "crop_padding": 0}}}, "augmentation"),
        ({"data": {"augment": {"flip": False, "crop_padding": 4}}}, "augmentation"),
        ({"data": {"augment": {"flip": True, "crop_padding": 4}}, "training": {"feature_views": 4}}, None),
    ],
)
def test_only_head_only_phases_on_unchanging_images_train_on_cached_features(changes, reason):
    why = plan_trial(ci_spec(sections=changes)).no_features
    assert why == reason if reason is None else reason in why


@pytest.mark.parametrize("changes, reason", [
    ({}, None),
    ({"strategy": {"unfreeze": 0}}, "no layer of the backbone trains"),
    ({"strategy": {"unfreeze": "all"}}, "the whole backbone trains"),
    ({"training": {"feature_cache": "off"}}, "feature_cache = off"),
    ({"strategy": {"train_batchnorm": True}}, "BatchNorm"),
    ({"data": {"augment": {"flip": True}}}, "augmentation"),
])
def test_only_top_n_phases_on_unchanging_images_train_on_a_cuts_activations(changes, reason):
    why = plan_trial(ci_spec("top", changes, unfreeze=2)).no_activations
    assert why == reason if reason is None else reason in why
