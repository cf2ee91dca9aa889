"""Bad input: a one-line error naming problem and fix, a non-zero exit, nothing written."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.cli import main

REPO = Path(__file__).resolve().parent.parent


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def fails_cleanly(argv, capsys, store: Path, *fragments: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    assert not (store / "mlflow.db").exists(), "a rejected input must not record anything"
    return err


def test_unknown_backbone(store, capsys):
    fails_cleanly(["run", "--backbone", "vgg61"], capsys, store, "unknown backbone 'vgg61'", "vgg16")


def test_unfreeze_beyond_the_backbone(store, capsys):
    argv = ["run", "--experiment", "ci", "--backbone", "vgg16", "--strategy", "top", "--unfreeze", "99"]
    fails_cleanly(argv, capsys, store, "beyond vgg16's 13 weighted layers", "0..13")


def test_image_size_below_the_minimum(store, capsys, tmp_path):
    spec = (REPO / "experiments" / "ci.toml").read_text().replace('backbones = ["vgg16", "resnet50"]', 'backbones = ["xception"]')
    path = tmp_path / "small.toml"
    path.write_text(spec)
    code = main(["run", "--experiment", str(path), "--backbone", "xception"])
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and "backbone.image_size" in err and "71" in err
    assert not (store / "mlflow.db").exists()


def test_empty_data_dir(store, capsys, tmp_path):
    fails_cleanly(["run", "--backbone", "vgg16", "--experiment", "ci", "--data-dir", str(tmp_path)], capsys, store, str(tmp_path))


def test_pickle_that_runs_code_is_refused(store, capsys, tmp_path, cifar_sample_dir):
    data = tmp_path / "cifar-100-python"
    data.mkdir()
    marker = tmp_path / "pwned"
    for name in ("train", "test", "meta"):
        (data / name).write_bytes((Path(cifar_sample_dir) / name).read_bytes())
    (data / "train").write_bytes(pickle.dumps(RunsCode(marker)))
    fails_cleanly(["run", "--backbone", "vgg16", "--experiment", "ci", "--data-dir", str(data)], capsys, store, "refusing")
    assert not marker.exists()


def test_unwritable_store(capsys, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("BENCHMARK_STORE", str(blocker / "mlruns"))  # a directory under a file: even root cannot
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = main(["run", "--experiment", "ci", "--backbone", "vgg16"])
    err = capsys.readouterr().err
    assert code == 2 and "not writable" in err and "BENCHMARK_STORE" in err


def test_bad_arguments_exit_non_zero(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["run", "--backbone", "vgg16", "--lr", "-1"])
    assert caught.value.code == 2 and "must be > 0" in capsys.readouterr().err


def test_every_command_has_help():
    for command in ("run", "sweep", "backbones"):
        out = subprocess.run([sys.executable, "-m", "benchmark", command, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage: python -m benchmark" in out.stdout


def test_errors_from_the_real_process_have_no_traceback(tmp_path):
    env = {**os.environ, "BENCHMARK_STORE": str(tmp_path / "mlruns")}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run(
        [sys.executable, "-m", "benchmark", "run", "--backbone", "resnet5"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: unknown backbone 'resnet5'")
    assert "Traceback" not in out.stderr
