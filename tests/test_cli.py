"""The command line as a process. Bad input case by case: tests/test_bad_input.py."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


COMMANDS = ("sweep", "run", "leaderboard", "check", "confirm", "throughput", "backbones")


def benchmark_process(*argv: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmark", *argv], capture_output=True, text=True, **options)


def test_the_top_level_help_describes_every_command_and_shows_examples():
    out = benchmark_process("--help")
    assert out.returncode == 0
    listing = out.stdout.split("commands:")[1].split("examples:")[0]
    described = dict(re.findall(r"^    (\w+)\s+(\S.*)$", listing, re.M))  # a long name has its text on the next line
    assert set(described) == set(COMMANDS)
    assert all(len(text) > 20 for text in described.values()), described
    examples = [line for line in out.stdout.splitlines() if line.startswith("  python -m benchmark ")]
    assert len(examples) == 3 and "thin layer" not in out.stdout


def test_every_command_has_a_description_and_an_example():
    for command in COMMANDS:
        out = benchmark_process(command, "--help")
        assert out.returncode == 0 and out.stdout.startswith(f"usage: python -m benchmark {command}")
        text = out.stdout.split("\n\n", 2)[1]  # after the usage: the description
        assert not text.startswith("options:") and len(text) > 40, (command, text)
        assert f"\n  python -m benchmark {command} " in out.stdout.split("example")[-1], command


def test_backbones_reads_its_table_without_loading_tensorflow():
    code = "import sys; from benchmark.cli import main; main(['backbones']); print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr == ""
    lines = out.stdout.splitlines()
    assert lines[-1] == "False"  # no Keras, no TensorFlow: about a second, no start-up lines
    lite0 = next(line.split() for line in lines if line.startswith("efficientnetlite0 "))
    assert lite0[-3:] == ["49", "3.41", "13.7"]  # depth, params (millions), MB


@pytest.mark.parametrize("argv", [
    ["run", "--backbone", "vgg61"],
    ["run", "--experiment", "ci", "--backbone", "vgg61"],
    ["sweep", "--experiment", "ci", "--backbone", "vgg61"],
    ["sweep", "--experiment", "ci", "--strategy", "frozen,nosuch"],
])
def test_a_misspelt_name_is_refused_before_tensorflow_or_mlflow_loads(argv, tmp_path):
    """About a tenth of a second instead of the 3-13 s that loading them took first."""
    code = f"import sys; from benchmark.cli import main; code = main({argv!r}); print(code, sorted(m for m in " \
           "('tensorflow', 'keras', 'mlflow') if m in sys.modules))"
    env = {**os.environ, "BENCHMARK_STORE": str(tmp_path / "mlruns")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.splitlines()[-1] == "2 []", out.stdout
    assert out.stderr.startswith("error: unknown ") and len(out.stderr.splitlines()) == 1, out.stderr


@pytest.mark.slow
def test_errors_from_the_real_process_are_one_line_and_debug_shows_the_traceback(tmp_path):
    env = {**os.environ, "BENCHMARK_STORE": str(tmp_path / "mlruns")}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "benchmark", "run", "--experiment", "ci", "--backbone", "resnet5"]
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and out.stderr.startswith("error: unknown backbone 'resnet5'")
    debug = subprocess.run(command[:3] + ["--debug"] + command[3:], capture_output=True, text=True, env=env)
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "BenchmarkError: unknown backbone 'resnet5'" in debug.stderr
    assert not (tmp_path / "mlruns").exists()


# ---------------------------------------------------------------- the experiment a command defaults to


def spec_named(name: str, path: Path, epochs: int = 3) -> Path:
    """experiments/ci.toml as another experiment, in a file outside experiments/."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (REPO / "experiments" / "ci.toml").read_text()
    path.write_text(text.replace('name = "ci"', f'name = "{name}"').replace("epochs = 3", f"epochs = {epochs}"))
    return path


def a_trial_run_of(experiment: str, spec_file: Path) -> None:
    """A sweep's newest trial run, with the tags a sweep gives it (test_run_and_confirm_default_...: it does)."""
    import mlflow

    from benchmark import mlflow_store, names

    mlflow_store.configure()
    client = mlflow.MlflowClient()
    client.create_run(client.create_experiment(names.experiment_name(experiment)), tags={
        names.TAG_ROLE: names.ROLE_TRIAL, names.TAG_EXPERIMENT: experiment, names.TAG_SPEC_FILE: str(spec_file)})


def test_the_default_is_the_name_where_it_finds_the_swept_file_else_the_file(tmp_path):
    from benchmark import cli

    in_tree = REPO / "experiments" / "ci.toml"
    assert cli.swept_spec("ci", str(in_tree)) == "ci"
    assert cli.swept_spec("ci", None) == "ci"  # runs from before the file was recorded
    elsewhere = spec_named("ci", tmp_path / "copy" / "ci.toml")  # a file of the same name elsewhere: it was swept
    assert cli.swept_spec("ci", str(elsewhere)) == str(elsewhere)
    mine = spec_named("mine", tmp_path / "specs" / "mine.toml")
    assert cli.swept_spec("mine", str(mine)) == str(mine)
    assert cli.swept_spec("other", str(mine)) == "other"  # the file names another experiment now
    assert cli.swept_spec("mine", str(tmp_path / "gone.toml")) == "mine"


def test_run_and_confirm_refuse_in_one_line_when_the_swept_spec_file_is_gone(store, tmp_path, capsys):
    from benchmark import cli

    gone = tmp_path / "specs" / "mine.toml"
    a_trial_run_of("mine", gone)
    for command in (["run", "--backbone", "vgg16"], ["confirm"]):
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: the most recent sweep's experiment mine has no spec file here (it was swept "
                              f"from {gone}, which is gone") and "pass --experiment" in err and err.count("\n") == 1


@pytest.mark.slow
def test_run_and_confirm_default_to_a_spec_swept_from_outside_experiments(store, tmp_path, capsys):
    import mlflow

    from benchmark import cli, leaderboard, names

    spec_file = spec_named("mine", tmp_path / "elsewhere" / "mine.toml", epochs=1)
    assert cli.main(["sweep", "--experiment", str(spec_file), "--backbone", "vgg16", "--strategy", "frozen",
                     "--trials", "1", "--quiet"]) == 0
    assert leaderboard.latest_sweep() == ("mine", str(spec_file))  # what the sweep recorded
    capsys.readouterr()
    said = f"experiment mine from {spec_file} (the most recent sweep's; --experiment NAME for another)"
    assert cli.main(["run", "--backbone", "vgg16", "--quiet"]) == 0
    assert capsys.readouterr().err.splitlines()[0] == said
    assert cli.main(["confirm", "--top", "1", "--seeds", "1", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[0] == said and f"leaderboard --experiment {spec_file}" in out
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    roles = sorted(r.data.tags[names.TAG_ROLE] for r in runs if r.data.tags.get(names.TAG_EXPERIMENT) == "mine")
    assert roles == sorted([names.ROLE_SWEEP, names.ROLE_TRIAL, names.ROLE_RUN, names.ROLE_CONFIRM])


def test_quiet_hides_the_bars_of_one_command_only(monkeypatch):
    from benchmark import cli, progress

    seen, real = [], cli.command_run
    monkeypatch.setattr(cli, "command_run", lambda args: seen.append(progress._hidden) or real(args))
    assert cli.main(["run", "--backbone", "nope", "--quiet"]) == 2  # an unknown backbone: refused at once
    assert cli.main(["run", "--backbone", "nope"]) == 2
    assert seen == [True, False] and progress._hidden is False
