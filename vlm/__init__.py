"""`vlm`: a Keras 3 vision-language model (ViT encoder, cross-attention decoder)."""

__version__ = "0.1.0"


def load_captioner(path):
    """Loads a `Captioner` (with its tokenizer) from a `.keras` file.

    Imports the modules that register `vlm`'s serializable classes, then
    loads with Keras' safe mode on (a file carrying code is refused).

    Args:
        path: path to a `.keras` file written by `train.py`.
    """
    import keras

    import vlm.data.tokenizer  # noqa: F401  registers CaptionTokenizer
    import vlm.models.captioner  # noqa: F401  registers Captioner and its parts

    return keras.saving.load_model(path, safe_mode=True)
