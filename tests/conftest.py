import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CIFAR100_SAMPLE = REPO.parent / "shared" / "data" / "cifar-100-sample" / "cifar-100-python"


@pytest.fixture(scope="session")
def cifar_sample_dir() -> Path:
    """The real CIFAR-100 slice (official layout); CIFAR100_SAMPLE_DIR overrides where it lives."""
    path = Path(os.environ.get("CIFAR100_SAMPLE_DIR", DEFAULT_CIFAR100_SAMPLE))
    if not all((path / name).is_file() for name in ("train", "test", "meta")):
        message = f"CIFAR-100 sample not found at {path} (needs train, test, meta); set CIFAR100_SAMPLE_DIR"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # in CI a missing data set is a broken setup, never a skip
        pytest.skip(message)
    return path


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh local MLflow + Optuna store for one test (what ./mlruns is for a user)."""
    path = tmp_path / "mlruns"
    monkeypatch.setenv("BENCHMARK_STORE", str(path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("BENCHMARK_OPTUNA_STORAGE", raising=False)
    return path
