"""Sweep trials in a child process, replaced every `trials_per_process` trials.

Why: TensorFlow keeps memory after `keras.backend.clear_session()` (measured here: ~70 MiB more
resident memory after every VGG16 trial in one process, without bound), and a trial that kills its
process (out of memory, a crash in native code) must fail alone, not end the sweep. Reusing one
child for several trials spreads the ~5 s cost of starting TensorFlow.

The child gets everything as plain data: it reopens the Optuna trial from the storage (so the
pruner works there) and logs into the MLflow run its parent created, by run id.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import optuna

from benchmark import mlflow_store, names, progress
from benchmark.data import Dataset, load_dataset
from benchmark.errors import quiet_tensorflow_by_default, tensorflow_start_up_silenced
from benchmark.spec import DataSpec, TrialSpec
from benchmark.storage import open_storage


@dataclass
class TrialJob:
    spec: TrialSpec
    run_id: str
    tracking_uri: str
    storage_url: str
    study_name: str
    trial_number: int
    pruner: optuna.pruners.BasePruner | None  # None: no pruning
    verbose: int
    keep_above: float | None = None  # the trial keeps its model if its value beats this (None: any value)
    progress: bool = True  # bars of its one-time work on a terminal (benchmark.progress); False: --quiet
    end_tags: dict[str, str] | None = None  # written with the trial's result (trial.run_tracked)


@dataclass
class JobResult:
    metrics: dict[str, float]
    model_path: str | None  # the saved model, if the trial kept it
    compute_s: float  # preparing, training and measuring; not logging
    started_at: float = 0.0  # when the job began in its process (time.time())
    process_start_s: float = 0.0  # starting the trial process (Python, TensorFlow), when this job did
    val_correct: str = ""  # which validation images the trial's model gets right (measure.pack_correct)
    one_time_s: float = 0.0  # work its process does once for all its trials (progress.once_per_process)


class TrialFailed(RuntimeError):
    """A trial's exception, carried back from its process by name and message."""


_datasets: dict[str, Dataset] = {}  # per process: a reused child loads its data once


def dataset_for(spec: DataSpec) -> Dataset:
    key = spec.model_dump_json()
    if key not in _datasets:
        _datasets.clear()
        with progress.once_per_process():
            _datasets[key] = load_dataset(spec)
    return _datasets[key]


_studies: dict[tuple[str, str], optuna.Study] = {}  # per process and sweep: (storage URL, study name) -> the study


def study_of(job: TrialJob) -> optuna.Study:
    """The job's study, for its pruner, opened once per process and sweep: opening it anew for each
    trial made a database engine and checked its tables, and its pruner then read every trial of the
    study again (a cost that grew with the study); an open study's cache reads only what changed."""
    key = (job.storage_url, job.study_name)
    if key not in _studies:
        _studies.clear()
        _studies[key] = optuna.load_study(study_name=job.study_name,
                                          storage=open_storage(job.storage_url, heartbeat=False))
    study = _studies[key]
    study.pruner = job.pruner
    return study


WAIT_SLICE_S = 0.25


def stop_when_interrupted(interrupted: Callable[[], bool]):
    """A Keras callback for in-process trials: a Ctrl-C that Python dropped stops training at the
    next batch (the interrupt itself would only have been seen after the trial)."""
    import keras

    def check(batch, logs=None):
        if interrupted():
            raise KeyboardInterrupt

    return keras.callbacks.LambdaCallback(on_train_batch_end=check)


def run_job(job: TrialJob, data: Dataset | None = None, extra_callbacks=()) -> JobResult:
    """Prepare, then run the trial tracked in its run (trial.run_tracked). Runs in the child (or in-process)."""
    from benchmark.pruning import BatchedPruningCallback
    from benchmark.train import MONITOR
    from benchmark.trial import prepare, run_tracked

    started_at = time.time()
    mlflow_store.point_mlflow_at(job.tracking_uri)
    callbacks = list(extra_callbacks)
    if job.pruner is not None:
        study = study_of(job)
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, job.trial_number)
        callbacks.append(BatchedPruningCallback(study, trial_id, MONITOR))
    progress.take_one_time_s()  # what a pruned or failed trial left there is not this one's
    started = time.perf_counter()
    try:
        with progress.hidden_unless(job.progress):
            prepared = prepare(job.spec, data or dataset_for(job.spec.data))
            preparing_s = time.perf_counter() - started
            record = run_tracked(prepared, job.run_id, keep=lambda metrics: job.keep_above is None or
                                 metrics[names.OBJECTIVE] > job.keep_above, callbacks=callbacks, verbose=job.verbose,
                                 end_tags=job.end_tags)
    except optuna.TrialPruned:
        raise
    except Exception as e:
        raise TrialFailed(f"{type(e).__name__}: {e}") from None
    return JobResult(metrics=record.metrics, model_path=str(record.model_path) if record.model_path else None,
                     compute_s=preparing_s + record.compute_s, started_at=started_at, val_correct=record.val_correct,
                     one_time_s=record.one_time_s)


def start_trial_process() -> None:
    """Linux: the kernel kills the trial process when the sweep's process dies (even by SIGKILL),
    instead of leaving it training into a run nobody owns. Then TensorFlow loads, without its noise."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: a killed sweep's trial process ends when its queue closes
        pass
    progress.below_the_sweeps_bar()
    quiet_tensorflow_by_default()
    with tensorflow_start_up_silenced():
        import keras  # noqa: F401  (loads TensorFlow once, quietly, for all of this process's trials)


@contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Starting a trial process with Ctrl-C kept out of it and off this thread until it has started.

    SIGINT is blocked in this thread, and so in the threads and processes it starts meanwhile (a
    signal mask is inherited by both, across exec too): a trial process is born with Ctrl-C
    blocked, so a Ctrl-C at any moment of its life is the sweep's alone to handle (the sweep
    terminates it: TrialRunner.stop). The Python handler is deferred too: the kernel may hand the
    signal to another thread, and the handler would then interrupt this one halfway through
    sending the new process its start-up data (it then dies with a traceback). It runs at the end."""
    main = threading.current_thread() is threading.main_thread()
    received: list[int] = []
    handler = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum)) if main else None
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if main:
            signal.signal(signal.SIGINT, handler)
            if received and callable(handler):
                handler(signal.SIGINT, None)
            elif received and handler == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)


class TrialRunner:
    """Runs jobs in a reused child process (or in this one, with trials_per_process = 0)."""

    def __init__(self, trials_per_process: int, data: Dataset, interrupted: Callable[[], bool] = lambda: False):
        self.trials_per_process = trials_per_process
        self.data = data  # for in-process runs; children load their own
        self.interrupted = interrupted  # a Ctrl-C that Python dropped: stop the trial anyway
        self.pool: ProcessPoolExecutor | None = None
        self.jobs_in_process = 0

    @property
    def isolated(self) -> bool:
        return self.trials_per_process > 0

    def run(self, job: TrialJob) -> JobResult:
        if not self.isolated:
            return run_job(job, self.data, extra_callbacks=[stop_when_interrupted(self.interrupted)])
        if self.pool is None:
            self.pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),  # forking a process that runs TF is unsafe
                max_tasks_per_child=self.trials_per_process,
                initializer=start_trial_process,
            )
        submitted = time.time()
        new_process = self.jobs_in_process % self.trials_per_process == 0
        self.jobs_in_process += 1
        with ctrl_c_deferred():  # the pool starts its process and its manager thread in submit()
            future = self.pool.submit(run_job, job)
        try:
            result = self.wait_for(future)
        except BrokenProcessPool:
            self.pool, self.jobs_in_process = None, 0
            raise TrialFailed(
                "the trial's process died (killed for memory, or a crash in native code); "
                "lower training.batch_size or the image size"
            ) from None
        if new_process:
            result.process_start_s = result.started_at - submitted
        return result

    def wait_for(self, future: Future) -> JobResult:
        """The job's result. Waits in short slices: a Ctrl-C that the kernel handed to another
        thread runs its Python handler only when this (main) thread next runs Python code."""
        while True:
            try:
                return future.result(timeout=WAIT_SLICE_S)
            except FutureTimeout:
                if self.interrupted():
                    raise KeyboardInterrupt from None

    def stop(self) -> None:
        """Ctrl-C: end the trial process now (it never sees the Ctrl-C itself: ctrl_c_deferred)."""
        if self.pool is None:
            return
        if hasattr(self.pool, "terminate_workers"):  # Python 3.14
            self.pool.terminate_workers()
        else:
            for process in list(getattr(self.pool, "_processes", {}).values()):
                process.terminate()
        self.close()

    def close(self) -> None:
        _studies.clear()  # the next sweep of this process may open another storage at the same URL
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
