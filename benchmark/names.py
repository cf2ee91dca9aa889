"""Every name the benchmark tracks, in MLflow and in Optuna's study storage; change them here only.

The sweep, the parent run, the leaderboard, the report, confirm and the regression checks write
and read these names through the constants below. A store written before a name changed no longer
reads the same, so a change here is a change of the store's format. Nothing here imports MLflow
(nor any module that does): reading a name costs nothing.
  params       LOGGED_PARAMS of the flattened TrialSpec (data.*, backbone.*, strategy.*, head.*, training.*,
               experiment) and every searchable hyperparameter's (hparams.TABLE); the whole spec is the
               ARTIFACT_SPEC artifact, its hash TAG_TRIAL_SPEC_FINGERPRINT; PARAM_* are the ones the code reads back
  metrics      per epoch (step = epoch, counted from 1 like best_epoch and Keras's log): EPOCH_METRICS
               once per run: FINAL_METRICS (accuracies are fractions in [0, 1]); with 5 classes or
               fewer a trial logs none of TOP5_METRICS (top-5 would always be 1)
               on a study's parent run: PROGRESS_METRICS, COMPUTE_METRIC, best_param_metric(<param>)
               on a `throughput` run: THROUGHPUT_METRICS
  tags         TAGS on every trial's run, the other TAG_*, version_tag(<package>) and, on a parent run,
               best_param_tag(<param>); TAG_ROLE takes a ROLE_* value, TAG_MODEL a MODEL_* value
  artifacts    the ARTIFACT_* names
  experiments  experiment_name(<spec's name>), each tagged with EXPERIMENT_KIND and, once a sweep ran,
               shared_view_tag(SHARED_VIEW_KEY): what the MLflow UI's runs table shows
  study attrs  Optuna user attrs of a study and its trials (ATTR_*); ATTR_OUTCOME holds TEST_TOP1 and OUTCOME_*
  columns      metric_column, param_column, tag_column: a name's column in mlflow.search_runs' table;
               tags_filter: a search_runs filter on tags
"""

from __future__ import annotations

# ---------------------------------------------------------------- params

PARAM_LEARNING_RATE = "training.learning_rate"
PARAM_OPTIMIZER = "training.optimizer"
PARAM_UNFREEZE = "strategy.unfreeze"
PARAM_DATA_SOURCE = "data.source"
PARAM_LABEL_MODE = "data.label_mode"
# What a run logs as params besides the searchable hyperparameters: what identifies a trial (backbone,
# strategy, image size, weights, the data's source, split and sizes, the seeds) and how it trains,
# about 30 names a person reads in the UI. The rest of the spec (cache, precision, patience...)
# is in the run's ARTIFACT_SPEC; the synthetic sizes are logged on synthetic data only.
LOGGED_PARAMS = (
    "experiment", "backbone.name", "strategy_name", "backbone.image_size", "backbone.weights",
    PARAM_DATA_SOURCE, PARAM_LABEL_MODE, "data.validation_fraction", "data.subset.train", "data.subset.validation",
    "data.subset.test", "data.synthetic.train_size", "data.synthetic.test_size", "data.seed", "training.seed",
    PARAM_OPTIMIZER, "training.epochs", "training.batch_size", "strategy.schedule",
)  # fmt: skip
SYNTHETIC_PARAMS = ("data.synthetic.train_size", "data.synthetic.test_size")

# ---------------------------------------------------------------- metrics

EPOCH_METRICS = ("loss", "top1", "top5", "val_loss", "val_top1", "val_top5", "learning_rate")
TOP5_EPOCH_METRICS = ("top5", "val_top5")
BEST_VAL_TOP1 = "best_val_top1"  # validation top-1 at the best epoch
OBJECTIVE = BEST_VAL_TOP1  # what a sweep maximises
BEST_VAL_TOP5 = "best_val_top5"
BEST_EPOCH = "best_epoch"
LAST_VAL_TOP1, LAST_VAL_TOP5 = "last_val_top1", "last_val_top5"
TEST_TOP1, TEST_TOP5 = "test_top1", "test_top5"  # measured on the model of the best validation epoch
TEST_BALANCED_ACCURACY = "test_balanced_accuracy"  # the mean of the per-class recalls on the test split
PARAMS_TOTAL, PARAMS_TRAINABLE = "params_total", "params_trainable"
MODEL_SIZE_MB = "model_size_mb"  # the saved .keras file
INFER_IMAGES_PER_SEC, TRAIN_IMAGES_PER_SEC = "infer_images_per_sec", "train_images_per_sec"
TRAIN_S = "train_s"  # training's wall time: every phase, validation included (not the feature pass)
WALL_TIME_S = "wall_time_s"
EPOCHS_RUN = "epochs_run"
BACKBONE_DEPTH = "backbone_depth"
FEATURES_S = "features_s"  # computing or reading cached backbone features (0 when the trial does not use them)
FINAL_METRICS = (
    BEST_VAL_TOP1, BEST_VAL_TOP5, BEST_EPOCH, LAST_VAL_TOP1, LAST_VAL_TOP5, TEST_TOP1, TEST_TOP5,
    TEST_BALANCED_ACCURACY, PARAMS_TOTAL, PARAMS_TRAINABLE, MODEL_SIZE_MB, INFER_IMAGES_PER_SEC, TRAIN_IMAGES_PER_SEC,
    TRAIN_S, WALL_TIME_S, EPOCHS_RUN, BACKBONE_DEPTH, FEATURES_S,
)  # fmt: skip
TOP5_METRICS = (BEST_VAL_TOP5, LAST_VAL_TOP5, TEST_TOP5)  # logged only with more than 5 classes
PROGRESS_METRICS = {"complete": "trials_complete", "pruned": "trials_pruned", "failed": "trials_failed",
                    "interrupted": "trials_interrupted"}
COMPUTE_METRIC = "trials_compute_s"  # all of a study's trials, wall time
INFER_STEP_MS, TRAIN_STEP_MS = "infer_step_ms", "train_step_ms"
THROUGHPUT_METRICS = (INFER_IMAGES_PER_SEC, INFER_STEP_MS, TRAIN_IMAGES_PER_SEC, TRAIN_STEP_MS, PARAMS_TOTAL,
                      PARAMS_TRAINABLE)


def best_param_metric(param: str) -> str:
    """A parent run's metric of its best trial's (numeric) searched value."""
    return f"best_{param}"


# ---------------------------------------------------------------- tags

TAG_BACKBONE, TAG_STRATEGY, TAG_EXPERIMENT, TAG_ROLE = "backbone", "strategy", "experiment", "role"
TAG_GIT_COMMIT, TAG_DEVICE, TAG_DATA_ORIGIN = "git_commit", "device", "data_origin"
TAG_FEATURE_CACHE = "feature_cache"  # "hit", "miss" (computed and saved) or "off: <why>" (benchmark/plan.py)
TAGS = (TAG_BACKBONE, TAG_STRATEGY, TAG_EXPERIMENT, TAG_ROLE, TAG_GIT_COMMIT, TAG_DEVICE, TAG_DATA_ORIGIN,
        TAG_FEATURE_CACHE)
ROLE_RUN, ROLE_SWEEP, ROLE_TRIAL, ROLE_CONFIRM, ROLE_REPORT, ROLE_THROUGHPUT = (
    "run", "sweep", "trial", "confirm", "report", "throughput")
TAG_STUDY = "study_name"  # a study's parent run and each of its trials
TAG_TRIAL_NUMBER = "trial_number"
TAG_TRIAL_STATE = "trial_state"  # RUNNING, then Optuna's COMPLETE, PRUNED or FAIL, or INTERRUPTED (Ctrl-C)
TRIAL_STATE_INTERRUPTED = "INTERRUPTED"
TAG_ERROR = "error"  # why a run failed
TAG_BEST_RUN = "best_run_id"  # on a parent run: its best trial's run
TAG_BEST_TRIAL = "best_trial_number"
TAG_BEST_MODEL_URI = "best_model_uri"  # on a parent run: runs:/<best trial's run>/model, for mlflow.keras.load_model
TAG_BEST_MODEL_TRIAL = "best_model_trial"
TAG_SPEC_FILE = "spec_file"  # a sweep's parent and trial runs: the spec file swept (absolute), for the defaults
TAG_RECIPE = "recipe_fingerprint"  # what the leaderboard matches a spec by (benchmark/study_identity.py)
TAG_SPEC_FINGERPRINT, TAG_DATA_FINGERPRINT, TAG_WEIGHTS_FINGERPRINT = "spec_fingerprint", "data_fingerprint", "weights_fingerprint"
TAG_TRIAL_SPEC_FINGERPRINT = "trial_spec_fingerprint"  # sha256 of the run's ARTIFACT_SPEC: its whole spec
TAG_CONFIRM_OF, TAG_CONFIRM_SEED, TAG_CONFIRM_RESPLIT = "confirm_of", "confirm_seed", "confirm_resplit"
TAG_UPDATED = "updated"  # when a report run was last rewritten
# on the parent run of a study on own images: images identical in two splits ("0", or "N groups: <examples>")
TAG_DUPLICATES = "duplicates_across_splits"
TAG_PREFIX_CACHE = "prefix_cache"  # "hit"/"miss" (below <layer>) or "off: <why>" (benchmark/plan.py)
# on a parent run: its pair's state in a budget race ("racing", "worse p=0.002 @4", "converged @6", "budget"),
# and why it left (reason, finished trials then, p of the paired test against the leader)
TAG_RACE, TAG_RACE_REASON, TAG_RACE_TRIALS, TAG_RACE_P = "race", "race_reason", "race_trials", "race_p"
TAG_MODEL = "model"  # whether the run's artifacts hold its model (a sweep keeps its best search.keep_models)
MODEL_KEPT, MODEL_NOT_KEPT, MODEL_DROPPED = "kept", "not kept", "deleted: no longer among the study's best"
TAG_RUN_NAME = "mlflow.runName"  # MLflow's own: the name its UI shows (run_name below)
TAG_PARENT_RUN = "mlflow.parentRunId"  # MLflow's own: the run the UI nests a run under
TAG_FULL_NAME = "full_name"  # a run's unabridged name: its study's, with the trial number and repeat
VERSION_TAG_PREFIX = "versions."


def version_tag(package: str) -> str:
    """The tag of an installed package's version."""
    return f"{VERSION_TAG_PREFIX}{package}"


def best_param_tag(param: str) -> str:
    """A parent run's tag of its best trial's searched value (any type)."""
    return f"best.{param}"


# ---------------------------------------------------------------- run names

# The MLflow UI cuts a run's name after about 25 characters, so a name leads with what tells runs
# apart: "lite0 frozen ffb9701d" (a study's parent run: its fingerprint), "lite0 frozen #5" (a
# trial), "lite0 frozen #5 seed 2" (a repeat). The experiment is the MLflow experiment already;
# TAG_FULL_NAME keeps the unabridged name. Nothing finds a run by its name: every search is by tags.
BACKBONE_ABBREVIATIONS = (("efficientnetlite", "lite"), ("efficientnetv2", "effv2"), ("efficientnet", "eff"),
                          ("mobilenetv3", "mnv3"), ("mobilenetv2", "mnv2"))


def short_backbone(backbone: str) -> str:
    """'efficientnetlite0' -> 'lite0', 'mobilenetv3small' -> 'mnv3small'; others as they are."""
    for prefix, short in BACKBONE_ABBREVIATIONS:
        if backbone.startswith(prefix):
            return short + backbone.removeprefix(prefix)
    return backbone


def run_name(backbone: str, strategy: str, *, fingerprint: str = "", trial: int | None = None, seed: int | None = None,
             resplit: bool = False) -> str:
    """The name the UI shows: 'lite0 frozen ffb9701d', 'lite0 frozen #5', 'lite0 frozen #5 seed 2'."""
    parts = [short_backbone(backbone), strategy, fingerprint, "" if trial is None else f"#{trial}",
             "" if seed is None else f"seed {seed}", "resplit" if resplit else ""]
    return " ".join(part for part in parts if part)


def trial_full_name(study: str, trial: int) -> str:
    """A trial's unabridged name (TAG_FULL_NAME): 'transfer-efficientnetlite0-frozen-ffb9701d-t005'."""
    return f"{study}-t{trial:03d}"


# ---------------------------------------------------------------- artifacts

ARTIFACT_MODEL_DIR = "model"  # an MLflow Keras model, kept by a trial among its study's best search.keep_models
ARTIFACT_MODEL = f"{ARTIFACT_MODEL_DIR}/data/model.keras"  # its Keras file
ARTIFACT_CURVES = "learning_curves.png"  # runs that keep their model
ARTIFACT_PREDICTIONS = "test_predictions.npz"  # labels and top-5 predictions per test image, and the class names
ARTIFACT_PER_CLASS = "per_class.csv"  # per class of the test split: support, correct, recall, precision
ARTIFACT_HISTORY = "history.json"  # every epoch's logs
ARTIFACT_SPEC = "trial_spec.json"  # the resolved spec, to reload the trial's data
ARTIFACT_PLOTS = "plots"  # a report run's folder of PNGs

# ---------------------------------------------------------------- experiments

EXPERIMENT_PREFIX = "benchmark/"
THROUGHPUT_EXPERIMENT = "throughput"  # the `throughput` command's runs
# The experiment kind MLflow 3's UI knows for model training. The installed UI (3.17) still opens
# an experiment on its GenAI overview whatever this says (it follows the URL's workflowType, see
# mlflow_store.TRAINING_VIEW: tested in Chromium); the tag tells MLflow's own tools what kind of experiment it is.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_name(experiment: str) -> str:
    """The MLflow experiment of a spec's name."""
    return EXPERIMENT_PREFIX + experiment


SHARED_VIEW_KEY = "benchmark"  # the experiment's view in the MLflow UI (benchmark/mlflow_view.py)


def shared_view_tag(key: str) -> str:
    """The experiment tag from which MLflow's UI restores the view a link's viewStateShareKey names."""
    return f"mlflow.sharedViewState.{key}"


# ---------------------------------------------------------------- Optuna user attrs

ATTR_RUN_ID = "mlflow_run_id"  # a trial's MLflow run
ATTR_PARENT_RUN = "mlflow_parent_run_id"  # the study's parent run, once it exists
ATTR_OUTCOME = "outcome"  # what a finished trial recorded: TEST_TOP1 and the OUTCOME_* keys
OUTCOME_MODEL_SAVED, OUTCOME_COMPUTE_S, OUTCOME_PROCESS_START_S = "model_saved", "compute_s", "process_start_s"
OUTCOME_FEATURES_S = FEATURES_S  # the feature pass (or reading its cache): one-time work, not the trial's own
OUTCOME_VAL_CORRECT = "val_correct"  # which validation images it got right (measure.pack_correct): the race's paired test
OUTCOME_ONE_TIME_S = "one_time_s"  # other work done once per trial process (its frozen part, size and speed)
ATTR_ERROR = "error"  # a failed trial's one-line error
ATTR_INTERRUPTED = "interrupted"  # True on a trial Ctrl-C stopped: Optuna's FAIL state, counted apart from the failed
ATTR_WORKER = "worker"  # the host and pid running a trial
ATTR_WORKERS_STARTED = "workers_started"  # how many sweep processes have worked on the study
ATTR_RACE_EXIT = "race_exit"  # why a study left a budget race: {reason, trials, p, leader, at} (benchmark/race.py)
# what a new study records about itself: its pair, its fingerprints, its recipe
ATTR_PAIR, ATTR_FINGERPRINT, ATTR_RECIPE_FINGERPRINT, ATTR_RECIPE = "pair", "fingerprint", "recipe_fingerprint", "recipe"
ATTR_DATA_FINGERPRINT, ATTR_WEIGHTS_FINGERPRINT = "data_fingerprint", "weights_fingerprint"  # so the next study can say which changed

# ---------------------------------------------------------------- mlflow.search_runs' columns


def metric_column(name: str) -> str:
    return f"metrics.{name}"


def param_column(name: str) -> str:
    return f"params.{name}"


def tag_column(name: str) -> str:
    return f"tags.{name}"


def tags_filter(**tags: str) -> str:
    """An mlflow.search_runs filter on tags: tags_filter(role="sweep", study_name=name)."""
    return " and ".join(f"{tag_column(key)} = '{value}'" for key, value in tags.items())
