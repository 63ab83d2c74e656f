import numpy as np
import pytest

from tests.generation.test_generator import MODEL
from tests.generation.test_generator import golden_images
from vlm import load_captioner
from vlm.viz.attention import plot_attention_grid
from vlm.viz.attention import word_attention


@pytest.fixture(scope="module")
def model():
    return load_captioner(MODEL)


def test_each_word_map_sums_to_one_and_is_drawn(model, tmp_path):
    image = golden_images(1)[0].astype("float32")
    details = model.generate(image[None], return_details=True)
    ids = details["token_ids"][0]
    words, maps = word_attention(model, image, ids)
    n = ids.tolist().index(model.tokenizer.end_token_id) + 1
    assert len(words) == n and words[-1] == "[END]"
    assert maps.shape == (n, 8, 8)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert " ".join(w for w in words[:-1]).replace(" ##", "") == details["captions"][0]
    path = tmp_path / "maps.png"
    plot_attention_grid(image, words, maps, path, caption=details["captions"][0])
    assert path.stat().st_size > 10_000


def test_layer_out_of_range_is_named(model):
    image = golden_images(1)[0].astype("float32")
    with pytest.raises(ValueError, match="layer.*Received: layer=7"):
        word_attention(model, image, [5, 3], layer=7)
