"""Command line of the benchmark: each command is a few lines over the library (`benchmark.sweep`,
`benchmark.leaderboard`, ...), which the tests call directly. `python -m benchmark --help`."""

from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per artifact read buries the output

from benchmark import names, progress  # noqa: E402
from benchmark.errors import BenchmarkError, quiet_tensorflow_by_default, tensorflow_start_up_silenced  # noqa: E402
from benchmark.redaction import redact, redact_log_records  # noqa: E402

quiet_tensorflow_by_default()


def positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be > 0 and finite, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def duration(text: str) -> str:
    from benchmark.spec import parse_duration

    try:
        parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def unfreeze_depth(text: str) -> int | str:
    from benchmark.registry import UnfreezeError, check_unfreeze  # a table: no Keras

    try:
        return check_unfreeze(text)
    except UnfreezeError:
        raise argparse.ArgumentTypeError(f'must be a layer count >= 0 or "all", got {text!r}') from None


def output_path(text: str) -> Path | None:
    """A file to write, or None for `-`: standard output."""
    return None if text == "-" else Path(text)


def name_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"must be a name or comma-separated names, got {text!r}")
    return names


EXPERIMENT_HELP = "experiment name in experiments/ or a .toml spec path (default: quick)"
LATEST_HELP = "experiment name in experiments/ or a .toml spec path (default: that of the store's most recent sweep)"


def add_trial_arguments(parser: argparse.ArgumentParser, many: bool = False) -> None:
    if many:  # a sweep starts something new: its default is fixed
        parser.add_argument("--experiment", default="quick", help=EXPERIMENT_HELP)
        parser.add_argument("--backbone", type=name_list,
                            help="registry name(s), e.g. vgg16 or vgg16,resnet50 (default: every backbone of the spec)")
        parser.add_argument("--strategy", type=name_list,
                            help="strategy name(s) from the spec (default: every strategy of the spec)")
    else:  # the others go on from what the user last swept
        parser.add_argument("--experiment", help=LATEST_HELP)
        parser.add_argument("--backbone", required=True, help="registry name, e.g. vgg16 (see `backbones`)")
        parser.add_argument("--strategy", help="strategy name from the spec (default: its first)")
    parser.add_argument("--data-dir", help="overrides the spec's data: the folder of images of a source = \"folder\" "
                        "spec, else CIFAR-100 in the official cifar-100-python layout")
    add_output_level(parser)


def add_output_level(parser: argparse.ArgumentParser) -> None:
    """Quiet by default (a line per trial, a progress bar on a terminal); -v adds Keras's line per
    epoch, --quiet drops the bar (for CI logs)."""
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-v", "--verbose", action="store_true", help="also Keras's line per epoch")
    level.add_argument("--quiet", action="store_true", help="no progress bar (for CI logs)")


def keras_verbosity(args) -> int:
    return 2 if args.verbose else 0  # 2: one line per epoch


class OneLineErrors(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (like every other error here), not a usage dump."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


DESCRIPTION = """\
Pick a pretrained backbone and a fine-tuning recipe for CIFAR-100, and defend the choice with
numbers: Optuna sweeps on a validation split, every trial tracked in MLflow, a leaderboard with
confidence intervals, and regression checks against stored baselines."""

EXAMPLES = """\
examples:
  python -m benchmark sweep --experiment transfer --backbone efficientnetlite0 --strategy frozen
  python -m benchmark leaderboard --experiment transfer --format html --output report/index.html
  python -m benchmark run --experiment ci --backbone vgg16 --lr 0.001 --unfreeze 0

`python -m benchmark COMMAND --help` describes a command and its options."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; command names and options in a column wide enough for
    `leaderboard` and `--image-size IMAGE_SIZE`."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=32, width=100)


def add_command(commands, name: str, summary: str, description: str, *examples: str) -> argparse.ArgumentParser:
    """A subcommand whose --help says what it does and shows how it is called."""
    epilog = "example" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(
        f"  python -m benchmark {example}" for example in examples)
    text = textwrap.fill(f"{summary[0].upper()}{summary[1:]}. {description}", width=100)
    return commands.add_parser(name, help=summary, description=text,
                               epilog=epilog, formatter_class=HelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="python -m benchmark", description=DESCRIPTION, epilog=EXAMPLES,
                           formatter_class=HelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    sweep = add_command(
        commands, "sweep", "search learning rate and unfreeze depth with Optuna, every trial tracked in MLflow",
        "Sweeps every backbone x strategy of an experiment (or those selected): one resumable Optuna study per "
        "pair and spec; rerunning the same command resumes it. Exits 1 when a pair ends short of its target.",
        "sweep --experiment transfer --backbone efficientnetlite0 --strategy frozen",
        "sweep --experiment transfer --trials 20          # every backbone x strategy",
        "sweep --experiment ci --storage postgresql://user@db/optuna   # many workers, one study")
    add_trial_arguments(sweep, many=True)
    sweep.add_argument("--trials", type=positive_int, help="target number of finished trials in the study")
    sweep.add_argument("--timeout", type=positive_float, help="stop starting trials after this many seconds")
    sweep.add_argument("--storage", help="Optuna storage URL (default: $BENCHMARK_OPTUNA_STORAGE or mlruns/optuna.db)")
    race = sweep.add_argument_group("a budget race over the pairs (instead of --trials per pair)")
    race.add_argument("--budget", type=duration, metavar="TIME",
                      help="trial time over all pairs, e.g. 20m, 90s, 1.5h; pairs worse than the leader or converged leave early")
    race.add_argument("--budget-trials", type=positive_int, metavar="N", help="finished trials over all pairs")
    sweep.set_defaults(handler=command_sweep)

    run = add_command(
        commands, "run", "train and measure one configuration, tracked in MLflow",
        "No search: the spec's values, or those given with --lr and --unfreeze.",
        "run --experiment ci --backbone vgg16 --lr 0.001 --unfreeze 0",
        "run --experiment transfer --backbone efficientnetlite0 --strategy top --unfreeze 10")
    add_trial_arguments(run)
    run.add_argument("--lr", type=positive_float, help="learning rate (default: the spec's)")
    run.add_argument("--unfreeze", type=unfreeze_depth, help='top N weighted layers to train, 0 or "all"')
    run.set_defaults(handler=command_run)

    board = add_command(
        commands, "leaderboard", "best trial per backbone x strategy, with plots and an HTML report",
        "Rows are ranked by validation top-1; test top-1 comes with a 95% interval and a paired test against "
        "the best row. Trains nothing; it keeps the experiment's saved view in the MLflow UI up to date and, with "
        "plots (--output or --format html), logs them to MLflow, in the experiment's one report run (replaced each time).",
        "leaderboard --experiment transfer",
        "leaderboard --experiment transfer --format html --output report/index.html")
    board.add_argument("--experiment", help=LATEST_HELP)
    board.add_argument("--superseded", action="store_true",
                       help="also list the studies of older versions of the spec (after the current rows)")
    board.add_argument("--format", default="table", choices=("table", "markdown", "csv", "json", "html"),
                       help="table (terminal), markdown, csv, json, or html (one page, the plots embedded)")
    board.add_argument("--output", type=output_path,
                       help="write here instead of stdout (`-`); the plots go beside it, in PATH_plots/, as PNG files")
    board.add_argument("--plots", action=argparse.BooleanOptionalAction, default=None,
                       help="draw the plots and log them to MLflow (default: with --output or --format html)")
    board.add_argument("--storage", help="Optuna storage of the studies (default: $BENCHMARK_OPTUNA_STORAGE or mlruns/optuna.db)")
    board.set_defaults(handler=command_leaderboard)

    check = add_command(
        commands, "check", "compare results with the stored baseline; exit 1 on a regression",
        "Each checked metric (accuracy, size, throughput) must stay within the tolerance the baseline file gives it.",
        "check --experiment ci",
        "check --experiment ci --update      # accept the current results as the new baseline")
    check.add_argument("--experiment", help=LATEST_HELP)
    check.add_argument("--baseline", type=Path, help="baseline file (default: experiments/baselines/EXPERIMENT.json)")
    check.add_argument("--update", action="store_true", help="rewrite the baseline from the current results")
    check.add_argument("--format", default="table", choices=("table", "markdown"), help="the comparison table's format")
    check.set_defaults(handler=command_check)

    confirm = add_command(
        commands, "confirm", "retrain the best configuration of the top rows with new seeds",
        "Shows whether a ranking survives a new seed (and, with --resplit, a new validation split); the "
        "leaderboard's seeds@1 column reports the repeats.",
        "confirm --experiment transfer --top 3 --seeds 3")
    confirm.add_argument("--experiment", help=LATEST_HELP)
    confirm.add_argument("--top", type=positive_int, default=3, help="how many leaderboard rows (default: 3)")
    confirm.add_argument("--seeds", type=positive_int, default=3, help="new training seeds per row (default: 3)")
    confirm.add_argument("--resplit", action="store_true", help="also draw a new validation split for each seed")
    add_output_level(confirm)
    confirm.set_defaults(handler=command_confirm)

    speed = add_command(
        commands, "throughput", "inference and training images/s of one backbone (like timm's benchmark.py)",
        "Synthetic input, random weights; the result is logged to MLflow.",
        "throughput --backbone resnet50 --image-size 224 --batch-size 64")
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

    export = add_command(
        commands, "export-sample", "write the packaged CIFAR-100 slice as PNG class folders",
        "DIR/train/<class>/*.png (1,117 images) and DIR/test/<class>/*.png (916): the layout of your own images "
        "(source = \"folder\"), to try it on known data first; experiments/folder-example.toml sweeps it.",
        "export-sample cifar100-sample-images",
        "sweep --experiment folder-example --backbone efficientnetlite0 --strategy frozen")
    export.add_argument("dir", type=Path, metavar="DIR", help="a new (or empty) folder to write the images into")
    export.set_defaults(handler=command_export_sample)

    backbones = add_command(
        commands, "backbones", "list the supported backbones with their depth and size",
        "Depth (weighted layers, what --unfreeze counts) and parameter counts come from the registry's table; "
        "--build measures them by building each model.",
        "backbones",
        "backbones --build")
    backbones.add_argument("--build", action="store_true", help="build each model to measure depth and parameters (slow)")
    backbones.set_defaults(handler=command_backbones)
    return parser


def experiment_or_latest(args, needs_spec: bool = False) -> str:
    """--experiment, or the experiment of the store's most recent sweep, said in one line (stderr:
    stdout may be a table): its name, or the spec file it was swept from where that name finds
    another spec or none (a sweep of `--experiment path/to/spec.toml`). A command that `needs_spec`
    (run, confirm) is refused in one line when neither is there any more."""
    if args.experiment is not None:
        return args.experiment
    from benchmark import leaderboard, mlflow_store

    mlflow_store.configure_for_reading()
    name, spec_file = leaderboard.latest_sweep()
    args.experiment = swept_spec(name, spec_file)
    if needs_spec and args.experiment == name and not spec_found(name):
        raise BenchmarkError(f"the most recent sweep's experiment {name} has no spec file here (it was swept from "
                             f"{spec_file or 'a file not recorded'}, which is gone or now names another experiment); "
                             f"pass --experiment with the spec's path")
    where = "" if args.experiment == name else f" from {args.experiment}"
    print(f"experiment {name}{where} (the most recent sweep's; --experiment NAME for another)", file=sys.stderr)
    return args.experiment


def swept_spec(name: str, spec_file: str | None) -> str:
    """The name, unless the spec file a sweep recorded still holds the spec of that name and the
    name alone would find another file (or none): then the file."""
    from benchmark import spec as specs

    if not spec_file or not Path(spec_file).is_file():
        return name
    if spec_found(name) and specs.find_experiment(name).resolve() == Path(spec_file).resolve():
        return name
    try:
        return spec_file if specs.load_experiment(spec_file).name == name else name
    except BenchmarkError:  # edited since into something else: the store's runs alone
        return name


def spec_found(name: str) -> bool:
    from benchmark import spec as specs

    try:
        specs.find_experiment(name)
        return True
    except BenchmarkError:
        return False


def command_run(args) -> int:
    import time

    from benchmark import registry, spec as specs

    registry.get_backbone(args.backbone)  # a typo'd name is refused at once, before the store or TensorFlow load
    experiment = specs.load_experiment(experiment_or_latest(args, needs_spec=True))  # before TensorFlow loads: a bad spec is reported at once
    spec = experiment.resolve(args.backbone, args.strategy, args.data_dir)
    from benchmark import mlflow_store, study_identity

    track, trial, _ = import_training_modules()
    unfreeze = args.unfreeze
    if unfreeze is None and spec.strategy.unfreeze == "search":
        unfreeze = experiment.search_space(spec.backbone.name, spec.strategy_name).unfreeze.low
        print(f"strategy '{spec.strategy_name}' searches its depth; using unfreeze={unfreeze} (set --unfreeze N)")
    recipe = study_identity.experiment_recipe(experiment, spec)  # the spec's, before --lr/--unfreeze: as the leaderboard matches it
    spec = with_values(spec, learning_rate=args.lr, unfreeze=unfreeze)
    with experiment.naming_its_file():
        prepared = trial.prepare(spec)  # rejects bad data or depth before anything is recorded
    mlflow_store.configure()
    full_name = f"{spec.experiment}-{spec.backbone.name}-{spec.strategy_name}-run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    name = names.run_name(spec.backbone.name, spec.strategy_name) + time.strftime(" run %H:%M:%S")
    tags = {names.TAG_RECIPE: recipe, names.TAG_FULL_NAME: full_name}
    data_input = track.dataset(spec.data, prepared.data.origin, study_identity.data_fingerprint(prepared.data))
    with track.open_run(spec, names.ROLE_RUN, prepared.data.origin, run_name=name, extra_tags=tags, data_input=data_input) as run:
        record = trial.run_tracked(prepared, run.info.run_id, keep=True, verbose=keras_verbosity(args))
        track.log_model(record.model_path, run.info.run_id)
    print(format_metrics(record.metrics))
    print(f"logged to MLflow run {run.info.run_id} at {mlflow_store.tracking_uri()}")
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
    pairs = specs.pairs_of(experiment, args.backbone, args.strategy)  # names checked before TensorFlow loads
    if racing(args, experiment):  # its own input errors before TensorFlow loads, too
        return race_pairs(args, experiment, pairs)
    sweep = import_training_modules()[2]
    options = dict(trials=args.trials, timeout_s=args.timeout, storage=args.storage, data_dir=args.data_dir,
                   verbose=keras_verbosity(args), progress_bar=not args.quiet)
    if len(pairs) == 1:  # one study: its input errors are the command's (exit 2)
        result = sweep.run_sweep(experiment, *pairs[0], **options)
        report_study(sweep, result)
        print_next_steps(args.experiment, experiment.name, [result])
        return 0 if result.reached else 1
    results = sweep.run_experiment(experiment, pairs, **options)
    errors = {pair.error for pair in results}
    if all(pair.result is None for pair in results) and len(errors) == 1:
        raise BenchmarkError(errors.pop())  # the same problem for every pair: one line, not one per pair
    print(f"experiment {experiment.name}: {sum(p.reached for p in results)} of {len(results)} pairs reached their target")
    for pair in results:
        print(f"  {pair.summary()}")
    print_leaderboard(experiment)
    print_next_steps(args.experiment, experiment.name, [pair.result for pair in results if pair.result is not None])
    return 0 if all(pair.reached for pair in results) else 1


def racing(args, experiment) -> bool:
    """A budget on the command line races; so does one in the spec, unless --trials asks for a grid."""
    if args.budget is not None or args.budget_trials is not None:
        if args.trials is not None or args.timeout is not None:
            raise BenchmarkError("--budget/--budget-trials share one budget over the pairs; drop --trials/--timeout "
                                 "(a pair's trials are what the race gives it)")
        return True
    race = experiment.search.race
    return args.trials is None and (race.budget is not None or race.budget_trials is not None)


def race_pairs(args, experiment, pairs) -> int:
    import_training_modules()  # TensorFlow, quietly
    from benchmark import race

    budget = race.Budget.of(experiment.search.race, args.budget, args.budget_trials)
    result = race.run_race(experiment, budget, pairs, storage=args.storage, data_dir=args.data_dir,
                           verbose=keras_verbosity(args), progress_bar=not args.quiet)
    print(f"experiment {experiment.name}: race over {len(pairs)} pairs ended by {result.ended_by}")
    for pair in result.pairs:
        print(f"  {pair.summary()} [{result.states[(pair.backbone, pair.strategy)]}]")
    print_leaderboard(experiment)
    print_next_steps(args.experiment, experiment.name, [pair.result for pair in result.pairs])
    return 0 if any(pair.reached for pair in result.pairs) else 1


def report_study(sweep, result) -> None:
    counts = ", ".join(f"{v} {k}" for k, v in result.counts.items() if v or k != "interrupted")
    print(f"study {result.study.study_name}: {counts}; MLflow parent run {result.parent_run_id}")
    if not result.reached:
        print(result.shortfall() + "; see the FAILED runs' 'error' tag in MLflow")
    best = result.best_trial
    if best is not None:
        params = sweep.format_params(best.params)
        print(f"best trial #{best.number}: {params} best_val_top1={best.value:.4f} "
              f"test_top1={sweep.parent_run.trial_record(best)[names.TEST_TOP1]:.4f}")


def print_leaderboard(experiment) -> None:
    from benchmark import leaderboard

    try:
        board = leaderboard.leaderboard(experiment)
    except BenchmarkError as e:  # nothing completed anywhere: the pair lines above say why
        print(f"no leaderboard yet: {e}")
        return
    print()
    print(leaderboard.render(board, "table"), end="")


def print_next_steps(argument: str, name: str, results: list = ()) -> None:
    """Where to look next: the report, the experiment's runs in the MLflow UI, and each study's
    trials side by side on MLflow's compare page."""
    from benchmark import leaderboard, mlflow_store, mlflow_view

    experiment_id = leaderboard.experiment_id_of(name)
    start = f"{mlflow_store.ui_command()}, then " if mlflow_store.ui_command() else ""
    print(f"next: python -m benchmark leaderboard --experiment {argument} --format html --output report/index.html"
          f" (the report); {start}open {mlflow_store.experiment_url(experiment_id)} (the runs in MLflow)")
    for result in results:
        url = mlflow_view.study_compare_url(experiment_id, result.study.study_name)
        if url:
            print(f"study {result.study.study_name}'s trials side by side: {url}")


def experiment_argument(text: str):
    """A spec path is loaded (its `name` is the MLflow experiment); a bare name is loaded when a
    spec of that name exists, and read from the store as it is otherwise."""
    from benchmark import spec as specs

    path = Path(text)
    if path.suffix == ".toml" or path.exists():
        return specs.load_experiment(path)
    return text


def command_leaderboard(args) -> int:
    import tempfile

    from benchmark import files, leaderboard, mlflow_store, mlflow_view

    experiment = experiment_argument(experiment_or_latest(args))
    if args.output is not None:
        files.check_target(args.output, "the leaderboard")  # before any work, and before anything is logged
    mlflow_store.configure_for_reading()
    board = leaderboard.leaderboard(experiment, superseded=args.superseded)
    name = leaderboard.spec_name(experiment)
    mlflow_view.update_if_writable(leaderboard.experiment_id_of(name))  # the view the links open
    plots = args.plots if args.plots is not None else (args.output is not None or args.format == "html")
    if not plots:
        text = report_page(name, board) if args.format == "html" else leaderboard.render(board, args.format)
        leaderboard.write(text, args.output)
        say_mlflow_links(args, name, board)
        return 0
    from benchmark import report

    with tempfile.TemporaryDirectory() as tmp:
        beside = args.output is not None and not files.writes_through(args.output)  # no folder beside a pipe or device
        folder = args.output.parent / f"{args.output.stem}_plots" if beside else Path(tmp)
        built = report.build_report(name, board, folder, storage=args.storage)
        text = report.html_page(name, built) if args.format == "html" else leaderboard.render(board, args.format)
        tables = {"leaderboard.csv": leaderboard.render(board, "csv"), "leaderboard.md": leaderboard.render(board, "markdown"),
                  "leaderboard.html": text if args.format == "html" else report.html_page(name, built)}
        leaderboard.write(text, args.output)  # the files first: nothing is logged about a report that was not written
        run_id = report.log_report(name, built, tables)
    where = f"; plots in {folder}" if beside else ""
    print(f"{len(built.figures)} plots logged to MLflow run {run_id}{where}", file=sys.stderr)
    for note in built.notes:
        print(f"not drawn: {note}", file=sys.stderr)
    say_mlflow_links(args, name, board)
    return 0


def say_mlflow_links(args, name: str, board) -> None:
    """After the table (the HTML page has the links itself), on stderr: stdout is the table."""
    from benchmark import leaderboard

    if args.format == "table":
        print("\n".join(leaderboard.ui_lines(name, board)), file=sys.stderr)


def report_page(name: str, board) -> str:
    """The HTML page without plots (--no-plots)."""
    from benchmark import report

    return report.html_page(name, report.Report(board=board, figures=[], notes=[]))


def command_check(args) -> int:
    from benchmark import check, mlflow_store

    experiment = experiment_argument(experiment_or_latest(args))
    mlflow_store.configure_for_reading()
    return check.run_check(experiment, args.baseline, update=args.update, fmt=args.format)


def command_confirm(args) -> int:
    from benchmark import spec as specs

    experiment = specs.load_experiment(experiment_or_latest(args, needs_spec=True))
    import_training_modules()  # TensorFlow's start-up lines, silenced
    from benchmark import confirm, mlflow_store

    mlflow_store.configure_for_reading()
    repeats = confirm.run_confirm(experiment, top=args.top, seeds=args.seeds, resplit=args.resplit,
                                  verbose=keras_verbosity(args))
    skipped = sum(r.skipped for r in repeats)
    if skipped:
        print(f"{skipped} repeat(s) already finished earlier: kept, not retrained")
    for line in confirm.summary(repeats):
        print(line)
    print(f"the leaderboard's seeds@1 column shows them: python -m benchmark leaderboard --experiment {args.experiment}")
    return 0


def command_throughput(args) -> int:
    from benchmark import throughput  # TensorFlow loads on first use, not here

    spec = throughput.throughput_spec(args.backbone, args.image_size, args.batch_size, args.precision, args.jit, args.unfreeze)
    import_training_modules()  # TensorFlow's start-up lines, silenced
    from benchmark import mlflow_store

    model = throughput.compiled_model(spec)  # rejects an unfreeze depth beyond the backbone before anything is recorded
    mlflow_store.configure()
    result = throughput.measure_model(model, spec, args.warmup, args.steps)
    run_id = throughput.log_run(result)
    print(format_throughput(result))
    print(f"logged to MLflow run {run_id} at {mlflow_store.display_uri()}")
    return 0


def format_throughput(result: dict) -> str:
    jit = "on" if result["jit_compile"] else "off"
    return "\n".join([
        f"{result['backbone']} at {result['image_size']} px, batch {result['batch_size']}, {result['dtype_policy']}, "
        f"jit {jit}, unfreeze {result['unfreeze']}, on {result['device']}",
        f"  params     {result[names.PARAMS_TOTAL]:,} ({result[names.PARAMS_TRAINABLE]:,} trainable)",
        f"  inference  {result[names.INFER_IMAGES_PER_SEC]:,.1f} images/s  {result[names.INFER_STEP_MS]:.1f} ms/step",
        f"  training   {result[names.TRAIN_IMAGES_PER_SEC]:,.1f} images/s  {result[names.TRAIN_STEP_MS]:.1f} ms/step",
        f"  median of {result['steps']} steps after {result['warmup']} warm-up, synthetic input",
    ])


def command_export_sample(args) -> int:
    from benchmark import data, images

    (x_train, y_train), (x_test, y_test), class_names = data.read_official_dir(data.SAMPLE_DIR, "fine")
    folder = images.export_official_as_folder(x_train, y_train, x_test, y_test, class_names, args.dir)
    print(f"wrote {len(y_train):,} train and {len(y_test):,} test images of {len(class_names)} classes to {folder}")
    print(f"next: python -m benchmark sweep --experiment folder-example --backbone efficientnetlite0 --strategy frozen "
          f"--data-dir {args.dir}")
    return 0


def command_backbones(args) -> int:
    from benchmark import registry

    if args.build:
        with tensorflow_start_up_silenced():
            import keras  # noqa: F401  (its start-up lines, once, out of sight)
    table = registry.describe_backbones(build=args.build)
    print(table.to_string(index=False))
    return 0


def show_optuna_tracebacks() -> None:
    import logging

    from benchmark import sweep

    for handler in logging.getLogger("optuna").handlers:
        handler.removeFilter(sweep.TRACEBACK_FILTER)


def main(argv: list[str] | None = None) -> int:
    redact_log_records()
    args = build_parser().parse_args(argv)
    if args.debug:
        show_optuna_tracebacks()
    try:
        with progress.hidden_unless(not getattr(args, "quiet", False)):  # --quiet: no bar of one-time work either
            return args.handler(args)
    except BenchmarkError as e:
        if args.debug:
            raise
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; finished trials are kept: rerun the same command to resume", file=sys.stderr)
        return 130
