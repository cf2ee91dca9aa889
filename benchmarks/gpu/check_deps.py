"""On the device, after the wheels are installed: does every carried package find its requirements,
at versions it accepts, among the carried ones and the image's own? The image's versions can only be
read there (make_wheels.py checks the carried ones against each other here).

    PYTHONPATH=/tmp/site python3 benchmarks/gpu/check_deps.py /tmp/site

Prints the versions that matter and one line per problem; exit 1 if any (a missing or too-old
package of the image would need carrying: add it to make_wheels.py's TOP, or pin it, and relock).
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

SHOWN = ("jax", "jaxlib", "jax-cuda13-plugin", "numpy", "ml-dtypes", "scipy", "keras", "optree", "h5py",
         "mlflow-skinny", "optuna", "pydantic", "sqlalchemy", "pandas", "matplotlib", "protobuf", "tensorflow")


def version_of(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def main(site: str) -> int:
    print(f"python {sys.version.split()[0]} at {sys.executable}")
    print("  ".join(f"{name} {version_of(name) or '-'}" for name in SHOWN))
    problems = []
    for info in sorted(Path(site).glob("*.dist-info")):
        dist = metadata.Distribution.at(info)
        name = dist.metadata["Name"]
        first = metadata.distribution(name)  # the one imports will see
        if Path(str(first.locate_file(""))).resolve() != Path(site).resolve():
            problems.append(f"{name}: the image's {first.version} shadows the carried {dist.version}")
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            found = version_of(requirement.name)
            if found is None:
                problems.append(f"{name} needs {requirement}: not installed")
            elif not requirement.specifier.contains(Version(found), prereleases=True):
                problems.append(f"{name} needs {requirement}: found {requirement.name} {found}")
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{len(problems)} dependency problems among the carried packages")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/site"))
