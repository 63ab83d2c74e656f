"""Training callbacks that survive a kill at any instant, and say why a run stopped.

Keras' `ModelCheckpoint` and `BackupAndRestore` write their files in place:
a process killed during a save leaves a truncated file where a good one
was. `BackupAndRestore` also writes two files per backup (weights, then the
epoch number), so a kill between the two pairs new weights with the old
epoch. The callbacks here write every file through
`vlm.utils.atomic_files.atomic_write`, make one small JSON file the commit point of
a backup, and use Keras' public callback hooks only: a resumed `fit` is
told where to start with `initial_epoch=backup.initial_epoch`.
"""

import json
import math
import os
import time

import keras
import numpy as np
from keras import ops

from vlm.backend import global_rng_state
from vlm.backend import set_global_rng_state
from vlm.config import targets_met
from vlm.utils.atomic_files import atomic_write
from vlm.utils.atomic_files import write_json_atomically


def _is_finite(value):
    return value is None or math.isfinite(float(value))


class AtomicModelCheckpoint(keras.callbacks.Callback):
    """Saves the model after each epoch (or its best one) through `atomic_write`.

    The arguments are those of `keras.callbacks.ModelCheckpoint` that
    training uses. A kill during a save leaves the previous checkpoint in
    place, loadable. With `save_best_only`, an epoch whose monitored value is
    missing, NaN or infinite is never saved.

    Args:
        filepath: the file to write (`.keras`, or `.weights.h5` with
            `save_weights_only`).
        monitor: the log to compare epochs by.
        mode: "min", "max", or "auto" (max for names holding "acc", else min).
        save_best_only: save only an epoch better than every earlier one.
        save_weights_only: `model.save_weights` instead of `model.save`.
        initial_value_threshold: the value to beat at the first epoch (a
            resumed run's best so far), or None.
        verbose: 1 prints a line per save.

    Example:

    >>> best = AtomicModelCheckpoint("out/run.best.keras", monitor="val_loss",
    ...                              save_best_only=True)
    >>> model.fit(data, epochs=3, callbacks=[best])
    """

    def __init__(self, filepath, monitor="val_loss", mode="auto", save_best_only=False,
                 save_weights_only=False, initial_value_threshold=None, verbose=0):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"`mode` must be 'auto', 'min' or 'max'. Received: mode={mode!r}")
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.filepath = os.fspath(filepath)
        self.monitor, self.mode = monitor, mode
        self.save_best_only, self.save_weights_only = save_best_only, save_weights_only
        self.best = initial_value_threshold
        self.verbose = verbose

    def _improves(self, value):
        if value is None or not _is_finite(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if self.save_best_only:
            if not self._improves(value):
                return
            self.best = float(value)
        save = self.model.save_weights if self.save_weights_only else self.model.save
        atomic_write(self.filepath, lambda path: save(path, overwrite=True))
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: saved the model to {self.filepath}")


def read_backup(backup_dir):
    """The committed state of an `AtomicBackupAndRestore` folder, or None.

    Returns:
        None when `backup_dir` holds no committed backup, else a dict with
        `epoch` (epochs finished), `weights` (file name in `backup_dir`),
        `history` (per-epoch logs of the finished epochs), `seed_states`
        and `global_rng_state`. A backup Keras' `BackupAndRestore` wrote
        (`{"epoch": N, "batch": 0}` beside `latest.weights.h5`) reads as one
        with no logs and no random state.
    """
    path = os.path.join(backup_dir, AtomicBackupAndRestore.METADATA)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        state = json.load(f)
    return {"weights": "latest.weights.h5", "history": {}, "seed_states": [],
            "global_rng_state": None, **state}


class AtomicBackupAndRestore(keras.callbacks.Callback):
    """Like `keras.callbacks.BackupAndRestore`, with a backup consistent at any kill.

    At the end of each epoch the weights (model and optimizer, so the step
    count and the learning-rate schedule go on from there) go to a new file
    named after the epoch, through `atomic_write`. Then `training_metadata.json`,
    which names that file and carries the finished epochs' logs and the
    random state dropout draws from (the layers' seed states, and on PyTorch
    torch's global generator), replaces the old one: that rename is the commit.
    Older weight files are deleted after it. An epoch whose loss is not
    finite is not backed up, so a diverged run resumes from the last good
    epoch.

    At the start of `fit` the committed backup, if any, is loaded; pass
    `initial_epoch=backup.initial_epoch` to `fit` so that it starts at the
    epoch after it (a `fit` that starts elsewhere is refused at its first
    epoch, before any step). Unlike Keras' callback the backup is not
    deleted at the end of `fit`: delete it (`shutil.rmtree(backup_dir)`) once
    the final model is safely written, so a kill in between loses nothing.

    Args:
        backup_dir: folder for this run's backup only.

    Example:

    >>> backup = AtomicBackupAndRestore("logs/run/backup")
    >>> model.fit(data, epochs=10, initial_epoch=backup.initial_epoch,
    ...           callbacks=[backup])  # the same lines again after a kill
    >>> backup.history["loss"]  # all 10 epochs, restored ones included
    """

    METADATA = "training_metadata.json"

    def __init__(self, backup_dir):
        super().__init__()
        if not backup_dir:
            raise ValueError(
                f"`backup_dir` must name a folder. Received: backup_dir={backup_dir!r}")
        self.backup_dir = os.fspath(backup_dir)
        self.history = {}
        self.restored_epoch = 0
        self._rng_state = None
        self._rng_after_step = None
        self._checked_start = False

    def on_train_begin(self, logs=None):
        self._rng_state = global_rng_state()
        self._checked_start = False
        self.restored_epoch = 0
        state = read_backup(self.backup_dir)
        if state is None:
            return
        if not self.model.built:
            raise ValueError(
                "AtomicBackupAndRestore needs a built model to restore into. "
                f"Received: an unbuilt {self.model.__class__.__name__}"
            )
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, state["weights"]))
        seed_variables = self._seed_variables()
        if len(seed_variables) == len(state["seed_states"]):
            for variable, value in zip(seed_variables, state["seed_states"]):
                variable.assign(np.asarray(value, dtype=variable.dtype))
        self._rng_state = state.get("global_rng_state")
        self.history = state["history"]
        self.restored_epoch = state["epoch"]

    @property
    def initial_epoch(self):
        """Epochs in the committed backup: the `initial_epoch` to pass to `fit`."""
        return (read_backup(self.backup_dir) or {}).get("epoch", 0)

    def on_epoch_begin(self, epoch, logs=None):
        if self._checked_start:
            return
        self._checked_start = True
        if epoch != self.restored_epoch:
            raise ValueError(
                f"The backup in {self.backup_dir} holds {self.restored_epoch} finished "
                f"epochs, but `fit` started at epoch {epoch}: pass "
                f"`initial_epoch=backup.initial_epoch` to `fit`.")

    # On PyTorch, Keras' data loaders draw a seed from torch's global generator,
    # which unseeded dropout also draws from, whenever `fit` or its validation
    # opens one: at different epochs in a resumed run than in an uninterrupted
    # one. So only training steps may move the generator: it is set back after
    # the training loader opens, and after each validation.

    def on_train_batch_begin(self, batch, logs=None):
        if self._rng_state is not None:
            set_global_rng_state(self._rng_state)
            self._rng_state = None

    def on_train_batch_end(self, batch, logs=None):
        self._rng_after_step = global_rng_state()

    def on_epoch_end(self, epoch, logs=None):
        set_global_rng_state(self._rng_after_step)
        logs = logs or {}
        if not _is_finite(logs.get("loss")):
            return
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        self._back_up(epoch + 1)

    def _seed_variables(self):
        """Dropout's random seed states: in `model.variables`, not in the weights."""
        weights = {id(v) for v in self.model.weights}
        return [v for v in self.model.variables if id(v) not in weights]

    def _back_up(self, epochs_done):
        weights_name = f"epoch-{epochs_done}.weights.h5"
        atomic_write(
            os.path.join(self.backup_dir, weights_name),
            lambda p: self.model.save_weights(p, overwrite=True),
        )
        write_json_atomically(os.path.join(self.backup_dir, self.METADATA), {
            "epoch": epochs_done,
            "weights": weights_name,
            "history": self.history,
            "seed_states": [
                ops.convert_to_numpy(v.value).tolist() for v in self._seed_variables()
            ],
            "global_rng_state": global_rng_state(),
        })
        for name in os.listdir(self.backup_dir):
            if name.endswith(".weights.h5") and name != weights_name:
                os.remove(os.path.join(self.backup_dir, name))



class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """`EarlyStopping` that goes on counting after a resumed run.

    Keras' callback starts from scratch at every `fit`, so a run resumed
    after epoch N would wait `patience` more epochs whatever happened before.
    Given the monitored values of the epochs already done, this one starts
    with the best value and the epochs waited since, as the uninterrupted
    run had them. (The best weights of those epochs are not in memory: with
    `restore_best_weights`, a best epoch from before the resume is not
    restored; the best-model checkpoint file has it.)

    Args:
        previous_values: the monitored value of each epoch already done, in
            order (for example the backup's history), or None.
        **kwargs: `keras.callbacks.EarlyStopping` arguments.
    """

    def __init__(self, previous_values=None, **kwargs):
        super().__init__(**kwargs)
        self.previous_values = list(previous_values or [])

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if not self.previous_values:
            return
        # The epochs done go through Keras' own epoch-end bookkeeping (best
        # value, epochs waited); whether to stop is decided at the next epoch.
        restore, self.restore_best_weights = self.restore_best_weights, False
        stop_training = self.model.stop_training
        for epoch, value in enumerate(self.previous_values):
            super().on_epoch_end(epoch, {self.monitor: value})
        self.model.stop_training, self.stopped_epoch = stop_training, 0
        self.restore_best_weights = restore
        if restore:
            # Not the current weights (Keras' default at the first epoch end).
            self.best_weights = _NOT_IN_MEMORY

    def on_train_end(self, logs=None):
        if self.best_weights is _NOT_IN_MEMORY:
            self.best_weights = None  # nothing better since the resume
        super().on_train_end(logs)


_NOT_IN_MEMORY = object()  # the best weights are from before the resume


class TerminateOnNaNWithReason(keras.callbacks.TerminateOnNaN):
    """`TerminateOnNaN` that says, and records, where the loss stopped being finite.

    Prints one line (`message()`) and stops `fit` after the batch whose
    running loss is NaN or infinite.

    Args:
        raise_error: raise a `RuntimeError` with that line instead of
            stopping `fit` (as `keras.callbacks.TerminateOnNaN`).

    Attributes:
        stopped: None while the loss is finite; then a dict with `epoch` and
            `batch` (1-based), `step` (optimizer steps taken) and `loss`.
    """

    def __init__(self, raise_error=False):
        super().__init__(raise_error=raise_error)
        self.stopped = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if self.stopped is not None or _is_finite(loss):
            return
        self.stopped = {
            "epoch": self._epoch + 1,
            "batch": batch + 1,
            "step": int(ops.convert_to_numpy(self.model.optimizer.iterations)),
            "loss": float(loss),
        }
        if self.raise_error:
            raise RuntimeError(self.message())
        print(f"\nStopping: {self.message()}")
        self.model.stop_training = True

    def message(self):
        """One line saying where the run diverged, or None."""
        if self.stopped is None:
            return None
        s = self.stopped
        return (f"the loss became {s['loss']} at epoch {s['epoch']}, batch {s['batch']} "
                f"(optimizer step {s['step']})")


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate to each epoch's logs.

    Put it first in the callback list so that the history, checkpoints and
    backups that follow see `logs["learning_rate"]`.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(
                ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )


class ValidationScoreLogger(keras.callbacks.Callback):
    """Adds what greedy decoding gets right on validation images to each epoch's logs.

    The dataset's scorer says what is measured and how: shapes captions
    against their scene graphs (`val_object_accuracy`,
    `val_relation_accuracy`, ...), shapes questions by their answers
    (`val_answer_accuracy`, ...). Also logs
    `elapsed_seconds`, the training time so far in this run without these
    evaluations, so a history can tell the time a model took to reach a
    quality. Put it before the callbacks that record or checkpoint an
    epoch's logs.

    Args:
        examples: a validation examples dataset, of which the first
            `num_images` images are scored.
        scorer: the dataset's scorer (`vlm.datasets.get(name).scorer`):
            its `validation_scores` of `score_names`.
        num_images: int.
        batch_size: images per generation batch.
        targets: optional `{score: (">=" or "<=", threshold)}`
            (`vlm.config.parse_targets`): training stops after the first
            epoch whose scores meet them all, and says so.
    """

    def __init__(self, examples, scorer, num_images=100, batch_size=100, targets=None):
        super().__init__()
        self.examples = examples.take(num_images)
        self.scorer = scorer
        self.batch_size = batch_size
        self.targets = dict(targets or {})
        names = scorer.score_names
        unknown = [name for name in self.targets if name not in names]
        if unknown:
            raise ValueError(f"No validation score is called {unknown[0]!r}; the scores of "
                             f"this dataset are: {', '.join(names)}.")
        self.reached_in_epoch = None

    def on_train_begin(self, logs=None):
        self._start, self._evaluating = time.time(), 0.0

    def scores(self):
        """The scores of the model as it stands: `{name: value}`."""
        return self.scorer.validation_scores(self.model, self.examples, self.batch_size)

    def on_epoch_end(self, epoch, logs=None):
        begin = time.time()
        scores = self.scores()
        if logs is not None:
            logs.update({f"val_{k}": v for k, v in scores.items()})
            logs["elapsed_seconds"] = begin - self._start - self._evaluating
        self._evaluating += time.time() - begin
        if self.targets and targets_met(scores, self.targets):
            self.reached_in_epoch = epoch + 1
            self.model.stop_training = True
            met = ", ".join(f"{name} {scores[name]:.4f} {op} {bound}"
                            for name, (op, bound) in self.targets.items())
            print(f"Validation reached the target after epoch {epoch + 1} ({met}): "
                  "training stops here.", flush=True)


class EpochLine(keras.callbacks.Callback):
    """Prints one line per epoch: time so far, time left, and the epoch's scores.

    `Epoch 3/8: 4:12 elapsed, about 9:30 left - loss 0.3120 - val_loss 0.2990
    - val_relation_accuracy 0.9310`. The estimate is the mean epoch time of
    this run times the epochs left (an upper bound when training stops at a
    target). Readable in a log file, where the progress bar is not: put it
    after the callbacks that add to the logs.

    Args:
        epochs: the run's epochs in all.
        keys: the logs to print, in order, where present.
    """

    KEYS = ("loss", "val_loss", "val_object_accuracy", "val_relation_accuracy",
            "val_hallucination_rate", "val_exact_scene_accuracy", "val_answer_accuracy")

    def __init__(self, epochs, keys=KEYS):
        super().__init__()
        self.epochs, self.keys = epochs, keys

    def on_train_begin(self, logs=None):
        self._start, self._done = time.time(), 0

    def on_epoch_end(self, epoch, logs=None):
        self._done += 1
        elapsed = time.time() - self._start
        left = elapsed / self._done * max(self.epochs - epoch - 1, 0)
        scores = "".join(f" - {key} {logs[key]:.4f}" for key in self.keys
                         if logs and isinstance(logs.get(key), (int, float)))
        print(f"Epoch {epoch + 1}/{self.epochs}: {clock(elapsed)} elapsed, about "
              f"{clock(left)} left{scores}", flush=True)


def clock(seconds):
    """`h:mm:ss` or `m:ss` of a duration in seconds."""
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
