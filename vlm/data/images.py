"""Image decoding and resizing for the input pipelines (TensorFlow ops, graph safe).

Images leave this module as float32 in [0, 255]; mean/std normalisation is the
model's job, so a saved model takes the same pixels as the pipeline gives it.
"""

import tensorflow as tf


def decode_image(contents):
    """Decodes an encoded image into a uint8 RGB tensor.

    Handles JPEG, PNG, GIF, BMP and WebP (whatever `tf.io.decode_image`
    reads). Grayscale images are repeated to 3 channels, an alpha channel is
    dropped (not composited), 16-bit PNGs are scaled to 8 bits, and an
    animated GIF gives its first frame.

    Args:
        contents: scalar string tensor (or `bytes`) with the encoded file.

    Returns:
        uint8 tensor of shape `(height, width, 3)`.

    Example:

    >>> image = decode_image(tf.io.read_file("dog.jpg"))
    >>> image.dtype, image.shape[-1]
    (tf.uint8, 3)
    """
    image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def preprocess_image(image, image_size):
    """Resizes images to a square with antialiased bilinear filtering.

    The aspect ratio is not kept (no crop, no padding), so the whole image is
    seen. Antialiasing makes downscaling average over the source pixels
    (like PIL) instead of sampling them.

    Args:
        image: `(height, width, 3)` or `(batch, height, width, 3)` tensor,
            uint8 or float in [0, 255].
        image_size: int. Output height and width.

    Returns:
        float32 tensor of shape `(image_size, image_size, 3)` (or with the
        batch axis), clipped to [0, 255].

    Example:

    >>> preprocess_image(tf.zeros((480, 640, 3), tf.uint8), 224).shape
    TensorShape([224, 224, 3])
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"`image_size` must be a positive integer. Received: image_size={image_size!r}")
    image = tf.convert_to_tensor(image)
    if image.shape.rank not in (3, 4) or image.shape[-1] != 3:
        raise ValueError(
            "`image` must have shape (height, width, 3) or (batch, height, width, 3). "
            f"Received: shape={image.shape}"
        )
    image = tf.cast(image, tf.float32)
    image = tf.image.resize(image, (image_size, image_size), method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def load_image(path, image_size=None):
    """Reads and decodes an image file, optionally resizing it.

    Args:
        path: file path (`str`, `pathlib.Path` or scalar string tensor).
        image_size: int or None. If given, the image goes through
            `preprocess_image`.

    Returns:
        uint8 `(height, width, 3)` when `image_size` is None, else float32
        `(image_size, image_size, 3)` in [0, 255].
    """
    if not isinstance(path, tf.Tensor):
        path = str(path)
    image = decode_image(tf.io.read_file(path))
    return image if image_size is None else preprocess_image(image, image_size)
