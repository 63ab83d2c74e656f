"""Interrupt `train.py` (SIGKILL, Ctrl-C), rerun it, and get the uninterrupted run.

Runs `configs/tiny.py` in subprocesses under the test process' Keras backend.
"""

import json
import math
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import vlm
from vlm.callbacks import AtomicBackupAndRestore
from vlm.callbacks import AtomicModelCheckpoint
from vlm.config import load_config
from vlm.datasets import load_examples
from vlm.training import make_callbacks
from vlm.training import output_paths
from vlm.utils.atomic_files import write_json_atomically

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS, STEPS = 3, 8

# train.py's main, parked at epoch 2, batch 5 until the test kills it.
PAUSED_TRAIN_PY = """
import sys, time
sys.path.insert(0, sys.argv[1])
import keras
import train
import vlm.training as training

class PauseMidEpoch(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == (1, 4):
            print("\\nPAUSED at epoch 2, batch 5", flush=True)
            time.sleep(600)

make_callbacks = training.make_callbacks
training.make_callbacks = lambda *args: make_callbacks(*args) + [PauseMidEpoch()]
sys.exit(train.main(sys.argv[2:]))
"""


def train_args(out):
    return [
        "--config", os.path.join(REPO, "configs", "tiny.py"),
        "--set", f"train.output_dir={out}",
        "--set", f"train.log_dir={out}/logs",
        "--set", "train.report_images=0",
        "--set", f"train.epochs={EPOCHS}",
        "--set", f"train.steps_per_epoch={STEPS}",
        "--set", "model.dropout=0.1",  # the resumed run must restore dropout's seeds too
        # XLA on JAX, where it is cheaper than eager; TensorFlow's graphs skip
        # XLA's 30 s compile, and torch.compile takes minutes.
        "--set", f"train.jit_compile={keras.config.backend() == 'jax'}",
    ]


def start(args, cache_dir=None, **kwargs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if cache_dir:
        env["VLM_CACHE_DIR"] = str(cache_dir)
    kwargs.setdefault("stderr", subprocess.STDOUT)
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, **kwargs)


def finish(process, timeout=300):
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def read_history(out):
    with open(os.path.join(out, "tiny.history.json")) as f:
        return json.load(f)


def schedule(step):
    """`make_optimizer`'s learning rate for tiny's 24 steps: 1 warmup step, then cosine."""
    warmup, decay = 1, EPOCHS * STEPS - 1
    return 1e-3 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / decay))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_equals_an_uninterrupted_run_on_a_fresh_cache(tmp_path):
    """Also reproducibility: the uninterrupted run prepares the dataset in an empty cache,
    the killed and resumed one reads the cache this test made; the weights are equal."""
    config = load_config(os.path.join(REPO, "configs", "tiny.py"))
    load_examples(config.data, "train", config.model.image_size)  # the killed run finds it
    straight_out, killed_out = str(tmp_path / "straight"), str(tmp_path / "killed")
    straight = start(["train.py", *train_args(straight_out)], cache_dir=tmp_path / "empty")
    killed = start(["-c", PAUSED_TRAIN_PY, REPO, *train_args(killed_out)])
    try:
        lines = []
        for line in killed.stdout:
            lines.append(line)
            if "PAUSED" in line:  # after the progress bar's last update
                break
        assert lines and "PAUSED" in lines[-1], "".join(lines[-30:])
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL
    except BaseException:
        for process in (straight, killed):
            process.kill()
        raise

    # What the kill left: epoch 1 committed, epoch 2 half done, no final files.
    backup = os.path.join(killed_out, "logs", "tiny", "backup")
    with open(os.path.join(backup, "training_metadata.json")) as f:
        metadata = json.load(f)
    assert metadata["epoch"] == 1 and metadata["weights"] == "epoch-1.weights.h5"
    assert sorted(os.listdir(backup)) == ["epoch-1.weights.h5", "training_metadata.json"]
    assert len(metadata["history"]["loss"]) == 1
    assert not os.path.exists(os.path.join(killed_out, "tiny.keras"))
    assert not os.path.exists(os.path.join(killed_out, "tiny.history.json"))

    # The same command again resumes from epoch 1.
    code, output = finish(start(["train.py", *train_args(killed_out)]))
    assert code == 0, output[-3000:]
    assert "Resuming after epoch 1/3" in output
    assert "Epoch 1/3" not in output and "Epoch 2/3" in output
    code, output = finish(straight)
    assert code == 0, output[-3000:]
    assert "Preparing shapes dataset" in output
    assert "Preparing" not in "".join(lines)

    resumed, uninterrupted = read_history(killed_out), read_history(straight_out)
    assert resumed["resumed_after_epoch"] == 1 and uninterrupted["resumed_after_epoch"] == 0
    assert resumed["optimizer_steps"] == uninterrupted["optimizer_steps"] == EPOCHS * STEPS
    # Every epoch is in the history, the one before the kill included.
    assert resumed["history"]["loss"][0] == metadata["history"]["loss"][0]
    for key in ("loss", "val_loss", "token_accuracy", "learning_rate"):
        assert len(resumed["history"][key]) == EPOCHS
        np.testing.assert_allclose(resumed["history"][key], uninterrupted["history"][key],
                                   rtol=1e-6, atol=1e-9, err_msg=key)
    # The schedule went on from step 8: its value after each epoch's 8 steps.
    np.testing.assert_allclose(resumed["history"]["learning_rate"],
                               [schedule(STEPS * (e + 1)) for e in range(EPOCHS)],
                               rtol=1e-5, atol=1e-9)
    assert not os.path.exists(backup)  # deleted once the final model was written

    # Same data order, optimizer state and dropout seeds: the same weights.
    for name in ("tiny.keras", "tiny.best.keras"):
        a = vlm.load_captioner(os.path.join(killed_out, name)).get_weights()
        b = vlm.load_captioner(os.path.join(straight_out, name)).get_weights()
        assert len(a) == len(b)
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-6, err_msg=name)


def test_a_resumed_run_keeps_its_best_checkpoint_unless_beaten(tmp_path):
    """The best-model checkpoint starts from the best epoch before the kill, not from None."""
    config = load_config(os.path.join(REPO, "configs", "tiny.py"))
    config.train.output_dir, config.train.log_dir = str(tmp_path), str(tmp_path / "logs")
    paths = output_paths(config)

    def checkpoint():
        callbacks = make_callbacks(config, paths, has_validation=True)
        return next(c for c in callbacks if isinstance(c, AtomicModelCheckpoint))

    assert checkpoint().best is None  # a fresh run saves its first epoch
    write_json_atomically(os.path.join(paths["backup"], AtomicBackupAndRestore.METADATA), {
        "epoch": 3, "weights": "epoch-3.weights.h5", "seed_states": [],
        "history": {"loss": [3.1, 2.6, 2.4], "val_loss": [2.9, 2.7, 2.8]},
    })
    resumed = checkpoint()
    assert resumed.monitor == "val_loss" and resumed.best == 2.7


def test_ctrl_c_says_in_one_line_what_is_saved_and_exits_130(tmp_path, monkeypatch, capsys):
    """Ctrl-C (a KeyboardInterrupt in the main thread) in epoch 2: no traceback, exit 130."""
    import train
    import vlm.training as training

    class CtrlC(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.model.optimizer.iterations.numpy() == STEPS + 3:  # epoch 2, batch 3
                raise KeyboardInterrupt

    make = training.make_callbacks
    monkeypatch.setattr(training, "make_callbacks", lambda *args: make(*args) + [CtrlC()])
    out = str(tmp_path / "out")
    assert train.main(train_args(out)) == 130
    backup = os.path.join(out, "logs", "tiny", "backup")
    assert json.load(open(os.path.join(backup, "training_metadata.json")))["epoch"] == 1
    assert capsys.readouterr().err.splitlines() == [
        f"train.py: interrupted in epoch 2; epoch 1 is saved in {backup}: "
        "rerun the same command to resume"]
