"""Every tracked name is spelled once, in benchmark/names.py.

Each module of the package is parsed with ast (not imported), and each of its string constants
is checked:
  - a column of mlflow.search_runs' table ("metrics.X", "params.X", "tags.X") or another name built
    from a prefix ("versions.X", "best.X", "best_X"), also as a piece of an f-string, is always a
    finding: names.py's helpers build them;
  - a value defined in names.py is a finding wherever it appears, unless it also names something
    else (SHARED: a plain word such as "run" or "model", a leaderboard column such as test_top1, a
    Keras log key such as val_loss);
  - a SHARED value is a finding where it is used as a tracked name: an argument of a call that
    logs, tags or reads tracked names (TRACKING_CALLS) or a key or value of a dict passed to one, a
    key of a run's metrics/tags/params or of Optuna's user_attrs, or a key or value of a dict
    literal assigned to a name tags, metrics or params.
TEMPORARILY_EXEMPT lists what other work is rewriting now; it is checked once that work lands.
"""

import ast
import re
from pathlib import Path

import pytest

from benchmark import names

PACKAGE = Path(names.__file__).parent
# Rewritten elsewhere at the moment; they still read the names through track.py's re-exports.
TEMPORARILY_EXEMPT: set[str] = set()
PREFIXES = tuple(build("") for build in (names.metric_column, names.param_column, names.tag_column, names.version_tag,
                                         names.best_param_tag, names.best_param_metric))
TRACKING_CALLS = {
    "set_tag", "set_tags", "log_metric", "log_metrics", "log_param", "log_params", "Metric", "RunTag", "Param",
    "set_user_attr", "set_experiment_tag", "log_artifact", "log_artifacts", "list_artifacts", "delete_artifacts",
    "download_artifacts", "get_metric_history", "tags_filter",
}  # fmt: skip
TRACKED_MAPPINGS = {"metrics", "tags", "params", "user_attrs"}


def tracked_values() -> set[str]:
    """Every string names.py defines: constants, and the strings in its tuples and dicts."""
    found = set()
    for name, value in vars(names).items():
        if name.startswith("_") or callable(value):
            continue
        items = [*value, *value.values()] if isinstance(value, dict) else value if isinstance(value, tuple) else [value]
        found |= {item for item in items if isinstance(item, str)}
    return found


def shared_values() -> set[str]:
    from benchmark.leaderboard import COLUMNS

    plain_words = {v for v in tracked_values() if re.fullmatch(r"[a-z]+\d*", v)}
    return plain_words | set(COLUMNS) | set(names.EPOCH_METRICS)


def exempt(module: str, function: str | None = None) -> bool:
    return module in TEMPORARILY_EXEMPT or f"{module}:{function}" in TEMPORARILY_EXEMPT


def called_name(call: ast.Call) -> str:
    return getattr(call.func, "attr", getattr(call.func, "id", ""))


def is_tracked_mapping(node: ast.AST) -> bool:
    """run.data.metrics, result.tags, trial.user_attrs, ..."""
    return isinstance(node, ast.Attribute) and node.attr in TRACKED_MAPPINGS


def dict_items(node: ast.AST) -> list[ast.AST]:
    return [item for item in (*node.keys, *node.values) if item is not None] if isinstance(node, ast.Dict) else []


def is_string(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def tracked_uses(node: ast.AST) -> list[ast.AST]:
    """The parts of `node` that hold a tracked name (or value), if it is one of the uses the docstring lists."""
    if isinstance(node, ast.Call) and called_name(node) in TRACKING_CALLS:
        arguments = [*node.args, *(k.value for k in node.keywords)]
        return [*arguments, *(item for argument in arguments for item in dict_items(argument))]
    if isinstance(node, ast.Call) and called_name(node) == "get" and is_tracked_mapping(node.func.value):
        return node.args[:1]
    if isinstance(node, ast.Subscript) and is_tracked_mapping(node.value):
        return [node.slice]
    if isinstance(node, ast.Compare) and any(is_tracked_mapping(c) for c in node.comparators):
        return [node.left]
    if isinstance(node, ast.Assign) and any(getattr(t, "id", "") in TRACKED_MAPPINGS for t in node.targets):
        return dict_items(node.value)
    return []


def unexempt_nodes(tree: ast.Module, module: str) -> list[ast.AST]:
    """Every node of the module outside its exempt functions."""
    found, pending = [], [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and exempt(module, node.name):
            continue
        found.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return found


def findings(path: Path, everywhere: set[str], in_context: set[str]) -> list[str]:
    module = path.name
    nodes = unexempt_nodes(ast.parse(path.read_text()), module)
    spelled = []
    for node in nodes:
        if is_string(node) and (node.value in everywhere or node.value.startswith(PREFIXES)):
            spelled.append(node)
        spelled += [use for use in tracked_uses(node) if is_string(use) and use.value in in_context]
    return sorted({f"{module}:{c.lineno}: {c.value!r}" for c in spelled})


def literals_outside_names(package: Path = PACKAGE) -> list[str]:
    shared = shared_values()
    everywhere = tracked_values() - shared
    modules = [p for p in sorted(package.glob("*.py")) if p.name != "names.py" and p.name not in TEMPORARILY_EXEMPT]
    return [line for path in modules for line in findings(path, everywhere, shared)]


def test_no_module_spells_a_tracked_name_outside_names_py():
    found = literals_outside_names()
    assert not found, "spell these with benchmark.names:\n" + "\n".join(found)


@pytest.mark.parametrize("line, spelled", [
    ('BEST = "best_val_top1"', "best_val_top1"),
    ('COLUMN = "metrics.test_top1"', "metrics.test_top1"),
    ('WHERE = f"tags.{key} = 1"', "tags."),
    ('mlflow.set_tag("device", "cpu")', "device"),
    ('value = run.data.metrics["test_top1"]', "test_top1"),
    ('tags = {"backbone": name}', "backbone"),
    ('attrs = trial.user_attrs.get("pair")', "pair"),
])  # fmt: skip
def test_a_literal_tracked_name_is_found(tmp_path, line, spelled):
    (tmp_path / "module.py").write_text(line + "\n")
    assert literals_outside_names(tmp_path) == [f"module.py:1: {spelled!r}"]


def test_shared_words_in_ordinary_use_are_not_findings(tmp_path):
    (tmp_path / "module.py").write_text('COLUMNS = ("test_top1", "backbone")\nlabel = "model"\nlogs = {"val_loss": 1.0}\n')
    assert literals_outside_names(tmp_path) == []


def test_names_py_imports_nothing():
    """So reading a name loads no MLflow, Keras or numpy."""
    imported = {alias.name for node in ast.walk(ast.parse(Path(names.__file__).read_text()))
                if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    assert imported <= {"annotations"}


# ---------------------------------------------------------------- run names: told apart in the UI's 25 characters


def test_run_names_lead_with_what_tells_runs_apart_within_25_characters():
    parent = names.run_name("efficientnetlite0", "frozen", fingerprint="ffb9701d")
    trial = names.run_name("efficientnetlite0", "frozen", trial=5)
    repeat = names.run_name("efficientnetlite0", "frozen", trial=5, seed=2)
    assert (parent, trial, repeat) == ("lite0 frozen ffb9701d", "lite0 frozen #5", "lite0 frozen #5 seed 2")
    assert names.run_name("mobilenetv3small", "top", trial=12, seed=3, resplit=True) == "mnv3small top #12 seed 3 resplit"
    assert names.short_backbone("efficientnetv2b0") == "effv2b0" and names.short_backbone("efficientnetb3") == "effb3"
    assert names.short_backbone("vgg16") == "vgg16"
    assert all(len(name) <= 25 for name in (parent, trial, repeat))
    assert names.trial_full_name("transfer-efficientnetlite0-frozen-ffb9701d", 5) == "transfer-efficientnetlite0-frozen-ffb9701d-t005"
