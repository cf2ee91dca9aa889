"""Optuna storage URLs: the default, what is refused and how, and that no password is shown."""

import pytest

from benchmark import storage
from benchmark.errors import BenchmarkError


def test_the_default_is_sqlite_beside_the_mlflow_store_unless_the_environment_names_one(store, monkeypatch):
    assert storage.default_storage() == f"sqlite:///{store / 'optuna.db'}"
    monkeypatch.setenv(storage.STORAGE_ENV, "postgresql://bench@db/optuna")
    assert storage.default_storage() == "postgresql://bench@db/optuna"


def test_a_sqlite_storage_opens_and_keeps_studies(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="s", storage=storage.open_storage(url, heartbeat=False)).optimize(lambda t: 1.0, 1)
    assert len(optuna.load_study(study_name="s", storage=storage.open_storage(url)).trials) == 1


@pytest.mark.parametrize("url, expected", [
    ("optuna.db", "is not a URL; use sqlite:///path/optuna.db"),
    ("nosuchdb://bench:s3cret@host/optuna", "cannot open the Optuna storage nosuchdb://bench:***@host/optuna"),
])
def test_a_bad_url_is_one_line_without_its_password(url, expected):
    with pytest.raises(BenchmarkError) as caught:
        storage.open_storage(url)
    assert expected in str(caught.value) and "s3cret" not in str(caught.value) and "\n" not in str(caught.value)


def test_a_sqlite_file_under_a_regular_file_is_not_writable(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(BenchmarkError, match="not writable"):
        storage.open_storage(f"sqlite:///{tmp_path}/a-file/optuna.db")


@pytest.mark.parametrize("value", ["3", "soon", "-60"])
def test_a_heartbeat_grace_that_is_not_a_few_seconds_is_refused(value, monkeypatch):
    monkeypatch.setenv(storage.GRACE_ENV, value)
    with pytest.raises(BenchmarkError, match=f"{storage.GRACE_ENV}='{value}'"):
        storage.heartbeat_grace_s()
