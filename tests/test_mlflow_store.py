"""Where runs go: BENCHMARK_STORE moves the local store even after MLflow has exported a URI of
its own; a user's MLFLOW_TRACKING_URI always wins; shown URIs never carry a password."""

from benchmark import mlflow_store
from benchmark.redaction import redact


def test_the_store_follows_benchmark_store_after_mlflow_exported_a_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("BENCHMARK_STORE", str(tmp_path / "one"))
    mlflow_store.configure()  # mlflow.set_tracking_uri() puts MLFLOW_TRACKING_URI into the environment
    assert mlflow_store.tracking_uri() == f"sqlite:///{tmp_path / 'one' / 'mlflow.db'}"
    monkeypatch.setenv("BENCHMARK_STORE", str(tmp_path / "two"))
    assert mlflow_store.tracking_uri() == f"sqlite:///{tmp_path / 'two' / 'mlflow.db'}" and mlflow_store.uses_local_store()


def test_a_users_tracking_uri_wins_and_stays(tmp_path, monkeypatch):
    users = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", users)
    monkeypatch.setenv("BENCHMARK_STORE", str(tmp_path / "ignored"))
    mlflow_store.configure()
    assert mlflow_store.tracking_uri() == users and not mlflow_store.uses_local_store()
    mlflow_store.point_mlflow_at(mlflow_store.tracking_uri())
    assert mlflow_store.tracking_uri() == users


def test_shown_uris_have_no_password():
    assert redact("postgresql://bench:s3cret@db:5432/mlflow") == "postgresql://bench:***@db:5432/mlflow"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_ui_links_point_at_the_training_view_without_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCHMARK_STORE", str(tmp_path / "mlruns"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_store.experiment_url("7") == \
        "http://127.0.0.1:5000/#/experiments/7/runs?viewStateShareKey=benchmark&workflowType=machine_learning"
    assert mlflow_store.ui_command() == f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlruns/mlflow.db"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://bench:s3cr%2Ft@mlflow.example.org:8443/prefix/")
    assert mlflow_store.ui_command() == ""  # a server: nothing to start
    url = mlflow_store.compare_url("7", ["a1", "b2"])
    assert url == ("https://mlflow.example.org:8443/prefix/#/compare-runs?runs=%5B%22a1%22%2C%22b2%22%5D"
                   "&experiments=%5B%227%22%5D&workflowType=machine_learning")
    assert "s3cr" not in url and "bench" not in url


def test_the_schema_versions_read_from_mlflows_migrations_match_alembics():
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config, _get_latest_schema_revision

    head, known = mlflow_store.schema_versions()
    script = ScriptDirectory.from_config(_get_alembic_config(db_url=""))
    assert head == _get_latest_schema_revision()
    assert known == {revision.revision for revision in script.walk_revisions()}
