"""Specs: the shipped experiments validate; every kind of bad spec is reported, all at once."""

import copy
import tomllib
from pathlib import Path

import pytest

from benchmark import spec
from benchmark.errors import BenchmarkError, SpecError
from benchmark.spec import EXPERIMENTS_DIR, load_experiment, parse_experiment

SHIPPED = ["ci", "ci-transfer", "quick", "paper", "sample", "transfer"]


def ci_raw() -> dict:
    return tomllib.loads((EXPERIMENTS_DIR / "ci.toml").read_text())


def problems_of(raw: dict, tmp_path: Path) -> list[str]:
    import tomllib  # noqa: F401  (raw is already parsed; write it back through a file to test the loader)

    with pytest.raises(SpecError) as caught:
        parse_experiment(raw, source=str(tmp_path / "bad.toml"))
    return caught.value.problems


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_experiments_validate(name):
    spec = load_experiment(name)
    assert spec.name == name
    for backbone in spec.backbones:
        for strategy in spec.strategies:
            trial = spec.resolve(backbone, strategy)
            assert trial.backbone.name == backbone


def test_ci_is_tiny_and_offline():
    spec = load_experiment("ci")
    assert spec.data.source == "synthetic" and spec.backbone.weights == "none"
    assert spec.backbone.image_size == 32 and spec.training.epochs <= 3


def test_relative_data_dir_is_relative_to_the_spec_file(tmp_path):
    (tmp_path / "specs").mkdir()
    spec_file = tmp_path / "specs" / "mine.toml"
    text = (EXPERIMENTS_DIR / "ci.toml").read_text().replace('source = "synthetic"', 'source = "dir"\ndir = "../data"')
    spec_file.write_text(text)
    assert load_experiment(spec_file).data.dir == (tmp_path / "data").resolve()


def test_transfer_needs_no_download():
    spec = load_experiment("transfer")
    assert spec.data.source == "sample" and spec.backbone.weights == "imagenet"
    assert all(name.startswith("efficientnetlite") for name in spec.backbones)


def test_paper_is_the_published_setting():
    spec = load_experiment("paper")
    assert spec.backbone.image_size == 224 and spec.backbone.weights == "imagenet"
    assert set(spec.backbones) == {"vgg16", "resnet50", "mobilenetv2", "densenet201", "efficientnetv2l"}
    assert spec.data.subset.train is None  # the full data set


def test_every_problem_is_listed_at_once_with_file_and_field(tmp_path):
    raw = ci_raw()
    raw["training"]["epochs"] = -1
    raw["training"]["optimiser"] = "adam"  # misspelt
    raw["search"]["space"]["learning_rate"] = {"low": 1e-2, "high": 1e-4}
    raw["head"]["dropout"] = "lots"
    problems = problems_of(raw, tmp_path)
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    assert "training.epochs" in text and "greater than or equal to 1" in text
    assert "training.optimiser: unknown field" in text and "optimizer" in text  # lists the allowed fields
    assert "search.space.learning_rate" in text and "empty range" in text
    assert "head.dropout" in text
    error = SpecError(str(tmp_path / "bad.toml"), problems)
    assert all(line.startswith(str(tmp_path / "bad.toml")) for line in str(error).splitlines())


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda r: r.update(backbones=["resnet5"]), ["unknown backbone 'resnet5'", "resnet50"]),
        (lambda r: r.update(backbones=["xception"]), ["image_size", "71"]),
        (lambda r: r["data"].update(source="ftp"), ["data.source", "'keras'"]),
        (lambda r: r["data"].update(validation_fraction=1.5), ["data.validation_fraction", "less than 1"]),
        (lambda r: r["search"]["space"].update(unfreeze={"low": 5, "high": 2}), ["search.space.unfreeze", "empty range"]),
        (lambda r: r["search"]["space"].update(learning_rate={"low": 0, "high": 1e-3}), ["learning_rate", "low > 0"]),
        (lambda r: r["strategies"]["top"].update(schedule="two_phase"), ["strategies.top", "head_epochs"]),
        (lambda r: r["strategies"]["frozen"].update(unfreeze="some"), ["strategies.frozen.unfreeze"]),
        (lambda r: r.update(strategies={}), ["strategies", "at least 1"]),
        (lambda r: r.pop("name"), ["name: required field is missing"]),
        (lambda r: r.update(backbone_overrides={"densenet121": {"image_size": 64}}), ["backbone_overrides.densenet121", "not one of"]),
        (lambda r: r["data"].update(source="dir"), ["data", "dir"]),
    ],
)
def test_each_kind_of_spec_error(tmp_path, mutate, expected):
    raw = copy.deepcopy(ci_raw())
    mutate(raw)
    text = "\n".join(problems_of(raw, tmp_path))
    for fragment in expected:
        assert fragment in text, text


def test_toml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text('name = "x"\nbackbones = ["vgg16"\n')
    with pytest.raises(SpecError) as caught:
        load_experiment(bad)
    assert str(bad) in str(caught.value) and "line" in str(caught.value)


def test_unknown_experiment_lists_the_known_ones():
    with pytest.raises(BenchmarkError) as caught:
        load_experiment("qick")
    assert "unknown experiment 'qick'" in str(caught.value) and "quick" in str(caught.value)


def test_resolve_applies_overrides_and_data_dir(tmp_path):
    quick = load_experiment("quick")
    assert quick.resolve("mobilenetv2").backbone.image_size == 96
    assert quick.resolve("resnet50").backbone.image_size == 64
    assert quick.search_space("vgg16").unfreeze.high == 13
    trial = load_experiment("ci").resolve("vgg16", "frozen", data_dir=tmp_path)
    assert trial.data.source == "dir" and trial.data.dir == tmp_path
    with pytest.raises(BenchmarkError, match="unknown strategy 'nope'.*frozen, top"):
        load_experiment("ci").resolve("vgg16", "nope")
    with pytest.raises(BenchmarkError, match="not in experiment 'ci'"):
        load_experiment("ci").resolve("densenet121")


def test_params_are_flat_stable_names():
    trial = load_experiment("ci").resolve("vgg16", "top").with_values(learning_rate=0.002, unfreeze=3)
    params = trial.params()
    assert params["training.learning_rate"] == "0.002"
    assert params["strategy.unfreeze"] == "3"
    assert params["backbone.name"] == "vgg16" and params["strategy_name"] == "top"
    assert {"data.source", "head.dropout", "training.batch_size", "data.subset.test"} <= set(params)
    assert all(isinstance(v, str) for v in params.values())


def test_with_values_validates():
    trial = load_experiment("ci").resolve("vgg16", "frozen")
    assert trial.with_values(dropout=0.3).head.dropout == 0.3
    assert trial.with_values().training.learning_rate == trial.training.learning_rate
    with pytest.raises(Exception):
        trial.with_values(learning_rate=-1.0)


def test_a_strategy_overrides_the_search_space_trials_and_epochs():
    raw = ci_raw()
    raw["search"]["per_backbone"] = {"vgg16": {"unfreeze": {"low": 1, "high": 13}, "learning_rate": {"low": 1e-3, "high": 1e-2}}}
    raw["strategies"]["top"].update(epochs=7, trials=2, space={"learning_rate": {"low": 1e-5, "high": 1e-4},
                                                               "weight_decay": {"low": 0.1, "high": 10.0}})
    spec = parse_experiment(raw)
    top, frozen = spec.search_space("vgg16", "top"), spec.search_space("vgg16", "frozen")
    assert (top.learning_rate.low, top.learning_rate.high) == (1e-5, 1e-4)  # the strategy's, over per_backbone's
    assert (top.unfreeze.low, top.unfreeze.high) == (1, 13)  # per_backbone's, where the strategy is silent
    assert top.weight_decay.high == 10.0 and frozen.weight_decay is None
    assert (frozen.learning_rate.low, frozen.learning_rate.high) == (1e-3, 1e-2)
    trial = spec.resolve("vgg16", "top").with_values(unfreeze=2, weight_decay=0.5)
    assert trial.strategy.trials == 2 and trial.training.weight_decay == 0.5
    from benchmark.plan import schedule

    assert schedule(trial) == [(2, trial.training.learning_rate, 7)]
    assert schedule(spec.resolve("vgg16", "frozen")) == [(0, spec.training.learning_rate, spec.training.epochs)]


def test_a_strategys_unknown_field_is_named(tmp_path):
    raw = ci_raw()
    raw["strategies"]["top"]["space"] = {"learning_rat": {"low": 1e-5, "high": 1e-4}}
    problems = problems_of(raw, tmp_path)
    assert any(p.startswith("strategies.top.space.learning_rat: unknown field") and "learning_rate" in p for p in problems)


def every_table_path(table: dict, prefix: tuple = ()):
    for key, value in table.items():
        yield prefix + (key,)
        if isinstance(value, dict):
            yield from every_table_path(value, prefix + (key,))


def test_no_spec_error_names_a_class_only_the_keys_a_user_writes():
    """Every field of a real spec, and the tables it may add, given a value of each wrong shape."""
    from benchmark import spec as module

    classes = {name for name, value in vars(module).items() if isinstance(value, type)}
    base = tomllib.loads((EXPERIMENTS_DIR / "transfer.toml").read_text())
    added = [("head",), ("training",), ("search", "space", "dropout"), ("backbone_overrides", "efficientnetlite0"),
             ("search", "per_backbone", "efficientnetlite0"), ("strategies", "frozen", "space", "learning_rate")]
    leaks = []
    for path in [*every_table_path(base), *added]:
        for wrong in ([1, 2], 3, "x", {"nosuch": 1}, True, -1.5):
            raw = copy.deepcopy(base)
            table = raw
            for key in path[:-1]:
                table = table.setdefault(key, {})
            table[path[-1]] = wrong
            try:
                parse_experiment(raw)
            except SpecError as e:
                named = [c for c in classes if c in str(e).replace("SpecError", "")]
                if named or "model_type" in str(e) or "instance of" in str(e):
                    leaks.append(f"{'.'.join(path)} = {wrong!r}: {e}")
    assert not leaks, "\n".join(leaks[:5])


def test_a_spec_saved_with_a_byte_order_mark_loads_like_one_without(tmp_path):
    text = (EXPERIMENTS_DIR / "ci.toml").read_text()
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "plain.toml").write_text(text)
    assert spec.load_experiment(tmp_path / "bom.toml").model_dump() == spec.load_experiment(tmp_path / "plain.toml").model_dump()


def test_every_search_range_must_lie_inside_its_fields_domain():
    errors = []
    try:
        spec.SearchSpace.model_validate({"dropout": {"low": 0.0, "high": 1.0}, "dense_units": [0, 16384, 16385],
                                         "learning_rate": {"low": 1e-4, "high": float("inf")},
                                         "weight_decay": {"low": 1e-6, "high": float("nan")}})
    except spec.ValidationError as e:
        errors = [spec.describe_error(err) for err in e.errors()]
    assert sorted(error.split(":")[0] for error in errors) == [
        "dense_units", "dropout", "learning_rate.high", "weight_decay.high"]  # all at once
    assert any("choice 16385" in error for error in errors) and not any("choice 16384" in error for error in errors)
    inside = spec.SearchSpace.model_validate({"dropout": {"low": 0.0, "high": 0.9}, "dense_units": [0, 16384]})
    assert inside.dropout.high == 0.9


def test_the_linear_probe_experiment_searches_the_l2_strength_alone():
    import optuna

    from benchmark import sweep

    experiment = load_experiment("transfer-probe")
    trial_spec = experiment.resolve("efficientnetlite2", "frozen")
    assert trial_spec.training.optimizer == "lbfgs" and trial_spec.data.augment.flip is False
    study = optuna.create_study(direction="maximize")
    values = sweep.suggest(study.ask(), trial_spec, experiment.search_space("efficientnetlite2", "frozen"))
    assert list(values) == ["l2"] and 1e-5 <= values["l2"] <= 1.0
    assert trial_spec.with_values(**values).training.l2 == values["l2"]
    with_views = experiment.model_dump(mode="json")
    with_views["data"]["augment"] = {"flip": True, "crop_padding": 4}
    with pytest.raises(SpecError, match="data.augment: .*feature_views"):
        parse_experiment(copy.deepcopy(with_views))
    with_views["training"]["feature_views"] = 4  # augmentation served by cached views: a linear probe still
    assert parse_experiment(with_views).training.feature_views == 4


# ---------------------------------------------------------------- own images


def folder_raw(**data) -> dict:
    raw = ci_raw()
    raw["data"] = {"source": "folder", "dir": "/images", **data}
    return raw


@pytest.mark.parametrize("data, expected", [
    ({"source": "folder"}, 'source = "folder" needs dir = "/path/to/images"'),
    ({"source": "csv"}, 'source = "csv" needs labels = "/path/to/labels.csv"'),
    ({"source": "folder", "dir": "x", "labels": "l.csv"}, 'data.labels is read by source = "csv" only'),
    ({"source": "folder", "dir": "x", "label_mode": "coarse"}, 'label_mode = "coarse"'),
    ({"source": "cifar10", "label_mode": "coarse"}, 'does not exist for source "cifar10"'),
    ({"source": "sample", "image_size": 64}, 'source "sample" has 32 px images: remove it'),
    ({"source": "folder", "dir": "x", "image_size": 4}, "data.image_size: Input should be greater than or equal to 8"),
    ({"source": "folder", "dir": "x", "test_fraction": 1.0}, "data.test_fraction: Input should be less than 1"),
    ({"source": "pictures"}, "data.source: Input should be 'keras', 'dir', 'sample', 'synthetic', 'cifar10', 'folder' or 'csv'"),
])
def test_own_image_fields_are_checked_one_line_each(data, expected, tmp_path):
    raw = ci_raw()
    raw["data"] = data
    problems = problems_of(raw, tmp_path)
    assert len(problems) == 1 and expected in problems[0], problems


def test_the_stored_size_defaults_to_the_largest_backbone_image_size():
    raw = folder_raw()
    raw["backbone"]["image_size"] = 48
    raw["backbone_overrides"] = {"resnet50": {"image_size": 64}}
    experiment = parse_experiment(raw)
    assert {experiment.resolve(b, "frozen").data.image_size for b in ("vgg16", "resnet50")} == {64}
    assert experiment.resolve("vgg16", "frozen").backbone.image_size == 48  # resized in the model
    raw["data"]["image_size"] = 40
    assert parse_experiment(raw).resolve("vgg16", "frozen").data.image_size == 40


def test_cifar_specs_keep_their_dump_and_so_their_study_names():
    """The fields own images added are left out of a CIFAR spec's dump (and so of its recipe)."""
    data = load_experiment("transfer").resolve("efficientnetlite0", "frozen").data.model_dump()
    assert not {"labels", "image_size", "test_fraction", "drop_duplicates"} & set(data)
    assert "test_fraction" in spec.DataSpec(source="folder", dir="x", test_fraction=0.3).model_dump()


def test_data_dir_replaces_a_folder_specs_folder_and_is_cifar_100_for_other_specs(tmp_path):
    experiment = parse_experiment(folder_raw())
    resolved = experiment.resolve("vgg16", "frozen", data_dir="mine")
    assert resolved.data.source == "folder" and resolved.data.dir == Path("mine").absolute()
    assert load_experiment("ci").resolve("vgg16", "frozen", data_dir=tmp_path).data.source == "dir"


def test_relative_dir_and_labels_are_relative_to_the_spec_file(tmp_path):
    (tmp_path / "specs").mkdir()
    for source, field in (("folder", "dir"), ("csv", "labels")):
        path = tmp_path / "specs" / f"{source}.toml"
        path.write_text(f'name = "own"\nbackbones = ["vgg16"]\nstrategies = {{ frozen = {{ unfreeze = 0 }} }}\n'
                        f'[data]\nsource = "{source}"\n{field} = "../pictures/x"\n')
        assert getattr(load_experiment(path).data, field) == tmp_path / "pictures" / "x"


def test_the_folder_example_validates_and_stores_at_the_backbones_size():
    experiment = load_experiment("folder-example")
    trial = experiment.resolve("efficientnetlite0", "frozen")
    assert trial.data.source == "folder" and trial.data.image_size == trial.backbone.image_size == 160
    assert trial.data.dir == EXPERIMENTS_DIR.parent / "cifar100-sample-images"
