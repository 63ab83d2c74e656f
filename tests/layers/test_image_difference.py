import keras
import numpy as np

from tests.test_case import assert_close
from tests.test_case import run_layer_test
from tests.test_case import to_numpy
from vlm.layers import ImageDifference


def test_layer_basics():
    run_layer_test(
        ImageDifference,
        {"num_images": 2, "kernel_initializer": "glorot_uniform"},
        input_shapes={"patches": (4, 3, 8)},
        expected_output_shape=(4, 3, 8),
    )


def test_matches_numpy_reference():
    layer = ImageDifference(3, kernel_initializer="random_normal")
    patches = np.random.default_rng(0).standard_normal((6, 4, 5)).astype("float32")
    out = to_numpy(layer(patches))
    kernel, bias = (to_numpy(w) for w in layer.projection.weights)
    grouped = patches.reshape(2, 3, 4, 5)
    expected = grouped.copy()
    for i in (1, 2):
        expected[:, i] += (grouped[:, i] - grouped[:, i - 1]) @ kernel + bias
    assert_close(out, expected.reshape(6, 4, 5), atol=1e-5)


def test_identity_at_initialisation_and_the_first_image_never_changes():
    layer = ImageDifference(2)
    patches = np.random.default_rng(1).standard_normal((4, 3, 8)).astype("float32")
    assert_close(to_numpy(layer(patches)), patches, atol=0.0)
    layer.projection.bias.assign(np.ones(8, "float32"))
    out = to_numpy(layer(patches)).reshape(2, 2, 3, 8)
    assert_close(out[:, 0], patches.reshape(2, 2, 3, 8)[:, 0], atol=0.0)
    assert_close(out[:, 1], patches.reshape(2, 2, 3, 8)[:, 1] + 1.0, atol=1e-6)


def test_only_changed_places_differ_between_identical_images():
    layer = ImageDifference(2, kernel_initializer="random_normal")
    image = np.random.default_rng(2).standard_normal((1, 5, 4)).astype("float32")
    after = image.copy()
    after[0, 3] += 2.0  # one place changed
    out = to_numpy(layer(np.concatenate([image, after])))
    bias = to_numpy(layer.projection.bias)
    shift = out[1] - after[0] - bias
    assert np.abs(shift[[0, 1, 2, 4]]).max() < 1e-6
    assert np.abs(shift[3]).max() > 1e-3


def test_config_round_trip():
    layer = ImageDifference(4, kernel_initializer="ones", name="difference")
    clone = ImageDifference.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert isinstance(clone.kernel_initializer, keras.initializers.Ones)
