"""The table of searchable hyperparameters: every entry is a search.space field, an override, a
with_values key, an Optuna suggestion and a parent-run param; the entries added to it are searched
end to end."""

import tomllib
from typing import get_args, get_origin

import optuna
import pytest

from benchmark import hparams, parent_run, spec, sweep
from benchmark.errors import SpecError
from benchmark.spec import EXPERIMENTS_DIR, parse_experiment

optuna.logging.set_verbosity(optuna.logging.WARNING)


def ci_raw(**space) -> dict:
    raw = tomllib.loads((EXPERIMENTS_DIR / "ci.toml").read_text())
    raw["search"]["space"].update(space)
    return raw


def example_range(entry: hparams.Hyperparameter):
    """A range or list of choices inside the entry's field's domain, as a spec file writes it."""
    if entry.kind == "float":
        return {"low": 0.01, "high": 0.1}
    if entry.kind == "int":
        return {"low": 1, "high": 3}
    model, _ = spec.SECTIONS[entry.section]
    field = model.model_fields[entry.name]
    if get_origin(field.annotation) is spec.Literal:
        return list(get_args(field.annotation))
    return [field.default, field.default + 1]


def trial_searching(entry: hparams.Hyperparameter) -> spec.TrialSpec:
    """A ci trial that searches the entry: two_phase with a searched depth, and lbfgs where only it searches it."""
    trial = parse_experiment(ci_raw()).resolve("vgg16", "top")
    strategy = trial.strategy.model_copy(update={"schedule": "two_phase", "head_epochs": 1})
    trial = trial.model_copy(update={"strategy": strategy})
    if entry.linear_probe == "only":
        trial = trial.model_copy(update={"training": trial.training.model_copy(update={"optimizer": "lbfgs"})})
    assert entry.applies(trial), entry.name
    return trial


def expected_shown(entry: hparams.Hyperparameter, searched) -> str:
    if entry.kind == "choices":
        return "searched " + ", ".join(str(choice) for choice in searched)
    return f"searched {searched['low']:g}..{searched['high']:g}" + (" (log)" if entry.log else "")


def inside(entry: hparams.Hyperparameter, value, searched) -> bool:
    return value in searched if entry.kind == "choices" else searched["low"] <= value <= searched["high"]


@pytest.mark.parametrize("entry", hparams.TABLE, ids=lambda entry: entry.name)
def test_every_entry_is_a_search_field_an_override_a_value_a_suggestion_and_a_param(entry):
    searched = example_range(entry)
    space = spec.SearchSpace.model_validate({entry.name: searched})
    assert getattr(space, entry.name) is not None
    assert spec.SearchSpaceOverride().model_dump().get(entry.name) is None  # optional, no default

    raw = ci_raw()
    raw["search"]["per_backbone"] = {"vgg16": {entry.name: searched}}
    experiment = parse_experiment(raw)
    assert getattr(experiment.search_space("vgg16"), entry.name) == getattr(space, entry.name)
    assert getattr(experiment.search_space("resnet50"), entry.name) != getattr(space, entry.name)

    trial_spec = trial_searching(entry)
    study = optuna.create_study(direction="maximize")
    values = sweep.suggest(study.ask(), trial_spec, space)
    assert inside(entry, values[entry.name], searched)
    fixed = values[entry.name] if entry.kind == "choices" else searched["high"]
    assert entry.suggest(optuna.trial.FixedTrial({entry.name: fixed}), trial_spec, getattr(space, entry.name)) == fixed

    changed = trial_spec.with_values(**{entry.name: fixed})
    assert getattr(getattr(changed, entry.section), entry.name) == fixed
    assert changed.params()[entry.field] == str(fixed)  # its field is its MLflow param
    assert parent_run.searched_params(trial_spec, space)[entry.field] == expected_shown(entry, searched)


def test_with_values_takes_the_tables_names_and_refuses_others():
    trial = parse_experiment(ci_raw()).resolve("vgg16", "top")
    assert trial.with_values(learning_rate=None, unfreeze=None) == trial
    assert trial.with_values(learning_rate=0.002, unfreeze=3).strategy.unfreeze == 3
    with pytest.raises(TypeError, match="unknown hyperparameters \\['learning_rat'\\]"):
        trial.with_values(learning_rat=0.002)


def test_the_existing_searches_keep_their_optuna_names_and_order():
    trial = parse_experiment(ci_raw()).resolve("vgg16", "top")
    trial = trial.model_copy(update={"strategy": trial.strategy.model_copy(update={"schedule": "two_phase", "head_epochs": 1})})
    space = spec.SearchSpace.model_validate({"dropout": {"low": 0.0, "high": 0.5}, "dense_units": [16, 64],
                                             "weight_decay": {"low": 1e-3, "high": 1.0},
                                             "finetune_lr_scale": {"low": 0.01, "high": 0.5}})
    study = optuna.create_study(direction="maximize")
    assert list(sweep.suggest(study.ask(), trial, space)) == [
        "learning_rate", "unfreeze", "dropout", "dense_units", "weight_decay", "finetune_lr_scale"]


def test_an_unset_new_entry_leaves_the_fingerprinted_dump_as_it_was():
    dumped = spec.SearchSpace().model_dump(mode="json")
    assert set(dumped) == hparams.DUMPED_WHEN_UNSET
    assert dumped["dropout"] is None  # an old entry, unset: still there, as old fingerprints hash it


def sampled(experiment: spec.ExperimentSpec, backbone: str, strategy: str, trials: int = 6) -> list[dict]:
    """What the sweep's seeded sampler asks for in `trials` trials of one pair."""
    trial_spec, space = experiment.resolve(backbone, strategy), experiment.search_space(backbone, strategy)
    study = optuna.create_study(sampler=sweep.make_sampler(experiment.search), direction="maximize")
    values = []
    for number in range(trials):
        trial = study.ask()
        values.append(sweep.suggest(trial, trial_spec, space))
        study.tell(trial, number % 3)
    return values


def test_label_smoothing_is_searched_on_a_linear_scale():
    experiment = parse_experiment(ci_raw(label_smoothing={"low": 0.0, "high": 0.2}))
    trial_spec, space = experiment.resolve("vgg16", "frozen"), experiment.search_space("vgg16", "frozen")
    smoothings = [values["label_smoothing"] for values in sampled(experiment, "vgg16", "frozen", trials=8)]
    assert all(0.0 <= s <= 0.2 for s in smoothings) and len(set(smoothings)) == 8
    assert trial_spec.with_values(label_smoothing=smoothings[0]).training.label_smoothing == smoothings[0]
    assert parent_run.searched_params(trial_spec, space) == {
        "training.learning_rate": "searched 0.001..0.01 (log)", "training.label_smoothing": "searched 0..0.2"}
    study = optuna.create_study()
    sweep.suggest(study.ask(), trial_spec, space)
    assert study.trials[0].distributions["label_smoothing"] == optuna.distributions.FloatDistribution(0.0, 0.2)


def test_an_lbfgs_sweep_refuses_to_search_label_smoothing():
    raw = tomllib.loads((EXPERIMENTS_DIR / "transfer-probe.toml").read_text())
    raw["strategies"]["frozen"]["space"] = {"label_smoothing": {"low": 0.0, "high": 0.1}}
    with pytest.raises(SpecError) as caught:
        parse_experiment(raw)
    assert caught.value.problems == [
        "strategies.frozen.space.label_smoothing: the lbfgs solver has no label_smoothing; search l2 instead"]


def test_pooling_is_searched_among_its_choices():
    experiment = parse_experiment(ci_raw(pooling={"choices": ["avg", "max"]}))
    trial_spec, space = experiment.resolve("vgg16", "top"), experiment.search_space("vgg16", "top")
    assert space.pooling == ["avg", "max"]
    poolings = [values["pooling"] for values in sampled(experiment, "vgg16", "top", trials=10)]
    assert set(poolings) == {"avg", "max"}
    assert [trial_spec.with_values(pooling=p).head.pooling for p in poolings] == poolings
    assert parent_run.searched_params(trial_spec, space)["head.pooling"] == "searched avg, max"
    study = optuna.create_study()
    sweep.suggest(study.ask(), trial_spec, space)
    assert study.trials[0].distributions["pooling"] == optuna.distributions.CategoricalDistribution(["avg", "max"])


def test_choices_are_written_as_a_table_or_a_bare_list():
    as_table = parse_experiment(ci_raw(pooling={"choices": ["max"]}, dense_units={"choices": [64, 128]}))
    as_list = parse_experiment(ci_raw(pooling=["max"], dense_units=[64, 128]))
    assert as_table.search_space("vgg16") == as_list.search_space("vgg16")
    assert as_list.search_space("vgg16").dense_units == [64, 128]


def test_an_lbfgs_probe_searches_pooling_with_the_l2_strength():
    raw = tomllib.loads((EXPERIMENTS_DIR / "transfer-probe.toml").read_text())
    raw["search"]["space"]["pooling"] = {"choices": ["avg", "max"]}
    experiment = parse_experiment(raw)
    values = sampled(experiment, experiment.backbones[0], "frozen", trials=1)[0]
    assert list(values) == ["l2", "pooling"]


@pytest.mark.slow
def test_trials_that_search_pooling_train_on_features_pooled_their_way(tmp_path, monkeypatch):
    from benchmark import cache
    from benchmark.data import load_dataset
    from benchmark.trial import prepare

    monkeypatch.setenv("BENCHMARK_CACHE_DIR", str(tmp_path))
    raw = ci_raw(pooling={"choices": ["avg", "max"]})
    raw["backbone"]["image_size"] = 64  # VGG16's last feature map is 2x2 (at 32 px, 1x1: avg and max pool alike)
    raw["data"]["subset"] = {"train": 100, "validation": 50, "test": 50}
    frozen = parse_experiment(raw).resolve("vgg16", "frozen")
    data = load_dataset(frozen.data)
    cached = {}
    for pooling in ("avg", "max", "avg"):
        trial_spec = frozen.with_values(pooling=pooling)
        prepared = prepare(trial_spec, data)
        cached.setdefault(pooling, []).append(cache.pooled_features(trial_spec, prepared.built, data))
    (avg, avg_again), (pooled_max,) = cached["avg"], cached["max"]
    assert pooled_max.path != avg.path and avg_again.path == avg.path
    assert (avg.status, pooled_max.status, avg_again.status) == ("miss", "miss", "hit")
    assert not (pooled_max.data.x_train == avg.data.x_train).all()
    assert (avg_again.data.x_train == avg.data.x_train).all()
