import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.test_case import run_preprocessor_test
from tests.test_case import to_numpy
from vlm.data.images import preprocess_image
from vlm.data.tokenizer import SPECIAL_TOKENS
from vlm.data.tokenizer import CaptionTokenizer
from vlm.models.captioner_preprocessor import CaptionerPreprocessor

WORDS = ["a", "red", "blue", "circle", "square", "left", "of", "the"]


def make(image_size=8, sequence_length=6):
    tokenizer = CaptionTokenizer(vocabulary=list(SPECIAL_TOKENS) + WORDS)
    return CaptionerPreprocessor(tokenizer, image_size, sequence_length)


def test_images_of_any_size_dtype_and_channels():
    preprocessor = make()
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype("uint8")
    gray = image.mean(-1).astype("uint8")
    rgba = np.concatenate([image, np.full((8, 8, 1), 255, "uint8")], axis=-1)
    wide16 = image.astype("uint16") * 257
    big = np.kron(image, np.ones((3, 2, 1), "uint8"))  # 24x16, not square
    out = preprocessor([image, gray, rgba, wide16, image.astype("float64"), big])
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    out = to_numpy(out)
    assert out.shape == (6, 8, 8, 3)
    np.testing.assert_array_equal(out[0], image)  # at the size: not resampled
    np.testing.assert_array_equal(out[1], np.repeat(gray[..., None], 3, -1))
    np.testing.assert_array_equal(out[2], image)  # alpha dropped
    np.testing.assert_allclose(out[3], image, atol=1e-3)  # 16 bits scaled to 8
    np.testing.assert_array_equal(out[4], image)
    # Other sizes go through the one resize the training data uses.
    np.testing.assert_array_equal(out[5], preprocess_image(big, 8).numpy())
    assert np.abs(out[5] - image).mean() < 30  # and it is the same picture
    # A batch is a list of its images.
    np.testing.assert_array_equal(to_numpy(preprocessor(np.stack([image, image]))), out[[0, 0]])
    assert tuple(preprocessor([]).shape) == (0, 8, 8, 3)


def test_pixels_stay_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        preprocessor = make()
        pixels = np.full((1, 8, 8, 3), 200.7, "float32")
        out = to_numpy(preprocessor(pixels))
    finally:
        keras.config.set_dtype_policy("float32")
    np.testing.assert_array_equal(out, pixels)  # bfloat16 would give 200.0


def test_tokenize_and_detokenize_are_inverse():
    preprocessor = make(sequence_length=6)
    tokens, labels = (np.asarray(x) for x in preprocessor.tokenize(["A red circle", "the square"]))
    assert tokens.shape == labels.shape == (2, 6)
    start, end = preprocessor.tokenizer.start_token_id, preprocessor.tokenizer.end_token_id
    assert (tokens[:, 0] == start).all()
    np.testing.assert_array_equal(tokens[:, 1:], labels[:, :-1])  # shifted by one
    assert preprocessor.detokenize(labels) == ["a red circle", "the square"]
    assert end in labels[0].tolist()


def test_the_shared_preprocessor_checks():
    preprocessor = make(image_size=12, sequence_length=7)
    photos = [np.full((20, 9, 3), 90, "uint8"), np.zeros((12, 12), "uint8")]
    run_preprocessor_test(preprocessor, photos, ["a red circle left of", "the blue square"],
                          (2, 12, 12, 3))
    config = preprocessor.get_config()
    assert {k: config[k] for k in ("image_size", "sequence_length")} == {
        "image_size": 12, "sequence_length": 7}
    again = CaptionerPreprocessor.from_config(config)
    again.tokenizer.set_vocabulary(preprocessor.tokenizer.get_vocabulary())  # an asset
    assert again.detokenize([[4, 5, 3]]) == preprocessor.detokenize([[4, 5, 3]])


@pytest.mark.parametrize("images, message", [
    (np.zeros((1, 8, 8, 2), "uint8"), "1, 3 or 4 channels"),
    (np.zeros((8, 8, 3), "uint8"), r"batch.*Received: shape=\(8, 8, 3\)"),
])
def test_bad_images_are_named(images, message):
    with pytest.raises(ValueError, match=message):
        make()(images)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="image_size.*Received: image_size=0"):
        make(image_size=0)


def test_serving_text_reads_prompts_and_writes_captions_as_the_tokenizer_does():
    """The SavedModel's core-TF text path agrees with the Keras tokenizer and detokenizer."""
    preprocessor = make()
    text = preprocessor.serving_text()
    tokenizer = preprocessor.tokenizer
    ids = text.prompt_ids(tf.constant("The  RED circle, left of a SQUARE"))
    expected = [int(i) for i in to_numpy(tokenizer("the red circle left of a square"))]
    assert ids.numpy().tolist() == expected
    unknown = tokenizer.token_to_id("[UNK]")
    assert text.prompt_ids(tf.constant("a green circle")).numpy().tolist() == [
        tokenizer.token_to_id("a"), unknown, tokenizer.token_to_id("circle")]
    rows = np.array([[2, *expected[:3], 3, 9, 0], [2, 3, 0, 0, 0, 0, 0]], "int32")
    assert [s.decode() for s in text.detokenize(tf.constant(rows)).numpy()] == (
        preprocessor.detokenize(rows)) == ["the red circle", ""]


def test_serving_text_needs_the_caption_tokenizer():
    other = CaptionerPreprocessor(keras.layers.Identity(), 8, 6)
    with pytest.raises(ValueError, match="serves vlm's own CaptionTokenizer.*a Identity"):
        other.serving_text()
