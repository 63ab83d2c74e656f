import numpy as np
import pytest

from tests.generation.test_generator import MODEL
from tests.generation.test_generator import golden_images
from tests.test_case import to_numpy
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


def test_with_side_memory_a_patch_map_adds_its_slots():
    """A model whose encoder ends with `SideMemory` (5 slots per patch) still gets one map
    per word over the grid, summing to 1: each patch's own and side slots added up."""
    from dataclasses import replace

    from tests.models.test_captioner import TINY
    from vlm.data.tokenizer import SPECIAL_TOKENS
    from vlm.data.tokenizer import CaptionTokenizer
    from vlm.models.captioner import build_captioner

    tokenizer = CaptionTokenizer(list(SPECIAL_TOKENS) + ["a", "red", "circle"], sequence_length=8)
    config = replace(TINY, encoder_heads=4, encoder_side_memory=True)
    model = build_captioner(config, tokenizer.vocabulary_size(), tokenizer=tokenizer)
    image = np.random.default_rng(0).uniform(0, 255, (16, 16, 3)).astype("float32")
    ids = [tokenizer.token_to_id(w) for w in ("a", "red", "circle", "[END]")]
    words, maps = word_attention(model, image, ids)
    assert words == ["a", "red", "circle", "[END]"] and maps.shape == (4, 4, 4)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, atol=1e-5)
    patches = model.backbone.encoder(image[None])
    _, scores = model.backbone.decoder(np.array([[tokenizer.start_token_id] + ids[:-1]]),
                                       patches, return_attention_scores=True)
    slots = to_numpy(scores[-1]).mean(axis=1)[0].reshape(4, 5, 16)
    np.testing.assert_allclose(maps.reshape(4, 16), slots.sum(axis=1), atol=1e-6)
