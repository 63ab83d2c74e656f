"""Test images made at test time: every format, odd modes, broken files and bombs.

A decompression bomb is cheap to make: a 1-bit grayscale PNG of one colour
(`png_bomb`, 60 megapixels in about 7 kB) is a real, decodable image, and
`with_size` rewrites the size fields of a small JPEG, GIF, BMP or WebP header.
"""

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(array, fmt, **kwargs):
    """Encodes a NumPy array (or a PIL image) with PIL."""
    buffer = io.BytesIO()
    image = array if isinstance(array, Image.Image) else Image.fromarray(array)
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width=10_000, height=6_000):
    """A valid 1-bit grayscale PNG of width x height black pixels (a few kB)."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
            + _png_chunk(b"IEND", b""))


def with_size(data, fmt, width, height):
    """`data` (a small encoded image) with the header's size fields rewritten."""
    data = bytearray(data)
    if fmt == "JPEG":
        i = 2
        while True:  # walk the segments to the start-of-frame
            marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2):
                data[i + 5:i + 9] = struct.pack(">HH", height, width)
                return bytes(data)
            i += 2 + length
    if fmt == "GIF":
        data[6:10] = struct.pack("<HH", width, height)
    elif fmt == "BMP":
        data[18:26] = struct.pack("<ii", width, height)
    elif fmt == "WEBP":  # lossless (VP8L): 14 bits each, minus one
        bits = struct.unpack("<I", data[21:25])[0] & ~0x0FFFFFFF
        data[21:25] = struct.pack("<I", bits | (width - 1) | (height - 1) << 14)
    else:
        raise ValueError(fmt)
    return bytes(data)


def scene(height=24, width=40, seed=0):
    """A smooth RGB test picture (JPEG-friendly)."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                     (x + y) * 255 // max(width + height - 2, 1)], -1)
    return np.clip(base + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)


def truncated_jpeg(image=None):
    """A JPEG cut in the middle of its image data (the header is complete)."""
    data = encode(scene(64, 64) if image is None else image, "JPEG", quality=90)
    scan = data.index(b"\xff\xda")  # start of scan: the headers end here
    return data[: (scan + len(data)) // 2]


def odd_images(image):
    """Files that decode, keyed by name: grayscale, RGBA, 16-bit PNG and the formats."""
    gray = image.mean(-1).astype(np.uint8)
    rgba = np.dstack([image, np.full(image.shape[:2], 128, np.uint8)])
    return {
        "gray.png": encode(gray, "PNG"),
        "rgba.png": encode(rgba, "PNG"),
        "deep.png": encode((gray.astype(np.uint16) * 257), "PNG"),  # 16 bits, mode I;16
        "scene.jpg": encode(image, "JPEG", quality=95),
        "scene.gif": encode(image, "GIF"),
        "scene.bmp": encode(image, "BMP"),
        "scene.webp": encode(image, "WEBP", lossless=True),
    }


def bad_images(image):
    """Files that must be refused, keyed by name (the bomb is 60 megapixels)."""
    return {
        "empty.jpg": b"",
        "notes.png": b"not an image, just some text\n",
        "truncated.jpg": truncated_jpeg(image),
        "bomb.png": png_bomb(),
    }
