import os

import keras
import keras_hub
import numpy as np
import pytest

from tests.test_case import assert_close
from tests.test_case import backend
from tests.test_case import jit_compile_for_backend
from tests.test_case import run_model_saving_test
from tests.test_case import run_task_test
from tests.test_case import to_numpy
from vlm.config import ModelConfig
from vlm.data.tokenizer import train_tokenizer
from vlm.layers.patch_position_embedding import sincos_2d
from vlm.models.captioner import Captioner
from vlm.models.captioner import build_captioner
from vlm.models.image_encoder import IMAGENET_MEAN
from vlm.models.image_encoder import IMAGENET_STD
from vlm.models.image_encoder import ImageEncoder

TINY = ModelConfig(image_size=16, patch_size=4, encoder_layers=1, encoder_heads=2,
                   encoder_dim=16, encoder_mlp_dim=32, decoder_layers=2, decoder_heads=2,
                   decoder_dim=16, decoder_mlp_dim=32, sequence_length=8, dropout=0.0)
VOCAB = 20
CAPTIONS = ["a small red circle", "a large blue square left of a red circle",
            "the green triangle", "a blue circle above a square"]


def batch(n=8, length=8, seed=0):
    rng = np.random.default_rng(seed)
    images = (rng.random((n, 16, 16, 3)) * 255).astype("float32")
    tokens = rng.integers(1, VOCAB, (n, length)).astype("int32")
    tokens[:, -2:] = 0  # padding at the end, like real captions
    labels = np.concatenate([tokens[:, 1:], np.zeros((n, 1), "int32")], axis=1)
    return {"images": images, "tokens": tokens}, labels


def test_the_shared_task_and_saving_checks(tmp_path):
    tokenizer = train_tokenizer(CAPTIONS * 10, 200)  # words seen 10 times stay whole
    keras.utils.set_random_seed(0)
    model = build_captioner(TINY, tokenizer.vocabulary_size(), tokenizer=tokenizer)
    tokens, labels = (np.asarray(x) for x in model.preprocessor.tokenize(CAPTIONS))
    x = {"images": batch(n=len(CAPTIONS))[0]["images"], "tokens": tokens}
    photos = [np.full((20, 12, 3), 90, "uint8"), x["images"][0]]  # any sizes, as a user gives
    run_task_test(model, x, labels, photos)
    loaded = run_model_saving_test(model, x, labels, CAPTIONS[::2],
                                   str(tmp_path / "captioner.keras"))
    assert isinstance(loaded, Captioner)
    assert loaded.image_size == 16 and loaded.sequence_length == 8


def test_captions_sharing_an_image_train_like_repeated_images():
    """4 images x 2 captions: one SGD step equals the step on the 8 images repeated.

    The encoder runs on 4 images and each cross-attention reads an image's
    keys and values for both its captions; the gradients reaching the encoder
    are the sums over the pairs, as with the images repeated.
    """
    x, y = batch(n=8, seed=2)
    images = x["images"][:4]
    grouped = {"images": images, "tokens": x["tokens"]}
    repeated = {"images": np.repeat(images, 2, axis=0), "tokens": x["tokens"]}
    keras.utils.set_random_seed(1)
    model = build_captioner(TINY, VOCAB)
    assert_close(model(grouped), model(repeated), atol=1e-5)
    initial = model.get_weights()
    weights = []
    for inputs in (grouped, repeated):
        model.set_weights(initial)
        model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=jit_compile_for_backend())
        model.train_on_batch(inputs, y)
        weights.append(model.get_weights())
    paths = [v.path for v in model.weights]
    moved = {p: np.abs(w - i).max() for p, w, i in zip(paths, weights[1], initial)}
    assert max(moved.values()) > 1e-2
    # The encoder learns through the shared keys and values too.
    assert max(m for p, m in moved.items() if p.startswith("vit_encoder")) > 1e-4
    for g, r in zip(*weights):
        np.testing.assert_allclose(g, r, atol=2e-6)


def test_overfits_32_examples():
    keras.utils.set_random_seed(0)
    config = ModelConfig(**{**TINY.__dict__, "decoder_dim": 32, "decoder_mlp_dim": 64})
    model = build_captioner(config, VOCAB)
    x, y = batch(n=32, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(6e-3), jit_compile=jit_compile_for_backend())
    history = model.fit(x, y, batch_size=32, epochs=60, verbose=0)  # 0.02-0.03 on every backend
    assert history.history["loss"][-1] < 0.1
    assert history.history["token_accuracy"][-1] > 0.99


def test_encoder_normalises_and_adds_2d_positions():
    encoder = ImageEncoder.from_sizes(image_size=16, patch_size=4, num_layers=1,
                                      num_heads=2, hidden_dim=16, mlp_dim=32)
    images, _ = batch(n=2)
    images = images["images"]
    expected = to_numpy(encoder.backbone((images / 255.0 - 0.5) / 0.5))
    expected = expected + sincos_2d(4, 4, 16)[None]
    assert_close(encoder(images), expected, atol=1e-5)


def test_a_conv_stem_feeds_the_vit_its_grid(tmp_path):
    """Pixels -> stem -> ViT over the stem's grid; 8-pixel patches in all; saved and loaded."""
    encoder = ImageEncoder.from_sizes(image_size=16, patch_size=8, num_layers=1, num_heads=2,
                                      hidden_dim=16, mlp_dim=32, stem_filters=(4, 8))
    assert (encoder.image_size, encoder.patch_size, encoder.grid_size) == (16, 8, 2)
    assert encoder.backbone.image_shape == (4, 4, 8)
    assert encoder.backbone.patch_size in (2, (2, 2))  # keras-hub keeps (height, width)
    images = batch(n=2)[0]["images"]
    expected = to_numpy(encoder.backbone(encoder.stem((images / 255.0 - 0.5) / 0.5)))
    assert_close(encoder(images), expected + sincos_2d(2, 2, 16)[None], atol=1e-5)
    model = keras.Sequential([keras.Input((16, 16, 3)), encoder])
    model.save(os.path.join(tmp_path, "encoder.keras"))
    loaded = keras.saving.load_model(os.path.join(tmp_path, "encoder.keras"))
    assert_close(loaded(images), encoder(images), atol=1e-6)
    with pytest.raises(ValueError, match=r"stem_filters=\(4, 8\), patch_size=2"):
        ImageEncoder.from_sizes(image_size=16, patch_size=2, num_layers=1, num_heads=2,
                                hidden_dim=16, mlp_dim=32, stem_filters=(4, 8))


def test_stem_positions_add_the_2d_code_to_the_stem_grid_before_the_vit():
    encoder = ImageEncoder.from_sizes(image_size=16, patch_size=8, num_layers=1, num_heads=2,
                                      hidden_dim=16, mlp_dim=32, stem_filters=(4, 8),
                                      stem_coordinates=True, stem_positions=True)
    images = batch(n=2)[0]["images"]
    grid = to_numpy(encoder.stem((images / 255.0 - 0.5) / 0.5))  # (2, 4, 4, 8)
    coded = grid + sincos_2d(4, 4, 8).reshape(1, 4, 4, 8)
    expected = to_numpy(encoder.backbone(coded)) + sincos_2d(2, 2, 16)[None]
    assert_close(encoder(images), expected, atol=1e-5)
    config = encoder.get_config()
    assert config["stem_positions"] and config["stem"]["config"]["coordinates"]
    assert_close(ImageEncoder.from_config(config)(images).shape, (2, 4, 16))
    with pytest.raises(ValueError, match="Received: stem=None"):
        ImageEncoder(encoder.backbone, stem_positions=True)


def test_relative_blocks_follow_the_vit_and_its_2d_code(tmp_path):
    encoder = ImageEncoder.from_sizes(image_size=16, patch_size=8, num_layers=1, num_heads=2,
                                      hidden_dim=16, mlp_dim=32, stem_filters=(4, 8),
                                      relative_layers=2)
    images = batch(n=2)[0]["images"]
    encoder(images)  # built
    blocks = encoder.relative_blocks
    assert [b.grid_size for b in blocks] == [2, 2]
    for block in blocks:  # a bias the blocks must apply, not the zeros they start with
        block.offset_bias.assign(np.random.default_rng(0).standard_normal((2, 9)))
    patches = to_numpy(encoder.backbone(encoder.stem((images / 255.0 - 0.5) / 0.5)))
    expected = blocks[1](blocks[0](patches + sincos_2d(2, 2, 16)[None]))
    assert_close(encoder(images), expected, atol=1e-5)
    model = keras.Sequential([keras.Input((16, 16, 3)), encoder])
    model.save(os.path.join(tmp_path, "encoder.keras"))
    loaded = keras.saving.load_model(os.path.join(tmp_path, "encoder.keras"))
    assert_close(loaded(images), encoder(images), atol=1e-6)


def test_relative_blocks_can_start_looking_left_right_up_and_down():
    encoder = ImageEncoder.from_sizes(image_size=16, patch_size=8, num_layers=1, num_heads=4,
                                      hidden_dim=16, mlp_dim=32, stem_filters=(4, 8),
                                      relative_layers=1, relative_init="directions")
    encoder(batch(n=1)[0]["images"])
    table = to_numpy(encoder.relative_blocks[0].offset_bias).reshape(4, 3, 3)
    assert table[0, 1].tolist() == [2.0, 0.0, 0.0]  # head 0: the patch to the left
    assert table[3, :, 1].tolist() == [0.0, 0.0, 2.0]  # head 3: the patch below


def test_side_memory_ends_the_encoder_and_the_captioner_trains_and_saves(tmp_path):
    """The decoder reads 5 slots per patch (each patch and its four sides), 8 + 8 wide."""
    from dataclasses import replace

    from vlm.data.tokenizer import SPECIAL_TOKENS
    from vlm.data.tokenizer import CaptionTokenizer

    config = replace(TINY, encoder_heads=4, encoder_side_memory=True)
    tokenizer = CaptionTokenizer(list(SPECIAL_TOKENS) + ["a", "red", "blue", "circle"],
                                 sequence_length=8)
    vocabulary_size = tokenizer.vocabulary_size()
    model = build_captioner(config, vocabulary_size, tokenizer=tokenizer)
    x, y = batch()
    y = np.minimum(y, vocabulary_size - 1)
    x["tokens"] = np.minimum(x["tokens"], vocabulary_size - 1)
    assert tuple(model.backbone.encoder(x["images"]).shape) == (8, 5 * 16, 16 + 4)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=False)
    side = model.backbone.encoder.side_memory
    before = to_numpy(side.value_kernel).copy()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert not np.array_equal(before, to_numpy(side.value_kernel))  # the decoder reads it
    path = os.path.join(tmp_path, "captioner.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert np.array_equal(to_numpy(model(x)), to_numpy(loaded(x)))


def test_preset_path_drops_the_class_token(monkeypatch):
    """The `preset=` wiring, with a preset-free backbone standing in (no download)."""
    calls = []
    tiny = keras_hub.models.ViTBackbone(
        image_shape=(16, 16, 3), patch_size=4, num_layers=1, num_heads=2,
        hidden_dim=16, mlp_dim=32, use_class_token=True)

    def fake_from_preset(preset, **kwargs):
        calls.append(preset)
        return tiny

    monkeypatch.setattr(keras_hub.models.ViTBackbone, "from_preset", fake_from_preset)
    encoder = ImageEncoder.from_sizes(image_size=224, patch_size=16, num_layers=12,
                                      num_heads=12, hidden_dim=768, mlp_dim=3072,
                                      preset="vit_base_patch16_224_imagenet")
    assert calls == ["vit_base_patch16_224_imagenet"]
    assert encoder.image_mean == IMAGENET_MEAN and encoder.image_std == IMAGENET_STD
    images = np.full((1, 16, 16, 3), 128.0, "float32")
    out = to_numpy(encoder(images))
    assert out.shape == (1, 16, 16)  # 16 patches, class token gone
    normalised = (images / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    with_class = to_numpy(tiny(normalised.astype("float32")))
    assert_close(out, with_class[:, 1:] + sincos_2d(4, 4, 16)[None], atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(backend() != "torch", reason="torch.compile is PyTorch's jit")
def test_torch_compile_fit():
    """`jit_compile=True` on PyTorch means torch.compile: it trains like eager."""
    def losses(jit):
        keras.utils.set_random_seed(3)
        model = build_captioner(TINY, VOCAB)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit)
        x, y = batch(seed=4)
        return model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0).history["loss"]

    np.testing.assert_allclose(losses(True), losses(False), rtol=1e-4)
