"""Experiment-tracked transfer-learning benchmarks on CIFAR-100.

Data flows one way: spec -> data -> model -> train -> measure -> track -> report.

Words, used in one sense each in the code, the messages and the docs:
  experiment  a spec file in experiments/ (ExperimentSpec): backbones, strategies, data, training, search
  spec        a validated description: an ExperimentSpec, or the TrialSpec of one configuration
  strategy    how much of the backbone trains (unfreeze depth, one or two phases)
  pair        one backbone x strategy of an experiment
  study       the Optuna search of one pair for one version of its spec (named by its fingerprint)
  trial       one training and measurement of one configuration; in a study, an Optuna trial
  run         an MLflow run: a trial's record (role "trial"), a study's parent ("sweep"), a single
              `run` command ("run"), a seed repeat ("confirm"), a report ("report")
  row         a leaderboard line: the best trial of a pair's current study, or its best single run

The modules, in the order data flows through them:
  spec            pydantic specs of experiments and trials; every field checked where it enters
  hparams         the searchable hyperparameters: one table that the search space, the sweep and the parent run derive from
  data            CIFAR-100 (Keras download, an official folder, the packaged slice, synthetic), split and subsets
  images          own images (class folders or a labels CSV): indexed, checked, decoded once into a memory-mapped cache
  registry        the backbones: how to build, preprocess and unfreeze each; their depth and size
  lite            EfficientNet-Lite0/1/2 in Keras layers
  checkpoint      reads PyTorch checkpoints without torch (Lite's ImageNet weights)
  keras_cache     where Keras keeps downloaded (and Lite's converted) ImageNet weights
  model           a trial's Keras model: preprocessing, backbone, head
  plan            a trial's plan, decided once: the solver, and what each phase fits (images, cached features or activations)
  cache           the activation cache: pooled features and a cut's activations, computed once, memory-mapped
  train           fitting each phase of the plan: callbacks, the history of every epoch
  measure         top-1/top-5, balanced and per-class accuracy, parameter counts, size, throughput of a model
  throughput      the `throughput` command: one backbone's images/s (and check's re-measurement)
  runtime         device, accelerator defaults, seeds, versions (the only backend-specific code)
  names           the name of every tracked param, metric, tag, artifact and Optuna user attr (no MLflow)
  mlflow_store    the MLflow store: where runs go, links into its UI, its checks and creation lock
  mlflow_view     what the MLflow UI opens on: each experiment's shared view, the compare links
  track           MLflow run logging: a trial's run, its epochs, final metrics, artifacts and model
  trial           one trial: prepare, train, measure; run_tracked runs it inside its MLflow run
  isolation       trials in a child process, replaced every few trials
  storage         Optuna storage URLs: open, time out
  pruning         epoch reports to Optuna's pruner, written in batches (KerasPruningCallback over a BatchedTrial)
  study_identity  a study's fingerprint: recipe, data and weights
  parent_run      a study's MLflow parent run: created once, updated after each trial, summarised at the end
  sweep           Optuna studies of an experiment's pairs, each trial tracked in MLflow
  race            a budget race over the pairs: who gets the next trial, who leaves (worse, converged)
  leaderboard     the ranked rows, with intervals and significance against the best
  confirm         seed repeats of the top rows
  report          plots and the self-contained HTML page
  check           the leaderboard against a stored baseline
  errors          one-line errors and quiet native start-up
  redaction       no password or token in any message, log line or recorded value
  files           all-or-nothing writes of every file (and cache folder) the package writes
  progress        the bars of long one-time work (tqdm, terminal only), and the time a process spends on it
  cli             the command line over all of the above
"""

__version__ = "0.1.0"
