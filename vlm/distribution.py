"""Training on several devices with existing engines; no distribution code of our own.

- JAX: the Keras distribution API. `data_parallel` is
  `keras.distribution.DataParallel` over all local devices; `model_parallel`
  is `keras.distribution.ModelParallel` on a `("batch", "model")`
  `DeviceMesh`, with a `LayoutMap` (`LAYOUT_RULES`) that splits the
  attention and feed-forward kernels and the token embedding across the
  "model" axis.
- TensorFlow: `data_parallel` is `tf.distribute.TPUStrategy` when a TPU is
  present, else `tf.distribute.MirroredStrategy` over the local GPUs (or the
  logical CPUs). The model is built and compiled in the strategy's scope, and
  `fit` distributes the tf.data batches.
- PyTorch: one device only (`none`).

`fit` sees the global batch; each engine splits it across the devices.

Example:

>>> plan = plan_distribution("auto", batch_size=64)
>>> print(plan.description)
data_parallel over 2 devices (keras.distribution.DataParallel): global batch 64 = 2 x 32
>>> with plan.scope():
...     model = build_captioner(...)
...     model.compile(...)
...     model.fit(...)
"""

import contextlib
import dataclasses
import functools
import os
from typing import Callable

import keras

from vlm.config import DISTRIBUTE_MODES as MODES

# Variable path (regex, matched in full) -> axis names of its layout on the
# ("batch", "model") mesh; None keeps a dimension whole. The paths are those of
# keras-hub's ViT (`vit_encoder/transformer_block_1/mha/query/kernel`, ...)
# and of `vlm.layers` (`decoder/block_0/cross_attention/query/kernel`, ...).
# Attention kernels split by head, the feed-forward by its inner width
# (Megatron style: up-projections by column, down-projections by row), the
# token embedding by its hidden width. Everything else is replicated.
LAYOUT_RULES = {
    # (hidden, heads, head_dim) and (heads, head_dim)
    r".*(mha/(query|key|value)|cross_attention/(key|value))/kernel": (None, "model", None),
    r".*(mha/(query|key|value)|cross_attention/(key|value))/bias": ("model", None),
    # 2-D, heads outermost: (hidden, heads * head_dim) and (hidden, heads * 3 *
    # head_dim), and their biases; splitting the last axis splits whole heads.
    r".*(cross_attention/query|self_attention/qkv)/kernel": (None, "model"),
    r".*(cross_attention/query|self_attention/qkv)/bias": ("model",),
    # (heads, head_dim, hidden)
    r".*(mha/attention_output|self_attention/output|cross_attention/output)/kernel": (
        "model", None, None),
    # (hidden, mlp) and (mlp,)
    r".*(mlp/dense_1|mlp_up)/kernel": (None, "model"),
    r".*(mlp/dense_1|mlp_up)/bias": ("model",),
    # (mlp, hidden)
    r".*(mlp/dense_2|mlp_down)/kernel": ("model", None),
    # (vocabulary, hidden): the vocabulary size comes from the tokenizer, so
    # the hidden width is what divides evenly.
    r".*token_embedding/embeddings": (None, "model"),
}


class DistributionError(ValueError):
    """A distribution setting that cannot run here; the message says why."""


@dataclasses.dataclass
class DistributionPlan:
    """How one training run uses the devices.

    Attributes:
        mode: "none", "data_parallel" or "model_parallel" (`auto` resolved).
        engine: the engine's name, for the log.
        devices: names of the devices used.
        global_batch_size: the batch `fit` is given.
        replicas: how many ways the batch is split.
        model_shards: how many ways the sharded kernels are split.
        scope: returns a context manager to build, compile and fit in.
        distribution: the `keras.distribution.Distribution` (JAX) or the
            `tf.distribute.Strategy` (TensorFlow), or None.
        xla: False where the engine cannot run XLA-compiled steps
            (`compile(jit_compile=...)` must then be False).
    """

    mode: str
    engine: str
    devices: tuple
    global_batch_size: int
    replicas: int = 1
    model_shards: int = 1
    scope: Callable = contextlib.nullcontext
    distribution: object = None
    xla: bool = True

    @property
    def per_replica_batch_size(self):
        return self.global_batch_size // self.replicas

    @property
    def description(self):
        if self.mode == "none":
            return (f"No distribution: one device ({self.devices[0]}), "
                    f"batch {self.global_batch_size}")
        split = (f"global batch {self.global_batch_size} = {self.replicas} x "
                 f"{self.per_replica_batch_size}")
        if self.mode == "model_parallel":
            split += (f"; mesh batch {self.replicas} x model {self.model_shards}: "
                      f"attention, feed-forward and embedding kernels split "
                      f"{self.model_shards} ways")
        note = "" if self.xla else "; XLA off (tf.distribute cannot XLA-compile across CPUs)"
        devices = f"{len(self.devices)} device{'s' if len(self.devices) > 1 else ''}"
        return f"{self.mode} over {devices} ({self.engine}): {split}{note}"


def local_devices():
    """Names of the devices the current backend trains on.

    Accelerators (TPU, GPU) if there are any, else the (logical) CPUs.
    """
    backend = keras.config.backend()
    if backend == "jax":
        return keras.distribution.list_devices()
    if backend == "tensorflow":
        import tensorflow as tf

        for kind in ("TPU", "GPU", "CPU"):
            devices = tf.config.list_logical_devices(kind)
            if devices:
                return [d.name for d in devices]
        return ["/device:CPU:0"]
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu:0"]


def plan_distribution(mode, batch_size, model_config=None, model_shards=2,
                      captions_per_image=1):
    """Picks the engine for `mode` on the current backend and devices.

    Args:
        mode: one of `MODES`. "auto" is "data_parallel" when more than one
            device is visible (and the backend has an engine), else "none".
        batch_size: the global batch size; it must split evenly.
        model_config: a `vlm.config.ModelConfig`; with "model_parallel" its
            head counts and widths are checked against `model_shards`.
        model_shards: the size of the mesh's "model" axis ("model_parallel").
        captions_per_image: captions per image in a batch; the batch's
            `batch_size // captions_per_image` images must split evenly too.

    Returns:
        A `DistributionPlan`.

    Raises:
        DistributionError: the mode is unknown, unavailable on this backend,
            or the batch or model does not split evenly over the devices.
    """
    plan = _plan(mode, batch_size, model_config, model_shards)
    images = batch_size // captions_per_image
    if images % plan.replicas:
        raise DistributionError(
            f"The {images} images of a batch (train.batch_size={batch_size} / "
            f"train.captions_per_image={captions_per_image}) must split evenly over "
            f"the {plan.replicas} batch shards of {plan.mode}."
        )
    return plan


def _plan(mode, batch_size, model_config, model_shards):
    if mode not in MODES:
        raise DistributionError(f"--distribute must be one of {MODES}. Received: {mode!r}")
    backend = keras.config.backend()
    devices = tuple(local_devices())
    if mode == "auto":
        mode = "data_parallel" if len(devices) > 1 and backend != "torch" else "none"
    if mode == "none":
        return DistributionPlan("none", "single device", devices[:1], batch_size)
    if backend == "torch":
        raise DistributionError(
            f"--distribute {mode} is not available on the torch backend: vlm uses "
            "the Keras distribution API (JAX) or tf.distribute (TensorFlow). Run "
            "with KERAS_BACKEND=jax or tensorflow, or use --distribute none."
        )
    if mode == "model_parallel" and backend != "jax":
        raise DistributionError(
            f"--distribute model_parallel needs the JAX backend (keras.distribution."
            f"ModelParallel). Received backend: {backend}. Use KERAS_BACKEND=jax, or "
            "--distribute data_parallel."
        )
    if backend == "tensorflow":
        return _tensorflow_data_parallel(devices, batch_size)
    if mode == "data_parallel":
        _check_batch(batch_size, len(devices), mode)
        distribution = keras.distribution.DataParallel(devices=list(devices))
        return DistributionPlan(
            mode, "keras.distribution.DataParallel", devices, batch_size,
            replicas=len(devices), scope=distribution.scope, distribution=distribution,
        )
    return _jax_model_parallel(devices, batch_size, model_config, model_shards)


def layout_map(device_mesh):
    """A `keras.distribution.LayoutMap` of `LAYOUT_RULES` on `device_mesh`."""
    layouts = keras.distribution.LayoutMap(device_mesh)
    for pattern, axes in LAYOUT_RULES.items():
        layouts[pattern] = axes
    return layouts


def _check_batch(batch_size, replicas, mode):
    if batch_size % replicas:
        raise DistributionError(
            f"train.batch_size must be a multiple of the {replicas} batch shards of "
            f"{mode}. Received: batch_size={batch_size}"
        )


def _jax_model_parallel(devices, batch_size, model_config, model_shards):
    if len(devices) % model_shards:
        raise DistributionError(
            f"train.model_shards must divide the {len(devices)} devices. "
            f"Received: model_shards={model_shards}"
        )
    if model_config is not None:
        # The split axes of LAYOUT_RULES: heads, feed-forward widths, hidden width.
        sizes = {
            "model.encoder_heads": model_config.encoder_heads,
            "model.decoder_heads": model_config.decoder_heads,
            "model.num_key_value_heads": (model_config.num_key_value_heads
                                          or model_config.decoder_heads),
            "model.encoder_mlp_dim": model_config.encoder_mlp_dim,
            "model.decoder_mlp_dim": model_config.decoder_mlp_dim,
            "model.decoder_dim": model_config.decoder_dim,
        }
        uneven = {key: size for key, size in sizes.items() if size % model_shards}
        if uneven:
            raise DistributionError(
                f"model_parallel splits heads and widths {model_shards} ways "
                f"(train.model_shards), which must divide them. Received: "
                + ", ".join(f"{key}={size}" for key, size in uneven.items())
            )
    replicas = len(devices) // model_shards
    _check_batch(batch_size, replicas, "model_parallel")
    mesh = keras.distribution.DeviceMesh(
        shape=(replicas, model_shards), axis_names=("batch", "model"),
        devices=list(devices),
    )
    distribution = keras.distribution.ModelParallel(
        layout_map=layout_map(mesh), batch_dim_name="batch"
    )
    return DistributionPlan(
        "model_parallel", "keras.distribution.ModelParallel", devices, batch_size,
        replicas=replicas, model_shards=model_shards, scope=distribution.scope,
        distribution=distribution,
    )


def _tensorflow_data_parallel(devices, batch_size):
    import tensorflow as tf

    resolver = _tpu_resolver()
    if resolver is not None:
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
        devices = tuple(d.name for d in tf.config.list_logical_devices("TPU"))
        engine = "tf.distribute.TPUStrategy"
    else:
        strategy = _mirrored_strategy(devices)
        engine = "tf.distribute.MirroredStrategy"
    replicas = strategy.num_replicas_in_sync
    _check_batch(batch_size, replicas, "data_parallel")
    # Logical CPUs share one XLA device, and an XLA step on one cannot read
    # the variable copies of another ("tf.Variable on a different device" in
    # TensorFlow's XLA known issues); GPUs and TPUs are separate XLA devices.
    on_cpus = resolver is None and all("CPU" in d.upper() for d in devices)
    return DistributionPlan(
        "data_parallel", engine, devices, batch_size, replicas=replicas,
        scope=strategy.scope, distribution=strategy, xla=not (on_cpus and replicas > 1),
    )


@functools.lru_cache(maxsize=None)
def _mirrored_strategy(devices):
    """One `MirroredStrategy` per device set and process.

    A second strategy over the same devices in one process can pair its
    collective ops with the first one's ("Shape mismatch in the collective
    instance"), so a process that trains twice reuses the first.
    """
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(list(devices))


def _tpu_resolver():
    """A TPU cluster resolver when this host has a TPU (or TPU_NAME names one)."""
    import tensorflow as tf

    # Only probe when there is a sign of a TPU: the resolver's own discovery
    # may query the cloud metadata server, which hangs without a network.
    if not (os.environ.get("TPU_NAME") or tf.config.list_physical_devices("TPU")):
        return None
    try:
        return tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=os.environ.get("TPU_NAME", "local")
        )
    except ValueError:
        return None
