"""`vlm`: a Keras 3 vision-language model (ViT encoder, cross-attention decoder)."""

import importlib as _importlib

__version__ = "0.1.0"

# The subpackages load on first use (`vlm.models.Captioner`), as keras-hub's
# flat API reads, so that `import vlm` picks no Keras backend: `train.py`
# sets it from the config after importing `vlm.config`.
_SUBPACKAGES = ("datasets", "export", "layers", "metrics", "models", "samplers")


def __getattr__(name):
    if name in _SUBPACKAGES:
        return _importlib.import_module(f"vlm.{name}")
    raise AttributeError(f"module 'vlm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBPACKAGES))


def load_captioner(path):
    """Loads a `Captioner` (with its tokenizer) from a `.keras` file.

    Imports the modules that register `vlm`'s serializable classes, then
    loads with `vlm.saving.load_keras_file`: `.keras` archives only, their
    config checked first, Keras' safe mode on (a file carrying code, such
    as a `Lambda` layer, is refused).

    Args:
        path: path to a `.keras` file written by `train.py`.

    Raises:
        ValueError: naming the file, when it is not a `.keras` file, carries
            code (`vlm.saving.UnsafeModelError`), cannot be loaded, or holds
            another kind of model.
    """
    import vlm.data.tokenizer  # noqa: F401  registers CaptionTokenizer
    import vlm.models  # noqa: F401  registers every model class and its parts
    from vlm.models.task import Task
    from vlm.saving import load_keras_file

    model = load_keras_file(path)
    if not isinstance(model, Task):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a vlm model (a Captioner, "
                         "MultiImageCaptioner or VisionLanguageModel)")
    return model
