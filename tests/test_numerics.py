"""Numerics of training: mixed precision on every backend, and a diverging run that says so."""

import json
import math
import os

import keras
import numpy as np
import pytest

import train
from vlm.backend import resolve_jit_compile
from vlm.backend import xla_has_float16_attention

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")
COMPUTE = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
# XLA costs about 30 s per run on TensorFlow and saves nothing on these few
# steps; on JAX it is cheaper than eager. bfloat16 keeps the default ("auto":
# XLA on TensorFlow too), the COCO recipe's setting.
JIT = {"mixed_float16": keras.config.backend() == "jax", "mixed_bfloat16": "auto"}


def tiny_args(tmp_path, *overrides, jit_compile=keras.config.backend() == "jax"):
    args = ["--config", TINY, "--set", f"train.output_dir={tmp_path}",
            "--set", f"train.log_dir={tmp_path / 'logs'}", "--set", "train.report_images=0",
            "--set", f"train.jit_compile={jit_compile}"]
    for override in overrides:
        args += ["--set", override]
    return args


@pytest.mark.slow
@pytest.mark.parametrize("policy", [
    pytest.param("mixed_float16", marks=pytest.mark.skipif(
        keras.config.backend() == "jax" and not xla_has_float16_attention(),
        reason="XLA:CPU cannot compile float16 attention, so JAX trains this eagerly: "
               "170 s for two steps; TensorFlow and PyTorch run it")),
    "mixed_bfloat16"])
def test_train_py_trains_under_mixed_precision(policy, tmp_path, capsys):
    # One step per epoch.
    code = train.main(tiny_args(tmp_path, f"train.mixed_precision={policy}", "train.epochs=2",
                                "train.steps_per_epoch=1", "train.learning_rate=1e-2",
                                jit_compile=JIT[policy]))
    assert code == 0
    # train() sets the global policy while it runs, and puts it back.
    assert keras.config.dtype_policy().name == "float32"
    history = json.loads((tmp_path / "tiny.history.json").read_text())
    losses = history["history"]["loss"]
    assert history["optimizer_steps"] == 2
    assert all(math.isfinite(loss) for loss in losses + history["history"]["val_loss"])
    assert losses[1] < losses[0]

    model = keras.saving.load_model(tmp_path / "tiny.keras")
    # Barely trained: about log(vocabulary size), a uniform guess.
    assert abs(losses[0] - math.log(model.tokenizer.vocabulary_size())) < 0.5
    for part in (model.backbone.encoder, model.backbone.decoder):
        assert part.dtype_policy.name == policy
        assert part.compute_dtype == COMPUTE[policy] and part.variable_dtype == "float32"
    inputs = {"images": np.zeros((2, 16, 16, 3), "float32"), "tokens": np.ones((2, 5), "int32")}
    assert keras.backend.standardize_dtype(model(inputs).dtype) == "float32"  # the logits
    # float16 needs loss scaling (its small gradients underflow); bfloat16 does
    # not. Keras wraps the optimizer of a model compiled under the global
    # mixed_float16 policy, so that is how one goes on training it.
    keras.config.set_dtype_policy(policy)
    try:
        best = keras.saving.load_model(tmp_path / "tiny.best.keras")  # with its optimizer
    finally:
        keras.config.set_dtype_policy("float32")
    assert isinstance(best.optimizer, keras.optimizers.LossScaleOptimizer) == (
        policy == "mixed_float16")
    # XLA:CPU refuses the float16 attention Keras asks for under JAX: train()
    # says so and trains without jit_compile.
    fallback = (policy == "mixed_float16" and resolve_jit_compile(JIT[policy])
                and not xla_has_float16_attention())
    assert ("trains without jit_compile" in capsys.readouterr().out) == fallback


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
