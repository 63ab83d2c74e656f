"""The several-images captioner: where each token looks, padding, caching, both designs."""

import functools

import keras
import numpy as np
import pytest

from tests.test_case import assert_close
from tests.test_case import run_model_saving_test
from tests.test_case import run_preprocessor_test
from tests.test_case import run_task_test
from tests.test_case import to_numpy
from vlm import samplers
from vlm.config import ModelConfig
from vlm.data.tokenizer import IMAGE
from vlm.data.tokenizer import train_tokenizer
from vlm.layers.cross_attention import CrossAttention
from vlm.models.multi_image_captioner import MultiImageCaptioner
from vlm.models.multi_image_captioner import build_multi_image_captioner
from vlm.models.multi_image_preprocessor import MultiImagePreprocessor

CAPTIONS = ["the small red circle moved left of the large blue square", "nothing changed",
            "a large green triangle appeared", "the small cyan square turned red"]


def tiny(num_images=3, multi_image="interleaved", mode="all_previous", image_difference=False):
    return ModelConfig(image_size=16, patch_size=4, encoder_layers=1, encoder_heads=2,
                       encoder_dim=16, encoder_mlp_dim=32, decoder_layers=2, decoder_heads=2,
                       decoder_dim=16, decoder_mlp_dim=32, sequence_length=12, dropout=0.0,
                       num_images=num_images, multi_image=multi_image, media_mode=mode,
                       image_difference=image_difference)


@functools.lru_cache(maxsize=None)
def tokenizer():
    return train_tokenizer(CAPTIONS * 10, 60, extra_special_tokens=(IMAGE,))


@functools.lru_cache(maxsize=None)
def model(num_images=3, multi_image="interleaved", mode="all_previous"):
    keras.utils.set_random_seed(0)
    built = build_multi_image_captioner(tiny(num_images, multi_image, mode),
                                        tokenizer().vocabulary_size(), tokenizer=tokenizer())
    if built.backbone.image_index_embedding is not None:  # random, so no property holds by zeros
        built.backbone.image_index_embedding.embeddings.assign(
            np.random.default_rng(1).standard_normal((num_images, 16)).astype("float32"))
    return built


def images(batch, num_images=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((batch, num_images, 16, 16, 3)) * 255).astype("float32")


def logits(m, pixels, tokens):
    return to_numpy(m({"images": pixels, "tokens": np.asarray(tokens, "int32")}))


def cross_attention_scores(m, pixels, tokens):
    """Block 0's cross-attention probabilities, `(batch, heads, length, patches)`."""
    context = m.backbone.encode(pixels)
    tokens = np.asarray(tokens, "int32")
    mask, _ = m.backbone.cross_attention_mask(tokens, np.zeros((len(tokens),), "int32"))
    x = m.backbone.decoder.token_embedding(tokens)
    x = x + m.backbone.decoder.position_embedding(x)
    block = m.backbone.decoder.blocks[0]
    _, scores = block.cross_attention(block.cross_attention_norm(x), context,
                                      attention_mask=mask, return_attention_scores=True)
    return to_numpy(scores)


def test_text_before_the_first_image_sees_nothing():
    m = model()
    marker = m.backbone.image_token_id
    words = [int(i) for i in to_numpy(tokenizer()("red circle moved"))]
    with_image = [words + [marker, 2, words[0]] + [0] * 6]
    no_image = [words + [words[1], 2, words[0]] + [0] * 6]
    a = logits(m, images(1, seed=1), with_image)
    b = logits(m, images(1, seed=2), with_image)
    c = logits(m, images(1, seed=3), no_image)
    # After cross attention, the feed-forward layer and every later block.
    assert_close(a[:, :3], b[:, :3], atol=1e-6)
    assert_close(a[:, :3], c[:, :3], atol=1e-6)
    assert np.abs(a[:, 3:6] - b[:, 3:6]).max() > 1e-4  # from the image on, it reads it


@pytest.mark.parametrize("mode", ["immediate", "all_previous"])
def test_each_token_reads_the_images_its_mode_allows(mode):
    m = model(mode=mode)
    marker = m.backbone.image_token_id
    tokens = [[5, marker, 6, 7, marker, 6, marker, 7, 8, 0, 0, 0]]
    scores = cross_attention_scores(m, images(1), tokens)[0].sum(axis=0)  # (length, patches)
    per_image = scores.reshape(12, 3, 16).sum(-1) / 2  # mass per image, heads averaged
    segment = np.cumsum(np.array(tokens[0]) == marker)  # 0, 1, 1, 1, 2, 2, 3, ...
    for t, time in enumerate(segment):
        allowed = (np.arange(1, 4) == time) if mode == "immediate" else (np.arange(1, 4) <= time)
        assert np.all(per_image[t][~allowed] == 0.0), (t, per_image[t])
        assert abs(per_image[t][allowed].sum() - (1.0 if time else 0.0)) < 1e-5


def test_permuting_images_permutes_who_sees_them():
    m = model(mode="immediate")
    marker = m.backbone.image_token_id
    tokens = [[marker, 5, 6, marker, 7, 8, 0, 0, 0, 0, 0, 0]]
    pixels = images(1)
    swapped = pixels[:, [1, 0, 2]]
    # Rows after the first marker read slot 1: the image, whichever it is.
    context = to_numpy(m.backbone.encode(pixels)).reshape(1, 3, 16, 16)
    swapped_context = to_numpy(m.backbone.encode(swapped)).reshape(1, 3, 16, 16)
    slot = to_numpy(m.backbone.image_index_embedding.embeddings)
    assert_close(context[0, 0] - slot[0], swapped_context[0, 1] - slot[1], atol=1e-5)
    a = cross_attention_scores(m, pixels, tokens)[0]
    b = cross_attention_scores(m, swapped, tokens)[0]
    assert np.all(a[:, 1:3, 16:] == 0) and np.all(b[:, 1:3, 16:] == 0)
    assert np.all(a[:, 4:6, :16] == 0) and np.all(a[:, 4:6, 32:] == 0)
    assert np.abs(a[:, 1:3] - b[:, 1:3]).max() > 1e-4  # another image, other weights


def test_padding_images_change_nothing_and_examples_batch_as_alone():
    m = model()
    marker = m.backbone.image_token_id
    one = [marker, 2, 5, 6, 7, 3, 0, 0, 0, 0, 0, 0]
    three = [marker, marker, marker, 2, 5, 6, 7, 8, 3, 0, 0, 0]
    pixels = images(2)
    garbage = pixels.copy()
    garbage[0, 1:] = 255.0 - garbage[0, 1:]  # example 0 has one image: slots 2, 3 are padding
    batched = logits(m, garbage, [one, three])
    padded_with_zeros = pixels.copy()
    padded_with_zeros[0, 1:] = 0.0
    assert_close(batched[0], logits(m, padded_with_zeros[:1], [one])[0], atol=1e-5)
    assert_close(batched[1], logits(m, pixels[1:], [three])[0], atol=1e-5)


@pytest.mark.parametrize("design", ["interleaved", "sources"])
def test_cached_generation_equals_the_uncached_model(design):
    num_images = 2
    m = model(num_images, design)
    pixels = images(3, num_images, seed=4)
    details = m.generate(pixels, max_length=6, return_details=True)
    prefix = [m.backbone.image_token_id] * num_images if design == "interleaved" else []
    tokens = np.array([prefix + [2] + list(row) for row in details["token_ids"]], "int32")
    full = logits(m, pixels, np.pad(tokens, ((0, 0), (0, 12 - tokens.shape[1]))))
    log_probs = full - np.log(np.exp(full).sum(-1, keepdims=True))
    start = len(prefix)
    total = np.zeros(3)
    for t in range(6):
        chosen = details["token_ids"][:, t]
        alive = np.all(details["token_ids"][:, :t] != 3, axis=1)  # not ended yet
        np.testing.assert_array_equal(chosen[alive], full[alive, start + t].argmax(-1))
        total += np.where(alive, log_probs[np.arange(3), start + t, chosen], 0.0)
    assert_close(details["log_probs"], total, atol=1e-4)


@pytest.mark.parametrize("design", ["interleaved", "sources"])
def test_image_keys_and_values_are_projected_once(design, monkeypatch):
    m = model(2, design)
    calls = []
    original = CrossAttention._project_context
    monkeypatch.setattr(CrossAttention, "_project_context",
                        lambda self, context: calls.append(self.name) or original(self, context))
    pixels = keras.ops.convert_to_tensor(images(2, 2))
    marker = m.backbone.image_token_id or 0
    prompt = np.full((2, 2 if design == "interleaved" else 0), marker, "int32")
    for sampler in ("greedy", "beam"):
        calls.clear()
        sampler = samplers.get(sampler)
        noise = sampler.noise(5, 2, m.backbone.decoder.vocabulary_size)
        m.generate_step(pixels, noise, sampler, 5, prompt)  # eager: every call counts
        per_source = 1 if design == "interleaved" else 2
        assert len(calls) == m.backbone.decoder.num_layers * per_source, calls


def reading(min_images):
    """The cached 3-image model, with a preprocessor that takes `min_images` to 3 images."""
    m = model()
    return MultiImageCaptioner(m.backbone, preprocessor=MultiImagePreprocessor(
        m.tokenizer, 16, 12, num_images=3, min_images=min_images))


def test_generate_takes_image_lists_of_any_sizes():
    m = reading(min_images=1)  # a model trained on examples of 1 to 3 images
    rng = np.random.default_rng(5)
    pair = [(rng.random((20, 30, 3)) * 255).astype("uint8"), rng.random((16, 16, 3)) * 255]
    lone = [(rng.random((40, 40, 3)) * 255).astype("uint8")]
    mixed = m.generate([pair, lone], max_length=4, return_details=True)
    alone = [m.generate([example], max_length=4, return_details=True)
             for example in (pair, lone)]
    np.testing.assert_array_equal(mixed["token_ids"][0], alone[0]["token_ids"][0])
    np.testing.assert_array_equal(mixed["token_ids"][1], alone[1]["token_ids"][0])


def test_image_and_marker_counts_must_agree():
    m = model()
    three = list(images(1)[0])
    with pytest.raises(ValueError, match="Example 0 has 3 images but 1 <image> tokens"):
        m.generate([three], prompts=["<image> red"])
    pair = three[:2]
    # Trained on 3 images per example, it refuses any other count, in one line.
    for count in (4, 1):
        with pytest.raises(ValueError) as error:
            m.generate([list(images(1, 4)[0, :count])])
        assert str(error.value) == f"Example 0 has {count} images; this model reads 3 per example."
    with pytest.raises(ValueError, match="^Example 1 has 1 images; this model reads 2 to 3 "
                                         "per example.$"):
        reading(min_images=2).generate([pair, pair[:1]])


@pytest.mark.parametrize("design", ["interleaved", "sources"])
def test_the_shared_preprocessor_task_and_saving_checks(design, tmp_path):
    keras.utils.set_random_seed(0)
    m = build_multi_image_captioner(tiny(2, design), tokenizer().vocabulary_size(),
                                    tokenizer=tokenizer())
    pairs = [[np.full((20, 12, 3), 90, "uint8"), images(1, 1)[0, 0]], list(images(1, 2)[0])]
    run_preprocessor_test(m.preprocessor, pairs, CAPTIONS[1:], (2, 2, 16, 16, 3))  # they fit
    tokens, labels = (np.asarray(x) for x in m.preprocessor.tokenize(CAPTIONS))
    x = {"images": images(4, 2), "tokens": tokens}
    m.backbone.encoder.trainable = False  # a frozen encoder (train.freeze_encoder_epochs)
    # Not XLA: the layers' compiled training is tested with them, and XLA would
    # compile this model for a minute on the TensorFlow suite.
    run_task_test(m, x, labels, pairs, jit_compile=False)
    loaded = run_model_saving_test(m, x, labels, CAPTIONS[1:], str(tmp_path / "model.keras"))
    assert loaded.backbone.sources == m.backbone.sources
    assert not any(w.trainable for w in loaded.backbone.encoder.weights)  # frozen as saved
    if design == "interleaved":  # markers first, no loss on them
        np.testing.assert_array_equal(tokens[:, :3], [[4, 4, 2]] * 4)
        assert np.all(labels[:, :2] == 0)


@pytest.mark.parametrize("design", ["interleaved", "sources"])
def test_image_difference_marks_what_changed_and_round_trips(design, tmp_path):
    keras.utils.set_random_seed(0)
    m = build_multi_image_captioner(tiny(2, design, image_difference=True),
                                    tokenizer().vocabulary_size(), tokenizer=tokenizer())
    backbone = m.backbone

    def contexts(pixels):
        context = backbone.encode(pixels)
        if design == "sources":
            return [to_numpy(context[s]) for s in backbone.sources]
        return np.split(to_numpy(context), 2, axis=1)

    def plain(pixels):  # the encoder's patches, image by image
        patches = to_numpy(backbone.encoder(pixels.reshape((-1, 16, 16, 3))))
        return list(patches.reshape((len(pixels), 2) + patches.shape[1:]).transpose(1, 0, 2, 3))

    pair = images(2, 2)
    for got, want in zip(contexts(pair), plain(pair)):  # the identity at initialisation
        assert_close(got, want, atol=1e-6)
    backbone.difference.projection.kernel.assign(
        np.random.default_rng(3).standard_normal((16, 16)).astype("float32"))
    same = np.repeat(pair[:, :1], 2, axis=1)
    for got, want in zip(contexts(same), plain(same)):  # nothing changed, nothing added
        assert_close(got, want, atol=1e-5)
    before, after = contexts(pair)
    assert_close(before, plain(pair)[0], atol=1e-6)  # the first image never changes
    assert np.abs(after - plain(pair)[1]).max() > 0.1

    tokens, _ = m.preprocessor.tokenize(CAPTIONS)
    x = {"images": images(4, 2), "tokens": np.asarray(tokens)}
    path = str(tmp_path / "model.keras")  # fit and saving: the shared checks above
    m.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.backbone.get_config()["image_difference"] is True
    assert_close(logits(loaded, x["images"], x["tokens"]), logits(m, x["images"], x["tokens"]),
                 atol=1e-6)
