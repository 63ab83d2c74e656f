"""Atomic checkpoints and backups, and the NaN stop that says where (vlm/callbacks.py)."""

import os

import keras
import numpy as np
import pytest

from vlm import callbacks as vlm_callbacks
from vlm.callbacks import AtomicBackupAndRestore
from vlm.callbacks import AtomicModelCheckpoint
from vlm.callbacks import ResumableEarlyStopping
from vlm.callbacks import TerminateOnNaNWithReason
from vlm.callbacks import read_backup

STEPS = 4  # batches per epoch: 16 examples, batch 4


def regression_data(nan_at=None):
    rng = np.random.RandomState(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]], "float32")).astype("float32")
    if nan_at is not None:
        x[nan_at] = np.nan
    return x, y


def small_model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.05), "mse")
    return model


def fit(model, callbacks, epochs, nan_at=None):
    """`model.fit` as training calls it: from the epoch a backup callback holds."""
    x, y = regression_data(nan_at)
    initial_epoch = max([c.initial_epoch for c in callbacks
                         if isinstance(c, AtomicBackupAndRestore)], default=0)
    return model.fit(x, y, batch_size=4, epochs=epochs, initial_epoch=initial_epoch,
                     shuffle=False, verbose=0, callbacks=callbacks)


def save_half_then_fail(save):
    """A save that writes half its file, then dies (as a kill or a full disk would)."""

    def broken_save(path, *args, **kwargs):
        save(path, *args, **kwargs)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise OSError("No space left on device")

    return broken_save


def assert_weights_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("checkpoint_class, survives", [
    (keras.callbacks.ModelCheckpoint, False),  # Keras writes in place
    (AtomicModelCheckpoint, True),
])
def test_a_failed_checkpoint_save_leaves_the_previous_one_loadable(
        tmp_path, checkpoint_class, survives):
    path = str(tmp_path / "best.keras")
    model = small_model()
    fit(model, [checkpoint_class(path, monitor="loss", save_best_only=True)], epochs=1)
    first = model.get_weights()
    assert_weights_equal(keras.saving.load_model(path).get_weights(), first)

    model.save = save_half_then_fail(model.save)
    with pytest.raises(OSError, match="No space left"):  # epoch 2 improves, its save dies
        fit(model, [checkpoint_class(path, monitor="loss", save_best_only=True)], epochs=1)
    if survives:
        assert_weights_equal(keras.saving.load_model(path).get_weights(), first)
        assert os.listdir(tmp_path) == ["best.keras"]
    else:
        with pytest.raises(Exception):
            keras.saving.load_model(path)


def test_backup_restores_weights_optimizer_and_epoch(tmp_path):
    backup_dir = str(tmp_path / "backup")
    model = small_model()
    backup = AtomicBackupAndRestore(backup_dir)
    fit(model, [backup], epochs=2)
    state = read_backup(backup_dir)
    assert state["epoch"] == 2 and state["weights"] == "epoch-2.weights.h5"
    assert sorted(os.listdir(backup_dir)) == ["epoch-2.weights.h5", "training_metadata.json"]
    assert len(state["history"]["loss"]) == 2 and backup.history == state["history"]

    # The same run, restarted: fit starts at epoch 3 from the saved state.
    resumed = small_model()
    restored = AtomicBackupAndRestore(backup_dir)
    history = fit(resumed, [restored], epochs=3)
    assert restored.restored_epoch == 2
    assert len(history.history["loss"]) == 1  # epoch 3 only
    assert len(restored.history["loss"]) == 3  # all epochs
    assert int(resumed.optimizer.iterations) == 3 * STEPS

    straight = small_model()
    fit(straight, [], epochs=3)
    assert int(straight.optimizer.iterations) == 3 * STEPS
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_kill_during_a_backup_keeps_the_previous_epoch(tmp_path, monkeypatch):
    backup_dir = str(tmp_path / "backup")
    model = small_model()
    fit(model, [AtomicBackupAndRestore(backup_dir)], epochs=1)
    after_epoch_1 = model.get_weights()

    # Dies while writing epoch 2's weights: epoch 1's backup is untouched.
    model.save_weights = save_half_then_fail(model.save_weights)
    with pytest.raises(OSError):
        fit(model, [AtomicBackupAndRestore(backup_dir)], epochs=2)
    del model.save_weights
    assert read_backup(backup_dir)["epoch"] == 1

    # Dies after epoch 2's weights were written, before the metadata commit:
    # the metadata still names epoch 1's weights, which are still there.
    calls = []

    def no_commit(path, data):
        calls.append(path)
        raise OSError("killed before the commit")

    monkeypatch.setattr(vlm_callbacks, "write_json_atomically", no_commit)
    with pytest.raises(OSError, match="before the commit"):
        fit(model, [AtomicBackupAndRestore(backup_dir)], epochs=2)
    monkeypatch.undo()
    assert len(calls) == 1 and os.path.exists(os.path.join(backup_dir, "epoch-2.weights.h5"))

    restarted = small_model()
    restore = AtomicBackupAndRestore(backup_dir)
    restore.set_model(restarted)
    restore.on_train_begin()
    assert restore.restored_epoch == 1
    assert_weights_equal(restarted.get_weights(), after_epoch_1)
    assert int(restarted.optimizer.iterations) == STEPS


def test_a_fit_that_does_not_start_after_the_backup_is_refused_before_a_step(tmp_path):
    backup_dir = str(tmp_path / "backup")
    model = small_model()
    fit(model, [AtomicBackupAndRestore(backup_dir)], epochs=2)
    resumed = small_model()
    x, y = regression_data()
    with pytest.raises(ValueError, match=r"holds 2 finished epochs, but `fit` started at "
                                         r"epoch 0: pass `initial_epoch=backup.initial_epoch`"):
        resumed.fit(x, y, batch_size=4, epochs=3, verbose=0,
                    callbacks=[AtomicBackupAndRestore(backup_dir)])
    assert int(resumed.optimizer.iterations) == 2 * STEPS  # restored, no step taken
    assert AtomicBackupAndRestore(str(tmp_path / "none")).initial_epoch == 0


def test_the_checkpoint_keeps_the_best_epoch_by_mode_and_threshold(tmp_path):
    path = str(tmp_path / "best.weights.h5")
    model = small_model()
    checkpoint = AtomicModelCheckpoint(path, monitor="val_accuracy", save_best_only=True,
                                       save_weights_only=True, initial_value_threshold=0.5)
    checkpoint.set_model(model)
    assert checkpoint.mode == "max"  # "auto" on an accuracy
    for epoch, value in enumerate([0.4, 0.6, 0.55, float("nan"), None]):
        checkpoint.on_epoch_end(epoch, {} if value is None else {"val_accuracy": value})
        if epoch == 0:
            assert not os.path.exists(path)  # below the resumed run's best
        if epoch == 1:
            saved = model.get_weights()
            model.set_weights([w + 1 for w in saved])  # later epochs must not be written
    assert checkpoint.best == 0.6
    restored = small_model()
    restored.load_weights(path)
    assert_weights_equal(restored.get_weights(), saved)
    with pytest.raises(ValueError, match="Received: mode='best'"):
        AtomicModelCheckpoint(path, mode="best")


def test_nan_stop_says_where_and_nothing_diverged_is_saved(tmp_path):
    backup_dir, best = str(tmp_path / "backup"), str(tmp_path / "best.keras")
    model = small_model()
    fit(model, [AtomicBackupAndRestore(backup_dir)], epochs=1)  # one good epoch

    nan_stop = TerminateOnNaNWithReason()
    callbacks = [AtomicModelCheckpoint(best, monitor="loss", save_best_only=True),
                 AtomicBackupAndRestore(backup_dir), nan_stop]
    history = fit(model, callbacks, epochs=3, nan_at=9)  # example 9 is in batch 3
    assert nan_stop.stopped["epoch"] == 2 and nan_stop.stopped["batch"] == 3
    assert nan_stop.stopped["step"] == STEPS + 3  # the steps taken, the NaN one included
    assert np.isnan(nan_stop.stopped["loss"])
    assert nan_stop.message() == ("the loss became nan at epoch 2, batch 3 "
                                  f"(optimizer step {STEPS + 3})")
    assert len(history.history["loss"]) == 1 and np.isnan(history.history["loss"][0])
    assert read_backup(backup_dir)["epoch"] == 1  # the diverged epoch is not backed up
    assert not os.path.exists(best)  # a NaN loss is never "best"
    assert TerminateOnNaNWithReason().message() is None


def _stop_epoch(callback, model, values, first_epoch=0):
    """Feeds `values` as epoch-end val_loss; the epoch the callback stops at, or None."""
    callback.set_model(model)
    model.stop_training = False
    callback.on_train_begin()
    for epoch, value in enumerate(values, start=first_epoch):
        callback.on_epoch_end(epoch, {"val_loss": value})
        if model.stop_training:
            callback.on_train_end()
            return epoch
    callback.on_train_end()
    return None


def test_early_stopping_counts_on_across_a_resume():
    """Resumed after epoch 3, it stops at the epoch the uninterrupted run stops at."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    values = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9]
    kwargs = dict(monitor="val_loss", patience=3, restore_best_weights=True)
    straight = _stop_epoch(keras.callbacks.EarlyStopping(**kwargs), model, values)
    assert straight == 4  # 3 epochs without beating 0.5
    resumed = ResumableEarlyStopping(previous_values=values[:3], **kwargs)
    weights = [w.copy() for w in model.get_weights()]
    assert _stop_epoch(resumed, model, values[3:], first_epoch=3) == straight
    assert resumed.best == 0.5 and resumed.best_epoch == 1
    # The best epoch's weights are not in memory: the last ones are kept,
    # not those of the first epoch after the resume.
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    # Keras' own callback starts over: it would run 2 epochs longer.
    assert _stop_epoch(keras.callbacks.EarlyStopping(**kwargs), model, values[3:] + [1.0, 1.1],
                       first_epoch=3) == 6
    # An improvement after the resume is restored as usual.
    improving = ResumableEarlyStopping(previous_values=values[:3], **kwargs)
    assert _stop_epoch(improving, model, [0.4, 0.6, 0.7, 0.8], first_epoch=3) == 6
    assert improving.best == 0.4 and improving.best_epoch == 3


def test_epoch_line_says_elapsed_time_left_and_scores(capsys, monkeypatch):
    line = vlm_callbacks.EpochLine(epochs=4)
    clock = iter([100.0, 160.0, 230.0])
    monkeypatch.setattr(vlm_callbacks.time, "time", lambda: next(clock))
    line.on_train_begin()
    line.on_epoch_end(0, {"loss": 1.5, "val_relation_accuracy": 0.5, "learning_rate": 1e-3})
    line.on_epoch_end(1, {"loss": 1.0, "val_loss": 0.9})
    assert capsys.readouterr().out.splitlines() == [
        "Epoch 1/4: 1:00 elapsed, about 3:00 left - loss 1.5000 - val_relation_accuracy 0.5000",
        "Epoch 2/4: 2:10 elapsed, about 2:10 left - loss 1.0000 - val_loss 0.9000"]
    assert vlm_callbacks.clock(3725) == "1:02:05"


def test_validation_scores_stop_training_once_they_meet_the_target(capsys):
    import tensorflow as tf

    from vlm.datasets.shapes.scorers import SceneScorer

    examples = tf.data.Dataset.from_tensor_slices({"image": np.zeros((3, 4, 4, 3), "uint8")})
    with pytest.raises(ValueError, match="No validation score is called 'relation_acc'"):
        vlm_callbacks.ValidationScoreLogger(examples, SceneScorer(),
                                            targets={"relation_acc": (">=", 0.9)})
    logger = vlm_callbacks.ValidationScoreLogger(
        examples, SceneScorer(),
        targets={"relation_accuracy": (">=", 0.9), "hallucination_rate": ("<=", 0.01)})
    logger.set_model(small_model())
    scores = iter([{"relation_accuracy": 0.95, "hallucination_rate": 0.02},
                   {"relation_accuracy": 0.9, "hallucination_rate": 0.01}])
    logger.scores = lambda: next(scores)
    logger.on_train_begin()
    logs = {}
    logger.on_epoch_end(0, logs)
    assert not logger.model.stop_training and logger.reached_in_epoch is None
    assert logs["val_relation_accuracy"] == 0.95 and logs["elapsed_seconds"] >= 0
    logger.on_epoch_end(1, logs)
    assert logger.model.stop_training and logger.reached_in_epoch == 2
    assert capsys.readouterr().out == (
        "Validation reached the target after epoch 2 (relation_accuracy 0.9000 >= 0.9, "
        "hallucination_rate 0.0100 <= 0.01): training stops here.\n")
