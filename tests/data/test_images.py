"""Image headers and the decompression-bomb limit: Python and TensorFlow readers agree; decoding
and resizing."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.data.image_files import encode
from tests.data.image_files import png_bomb
from tests.data.image_files import scene
from tests.data.image_files import truncated_jpeg
from tests.data.image_files import with_size
from vlm.data.images import MAX_IMAGE_PIXELS
from vlm.data.images import ImageError
from vlm.data.images import ImageTooLargeError
from vlm.data.images import decode_image
from vlm.data.images import image_dimensions
from vlm.data.images import load_image
from vlm.data.images import preprocess_image
from vlm.data.images import read_image_header

W, H = 37, 23  # odd sizes, so that swapped or off-by-one fields show


@pytest.fixture(scope="module")
def picture():
    return scene(H, W)


def every_format(picture):
    """(name, format, bytes) of one W x H picture in every variant a header can take."""
    gray = picture[..., 0]
    exif = Image.Exif()
    exif[0x010F] = "x" * 3000  # a large APP1 segment before the frame header
    alpha = np.dstack([picture, np.full((H, W), 9, np.uint8)])
    return [
        ("png rgb", "PNG", encode(picture, "PNG")),
        ("png gray", "PNG", encode(gray, "PNG")),
        ("png rgba", "PNG", encode(alpha, "PNG")),
        ("png 16-bit", "PNG", encode(gray.astype(np.uint16) * 257, "PNG")),
        ("png palette", "PNG", encode(Image.fromarray(picture).convert("P"), "PNG")),
        ("jpeg baseline", "JPEG", encode(picture, "JPEG")),
        ("jpeg progressive", "JPEG", encode(picture, "JPEG", progressive=True)),
        ("jpeg exif", "JPEG", encode(picture, "JPEG", exif=exif.tobytes())),
        ("jpeg gray", "JPEG", encode(gray, "JPEG")),
        ("gif", "GIF", encode(picture, "GIF")),
        ("bmp rgb", "BMP", encode(picture, "BMP")),
        ("bmp gray", "BMP", encode(gray, "BMP")),
        ("bmp top-down", "BMP", with_size(encode(picture, "BMP"), "BMP", W, -H)),
        ("webp lossy (VP8)", "WebP", encode(picture, "WEBP", quality=80)),
        ("webp lossless (VP8L)", "WebP", encode(picture, "WEBP", lossless=True)),
        ("webp alpha (VP8X)", "WebP", encode(alpha, "WEBP", quality=80)),
    ]


def test_python_and_tensorflow_headers_agree_on_every_format(picture):
    for name, fmt, data in every_format(picture):
        assert read_image_header(data) == (fmt, W, H), name
        assert image_dimensions(data).numpy().tolist() == [H, W], name
        if name != "bmp top-down":  # PIL wrote it bottom-up; the header lies
            assert decode_image(data).shape == (H, W, 3), name
    # TensorFlow's WebP decoder refuses channels=3 for RGBA: the alpha is dropped here.
    alpha = np.dstack([picture, np.full((H, W), 9, np.uint8)])
    np.testing.assert_array_equal(decode_image(encode(alpha, "WEBP", lossless=True)), picture)


def test_python_header_reads_files_without_reading_pixels(tmp_path, picture):
    path = tmp_path / "big.jpg"
    exif = Image.Exif()
    exif[0x010F] = "x" * 30000
    path.write_bytes(encode(picture, "JPEG", exif=exif.tobytes()))
    assert read_image_header(path) == ("JPEG", W, H)
    assert read_image_header(str(path)) == ("JPEG", W, H)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_bombs_are_refused_from_the_header_in_python_and_in_tensorflow(picture, fmt):
    if fmt == "PNG":
        data = png_bomb(10_000, 6_000)  # a real, decodable 60-megapixel image
        assert len(data) < 10_000
    else:
        small = encode(picture, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        data = with_size(small, fmt, 10_000, 6_000)
    with pytest.raises(ImageTooLargeError, match=r"10000x6000 \(60\.0 megapixels\)") as error:
        read_image_header(data)
    assert (error.value.width, error.value.height) == (10_000, 6_000)
    assert "50 megapixels" in str(error.value)
    assert image_dimensions(data).numpy().tolist() == [6_000, 10_000]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"10000x6000 \(60000000 pixels\).*decompression bomb"):
        decode_image(data)


def test_the_limit_is_exact_and_the_bomb_is_a_real_image():
    assert MAX_IMAGE_PIXELS == 50_000_000
    small_bomb = png_bomb(300, 200)  # 60,000 pixels, same construction
    image = decode_image(small_bomb, max_pixels=60_000)
    assert image.shape == (200, 300, 3) and int(tf.reduce_max(image)) == 0
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"300x200 \(60000 pixels\)"):
        decode_image(small_bomb, max_pixels=59_999)
    assert read_image_header(small_bomb, max_pixels=60_000) == ("PNG", 300, 200)
    with pytest.raises(ImageTooLargeError):
        read_image_header(small_bomb, max_pixels=59_999)
    assert read_image_header(png_bomb(), max_pixels=None) == ("PNG", 10_000, 6_000)


def test_bombs_are_refused_inside_tf_data_and_tf_function(picture):
    files = tf.constant([encode(picture, "PNG"), png_bomb()])
    dataset = tf.data.Dataset.from_tensor_slices(files).map(decode_image)
    iterator = iter(dataset)
    assert next(iterator).shape == (H, W, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="10000x6000"):
        next(iterator)
    graph = tf.function(lambda data: tf.shape(decode_image(data)))
    assert graph(files[0]).numpy().tolist() == [H, W, 3]
    with pytest.raises(tf.errors.InvalidArgumentError, match="10000x6000"):
        graph(files[1])


def test_a_huge_image_under_the_limit_is_decoded():
    # 7000 x 7000 = 49 megapixels, 147 MB of RGB from a 6 kB file: allowed.
    image = decode_image(png_bomb(7_000, 7_000))
    assert image.shape == (7_000, 7_000, 3)


@pytest.mark.parametrize("data, python_message, tf_message", [
    (b"", "empty file", r"empty \(0 bytes\)"),
    (b"just some text, not an image", "not a JPEG, PNG, GIF, BMP or WebP file",
     "not a JPEG, PNG, GIF, BMP or WebP image"),
    # JPEG XL: TensorFlow decodes it, but its size is not checked: refused.
    (b"\xff\x0a" + bytes(40), "not a JPEG", "not a JPEG, PNG, GIF, BMP or WebP image"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "truncated or invalid PNG header",
     "not a JPEG, PNG, GIF, BMP or WebP image"),
    (encode(scene(64, 64), "JPEG")[:100], "truncated JPEG", "Invalid JPEG data"),
])
def test_broken_files_are_refused_with_a_reason(data, python_message, tf_message):
    with pytest.raises(ImageError, match=python_message):
        read_image_header(data)
    with pytest.raises(tf.errors.InvalidArgumentError, match=tf_message):
        decode_image(data)


def test_a_truncated_jpeg_has_a_good_header_but_fails_to_decode():
    data = truncated_jpeg()
    assert read_image_header(data) == ("JPEG", 64, 64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="JPEG"):
        decode_image(data)


# ---------------------------------------------------------------- decoding and resizing


def pil_resize(image, size):
    """Reference for preprocess_image: PIL's antialiased bilinear filter, per channel in float."""
    channels = [
        np.asarray(
            Image.fromarray(image[..., c].astype(np.float32)).resize((size, size), Image.BILINEAR)
        )
        for c in range(3)
    ]
    return np.stack(channels, axis=-1)




@pytest.fixture(scope="module")
def rgb():
    return np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)


def test_decode_png_gray_rgba_16bit_and_palette(rgb):
    gray = rgb[..., 0]
    np.testing.assert_array_equal(
        decode_image(encode(gray, "PNG")), np.repeat(gray[..., None], 3, -1)
    )
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(decode_image(encode(rgba, "PNG")), rgb)  # alpha dropped
    sixteen = gray.astype(np.uint16) * 257  # exact 8 -> 16 bit scaling
    png16 = encode(sixteen, "PNG")
    assert Image.open(io.BytesIO(png16)).mode == "I;16"
    np.testing.assert_array_equal(decode_image(png16), np.repeat(gray[..., None], 3, -1))
    palette = Image.fromarray(rgb).convert("P")
    np.testing.assert_array_equal(
        decode_image(encode(palette, "PNG")), np.asarray(palette.convert("RGB"))
    )


def test_decode_gif_first_frame_bmp_jpeg_webp(rgb):
    frames = [Image.fromarray(rgb).convert("P"), Image.fromarray(255 - rgb).convert("P")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    gif = decode_image(buffer.getvalue())
    np.testing.assert_array_equal(gif, np.asarray(frames[0].convert("RGB")))

    np.testing.assert_array_equal(decode_image(encode(rgb, "BMP")), rgb)
    np.testing.assert_array_equal(
        decode_image(encode(rgb[..., 1], "BMP")), np.repeat(rgb[..., 1:2], 3, -1)
    )
    np.testing.assert_array_equal(decode_image(encode(rgb, "WEBP", lossless=True)), rgb)

    # TensorFlow's JPEG decoder uses a faster inverse DCT than PIL's: a few levels apart.
    smooth = np.broadcast_to(
        np.linspace(60, 180, 16, dtype=np.uint8)[None, :, None], (16, 16, 3)
    ).copy()
    jpeg = encode(smooth, "JPEG", quality=95)
    decoded = decode_image(jpeg)
    assert decoded.dtype == tf.uint8 and decoded.shape == (16, 16, 3)
    reference = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)
    assert np.abs(decoded.numpy().astype(int) - reference).max() <= 3
    gray_jpeg = decode_image(encode(smooth[..., 0], "JPEG", quality=95))
    assert gray_jpeg.shape == (16, 16, 3)


def test_decode_image_inside_tf_data(rgb):
    dataset = tf.data.Dataset.from_tensor_slices([encode(rgb, "PNG"), encode(rgb[..., 0], "PNG")])
    dataset = dataset.map(decode_image)
    assert dataset.element_spec.shape.as_list() == [None, None, 3]
    shapes = [image.shape for image in dataset.as_numpy_iterator()]
    assert shapes == [(6, 7, 3), (6, 7, 3)]


@pytest.mark.parametrize("size", [4, 5, 16])
def test_preprocess_image_matches_pil_bilinear(size):
    image = np.random.default_rng(size).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    out = preprocess_image(image, size)
    assert out.dtype == tf.float32 and out.shape == (size, size, 3)
    np.testing.assert_allclose(out, pil_resize(image, size), atol=1e-3)
    assert 0.0 <= out.numpy().min() and out.numpy().max() <= 255.0


def test_preprocess_image_clips_and_validates():
    out = preprocess_image(np.full((4, 4, 3), 300.0, np.float32), 2)
    np.testing.assert_array_equal(out, np.full((2, 2, 3), 255.0))
    with pytest.raises(ValueError, match="image_size=0"):
        preprocess_image(np.zeros((4, 4, 3), np.uint8), 0)
    with pytest.raises(ValueError, match=r"Received: shape=\(4, 4\)"):
        preprocess_image(np.zeros((4, 4), np.uint8), 2)


def test_load_image(tmp_path, rgb):
    path = tmp_path / "x.png"
    path.write_bytes(encode(rgb, "PNG"))
    np.testing.assert_array_equal(load_image(path), rgb)
    np.testing.assert_allclose(load_image(str(path), 4), pil_resize(rgb, 4), atol=1e-3)
