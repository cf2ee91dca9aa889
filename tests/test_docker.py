"""docker/: there is no Docker engine here, so the compose file is checked against the compose
specification and for what the stack promises, and the Dockerfiles are linted (hadolint)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmark.cli import build_parser
from benchmark.spec import load_experiment

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def validate(path: Path) -> subprocess.CompletedProcess:
    checker = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True, text=True)


def test_compose_file_follows_the_compose_specification(tmp_path):
    assert validate(COMPOSE).returncode == 0, validate(COMPOSE).stdout
    misspelt = tmp_path / "compose.yaml"
    misspelt.write_text(COMPOSE.read_text().replace("healthcheck:", "healthchek:", 1))
    assert validate(misspelt).returncode != 0  # the check can fail


def test_compose_stack_is_what_the_readme_promises():
    services = compose()["services"]
    assert {"postgres", "mlflow", "dashboard", "worker", "worker-cpu"} <= set(services)
    for name in ("postgres", "mlflow", "dashboard"):
        assert services[name]["healthcheck"]["test"], name
    for name in ("worker", "worker-cpu"):
        worker = services[name]
        assert "container_name" not in worker and "ports" not in worker  # `--scale worker=N` needs both absent
        assert {dep: c["condition"] for dep, c in worker["depends_on"].items()} == {
            "postgres": "service_healthy", "mlflow": "service_healthy"}
        assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert worker["environment"]["BENCHMARK_OPTUNA_STORAGE"].startswith("postgresql://")
        assert "keras-cache:/keras" in worker["volumes"]
    assert services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    # published on this host only, unless MLFLOW_BIND says otherwise; postgres not published at all
    assert services["mlflow"]["ports"] == ["${MLFLOW_BIND:-127.0.0.1}:5000:5000"]
    assert services["dashboard"]["ports"] == ["${DASHBOARD_BIND:-127.0.0.1}:8080:8080"]
    assert "ports" not in services["postgres"]
    assert services["mlflow"]["environment"]["MLFLOW_ARTIFACTS_DESTINATION"] == "/mlartifacts"
    assert "mlflow-artifacts:/mlartifacts" in services["mlflow"]["volumes"]


def test_no_password_is_written_into_the_compose_file():
    text = COMPOSE.read_text()
    for url in re.findall(r"postgresql://[^\n]*", text):
        assert re.match(r"postgresql://benchmark:\$\{POSTGRES_PASSWORD:\?[^}]*\}@postgres:5432/\w+$", url), url
    assert compose()["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    command = " ".join(compose()["services"]["mlflow"]["command"])
    assert "postgresql" not in command  # `mlflow server` reads its store URL from the environment, not argv


def test_the_worker_command_is_a_valid_sweep_of_a_real_experiment():
    command = compose()["x-worker"]["command"]
    argv = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", arg) for arg in command]  # compose's defaults
    args = build_parser().parse_args(argv)
    assert args.command == "sweep"
    experiment = load_experiment(args.experiment)
    assert set(args.backbone) <= set(experiment.backbones)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_lint_clean_non_root_and_copies_what_exists(dockerfile):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    lint = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and not users[-1].startswith(("0", "root")), users
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
    assert 'ENTRYPOINT ["python", "-m", "benchmark"]' in lines
    assert "BENCHMARK_EXPERIMENTS=/opt/benchmark/experiments \\" in lines  # an installed package has no experiments/ beside it
    assert any("KERAS_HOME=/keras" in line for line in lines) and 'VOLUME ["/keras"]' in lines
