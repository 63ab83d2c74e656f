"""Loading model files safely: `.keras` archives only, Keras safe mode on.

A model file may come from anywhere, so loading it must not run code. Keras'
safe mode refuses a `Lambda` layer's Python bytecode; before Keras sees the
file, `check_keras_file` also refuses what safe mode would not catch as
clearly: other formats (`.h5` and SavedModel folders can carry code), archive
members that escape the archive (`../x`), and references in the model config
to Python objects outside `keras`, `keras_hub` and `vlm` (such as
`os.system` or a `__main__` function). Errors are `ValueError`s that name
the file.

`upgrade_keras_file` rewrites a file saved before the decoder's per-token
projections got 2-D kernels; `load_keras_file` says so when it meets one. A
file saved before each task held a backbone (its encoder and decoder kept
directly) is rewritten to the same model as it loads.
"""

import io
import json
import os
import tempfile
import zipfile

# Config "module" values a vlm model may refer to: Keras' own objects and
# the registered classes of keras_hub and vlm. Anything else is refused.
TRUSTED_MODULES = ("keras", "keras_hub", "vlm")
# Serialized Python bytecode (a `Lambda` layer's function).
_CODE_CLASSES = ("__lambda__",)


class UnsafeModelError(ValueError):
    """A model file refused because loading it could run code; names the file."""


def check_keras_file(path):
    """Raises a `ValueError` naming `path` unless it looks like a safe `.keras` file.

    Checks the name (`.keras`), that it is a file and a zip archive with a
    `config.json`, that no member name escapes the archive, and that the
    config refers only to `TRUSTED_MODULES` and holds no serialized
    bytecode. Nothing in the file is imported or run.

    Args:
        path: the model path.

    Raises:
        ValueError: not a `.keras` file (the message says what it is).
        UnsafeModelError: (a `ValueError`) the file carries code.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        kind = ("a TensorFlow SavedModel folder"
                if os.path.isfile(os.path.join(path, "saved_model.pb")) else "a folder")
        raise ValueError(
            f"{path} is {kind}, not a .keras file. Only .keras files are loaded (a "
            "SavedModel can carry arbitrary TensorFlow functions); for serving, load the "
            "SavedModel with tf.saved_model.load")
    if not os.path.isfile(path):
        raise ValueError(f"model file not found: {path}")
    if not path.endswith(".keras"):
        extension = os.path.splitext(path)[1] or "(no extension)"
        raise ValueError(
            f"{path}: only .keras files are loaded, not {extension}. Legacy .h5 and "
            "pickled formats can carry code; re-save the model with model.save('x.keras') "
            "where you trust it")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .keras file: it is not a zip archive "
                         "(a renamed .h5 file, or truncated)")
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
                raise UnsafeModelError(
                    f"Refused to load {path}: archive member {name!r} points outside "
                    "the archive")
        if "config.json" not in archive.namelist():
            raise ValueError(f"{path} is not a .keras file: it has no config.json")
        try:
            config = json.loads(archive.read("config.json"))
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: config.json is not valid JSON ({error})") from None
    for where, node in _walk(config, "config"):
        if node.get("class_name") in _CODE_CLASSES:
            raise UnsafeModelError(
                f"Refused to load {path}: it carries Python bytecode at {where} (a Lambda "
                "layer's function), which could run arbitrary code. Only models built "
                "from keras, keras_hub and vlm layers are loaded")
        module = node.get("module")
        if isinstance(module, str) and module.split(".")[0] not in TRUSTED_MODULES:
            # A function is {"class_name": "function", "config": its name}.
            name = node.get("config") if node.get("class_name") == "function" else \
                node.get("class_name")
            raise UnsafeModelError(
                f"Refused to load {path}: its config refers to {module}.{name} at {where}, "
                f"outside {', '.join(TRUSTED_MODULES)}; loading it could run arbitrary code")


def _walk(node, where):
    """Yields `(path, dict)` for every dict in a JSON tree."""
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from _walk(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{where}[{i}]")


# Weights of files saved before the per-token projections became 2-D
# (`CausalSelfAttention`'s fused qkv, `CrossAttention`'s query): the h5 path
# suffix, its old rank, and how the old array becomes the new one.
_LEGACY_LAYOUTS = {
    # (hidden, 3, heads, dim) -> (hidden, heads * 3 * dim), heads outermost
    "self_attention/qkv_dense/vars/0": (4, lambda w: w.transpose(0, 2, 1, 3).reshape(len(w), -1)),
    "self_attention/qkv_dense/vars/1": (3, lambda b: b.transpose(1, 0, 2).reshape(-1)),
    # (hidden, heads, dim) -> (hidden, heads * dim)
    "cross_attention/query_dense/vars/0": (3, lambda w: w.reshape(len(w), -1)),
    "cross_attention/query_dense/vars/1": (2, lambda b: b.reshape(-1)),
}


def _legacy_weights(weights):
    """Paths in an open h5 weights file that hold the old layouts."""
    found = []

    def visit(name, node):
        for suffix, (rank, _) in _LEGACY_LAYOUTS.items():
            if name.endswith(suffix) and getattr(node, "ndim", None) == rank:
                found.append((name, suffix))

    weights.visititems(visit)
    return found


# Tasks saved before each held a backbone kept the backbone's parts: per task
# class, its backbone's class and module, and the backbone's config keys (any
# found in the task's config move).
_BACKBONES = {
    "Captioner": ("CaptionerBackbone", "captioner_backbone", ("encoder", "decoder")),
    "MultiImageCaptioner": ("MultiImageBackbone", "multi_image_backbone",
                            ("encoder", "decoder", "num_images", "mode", "image_token_id",
                             "image_difference")),
    "VisionLanguageModel": ("VisionLanguageBackbone", "vision_language_backbone",
                            ("language_model", "encoder", "cross_attention_every",
                             "cross_attention_layers", "num_heads", "num_key_value_heads",
                             "mlp_dim", "dropout", "sequence_length", "gate_type", "gate_scale")),
}


def _without_backbone(config):
    """Whether a model config is a task saved before it held a backbone."""
    return (config.get("class_name") in _BACKBONES and config.get("module", "").startswith("vlm")
            and "backbone" not in config.get("config", {}))


def _nest_backbone(config, weights):
    """Moves a pre-backbone task's parts into its backbone, in its config and its weights."""
    backbone_class, module, keys = _BACKBONES[config["class_name"]]
    task = config["config"]
    parts = {key: task.pop(key) for key in keys if key in task}
    task["backbone"] = {"module": f"vlm.models.{module}", "class_name": backbone_class,
                        "config": {"name": "backbone", "trainable": True, **parts},
                        "registered_name": f"vlm>{backbone_class}"}
    # The task's graph held the parts as layers; the backbone's graph holds them now.
    nested = weights.require_group(f"layers/{module}/layers")
    for name in list(weights["layers"]):
        if name != module and not name.startswith("input_layer"):
            weights.move(f"layers/{name}", f"{nested.name}/{name}")


def upgrade_keras_file(path, output):
    """Rewrites a `.keras` file of an earlier layout to the same model.

    Two layouts are upgraded. The decoder's fused query/key/value kernel
    `(hidden, 3, heads, dim)` becomes `(hidden, heads * 3 * dim)` and
    cross-attention's query kernel `(hidden, heads, dim)` becomes `(hidden,
    heads * dim)`, with their biases. A task saved before it held a
    backbone (a `Captioner` with its `encoder` and `decoder`) gets them
    inside a `CaptionerBackbone` (or `MultiImageBackbone`,
    `VisionLanguageBackbone`), in its config and its weights. The outputs
    are the same; other members are copied as they are.

    Args:
        path: the old `.keras` file.
        output: where to write the upgraded file (may be `path`).

    Returns:
        The number of kernel and bias arrays rewritten (0 for a file whose
        kernels need nothing).
    """
    import h5py

    check_keras_file(path)
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        members = {info.filename: archive.read(info.filename) for info in infos}
    config = json.loads(members["config.json"])
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as weights:
        legacy = _legacy_weights(weights)
        for name, suffix in legacy:
            value = _LEGACY_LAYOUTS[suffix][1](weights[name][()])
            del weights[name]
            weights.create_dataset(name, data=value)
        if _without_backbone(config):
            _nest_backbone(config, weights)
            members["config.json"] = json.dumps(config).encode()
    members["model.weights.h5"] = buffer.getvalue()
    partial = f"{output}.partial"
    with zipfile.ZipFile(partial, "w") as archive:
        for info in infos:
            archive.writestr(info, members[info.filename])
    os.replace(partial, output)
    return len(legacy)


def _check_layouts(path):
    """Raises a `ValueError` naming `path` if it holds the old kernel layouts."""
    import h5py

    with zipfile.ZipFile(path) as archive:
        if "model.weights.h5" not in archive.namelist():
            return
        # Read in place: only the array headers, not the whole weights file.
        try:
            with archive.open("model.weights.h5") as member, h5py.File(member, "r") as weights:
                legacy = _legacy_weights(weights)
        except OSError:  # not HDF5: Keras' own error, with the file named, says more
            return
    if legacy:
        raise ValueError(
            f"{path} was saved before the decoder's query/key/value kernels became "
            f"2-D ({legacy[0][0]} has the old layout). Upgrade it once, to the same "
            "model: python -c \"from vlm.saving import upgrade_keras_file; "
            f"upgrade_keras_file('{path}', '{path}')\"")


def load_keras_file(path):
    """Loads a `.keras` file with safe mode on, after `check_keras_file`.

    Keras' own errors (safe mode refusing code, an unknown class, a corrupt
    weights file) are re-raised as a `ValueError` that names the file, with
    Keras' message after it.

    Args:
        path: a `.keras` file.

    Returns:
        The model.
    """
    import keras

    check_keras_file(path)
    _check_layouts(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    try:
        if _without_backbone(config):  # an earlier layout: the same model, rewritten
            with tempfile.TemporaryDirectory() as folder:
                upgraded = os.path.join(folder, "upgraded.keras")
                upgrade_keras_file(path, upgraded)
                return keras.saving.load_model(upgraded, safe_mode=True)
        return keras.saving.load_model(path, safe_mode=True)
    except Exception as error:  # noqa: BLE001  (Keras raises several kinds)
        message = " ".join(str(error).split())
        if "safe_mode" in message or "arbitrary code" in message:
            raise UnsafeModelError(
                f"Refused to load {path}: Keras safe mode found code in it. "
                f"Keras said: {message}") from error
        raise ValueError(f"Could not load {path}: {message[:2000]}") from error
