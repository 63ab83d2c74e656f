"""Numerics of training: mixed precision on every backend, and a diverging run that says so."""

import json
import math
import os

import keras
import numpy as np
import pytest

import train
from vlm.backend import xla_has_float16_attention
from vlm.config import load_config
from vlm.models.captioner import build_captioner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")
POLICIES = ["mixed_float16", "mixed_bfloat16"]
COMPUTE = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
JIT = keras.config.backend() != "torch"  # torch.compile takes minutes on two cores


@pytest.fixture
def restore_dtype_policy():
    """`train()` sets the global policy, as Keras' mixed-precision guide does."""
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


def tiny_args(tmp_path, *overrides):
    args = ["--config", TINY, "--set", f"train.output_dir={tmp_path}",
            "--set", f"train.log_dir={tmp_path / 'logs'}", "--set", "train.report_images=0",
            "--set", f"train.jit_compile={JIT}"]
    for override in overrides:
        args += ["--set", override]
    return args


@pytest.mark.parametrize("policy", POLICIES)
def test_the_captioner_trains_under_mixed_precision(policy, restore_dtype_policy):
    keras.config.set_dtype_policy(policy)  # as train() does: the Captioner's own policy
    keras.utils.set_random_seed(0)
    model = build_captioner(load_config(TINY).model, vocabulary_size=20, dtype=policy)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3), jit_compile=JIT)
    rng = np.random.RandomState(0)
    images = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    tokens = rng.randint(1, 20, (8, 9)).astype("int32")
    inputs, labels = {"images": images, "tokens": tokens[:, :-1]}, tokens[:, 1:]
    if policy == "mixed_float16" and JIT and not xla_has_float16_attention():
        # JAX on CPU: XLA refuses the float16 attention Keras asks for, so
        # train() trains without jit_compile there (the plumbing test below).
        with pytest.raises(ValueError, match="'F16_F16_F32' is not supported"):
            model.fit(inputs, labels, batch_size=4, epochs=1, verbose=0)
        return
    history = model.fit(inputs, labels, batch_size=4, epochs=4, verbose=0)

    losses = history.history["loss"]
    assert all(math.isfinite(loss) for loss in losses), losses
    assert abs(losses[0] - math.log(20)) < 0.5  # untrained: about log(vocabulary)
    assert losses[-1] < losses[0]
    assert model.decoder.compute_dtype == COMPUTE[policy]
    assert model.decoder.variable_dtype == "float32"
    assert keras.backend.standardize_dtype(model(inputs).dtype) == "float32"  # the logits
    # float16 needs loss scaling (its gradients underflow); bfloat16 does not.
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (
        policy == "mixed_float16")
    assert int(model.optimizer.iterations) == 8


@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES)
def test_train_py_mixed_precision_plumbing(policy, tmp_path, restore_dtype_policy):
    code = train.main(tiny_args(tmp_path, f"train.mixed_precision={policy}",
                                "train.epochs=1", "train.steps_per_epoch=2"))
    assert code == 0
    history = json.loads((tmp_path / "tiny.history.json").read_text())
    assert history["optimizer_steps"] == 2
    assert all(math.isfinite(v) for v in history["history"]["loss"])
    model = keras.saving.load_model(tmp_path / "tiny.keras")
    assert model.decoder.dtype_policy.name == policy
    assert model.encoder.dtype_policy.name == policy
    best = keras.saving.load_model(tmp_path / "tiny.best.keras")  # with its optimizer
    assert isinstance(best.optimizer, keras.optimizers.LossScaleOptimizer) == (
        policy == "mixed_float16")


@pytest.mark.slow
def test_a_diverging_run_stops_and_says_where(tmp_path, capsys):
    code = train.main(tiny_args(tmp_path, "train.learning_rate=1e30", "train.warmup_fraction=0",
                                "train.epochs=2", "train.steps_per_epoch=6"))
    assert code == train.EXIT_DIVERGED == 3
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("train.py:")]
    assert len(errors) == 1
    assert errors[0].startswith("train.py: error: Training stopped: the loss became nan "
                                "at epoch 1, batch ")
    assert "tiny.keras was not written; no epoch finished with a finite loss" in errors[0]
    assert "Stopping: the loss became nan at epoch 1" in captured.out

    history = json.loads((tmp_path / "tiny.history.json").read_text())
    stopped = history["stopped_on_nan"]
    assert stopped["epoch"] == 1 and stopped["loss"] == "nan"
    assert 1 <= stopped["batch"] <= 6 and stopped["step"] == stopped["batch"]
    assert history["optimizer_steps"] == stopped["step"]  # nothing ran after it
    assert history["history"]["loss"] == [None]  # JSON null: the diverged epoch
    assert not (tmp_path / "tiny.keras").exists()
    assert not (tmp_path / "logs" / "tiny" / "backup").exists()  # no finite epoch to keep
