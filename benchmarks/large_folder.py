"""Memory of a frozen sweep on a folder of own images larger than memory should need.

    python benchmarks/large_folder.py [--images 20000] [--classes 100] [--image-size 224] [--trials 2]
                                      [--folder /tmp/benchmark-large-folder] [--docs]

(a) Generates (once: reused while its marker file matches) a flat folder of class folders of
    256x256 JPEGs, noise around a per-class colour (learnable, cheap to make and to decode);
(b) runs `python -m benchmark sweep` on it with a frozen EfficientNet-Lite0 spec (ImageNet
    weights from the package, linear head on cached pooled features) at data.image_size px, in a
    fresh store and a fresh cache (decoding and the feature pass included), while sampling the
    resident memory of the sweep's process tree (psutil, every 0.2 s, children summed);
(c) prints the decoding rate (images/s: from when the image cache's partial folder appears to when
    the finished one takes its place, as polled), the sweep's wall time and the peak resident memory,
    per stage (decoding, then the rest), and with --docs writes them to docs/performance.md.

At 224 px the stored images take N x 150,528 bytes (3.0 GB for 20,000): the goal is a peak under
2.5 GB, so the images must never be in memory whole (benchmark.data.Rows, measure.predict).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "performance.md"
SOURCE_SIZE = 256
MARKER = ".generated"
SAMPLE_EVERY_S = 0.2
BEGIN, END = "<!-- large_folder.py: begin -->", "<!-- large_folder.py: end -->"

SPEC = """\
name = "large-folder"
description = "Frozen ImageNet EfficientNet-Lite0 on {images:,} generated images stored at {size} px (benchmarks/large_folder.py)"
backbones = ["efficientnetlite0"]

[strategies.frozen]
unfreeze = 0
epochs = {epochs}
trials = {trials}

[data]
source = "folder"
dir = "{folder}"
image_size = {size}
test_fraction = 0.2
validation_fraction = 0.1
seed = 0
augment = {{ flip = false, crop_padding = 0 }}

[backbone]
weights = "imagenet"
image_size = {size}

[head]
pooling = "avg"
dense_units = 0
dropout = 0.0

[training]
optimizer = "adamw"
learning_rate = 1e-3
weight_decay = 1e-4
batch_size = 64
epochs = {epochs}
seed = 0

[search]
trials = {trials}
sampler_seed = 0
pruner = "none"
space = {{ learning_rate = {{ low = 3e-4, high = 3e-3 }} }}
"""


def generate(folder: Path, images: int, classes: int) -> float:
    """The folder of `images` JPEGs in `classes` class folders; reused if its marker matches.
    Returns the seconds spent writing (0 when reused)."""
    from PIL import Image

    wanted = f"{images} {classes} {SOURCE_SIZE}"
    marker = folder / MARKER
    if marker.is_file() and marker.read_text() == wanted:
        return 0.0
    if folder.exists():
        shutil.rmtree(folder)
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    colours = rng.integers(30, 226, size=(classes, 3))
    for c in range(classes):
        (folder / f"class_{c:03d}").mkdir(parents=True)
    for i in range(images):
        c = i % classes
        noise = rng.integers(-30, 31, size=(SOURCE_SIZE // 4, SOURCE_SIZE // 4, 3), dtype=np.int16)
        small = np.clip(colours[c] + noise, 0, 255).astype(np.uint8)  # coarse noise: quick to make and to compress
        Image.fromarray(small).resize((SOURCE_SIZE, SOURCE_SIZE), Image.Resampling.NEAREST).save(
            folder / f"class_{c:03d}" / f"{i:06d}.jpg", quality=85)
        if (i + 1) % 5000 == 0:
            print(f"generated {i + 1:,}/{images:,} images", flush=True)
    marker.write_text(wanted)
    return time.perf_counter() - started


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_sweep(spec_file: Path, work: Path) -> dict:
    """The sweep in a subprocess, its output echoed and timestamped, its tree's RSS sampled."""
    env = {**os.environ, "BENCHMARK_STORE": str(work / "mlruns"), "BENCHMARK_CACHE_DIR": str(work / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("BENCHMARK_OPTUNA_STORAGE", None)
    command = [sys.executable, "-m", "benchmark", "sweep", "--experiment", str(spec_file), "--quiet"]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in child.stdout:
            lines.append((time.perf_counter() - started, line.rstrip()))
            print(f"  | {line.rstrip()}", flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    process, samples, decoding_span = psutil.Process(child.pid), [], [None, None]
    images_cache = work / "cache" / "images"
    while child.poll() is None:
        now = time.perf_counter() - started
        samples.append((now, tree_rss(process)))
        if decoding_span[0] is None and any(images_cache.glob(".images-*.partial")):
            decoding_span[0] = now
        if decoding_span[1] is None and any(images_cache.glob("images-*")):
            decoding_span[1] = now
        time.sleep(SAMPLE_EVERY_S)
    wall = time.perf_counter() - started
    reader.join(timeout=10)
    if child.returncode != 0:
        raise SystemExit(f"the sweep failed (exit {child.returncode}); its output is above")
    return {"wall_s": wall, "samples": samples, "lines": lines, "decoding_span": decoding_span}


def decoding(span: list, images: int) -> tuple[float, float]:
    """(images/s, seconds from the sweep's start until decoding ended) from when the image cache's
    partial folder appeared and its finished folder did (the bar of decoding is terminal-only)."""
    began, ended = span
    if began is None or ended is None or ended <= began:
        return float("nan"), ended or 0.0
    return images / (ended - began), ended


def write_docs(command: str, result: dict) -> None:
    block = "\n".join([BEGIN, "", "## Memory on a folder larger than memory", "", "```bash", command, "```", "",
                       *result["doc_lines"], "", END])
    text = DOC.read_text()
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "benchmark-large-folder")
    parser.add_argument("--docs", action="store_true", help="write the numbers to docs/performance.md")
    args = parser.parse_args()

    folder = args.folder / f"{args.images}-images"
    generating_s = generate(folder, args.images, args.classes)
    print(f"folder {folder}: {args.images:,} images, {args.classes} classes"
          + (f" (generated in {generating_s:.0f} s)" if generating_s else " (reused)"), flush=True)
    stored_gb = args.images * args.image_size ** 2 * 3 / 1e9
    with tempfile.TemporaryDirectory(prefix="benchmark-large-folder-run-") as tmp:
        work = Path(tmp)
        spec_file = work / "large-folder.toml"
        spec_file.write_text(SPEC.format(images=args.images, size=args.image_size, folder=folder.as_posix(),
                                         trials=args.trials, epochs=args.epochs))
        result = run_sweep(spec_file, work)
    rate, decoded_at = decoding(result["decoding_span"], args.images)
    samples = result["samples"]
    peak = max(rss for _, rss in samples)
    peak_decoding = max((rss for t, rss in samples if t <= decoded_at), default=0)
    peak_after = max((rss for t, rss in samples if t > decoded_at), default=0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    summary = [
        f"images stored: {args.images:,} at {args.image_size} px = {stored_gb:.2f} GB as uint8 "
        f"({args.classes} classes, 256x256 JPEGs, flat folder: test and validation carved)",
        f"decoding: {rate:,.0f} images/s on {cores} cores (ended {decoded_at:.0f} s into the sweep)",
        f"sweep wall time ({args.trials} frozen trials, {args.epochs} epochs each, fresh caches): {result['wall_s']:.0f} s",
        f"peak RSS of the sweep's process tree: {peak / 1e9:.2f} GB (while decoding: {peak_decoding / 1e9:.2f} GB, "
        f"after: {peak_after / 1e9:.2f} GB); goal < 2.5 GB: {'met' if peak < 2.5e9 else 'NOT met'}",
    ]
    print("\n" + "\n".join(summary))
    if args.docs:
        command = "python benchmarks/large_folder.py" + ("" if args.images == 20_000 else f" --images {args.images}") \
                  + ("" if args.image_size == 224 else f" --image-size {args.image_size}") + " --docs"
        result["doc_lines"] = [
            f"Measured {time.strftime('%Y-%m-%d')} on {cores} CPU cores, no GPU: a frozen sweep "
            f"(`python -m benchmark sweep`) of ImageNet EfficientNet-Lite0 on a generated folder of own images, in a "
            f"fresh store and image/feature cache, its process tree's resident memory sampled every "
            f"{SAMPLE_EVERY_S} s (children summed).",
            "",
            "| | |", "|---|---|",
            f"| images stored | {args.images:,} at {args.image_size} px: {stored_gb:.2f} GB as uint8 |",
            f"| decoding (2 spawned workers) | {rate:,.0f} images/s |",
            f"| sweep wall time ({args.trials} trials, {args.epochs} epochs each; decoding and the feature pass included) "
            f"| {result['wall_s']:.0f} s |",
            f"| peak RSS, process tree | **{peak / 1e9:.2f} GB** (decoding {peak_decoding / 1e9:.2f} GB, "
            f"then {peak_after / 1e9:.2f} GB); goal < 2.5 GB |",
            "",
            "The splits of own images are row numbers into the image cache (`benchmark.data.Rows`), read with "
            "positional reads rather than through a memory map (a mapped page, once read, counts as resident "
            "memory); the feature pass predicts a chunk of whole batches (32 MiB of input; at most 64 images of 160 px a batch) at a time into one "
            "preallocated output (`benchmark.measure.predict`), and uncached training reads shuffled batches "
            "(`benchmark.train.ImageBatches`).",
        ]
        write_docs(command, result)
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
