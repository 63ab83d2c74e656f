"""Image decoding and resizing for the input pipelines (TensorFlow ops, graph safe).

Images leave this module as float32 in [0, 255]; mean/std normalisation is the
model's job, so a saved model takes the same pixels as the pipeline gives it.

Decompression bombs (a small file that decodes to a huge image) are refused
before any pixel is decoded: the width and height are read from the file
header and checked against `MAX_IMAGE_PIXELS`. The header is read twice, as
house style does for caption normalisation: `read_image_header` in Python
(for listing folders and the caption command, with a reason for every
refusal) and `image_dimensions` with TensorFlow string ops (graph safe, for
tf.data and the exported SavedModel). A test checks that they agree.
"""

import io
import os
import struct

import tensorflow as tf

from vlm.utils.argument_checks import check_positive_int

# 50 megapixels decode to 150 MB of uint8 RGB (600 MB as float32); a larger
# image is refused before decoding. A 8000x6000 photo is 48 megapixels.
MAX_IMAGE_PIXELS = 50_000_000
IMAGE_FORMATS = "JPEG, PNG, GIF, BMP or WebP"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# Start-of-frame markers: every JPEG SOFn except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # TEM, RSTn, SOI: no length field


class ImageError(ValueError):
    """An image that is refused before decoding; the message says why."""


class ImageTooLargeError(ImageError):
    """An image over the pixel limit (a possible decompression bomb).

    Attributes:
        width, height: the size read from the header.
    """

    def __init__(self, width, height, max_pixels):
        super().__init__(_too_large_message(width, height, max_pixels))
        self.width, self.height = width, height


def describe_size(width, height):
    """`"8000x7000 (56.0 megapixels)"`."""
    return f"{width}x{height} ({width * height / 1e6:.1f} megapixels)"


def _too_large_message(width, height, max_pixels):
    return (f"the image is {describe_size(width, height)}, over the limit of "
            f"{max_pixels / 1e6:g} megapixels (MAX_IMAGE_PIXELS): refused before "
            "decoding as a possible decompression bomb")


def read_image_header(source, max_pixels=MAX_IMAGE_PIXELS):
    """Reads an image's format, width and height from its header (no pixels decoded).

    Parses the PNG IHDR chunk, the JPEG start-of-frame segment (skipping
    EXIF and other segments by their lengths, so only the header bytes are
    read from a file), the GIF logical screen, the BMP info header and the
    WebP VP8/VP8L/VP8X headers.

    Args:
        source: a file path (`str` / `pathlib.Path`) or the encoded `bytes`.
        max_pixels: refuse images with more than this many pixels (None:
            no limit).

    Returns:
        `(format, width, height)`, `format` one of "JPEG", "PNG", "GIF",
        "BMP", "WebP".

    Raises:
        ImageError: (a `ValueError`) the file is empty, not an image in a
            supported format, or has a truncated or invalid header; the
            message says which. `ImageTooLargeError`, a subclass, when the
            image is over `max_pixels`.

    Example:

    >>> read_image_header("photo.jpg")
    ('JPEG', 640, 480)
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _read_header(io.BytesIO(bytes(source)), max_pixels)
    with open(os.fspath(source), "rb") as file:
        return _read_header(file, max_pixels)


def _read_header(file, max_pixels):
    head = file.read(32)
    if not head:
        raise ImageError("empty file (0 bytes)")
    if head.startswith(_PNG_MAGIC):
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise ImageError("truncated or invalid PNG header")
        fmt, (width, height) = "PNG", struct.unpack(">II", head[16:24])
    elif head.startswith(_JPEG_MAGIC):
        fmt, (width, height) = "JPEG", _jpeg_size(file)
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        if len(head) < 10:
            raise ImageError("truncated GIF header")
        fmt, (width, height) = "GIF", struct.unpack("<HH", head[6:10])
    elif head[:2] == b"BM":
        if len(head) < 26:
            raise ImageError("truncated BMP header")
        if struct.unpack("<I", head[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
            width, height = struct.unpack("<HH", head[18:22])
        else:
            width, height = struct.unpack("<ii", head[18:26])
        fmt, width, height = "BMP", abs(width), abs(height)  # height < 0: top-down
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        fmt, (width, height) = "WebP", _webp_size(head)
    else:
        raise ImageError(f"not a {IMAGE_FORMATS} file")
    if width < 1 or height < 1:
        raise ImageError(f"invalid {fmt} header (size {width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(width, height, max_pixels)
    return fmt, width, height


def _jpeg_size(file):
    """(width, height) from the first JPEG start-of-frame segment."""
    file.seek(2)
    while True:
        byte = file.read(1)
        if not byte:
            raise ImageError("truncated JPEG: no frame header before the end of the file")
        if byte != b"\xff":
            continue  # not a marker: tolerate stray bytes, as libjpeg does
        marker = file.read(1)
        while marker == b"\xff":  # fill bytes
            marker = file.read(1)
        if not marker:
            raise ImageError("truncated JPEG: no frame header before the end of the file")
        code = marker[0]
        if code in _JPEG_STANDALONE or code == 0x00:
            continue
        if code in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            raise ImageError("invalid JPEG: no frame header before the image data")
        length = file.read(2)
        if len(length) < 2:
            raise ImageError("truncated JPEG header")
        length = struct.unpack(">H", length)[0]
        if length < 2:
            raise ImageError(f"invalid JPEG segment length {length}")
        if code in _JPEG_SOF:
            frame = file.read(5)
            if len(frame) < 5:
                raise ImageError("truncated JPEG frame header")
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height
        file.seek(length - 2, io.SEEK_CUR)


def _webp_size(head):
    if len(head) < 30:
        raise ImageError("truncated WebP header")
    chunk = head[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = struct.unpack("<I", head[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return (int.from_bytes(head[24:27], "little") + 1,
                int.from_bytes(head[27:30], "little") + 1)
    raise ImageError(f"invalid WebP header (chunk {chunk!r})")


def _header_bytes(head, start, count, little_endian):
    """The unsigned integer in `head[start:start + count]` (int64 tensor)."""
    values = head[start:start + count]
    weights = [256**i for i in range(count)]
    if not little_endian:
        weights = weights[::-1]
    return tf.reduce_sum(values * tf.constant(weights, tf.int64))


def _head(contents):
    """Exactly the first 32 bytes, zero-padded when the file is shorter."""
    return tf.strings.substr(tf.strings.join([tf.strings.substr(contents, 0, 32), "\0" * 32]),
                             0, 32)


def _has(head, magic, offset=0):
    return tf.equal(tf.strings.substr(head, offset, len(magic)), magic)


def image_dimensions(contents):
    """`(height, width)` from an encoded image's header, with TensorFlow ops.

    The graph version of `read_image_header`: string ops on the first 32
    bytes (PNG, GIF, BMP, WebP) and `tf.image.extract_jpeg_shape` for JPEG,
    which reads the header only. No pixel is decoded.

    Args:
        contents: scalar string tensor (or `bytes`) with the encoded file.

    Returns:
        int64 tensor `[height, width]`; `[-1, -1]` for an empty input or a
        format other than JPEG, PNG, GIF, BMP and WebP.

    Raises:
        tf.errors.InvalidArgumentError: a JPEG whose header is unreadable.

    Example:

    >>> image_dimensions(tf.io.read_file("photo.png")).numpy()
    array([480, 640])
    """
    contents = tf.convert_to_tensor(contents, tf.string)
    head = _head(contents)
    b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)  # (32,)

    def starts_with(magic, offset=0):
        return _has(head, magic, offset)

    def u(start, count, little_endian):
        return _header_bytes(b, start, count, little_endian)

    def signed32(value):
        return tf.where(value >= 2**31, value - 2**32, value)

    def mask14(value):
        return tf.bitwise.bitwise_and(value, 0x3FFF)

    core = tf.equal(u(14, 4, True), 12)  # OS/2 BMP header: 16-bit sizes
    vp8l = u(21, 4, True)
    # (is this the format, width, height), first match wins.
    formats = [
        (starts_with(_PNG_MAGIC), u(16, 4, False), u(20, 4, False)),
        (starts_with(b"GIF87a") | starts_with(b"GIF89a"), u(6, 2, True), u(8, 2, True)),
        (starts_with(b"BM"),
         tf.where(core, u(18, 2, True), tf.abs(signed32(u(18, 4, True)))),
         tf.where(core, u(20, 2, True), tf.abs(signed32(u(22, 4, True))))),
        (starts_with(b"RIFF") & starts_with(b"WEBP", 8) & starts_with(b"VP8 ", 12),
         mask14(u(26, 2, True)), mask14(u(28, 2, True))),
        (starts_with(b"RIFF") & starts_with(b"WEBP", 8) & starts_with(b"VP8L", 12),
         mask14(vp8l) + 1, mask14(tf.bitwise.right_shift(vp8l, 14)) + 1),
        (starts_with(b"RIFF") & starts_with(b"WEBP", 8) & starts_with(b"VP8X", 12),
         u(24, 3, True) + 1, u(27, 3, True) + 1),
    ]
    size = tf.constant([-1, -1], tf.int64)
    for is_format, width, height in reversed(formats):
        size = tf.where(is_format, tf.stack([height, width]), size)

    def jpeg():
        return tf.cast(tf.image.extract_jpeg_shape(contents)[:2], tf.int64)

    return tf.cond(starts_with(_JPEG_MAGIC), jpeg, lambda: size)


def check_image_header(contents, max_pixels=MAX_IMAGE_PIXELS):
    """Ops that fail (InvalidArgumentError) unless the image may be decoded.

    Refused, in this order, each with its own message: an empty input, a
    format other than JPEG, PNG, GIF, BMP and WebP (TensorFlow would also
    decode JPEG XL, whose size is not checked here), and an image with more
    than `max_pixels` pixels (the message gives its size). Reads the header
    only (`image_dimensions`); graph safe.

    Args:
        contents: scalar string tensor with the encoded file.
        max_pixels: int or None. The limit; `MAX_IMAGE_PIXELS` by default.

    Returns:
        The last assert op; put decoding under
        `tf.control_dependencies([op])`. In eager mode the checks have run.
    """
    contents = tf.convert_to_tensor(contents, tf.string)
    check = tf.debugging.Assert(tf.strings.length(contents) > 0,
                                ["the image is empty (0 bytes)"])
    with tf.control_dependencies([check]):
        size = image_dimensions(contents)
    height, width = size[0], size[1]
    with tf.control_dependencies([check]):
        check = tf.debugging.Assert(
            height > 0, [f"not a {IMAGE_FORMATS} image, or its header is truncated"]
        )
    if max_pixels is None:
        return check
    message = tf.strings.format(
        "the image is {}x{} ({} pixels), over the limit of " f"{max_pixels:,} pixels "
        "(MAX_IMAGE_PIXELS): refused before decoding as a possible decompression bomb",
        (width, height, width * height))
    with tf.control_dependencies([check]):
        return tf.debugging.Assert(width * height <= max_pixels, [message])


def decode_image(contents, max_pixels=MAX_IMAGE_PIXELS):
    """Decodes an encoded image into a uint8 RGB tensor.

    Handles JPEG, PNG, GIF, BMP and WebP (whatever `tf.io.decode_image`
    reads). Grayscale images are repeated to 3 channels, an alpha channel is
    dropped (not composited), 16-bit PNGs are scaled to 8 bits, and an
    animated GIF gives its first frame. Before decoding, the header is
    checked (`check_image_header`): an empty input, another format, or an
    image over `max_pixels` is refused without decoding a pixel.

    Args:
        contents: scalar string tensor (or `bytes`) with the encoded file.
        max_pixels: int or None. The decompression-bomb limit (None: none).

    Raises:
        tf.errors.InvalidArgumentError: refused by `check_image_header`
            (the message says why, with the size for a bomb), or TensorFlow
            cannot decode it (truncated, corrupt).

    Returns:
        uint8 tensor of shape `(height, width, 3)`.

    Example:

    >>> image = decode_image(tf.io.read_file("dog.jpg"))
    >>> image.dtype, image.shape[-1]
    (tf.uint8, 3)
    """
    contents = tf.convert_to_tensor(contents, tf.string)
    head = _head(contents)

    def decode(channels):
        return tf.io.decode_image(contents, channels=channels, dtype=tf.uint8,
                                  expand_animations=False)

    with tf.control_dependencies([check_image_header(contents, max_pixels)]):
        # TensorFlow's WebP decoder gives RGB or RGBA as stored and refuses
        # a conversion (channels=3 fails on RGBA): drop the alpha here.
        image = tf.cond(_has(head, b"RIFF") & _has(head, b"WEBP", 8),
                        lambda: decode(0)[..., :3], lambda: decode(3))
    image.set_shape([None, None, 3])
    return image


def preprocess_image(image, image_size):
    """Resizes images to a square with antialiased bilinear filtering.

    The one resize of vlm: training and evaluation data, generation, the
    caption command and the SavedModel all call it. The aspect ratio is not
    kept (no crop, no padding), so the whole image is seen. Antialiasing
    makes downscaling average over the source pixels (like PIL) instead of
    sampling them; an image already at the size is returned unresampled.

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
    image_size = check_positive_int("image_size", image_size)
    image = tf.convert_to_tensor(image)
    if image.shape.rank not in (3, 4) or image.shape[-1] != 3:
        raise ValueError(
            "`image` must have shape (height, width, 3) or (batch, height, width, 3). "
            f"Received: shape={image.shape}"
        )
    image = tf.cast(image, tf.float32)
    target = tf.TensorShape([image_size, image_size])
    static = image.shape[-3:-1]

    def resize():
        return tf.image.resize(image, (image_size, image_size), method="bilinear",
                               antialias=True)

    # An image already at the size is kept as is (no resampling).
    if static.is_fully_defined():
        image = image if static == target else resize()
    else:
        same = tf.reduce_all(tf.equal(tf.shape(image)[-3:-1], image_size))
        image = tf.cond(same, lambda: image, resize)
        image.set_shape(image.shape[:-3].concatenate([image_size, image_size, 3]))
    return tf.clip_by_value(image, 0.0, 255.0)


def to_rgb_float(images):
    """Images of any dtype and channel count as float32 RGB in [0, 255].

    uint8 and floats (taken to be in [0, 255]) keep their values, uint16 is
    scaled to 8 bits; grayscale is repeated to RGB and an alpha channel
    dropped (not composited). The rules `decode_image` applies to files,
    for arrays.

    Args:
        images: `(..., height, width, channels)` array or tensor, channels
            1, 3 or 4.

    Returns:
        float32 tensor `(..., height, width, 3)`.
    """
    images = tf.convert_to_tensor(images)
    channels = images.shape[-1]
    if channels not in (1, 3, 4):
        raise ValueError(f"Images need 1, 3 or 4 channels. Received: shape={tuple(images.shape)}")
    scale = 257.0 if images.dtype == tf.uint16 else 1.0
    images = tf.cast(images, tf.float32) / scale if scale != 1.0 else tf.cast(images, tf.float32)
    if channels == 1:
        images = tf.repeat(images, 3, axis=-1)
    return images[..., :3]


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
