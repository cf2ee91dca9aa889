"""Command line: a thin layer over the library. `python -m benchmark --help`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported: its C++ log lines are noise here
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per artifact read buries the output

from benchmark.errors import BenchmarkError, tensorflow_start_up_silenced  # noqa: E402


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def unfreeze_depth(text: str) -> int | str:
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be a layer count >= 0 or "all", got {text!r}') from None
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be a layer count >= 0 or "all", got {text}')
    return value


def add_trial_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", default="quick", help="experiment name in experiments/ or a .toml path (default: quick)")
    parser.add_argument("--backbone", required=True, help="registry name, e.g. vgg16 (see `backbones`)")
    parser.add_argument("--strategy", help="strategy name from the spec (default: its first)")
    parser.add_argument("--data-dir", help="CIFAR-100 in the official cifar-100-python layout (overrides the spec)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines (for CI logs)")


class OneLineErrors(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (like every other error here), not a usage dump."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="python -m benchmark", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sweep = commands.add_parser("sweep", help="Optuna search of learning rate and unfreeze depth, tracked in MLflow")
    add_trial_arguments(sweep)
    sweep.add_argument("--trials", type=positive_int, help="target number of finished trials in the study")
    sweep.add_argument("--timeout", type=positive_float, help="stop starting trials after this many seconds")
    sweep.add_argument("--storage", help="Optuna storage URL (default: $BENCHMARK_OPTUNA_STORAGE or mlruns/optuna.db)")
    sweep.set_defaults(handler=command_sweep)

    run = commands.add_parser("run", help="train and measure one configuration, tracked in MLflow")
    add_trial_arguments(run)
    run.add_argument("--lr", type=positive_float, help="learning rate (default: the spec's)")
    run.add_argument("--unfreeze", type=unfreeze_depth, help='top N weighted layers to train, 0 or "all"')
    run.set_defaults(handler=command_run)

    board = commands.add_parser("leaderboard", help="best trial per backbone x strategy, with plots and an HTML report")
    board.add_argument("--experiment", default="quick", help="experiment name (default: quick)")
    board.add_argument("--format", default="table", choices=("table", "markdown", "csv", "json", "html"),
                       help="table (terminal), markdown, csv, json, or html (one self-contained page)")
    board.add_argument("--output", type=Path, help="write here instead of stdout; plots go in PATH's folder too")
    board.add_argument("--plots", action=argparse.BooleanOptionalAction, default=None,
                       help="draw the plots and log them to MLflow (default: with --output or --format html)")
    board.add_argument("--storage", help="Optuna storage of the studies (default: $BENCHMARK_OPTUNA_STORAGE or mlruns/optuna.db)")
    board.set_defaults(handler=command_leaderboard)

    check = commands.add_parser("check", help="compare results with the stored baseline; exit 1 on a regression")
    check.add_argument("--experiment", default="quick", help="experiment name (default: quick)")
    check.add_argument("--baseline", type=Path, help="baseline file (default: experiments/baselines/EXPERIMENT.json)")
    check.add_argument("--update", action="store_true", help="rewrite the baseline from the current results")
    check.add_argument("--format", default="table", choices=("table", "markdown"), help="the comparison table's format")
    check.set_defaults(handler=command_check)

    speed = commands.add_parser("throughput", help="inference and training images/s of one backbone (like timm's benchmark.py)")
    speed.add_argument("--backbone", required=True, help="registry name, e.g. resnet50 (see `backbones`)")
    speed.add_argument("--image-size", type=positive_int, required=True, help="pixels the backbone sees, e.g. 224")
    speed.add_argument("--batch-size", type=positive_int, default=64, help="images per step (default: 64)")
    speed.add_argument("--precision", default="auto", choices=("auto", "off", "bf16", "fp16"),
                       help="mixed precision as in a spec (default: auto = bf16 on GPU, off on CPU)")
    speed.add_argument("--jit", default="auto", choices=("auto", "on", "off"), help="XLA (default: auto = on for GPU only)")
    speed.add_argument("--unfreeze", type=unfreeze_depth, default="all",
                       help='top N weighted layers to train, 0 or "all" (default)')
    speed.add_argument("--warmup", type=non_negative_int, default=3, help="untimed steps first (default: 3)")
    speed.add_argument("--steps", type=positive_int, default=10, help="timed steps; their median counts (default: 10)")
    speed.set_defaults(handler=command_throughput)

    backbones = commands.add_parser("backbones", help="list the supported backbones")
    backbones.add_argument("--fast", action="store_true", help="skip building each model (no parameter counts)")
    backbones.set_defaults(handler=command_backbones)
    return parser


def command_run(args) -> int:
    from benchmark import spec as specs

    experiment = specs.load_experiment(args.experiment)  # before TensorFlow loads: a bad spec is reported at once
    spec = experiment.resolve(args.backbone, args.strategy, args.data_dir)
    track, trial, _ = import_training_modules()
    unfreeze = args.unfreeze
    if unfreeze is None and spec.strategy.unfreeze == "search":
        unfreeze = experiment.search_space(spec.backbone.name, spec.strategy_name).unfreeze.low
        print(f"strategy '{spec.strategy_name}' searches its depth; using unfreeze={unfreeze} (set --unfreeze N)")
    spec = with_values(spec, learning_rate=args.lr, unfreeze=unfreeze)
    prepared = trial.prepare(spec)  # rejects bad data or depth before anything is recorded
    track.configure()
    name = f"{spec.experiment}-{spec.backbone.name}-{spec.strategy_name}"
    with track.trial_run(spec, "run", prepared.data.origin, run_name=name) as run:
        logger = track.EpochLogger(run.info.run_id).callback()
        result = trial.execute(prepared, callbacks=[logger], verbose=0 if args.quiet else 2)
        track.log_result(result, run.info.run_id)
    print(format_metrics(result.metrics))
    print(f"logged to MLflow run {run.info.run_id} at {track.tracking_uri()}")
    return 0


def import_training_modules():
    """track, trial and sweep, which load TensorFlow: all three, even for a command that needs
    fewer. Each pulls in a part of TensorFlow that prints when it loads (oneDNN, the CUDA probe,
    cuInit); importing only what one command uses let some of those lines through (tested)."""
    with tensorflow_start_up_silenced():
        from benchmark import sweep, track, trial
    return track, trial, sweep


def with_values(spec, **values):
    from pydantic import ValidationError

    try:
        return spec.with_values(**values)
    except ValidationError as e:
        from benchmark.spec import describe_error

        raise BenchmarkError("; ".join(describe_error(err) for err in e.errors())) from None


def format_metrics(metrics: dict[str, float]) -> str:
    lines = []
    for key, value in metrics.items():
        shown = f"{value:.4f}" if "top" in key else f"{value:,.0f}" if key.startswith("params") else f"{value:.2f}"
        lines.append(f"  {key:<22} {shown}")
    return "\n".join(lines)


def command_sweep(args) -> int:
    from benchmark import spec as specs

    experiment = specs.load_experiment(args.experiment)
    sweep = import_training_modules()[2]
    result = sweep.run_sweep(
        experiment,
        args.backbone,
        strategy=args.strategy,
        trials=args.trials,
        timeout_s=args.timeout,
        storage=args.storage,
        data_dir=args.data_dir,
        verbose=0 if args.quiet else 2,
    )
    counts = ", ".join(f"{v} {k}" for k, v in result.counts.items())
    print(f"study {result.study.study_name}: {counts}; MLflow parent run {result.parent_run_id}")
    best = result.best_trial
    if best is None:
        print("no trial completed; see the FAILED runs' 'error' tag in MLflow")
        return 1
    params = " ".join(f"{k}={v}" for k, v in best.params.items())
    print(
        f"best trial #{best.number}: {params} best_val_top1={best.value:.4f} "
        f"test_top1={sweep.outcome(best)['test_top1']:.4f}"
    )
    return 0


def command_leaderboard(args) -> int:
    import tempfile

    from benchmark import leaderboard, track

    track.configure_for_reading()
    board = leaderboard.leaderboard(args.experiment)
    plots = args.plots if args.plots is not None else (args.output is not None or args.format == "html")
    if not plots:
        leaderboard.write(leaderboard.render(board, args.format), args.output)
        return 0
    from benchmark import report

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.output.parent / f"{args.output.stem}_plots" if args.output else Path(tmp)
        built = report.build_report(args.experiment, board, folder, storage=args.storage)
        text = report.html_page(args.experiment, built) if args.format == "html" else leaderboard.render(board, args.format)
        tables = {"leaderboard.csv": leaderboard.render(board, "csv"), "leaderboard.md": leaderboard.render(board, "markdown"),
                  "leaderboard.html": text if args.format == "html" else report.html_page(args.experiment, built)}
        run_id = report.log_report(args.experiment, built, tables)
        leaderboard.write(text, args.output)
    where = f"; plots in {folder}" if args.output else ""
    print(f"{len(built.figures)} plots logged to MLflow run {run_id}{where}", file=sys.stderr)
    for note in built.notes:
        print(f"not drawn: {note}", file=sys.stderr)
    return 0


def command_check(args) -> int:
    from benchmark import check, track

    track.configure_for_reading()
    return check.run_check(args.experiment, args.baseline, update=args.update, fmt=args.format)


def command_throughput(args) -> int:
    from benchmark import throughput  # TensorFlow loads on first use, not here

    spec = throughput.throughput_spec(args.backbone, args.image_size, args.batch_size, args.precision, args.jit, args.unfreeze)
    track = import_training_modules()[0]
    model = throughput.build(spec)  # rejects an unfreeze depth beyond the backbone before anything is recorded
    track.configure()
    result = throughput.measure_model(model, spec, args.warmup, args.steps)
    run_id = throughput.log_run(result)
    print(format_throughput(result))
    print(f"logged to MLflow run {run_id} at {track.display_uri()}")
    return 0


def format_throughput(result: dict) -> str:
    jit = "on" if result["jit_compile"] else "off"
    return "\n".join([
        f"{result['backbone']} at {result['image_size']} px, batch {result['batch_size']}, {result['dtype_policy']}, "
        f"jit {jit}, unfreeze {result['unfreeze']}, on {result['device']}",
        f"  params     {result['params_total']:,} ({result['params_trainable']:,} trainable)",
        f"  inference  {result['infer_images_per_sec']:,.1f} images/s  {result['infer_step_ms']:.1f} ms/step",
        f"  training   {result['train_images_per_sec']:,.1f} images/s  {result['train_step_ms']:.1f} ms/step",
        f"  median of {result['steps']} steps after {result['warmup']} warm-up, synthetic input",
    ])


def command_backbones(args) -> int:
    from benchmark import registry

    table = registry.describe_backbones(with_params=not args.fast)
    print(table.to_string(index=False))
    return 0


def show_optuna_tracebacks() -> None:
    import logging

    from benchmark import sweep

    for handler in logging.getLogger("optuna").handlers:
        handler.removeFilter(sweep.TRACEBACK_FILTER)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:
        show_optuna_tracebacks()
    try:
        return args.handler(args)
    except BenchmarkError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; finished trials are kept: rerun the same command to resume", file=sys.stderr)
        return 130
