"""Download the wheels an H200 device machine lacks to run `python -m benchmark` under KERAS_BACKEND=jax.

    python3 benchmarks/gpu/make_wheels.py                       # .whl/ for the device (CPython 3.12, x86-64)
    python3 benchmarks/gpu/make_wheels.py --python-version 3.11 --dest /tmp/whl311   # another Python
    python3 benchmarks/gpu/make_wheels.py --relock              # re-resolve TOP and rewrite wheels.lock

The device image (a CUDA image with Python 3.12.3) already holds jax with its
CUDA 13 plugin, numpy, pandas, matplotlib, requests, rich, h5py, ml-dtypes, protobuf...; it has no
keras, optuna, mlflow, pydantic or sqlalchemy, and no registry to fetch them from. This script
downloads exactly the locked wheels (wheels.lock: one version of each, `--no-deps`), then checks:

- closure: every requirement of every carried wheel (markers evaluated for the target Python on
  Linux x86-64, extras skipped) is either carried, at a version its specifier accepts, or in
  DEVICE_PACKAGES (whose versions can only be checked there: run_on_device.sh runs check_deps.py);
- one version per package, and nothing in the folder that is not locked;
- size: the wheels plus what travels anyway (tracked and untracked-not-ignored files) fit the
  64 MiB a `run` call may carry;
- the folder is ignored by git (else it would travel twice, and show up in `git status`).

The `benchmark` package itself is not a wheel: it travels as source with the repo, and runs from the
repo root (pyproject's dependencies name tensorflow, so it must not be pip-installed there).
"""

from __future__ import annotations

import argparse
import email.parser
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:  # pip vendors it
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import Version

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LOCK = HERE / "wheels.lock"
LIMIT = 64 * 2**20  # what one `run` call carries: tracked + untracked-not-ignored files + carried paths

# What the benchmark imports and the device lacks, pinned as in the dev venv (pyproject's ranges).
# mlflow-skinny is mlflow without its UI server; sqlalchemy + alembic give it the sqlite:// store.
TOP = (
    "keras==3.15.1",
    "optuna==5.0.0",
    "optuna-integration==5.0.0",
    "mlflow-skinny==3.17.2",
    "pydantic==2.14.3",
    "sqlalchemy==2.1.9",
    "alembic==1.20.1",
)

# The 'cuda' image's Python packages, as KINDS.md lists them (read there 2026-11-17). Never carried:
# a second copy would shadow the image's (jax's numpy, ml-dtypes, scipy above all).
DEVICE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())

PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (28, 27, 24, 17)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_download(requirements: list[str], dest: Path, python_version: str, deps: bool) -> None:
    command = [sys.executable, "-m", "pip", "download", "-qq", "--only-binary=:all:", "--implementation", "cp",
               "--python-version", python_version, "--dest", str(dest)]
    command += [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command += [] if deps else ["--no-deps"]
    subprocess.run(command + requirements, check=True)


def wheel_metadata(path: Path) -> email.message.Message:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        return email.parser.Parser().parsestr(archive.read(name).decode())


def wheels_in(folder: Path) -> dict[str, tuple[str, Path]]:
    """normalized name -> (version, path); exits if a package is there twice."""
    found: dict[str, tuple[str, Path]] = {}
    for path in sorted(folder.glob("*.whl")):
        meta = wheel_metadata(path)
        name = normalize(meta["Name"])
        if name in found:
            sys.exit(f"two versions of {name} in {folder}: {found[name][1].name} and {path.name}; keep one")
        found[name] = (meta["Version"], path)
    return found


def relock(python_version: str) -> None:
    """Resolve TOP with its dependencies for the target, keep what the device lacks, write wheels.lock."""
    with tempfile.TemporaryDirectory() as tmp:
        pip_download(list(TOP), Path(tmp), python_version, deps=True)
        carried = {n: v for n, (v, _) in wheels_in(Path(tmp)).items() if n not in DEVICE_PACKAGES}
    header = "# Written by make_wheels.py --relock: the wheels the H200 image lacks (closure of its TOP).\n"
    LOCK.write_text(header + "".join(f"{n}=={v}\n" for n, v in sorted(carried.items())))
    print(f"wrote {LOCK.relative_to(REPO)}: {len(carried)} packages")


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[normalize(name)] = version.strip()
    return pins


def check_closure(wheels: dict[str, tuple[str, Path]], python_version: str) -> list[str]:
    environment = {"python_version": python_version, "python_full_version": f"{python_version}.0",
                   "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                   "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython",
                   "extra": ""}
    problems = []
    for name, (_, path) in wheels.items():
        for text in wheel_metadata(path).get_all("Requires-Dist") or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate(environment):
                continue  # an extra, or another platform's
            needed = normalize(requirement.name)
            if needed in wheels:
                if not requirement.specifier.contains(Version(wheels[needed][0]), prereleases=True):
                    problems.append(f"{name} needs {requirement}, carried {needed} {wheels[needed][0]}")
            elif needed not in DEVICE_PACKAGES:
                problems.append(f"{name} needs {requirement}: neither carried nor on the device")
    return problems


def travelling_bytes() -> int:
    """Tracked and untracked-not-ignored files: what every `run` call sends anyway."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    return sum((REPO / p).stat().st_size for p in set(listed) if p and (REPO / p).is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="3.12", help="the device's python3 (default 3.12)")
    parser.add_argument("--dest", type=Path, default=REPO / ".whl", help="wheel folder (default: .whl in the repo)")
    parser.add_argument("--relock", action="store_true", help="re-resolve TOP and rewrite wheels.lock first")
    args = parser.parse_args()
    if args.relock:
        relock(args.python_version)
    pins = locked()
    dest = args.dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    # Keep a wheel only if it is the locked version for this Python; download the rest.
    for path in dest.glob("*.whl"):
        meta = wheel_metadata(path)
        tags_fit = "-none-any" in path.name or f"cp{args.python_version.replace('.', '')}" in path.name or "abi3" in path.name
        if pins.get(normalize(meta["Name"])) != meta["Version"] or not tags_fit:
            path.unlink()
    have = wheels_in(dest)
    missing = [f"{n}=={v}" for n, v in pins.items() if n not in have]
    if missing:
        pip_download(missing, dest, args.python_version, deps=False)
    for stray in set(p.name for p in dest.iterdir()) - set(p.name for p in dest.glob("*.whl")):
        shutil.rmtree(dest / stray) if (dest / stray).is_dir() else (dest / stray).unlink()
    wheels = wheels_in(dest)
    status = 0
    if set(wheels) != set(pins):
        print(f"error: folder and lock differ: {sorted(set(wheels) ^ set(pins))}", file=sys.stderr)
        status = 1
    for problem in check_closure(wheels, args.python_version):
        print(f"error: {problem}", file=sys.stderr)
        status = 1
    total = sum(path.stat().st_size for _, path in wheels.values())
    for name, (version, path) in sorted(wheels.items()):
        print(f"{path.stat().st_size / 2**20:7.2f} MiB  {name}=={version}")
    print(f"{total / 2**20:.1f} MiB in {len(wheels)} wheels in {dest}")
    if dest.is_relative_to(REPO):
        relative = dest.relative_to(REPO).as_posix()
        if subprocess.run(["git", "check-ignore", "-q", relative + "/x.whl"], cwd=REPO).returncode != 0:
            print(f"error: {relative}/ is not ignored by git: it would travel as an untracked folder", file=sys.stderr)
            status = 1
        anyway = travelling_bytes()
        print(f"{anyway / 2**20:.1f} MiB travel anyway (tracked and untracked-not-ignored files); "
              f"{(anyway + total) / 2**20:.1f} of {LIMIT // 2**20} MiB with carry=[\"{relative}\"]")
        if anyway + total > LIMIT:
            print("error: over the 64 MiB a run call may carry", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
