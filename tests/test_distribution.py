"""Data- and model-parallel training on virtual devices, and the COCO recipe.

The two-device checks run once per suite run, in a subprocess of the suite's
backend: JAX with `XLA_FLAGS=--xla_force_host_platform_device_count=2`,
TensorFlow with two logical CPUs (PyTorch has no engine: only its refusal
is tested). The subprocess is this file run as a module,

    python -m tests.test_distribution RESULT.json TMP_DIR

which writes what it measured as JSON for the tests to assert on: one SGD
step on one device and on two (data parallel; model parallel on JAX), the
errors of settings that do not split evenly, and one step of the COCO
recipe on mock TFDS data.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from vlm.config import load_config
from vlm.distribution import LAYOUT_RULES
from vlm.distribution import DistributionError
from vlm.distribution import plan_distribution

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.config.backend()
GLOBAL_BATCH = 8
LEARNING_RATE = 0.5  # plain SGD: the weight change is the gradient, unnormalised
TOLERANCE = 1e-5


def tiny_model_config():
    """A small captioner with grouped-query cross-attention and no dropout."""
    from vlm.config import ModelConfig

    return ModelConfig(
        image_size=16, patch_size=4, encoder_layers=1, encoder_heads=2, encoder_dim=16,
        encoder_mlp_dim=32, decoder_layers=1, decoder_heads=4, decoder_dim=16,
        decoder_mlp_dim=32, num_key_value_heads=2, sequence_length=8,
        vocabulary_size=50, dropout=0.0,
    )


def coco_test_config(tmp_dir):
    """configs/coco_vit_b16.py with a preset-free ViT of the same structure.

    ViT-B/16's layers, 12 heads and 16x16 patches, and the recipe's decoder
    heads; 1 layer of width 48 instead of 12 of 768, and 32x32 images (4
    patches) instead of 224x224 (196), which only the position table sees.
    One step (batch 4) on mock COCO, in the recipe's first epoch: the
    encoder frozen.
    """
    config = load_config(os.path.join(REPO, "configs", "coco_vit_b16.py"))
    model = config.model
    model.encoder_preset = None
    model.image_size = 32
    model.encoder_layers, model.encoder_dim, model.encoder_mlp_dim = 1, 48, 96
    model.decoder_layers, model.decoder_dim, model.decoder_mlp_dim = 1, 32, 64
    model.vocabulary_size = 200
    config.data.shuffle_buffer = 16
    train = config.train
    train.epochs, train.steps_per_epoch, train.batch_size = 1, 1, 4
    train.early_stopping_patience = 0
    train.output_dir = os.path.join(tmp_dir, "models")
    train.log_dir = os.path.join(tmp_dir, "logs")
    return config


def caption_batch():
    """A global batch whose two halves hold different numbers of real tokens.

    The first half has 2-5 real labels per caption, the second 5-8, so a loss
    averaged per device and then across devices would differ from the mean
    over the whole batch's tokens.
    """
    rng = np.random.default_rng(0)
    config = tiny_model_config()
    images = rng.uniform(0, 255, (GLOBAL_BATCH, 16, 16, 3)).astype("float32")
    tokens = rng.integers(4, config.vocabulary_size, (GLOBAL_BATCH, 8)).astype("int32")
    tokens[:, 0] = 2
    lengths = [2, 3, 4, 5, 5, 6, 7, 8]
    for row, length in enumerate(lengths):
        tokens[row, length:] = 0
    labels = np.concatenate([tokens[:, 1:], np.zeros((GLOBAL_BATCH, 1), "int32")], 1)
    return {"images": images, "tokens": tokens}, labels


def layout_rule_matches(path):
    return [p for p in LAYOUT_RULES if re.fullmatch(p, path)]


# ---------------------------------------------------------------- every backend, in process


def test_coco_recipe_is_vit_b16_on_coco_karpathy_bfloat16_data_parallel(monkeypatch):
    config = load_config(os.path.join(REPO, "configs", "coco_vit_b16.py"))
    model, data, train = config.model, config.data, config.train
    assert model.encoder_preset == "vit_base_patch16_224_imagenet"
    assert (model.image_size, model.patch_size) == (224, 16)
    # ViT-B/16's sizes (the preset's own config wins when it loads).
    assert (model.encoder_layers, model.encoder_heads, model.encoder_dim,
            model.encoder_mlp_dim) == (12, 12, 768, 3072)
    assert (data.dataset, train.mixed_precision, train.distribute) == (
        "coco", "mixed_bfloat16", "data_parallel")
    assert 1 <= train.freeze_encoder_epochs < train.epochs

    from vlm import datasets
    from vlm.data import coco
    from vlm.datasets.registry import SPLITS

    splits = []
    monkeypatch.setattr(coco, "coco_examples", lambda split, data_dir=None: splits.append(split))
    for split in SPLITS:
        datasets.load_examples(data, split, model.image_size)
    assert splits == ["train+restval", "val", "test"]  # TFDS' Karpathy splits


def test_layout_map_splits_every_attention_and_feed_forward_kernel(tmp_path):
    from vlm.models.captioner import build_captioner

    config = coco_test_config(str(tmp_path))
    shards = config.train.model_shards
    model = build_captioner(config.model, config.model.vocabulary_size)
    rules_used, split = set(), {}
    for variable in model.variables:
        matches = layout_rule_matches(variable.path)
        assert len(matches) <= 1, (variable.path, matches)
        if matches:
            axes = LAYOUT_RULES[matches[0]]
            assert len(axes) == len(variable.shape), variable.path
            size = variable.shape[axes.index("model")]
            assert size % shards == 0, (variable.path, variable.shape)
            rules_used.add(matches[0])
            split[variable.path] = size
    assert rules_used == set(LAYOUT_RULES)

    layers = config.model.encoder_layers, config.model.decoder_layers
    kernels = [path for path in split if path.endswith("/kernel")]
    attention = [path for path in kernels if re.search(r"(mha|attention)/", path)]
    # Encoder: query, key, value, output. Decoder: fused qkv and output for
    # self-attention; query, key, value, output for cross-attention.
    assert len(attention) == 4 * layers[0] + 6 * layers[1]
    heads = {config.model.encoder_heads, config.model.decoder_heads,
             config.model.num_key_value_heads}
    # 2-D kernels, heads outermost: (hidden, heads * 3 * key_dim) and
    # (hidden, heads * key_dim); whole heads go to each shard.
    flat = [path for path in attention
            if path.endswith(("self_attention/qkv/kernel", "cross_attention/query/kernel"))]
    assert len(flat) == 2 * layers[1]
    key_dim = config.model.decoder_dim // config.model.decoder_heads
    for path in flat:
        assert split[path] == config.model.decoder_heads * key_dim * (3 if "qkv" in path else 1)
    assert config.model.decoder_heads % shards == 0
    # The other attention kernels are per head: split on their heads axis.
    assert {split[path] for path in attention if path not in flat} <= heads
    assert len([path for path in kernels if "mlp" in path]) == 2 * sum(layers)
    assert split["decoder/token_embedding/embeddings"] == config.model.decoder_dim
    whole = [v.path for v in model.variables
             if v.path.endswith("kernel") and v.path not in split]
    assert whole == ["vit_patching_and_embedding/patch_embedding/kernel"]


def test_one_device_plans_say_how_the_batch_is_used():
    plan = plan_distribution("none", 64)
    assert plan.mode == "none" and plan.replicas == 1
    assert plan.description.startswith("No distribution: one device")
    assert plan.description.endswith("batch 64")
    with plan.scope():
        pass
    # This process sees one device: auto picks no distribution.
    assert plan_distribution("auto", 64).mode == "none"


def test_train_py_refuses_what_this_backend_cannot_run(tmp_path, capsys):
    import train

    refused = {  # flag -> the reason train.py prints (this process: one device)
        "torch": {
            "data_parallel": "--distribute data_parallel is not available on the torch "
                             "backend",
            "model_parallel": "--distribute model_parallel is not available on the torch "
                              "backend",
        },
        "tensorflow": {"model_parallel": "--distribute model_parallel needs the JAX "
                                         "backend"},
        "jax": {"model_parallel": "train.model_shards must divide the 1 devices"},
    }[BACKEND]
    for flag, reason in refused.items():
        code = train.main([
            "--config", os.path.join(REPO, "configs", "tiny.py"), "--distribute", flag,
            "--set", f"train.output_dir={tmp_path / 'models'}",
            "--set", f"train.log_dir={tmp_path / 'logs'}",
        ])
        assert code == 2, flag
        assert reason in capsys.readouterr().err
    assert not (tmp_path / "models").exists()  # refused before any work


def test_train_py_rejects_an_unknown_distribute_mode(capsys):
    import train

    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--distribute", "pipeline"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'pipeline'" in capsys.readouterr().err


def test_frozen_encoder_epochs_leave_it_exactly_as_it_was():
    import tensorflow as tf

    from vlm.models.captioner import build_captioner
    from vlm.training import fit_in_phases

    model = build_captioner(tiny_model_config(), tiny_model_config().vocabulary_size)
    # Two short phases: XLA pays on JAX only (TF's graphs and torch's eager are faster).
    model.compile(optimizer="adamw", jit_compile=BACKEND == "jax")
    encoder = lambda: [w.copy() for w in model.backbone.encoder.get_weights()]  # noqa: E731
    decoder = lambda: [w.copy() for w in model.backbone.decoder.get_weights()]  # noqa: E731
    start = encoder(), decoder()
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append((encoder(), decoder())))
    inputs, labels = caption_batch()
    data = tf.data.Dataset.from_tensors((inputs, labels)).repeat()
    history = fit_in_phases(
        model, data, plan_distribution("none", GLOBAL_BATCH), epochs=2,
        steps_per_epoch=1, freeze_encoder_epochs=1, callbacks=[record], verbose=0,
        shuffle=False,
        optimizer_for=lambda steps: keras.optimizers.AdamW(1e-2),
    )
    assert len(history.history["loss"]) == 2

    def changed(before, after):
        return max(float(np.abs(a - b).max()) for a, b in zip(before, after))

    assert changed(start[0], seen[0][0]) == 0.0  # epoch 1: encoder frozen
    assert changed(start[1], seen[0][1]) > 1e-3  # ... and the decoder trained
    assert changed(seen[0][0], seen[1][0]) > 1e-3  # epoch 2: the encoder trains
    assert model.backbone.encoder.trainable
    # Epoch 2's optimizer is fresh (one step) with AdamW's two slots for every
    # weight, the encoder's included (besides its step count and learning rate).
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 1
    trainable = len(model.trainable_variables)
    assert trainable > len(model.backbone.decoder.trainable_variables)
    assert 2 * trainable <= len(model.optimizer.variables) <= 2 * trainable + 2


# ---------------------------------------------------------------- two devices, subprocess

NO_TORCH_ENGINE = ("PyTorch has no distribution engine in vlm: its refusal is "
                   "test_train_py_refuses_what_this_backend_cannot_run")
JAX_ONLY = ("keras.distribution.ModelParallel is JAX-only: this test runs in the "
            "jax suite run")


@pytest.mark.slow
@pytest.mark.skipif(BACKEND == "torch", reason=NO_TORCH_ENGINE)
def test_data_parallel_step_equals_the_one_device_step(two_devices):
    result = two_devices["parity"]["data_parallel"]
    engine = {"jax": "keras.distribution.DataParallel",
              "tensorflow": "tf.distribute.MirroredStrategy"}[BACKEND]
    assert result["description"].startswith(
        f"data_parallel over 2 devices ({engine}): global batch 8 = 2 x 4")
    # SGD moves the weights by up to ~0.1: a gradient off by a replica
    # factor (or a mean of per-device means) would be visible.
    assert result["max_update"] > 1e-2
    assert result["max_weight_diff"] < TOLERANCE, result
    assert abs(result["logs"]["loss"] - result["reference_logs"]["loss"]) < TOLERANCE
    if BACKEND == "jax":
        assert result["devices"] == [2]  # every variable on both devices...
        assert not any(any(spec) for spec in result["shardings"].values())  # ...whole


@pytest.mark.slow
@pytest.mark.skipif(BACKEND == "torch", reason=NO_TORCH_ENGINE)
def test_data_parallel_with_captions_sharing_images_equals_one_device(two_devices):
    """4 images with 2 captions each: each device gets 2 images and their 4 captions."""
    result = two_devices["grouped"]
    assert result["max_update"] > 1e-2
    assert result["max_weight_diff"] < TOLERANCE, result


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason=JAX_ONLY)
def test_model_parallel_places_kernels_as_the_layout_map_says(two_devices):
    result = two_devices["parity"]["model_parallel"]
    assert result["description"].startswith(
        "model_parallel over 2 devices (keras.distribution.ModelParallel): "
        "global batch 8 = 1 x 8; mesh batch 1 x model 2")
    shardings = result["shardings"]
    # Every variable laid out as LAYOUT_RULES says; the rest replicated.
    for path, spec in shardings.items():
        matches = layout_rule_matches(path)
        expected = list(LAYOUT_RULES[matches[0]]) if matches else [None] * len(spec)
        assert spec == expected, path
    split = {path for path, spec in shardings.items() if "model" in spec}
    assert len(split) == 10 + 13 + 1  # per encoder layer, per decoder block, embedding
    assert shardings["vit_encoder/transformer_block_1/mha/query/kernel"] == [
        None, "model", None]  # (hidden, heads, head_dim): by head
    # 2-D, heads outermost: splitting the last axis splits whole heads.
    assert shardings["decoder/block_0/self_attention/qkv/kernel"] == [None, "model"]
    assert shardings["decoder/block_0/cross_attention/query/kernel"] == [None, "model"]
    assert shardings["decoder/block_0/cross_attention/key/kernel"] == [None, "model", None]
    assert shardings["decoder/block_0/cross_attention/output/kernel"] == [
        "model", None, None]
    # ... and the sharded step is the one-device step.
    assert result["max_update"] > 1e-2
    assert result["max_weight_diff"] < TOLERANCE, result


@pytest.mark.slow
@pytest.mark.skipif(BACKEND == "torch", reason=NO_TORCH_ENGINE)
def test_coco_recipe_trains_a_step_on_mock_coco_on_two_devices(two_devices):
    result = two_devices["coco"]
    assert len(result["loss"]) == 1 and np.isfinite(result["loss"][0])
    assert result["dtype_policy"] == "mixed_bfloat16" and result["saved"]
    assert "Epochs 1-1: the image encoder is frozen" in two_devices["stdout"]
    engine = {"jax": "keras.distribution.DataParallel",
              "tensorflow": "tf.distribute.MirroredStrategy"}[BACKEND]
    assert (f"Devices: data_parallel over 2 devices ({engine}): global batch 4 = 2 x 2"
            in two_devices["stdout"])
    if BACKEND == "jax":  # every variable whole on both devices
        assert result["devices"] == [2]
        assert not any(any(spec) for spec in result["shardings"].values())


@pytest.mark.slow
@pytest.mark.skipif(BACKEND == "torch", reason=NO_TORCH_ENGINE)
def test_settings_that_cannot_split_evenly_are_refused(two_devices):
    errors = two_devices["errors"]
    assert errors["uneven_batch"] == (
        "DistributionError: train.batch_size must be a multiple of the 2 batch shards "
        "of data_parallel. Received: batch_size=7")
    assert errors["uneven_images"] == (
        "DistributionError: The 1 images of a batch (train.batch_size=8 / "
        "train.captions_per_image=8) must split evenly over the 2 batch shards of "
        "data_parallel.")
    if BACKEND == "tensorflow":
        assert errors["model_parallel"].startswith(
            "DistributionError: --distribute model_parallel needs the JAX backend")
        return
    assert errors["uneven_heads"] == (
        "DistributionError: model_parallel splits heads and widths 2 ways "
        "(train.model_shards), which must divide them. Received: "
        "model.decoder_heads=3, model.num_key_value_heads=3")


# ---------------------------------------------------------------- subprocess jobs


def _one_step(model, inputs, labels, xla=BACKEND == "jax"):
    """One SGD step; XLA by default on JAX only (TensorFlow's graphs compile in a
    fraction of XLA's time, and the distributed TensorFlow steps run without it)."""
    import tensorflow as tf

    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), jit_compile=xla)
    history = model.fit(tf.data.Dataset.from_tensors((inputs, labels)), shuffle=False,
                        verbose=0)
    return {k: float(v[-1]) for k, v in history.history.items()}


def _specs(model):
    """Each variable's sharding as axis names (JAX), or None where it has none."""
    return {
        v.path: [None if a is None else str(a) for a in v.value.sharding.spec]
        + [None] * (len(v.shape) - len(v.value.sharding.spec))
        for v in model.variables
        if hasattr(v.value.sharding, "spec")
    }


def _parity(modes):
    """One SGD step on one device, and under each of `modes`, from the same weights."""
    from vlm.models.captioner import build_captioner

    model_config = tiny_model_config()
    inputs, labels = caption_batch()
    vocabulary = model_config.vocabulary_size
    reference = build_captioner(model_config, vocabulary)
    initial = reference.get_weights()
    reference_logs = _one_step(reference, inputs, labels)
    expected = reference.get_weights()
    results = {}
    for mode in modes:
        plan = plan_distribution(mode, GLOBAL_BATCH, model_config)
        with plan.scope():
            model = build_captioner(model_config, vocabulary)
            model.set_weights(initial)
            logs = _one_step(model, inputs, labels, xla=plan.xla)
        actual = model.get_weights()
        results[mode] = {
            "description": plan.description,
            "max_weight_diff": max(float(np.abs(a - e).max())
                                   for a, e in zip(actual, expected)),
            "max_update": max(float(np.abs(e - i).max()) for e, i in zip(expected, initial)),
            "logs": logs,
            "reference_logs": reference_logs,
        }
        if BACKEND == "jax":
            results[mode]["shardings"] = _specs(model)
            results[mode]["devices"] = sorted(
                {len(v.value.sharding.device_set) for v in model.variables})
    return results


def _grouped_parity():
    """Data parallel with 2 captions per image (4 images, 8 captions) vs one device."""
    from vlm.models.captioner import build_captioner

    model_config = tiny_model_config()
    inputs, labels = caption_batch()
    inputs = dict(inputs, images=inputs["images"][::2])
    vocabulary = model_config.vocabulary_size
    reference = build_captioner(model_config, vocabulary)
    initial = reference.get_weights()
    _one_step(reference, inputs, labels)
    expected = reference.get_weights()
    plan = plan_distribution("data_parallel", GLOBAL_BATCH, model_config,
                             captions_per_image=2)
    with plan.scope():
        model = build_captioner(model_config, vocabulary)
        model.set_weights(initial)
        _one_step(model, inputs, labels, xla=plan.xla)
    return {
        "max_weight_diff": max(float(np.abs(a - e).max())
                               for a, e in zip(model.get_weights(), expected)),
        "max_update": max(float(np.abs(e - i).max()) for e, i in zip(expected, initial)),
    }


def _errors():
    """The messages of settings that cannot run on two devices of this backend."""
    model_config = tiny_model_config()
    odd_heads = dataclasses.replace(model_config, decoder_heads=3, decoder_dim=12,
                                    num_key_value_heads=None)
    cases = {
        "uneven_batch": lambda: plan_distribution("data_parallel", 7),
        "uneven_images": lambda: plan_distribution("data_parallel", 8,
                                                   captions_per_image=8),
        "model_parallel": lambda: plan_distribution("model_parallel", 8, model_config),
        "uneven_heads": lambda: plan_distribution("model_parallel", 8, odd_heads),
    }
    messages = {}
    for name, case in cases.items():
        try:
            messages[name] = case().description
        except DistributionError as error:
            messages[name] = f"DistributionError: {error}"
    return messages


def _coco(tmp_dir):
    """train() of the COCO recipe (data parallel) on mock TFDS coco_captions."""
    import tensorflow_datasets as tfds

    from vlm import training

    built = []
    build_captioner = training.build_captioner

    def keep(*args, **kwargs):
        built.append(build_captioner(*args, **kwargs))
        return built[-1]

    training.build_captioner = keep  # this process only: to inspect the model
    config = coco_test_config(tmp_dir)
    with tfds.testing.mock_data(num_examples=4):
        paths = training.train(config)
    model = built[0]
    with open(paths["history"]) as f:
        history = json.load(f)["history"]
    result = {"loss": history["loss"], "dtype_policy": model.dtype_policy.name,
              "saved": os.path.exists(paths["model"])}
    if BACKEND == "jax":
        result["shardings"] = _specs(model)
        result["devices"] = sorted({len(v.value.sharding.device_set) for v in model.variables})
    return result


def _worker(out_path, tmp_dir):
    """Everything measured on two devices of this process's backend, as JSON."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    keras.utils.set_random_seed(0)
    modes = ["data_parallel", "model_parallel"] if BACKEND == "jax" else ["data_parallel"]
    result = {"parity": _parity(modes), "grouped": _grouped_parity(), "errors": _errors(),
              "coco": _coco(tmp_dir)}
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory):
    """Runs `_worker` in a fresh process of this backend with two devices."""
    tmp_path = tmp_path_factory.mktemp("two_devices")
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="2",
               JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                        + " --xla_force_host_platform_device_count=2").strip()
    out = tmp_path / "result.json"
    process = subprocess.run(
        [sys.executable, "-m", "tests.test_distribution", str(out), str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-5000:]
    result = json.loads(out.read_text())
    result["stdout"] = process.stdout
    return result


if __name__ == "__main__":
    _worker(*sys.argv[1:])
