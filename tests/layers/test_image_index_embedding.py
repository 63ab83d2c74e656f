import numpy as np

from tests.test_case import assert_close
from tests.test_case import run_layer_test
from tests.test_case import to_numpy
from vlm.layers import ImageIndexEmbedding


def test_layer_basics():
    run_layer_test(
        ImageIndexEmbedding,
        {"num_images": 2, "embeddings_initializer": "random_normal"},
        input_shapes={"patches": (4, 3, 8)},
        expected_output_shape=(2, 6, 8),
        fit=False,  # 4 images in, 2 examples out; it trains in tests/models
    )


def test_adds_each_slot_embedding_and_joins_the_images():
    layer = ImageIndexEmbedding(3, embeddings_initializer="random_normal")
    patches = np.random.default_rng(0).standard_normal((6, 4, 5)).astype("float32")
    out = to_numpy(layer(patches))
    table = to_numpy(layer.embeddings)
    expected = (patches.reshape(2, 3, 4, 5) + table[None, :, None, :]).reshape(2, 12, 5)
    assert_close(out, expected, atol=1e-6)
