"""Redaction: no password or token survives, whatever the URL's shape or the text around it; what
is not secret (user, host, port, database, other parameters) stays readable."""

import logging

import pytest

from benchmark.redaction import redact, redact_log_records, secrets_of

SECRET = "s3cr3t-pw"

# (a text holding a secret, the secret as it is written there, what must stay readable)
SHAPES = [
    ("postgresql://bench:s3cr3t-pw@127.0.0.1:5432/optuna", SECRET, ["postgresql://bench:***@127.0.0.1:5432/optuna"]),
    ("postgresql+psycopg2://bench:s3cr3t-pw@db.example.org/optuna", SECRET, ["bench:***@db.example.org/optuna"]),
    ("postgresql://bench:pa/ss:wo@rd@db:5432/optuna", "pa/ss:wo@rd", ["bench:***@db:5432/optuna"]),
    ("postgresql://bench:p%40ss%2Fw%3Ard@db/optuna", "p%40ss%2Fw%3Ard", ["bench:***@db/optuna"]),
    ("postgresql://bench@db/optuna?password=s3cr3t-pw&sslmode=require", SECRET, ["bench@db/optuna", "sslmode=require"]),
    ("postgresql://db/optuna?user=bench&sslpassword=s3cr3t-pw", SECRET, ["user=bench"]),
    ("mysql+pymysql://root:s3cr3t-pw@localhost:3306/optuna", SECRET, ["root:***@localhost:3306/optuna"]),
    ("mysql://root:s3cr3t-pw@/optuna?unix_socket=/run/mysqld.sock", SECRET, ["unix_socket=/run/mysqld.sock"]),
    ("sqlite:////tmp/optuna.db?token=s3cr3t-pw", SECRET, ["sqlite:////tmp/optuna.db"]),
    ("http://bench:s3cr3t-pw@127.0.0.1:5000", SECRET, ["bench:***@127.0.0.1:5000"]),
    ("https://mlflow.example.org/api?access_token=s3cr3t-pw&experiment=1", SECRET, ["experiment=1"]),
    ("https://mlflow.example.org/?api_key=s3cr3t-pw", SECRET, ["mlflow.example.org"]),
    ("https://mlflow.example.org/?X-Api-Key=s3cr3t-pw", SECRET, ["mlflow.example.org"]),
    ("(psycopg2.OperationalError) connection to server at \"db\" failed for "
     "postgresql://bench:s3cr3t-pw@db/optuna: timeout", SECRET, ["psycopg2.OperationalError", ": timeout"]),
    ("cannot open 'postgresql://bench:s3cr3t-pw@db/optuna' (refused)", SECRET, ["'postgresql://bench:***@db/optuna'"]),
    ("two: http://a:s3cr3t-pw@h1 and http://b:other-pw@h2/x", SECRET, ["a:***@h1", "b:***@h2/x"]),
]  # fmt: skip


@pytest.mark.parametrize("text, secret, kept", SHAPES, ids=[shape[0][:40] for shape in SHAPES])
def test_no_secret_survives_and_the_rest_stays(text, secret, kept, monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "BENCHMARK_OPTUNA_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    shown = redact(text)
    assert secret not in shown and SECRET not in shown and "other-pw" not in shown
    assert "***" in shown
    for part in kept:
        assert part in shown, shown


def test_a_text_without_credentials_is_unchanged(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for text in ("sqlite:////tmp/x/optuna.db", "http://127.0.0.1:5000/#/experiments/2?workflowType=machine_learning",
                 "learning_rate=0.001 weight_decay=5.19 val_top1=0.46", "postgresql://bench@db/optuna",
                 "user@example.org wrote: see http://host/a"):
        assert redact(text) == text


def test_a_configured_urls_secret_is_removed_where_it_stands_alone_raw_or_decoded(monkeypatch):
    monkeypatch.setenv("BENCHMARK_OPTUNA_STORAGE", "postgresql://bench:p%40ss-w0rd@db/optuna")
    assert secrets_of("postgresql://bench:p%40ss-w0rd@db/optuna") == {"p%40ss-w0rd", "p@ss-w0rd"}
    message = 'FATAL: password "p@ss-w0rd" rejected; p%40ss-w0rd again'
    assert redact(message) == 'FATAL: password "***" rejected; *** again'
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.org/?token=abc123tok")
    assert redact("server said abc123tok") == "server said ***"


def test_log_records_of_any_library_are_redacted(monkeypatch):
    """Whatever handler a library set up (Optuna's does not propagate to the root logger)."""
    monkeypatch.delenv("BENCHMARK_OPTUNA_STORAGE", raising=False)
    redact_log_records()
    redact_log_records()  # twice: one wrapper
    written = []

    class Keep(logging.Handler):
        def emit(self, record):
            written.append(self.format(record))

    for name, message in (("sqlalchemy.pool", "reconnecting to %s"), ("optuna", "storage %s failed")):
        logger, handler = logging.getLogger(name), Keep()
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)  # whatever an earlier test of this process set it to
        try:
            logger.warning(message, f"postgresql://u:{SECRET}@db/x")
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
    assert written == ["reconnecting to postgresql://u:***@db/x", "storage postgresql://u:***@db/x failed"]
