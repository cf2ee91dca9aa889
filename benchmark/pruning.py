"""Reporting a trial's epochs to Optuna's pruner without a storage round trip per epoch.

`optuna_integration.KerasPruningCallback` reports every epoch (`trial.report`: one storage
transaction) and asks the pruner (`trial.should_prune`, which already reads the trial's own values
from memory). A head on cached features runs tens of epochs a second, so the writes cost more than
the epochs. `BatchedTrial` keeps the values in memory as `report` does and writes them together,
in one transaction, at most every FLUSH_S, when the pruner stops the trial, and when training ends:
the pruner sees the same values at every epoch and decides as before; other workers and the
sampler see them at the latest FLUSH_S later (long epochs: as each ends, as before).
"""

from __future__ import annotations

import time
import warnings

import optuna
from optuna_integration import KerasPruningCallback

FLUSH_S = 2.0


class BatchedTrial(optuna.Trial):
    """An optuna.Trial whose `report` writes to the storage in batches (`flush`)."""

    def __init__(self, study: optuna.Study, trial_id: int):
        super().__init__(study, trial_id)
        self.pending: dict[int, float] = {}
        self.flushed = time.perf_counter()

    def report(self, value: float, step: int) -> None:
        value, step = float(value), int(step)
        if step < 0:
            raise ValueError(f"`{step=}` must be non-negative.")
        if step in self._cached_frozen_trial.intermediate_values:  # as Optuna: the first report of a step stands
            warnings.warn(f"The reported value is ignored because this `{step=}` is already reported.")
            return
        self._cached_frozen_trial.intermediate_values[step] = value  # what should_prune gives the pruner
        self.pending[step] = value
        if time.perf_counter() - self.flushed >= FLUSH_S:
            self.flush()

    def should_prune(self) -> bool:
        prune = super().should_prune()
        if prune:
            self.flush()  # a pruned trial's values are the sampler's evidence
        return prune

    def flush(self) -> None:
        if self.pending:
            write_intermediate_values(self.storage, self._trial_id, self.pending)
            self.pending = {}
        self.flushed = time.perf_counter()


def write_intermediate_values(storage: optuna.storages.BaseStorage, trial_id: int, values: dict[int, float]) -> None:
    """The values in one transaction on a relational storage; one write each on any other."""
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in a cache that writes through
    try:
        from optuna.storages._rdb.storage import _create_scoped_session

        write = backend._set_trial_intermediate_value_without_commit
        session_factory = backend.scoped_session
    except (ImportError, AttributeError):  # another storage, or an Optuna that renamed these
        for step, value in values.items():
            storage.set_trial_intermediate_value(trial_id, step, value)
        return
    with _create_scoped_session(session_factory, True) as session:
        for step, value in values.items():
            write(session, trial_id, step, value)


class BatchedPruningCallback(KerasPruningCallback):
    """KerasPruningCallback (the same reports, pruning decisions and messages) over a BatchedTrial;
    what is still pending is written when training ends."""

    def __init__(self, study: optuna.Study, trial_id: int, monitor: str):
        super().__init__(BatchedTrial(study, trial_id), monitor)

    def on_train_end(self, logs=None) -> None:
        self._trial.flush()
