"""Decoding on the shipped model: exact, consistent across strategies and backends.

One model, three backends: `saved_models/shapes.keras` (trained under
TensorFlow) must give, on every backend, the logits in `golden_logits.npz` to
1e-4 and exactly the greedy token ids and captions in `golden_captions.json`.
Both were written under TensorFlow; after retraining the shipped model,
regenerate them with

    KERAS_BACKEND=tensorflow python -m tests.generation.test_generator

and run `python -m tests -- tests/generation` to compare on all three.
"""

import json
import os
import re

import keras
import numpy as np
import pytest

from tests.test_case import to_numpy
from vlm import load_captioner
from vlm.data.images import preprocess_image
from vlm.data.shapes import generate_examples
from vlm.generation.generator import prepare_images
from vlm.generation.generator import sample_loop
from vlm.generation.generator import token_selector
from vlm.generation.naive import naive_greedy
from vlm.layers import CrossAttention

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(REPO, "saved_models", "shapes.keras")
GOLDEN = os.path.join(os.path.dirname(__file__), "golden_captions.json")
GOLDEN_LOGITS = os.path.join(os.path.dirname(__file__), "golden_logits.npz")


def golden_images(count=8):
    """Shapes scenes from a seed no split uses, rendered here (no dataset needed)."""
    return np.stack([e["image"] for e in generate_examples(count, seed=12345, image_size=64)])


@pytest.fixture(scope="module")
def model():
    return load_captioner(MODEL)


@pytest.fixture(scope="module")
def images():
    return golden_images()


@pytest.fixture(scope="module")
def greedy(model, images):
    return model.generate(images, return_details=True)


def test_cached_decoding_equals_naive_decoding(model, images, greedy):
    ids, log_probs = naive_greedy(model, images.astype("float32"))
    np.testing.assert_array_equal(greedy["token_ids"], ids)
    np.testing.assert_allclose(greedy["log_probs"], log_probs, atol=1e-4)
    assert np.all(greedy["log_probs"] < 0)


def test_each_caption_stops_at_its_own_end(model, greedy):
    ids, end, pad = greedy["token_ids"], model.tokenizer.end_token_id, model.tokenizer.pad_token_id
    lengths = []
    for row in ids:
        assert end in row.tolist()
        stop = row.tolist().index(end)
        assert np.all(row[stop + 1:] == pad)
        lengths.append(stop)
    assert len(set(lengths)) > 1  # the batch really mixes lengths


def test_goldens_match_on_every_backend(greedy):
    """Greedy captions of the shipped weights, recorded under TensorFlow."""
    golden = json.load(open(GOLDEN))
    assert greedy["captions"] == golden["captions"]
    np.testing.assert_array_equal(greedy["token_ids"], golden["token_ids"])
    np.testing.assert_allclose(greedy["log_probs"], golden["log_probs"], atol=1e-4)


def teacher_forced_logits(model, images, token_ids):
    """Logits of one forward pass with `[START] + token_ids[:-1]` as the decoder input."""
    start = np.full((len(token_ids), 1), model.tokenizer.start_token_id)
    tokens = np.concatenate([start, token_ids[:, :-1]], axis=1).astype("int32")
    pixels = to_numpy(prepare_images(images, model.image_size))
    return to_numpy(model({"images": pixels, "tokens": tokens}))


def test_logits_match_the_tensorflow_goldens_to_1e_4(model):
    golden = np.load(GOLDEN_LOGITS)  # no pickle: plain arrays
    # The images are stored: a renderer change must not pass as a model change.
    np.testing.assert_array_equal(golden_images(len(golden["images"])), golden["images"],
                                  err_msg="the shapes renderer changed; regenerate goldens")
    logits = teacher_forced_logits(model, golden["images"], golden["token_ids"])
    assert logits.shape == golden["logits"].shape == (4, model.sequence_length - 1, 74)
    np.testing.assert_allclose(logits, golden["logits"], rtol=0, atol=1e-4)
    # Not a vacuous bound: the logits span tens of units.
    assert np.ptp(golden["logits"]) > 20


def test_beam_of_one_is_greedy_and_wider_beams_do_no_worse(model, images, greedy):
    one = model.generate(images, strategy="beam", num_beams=1, return_details=True)
    np.testing.assert_array_equal(one["token_ids"], greedy["token_ids"])
    np.testing.assert_allclose(one["log_probs"], greedy["log_probs"], atol=1e-5)
    four = model.generate(images, strategy="beam", num_beams=4, return_details=True)
    assert np.all(four["log_probs"] >= greedy["log_probs"] - 1e-5)
    # The returned score is the log-probability of the returned sequence.
    ids = four["token_ids"]
    tokens = np.concatenate([np.full((len(ids), 1), model.tokenizer.start_token_id), ids],
                            axis=1)[:, :-1].astype("int32")
    logits = to_numpy(model({"images": to_numpy(prepare_images(images, 64)), "tokens": tokens}))
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_softmax, ids[..., None], axis=-1)[..., 0]
    real = np.cumsum(ids == model.tokenizer.end_token_id, axis=1) - (
        ids == model.tokenizer.end_token_id) == 0
    np.testing.assert_allclose((picked * real).sum(1), four["log_probs"], atol=1e-3)


@pytest.mark.parametrize("strategy", ["top_k", "top_p"])
def test_sampling_is_reproducible_with_a_seed(model, images, strategy):
    kwargs = dict(strategy=strategy, temperature=1.5, return_details=True)
    first = model.generate(images, seed=7, **kwargs)
    again = model.generate(images, seed=7, **kwargs)
    other = model.generate(images, seed=8, **kwargs)
    np.testing.assert_array_equal(first["token_ids"], again["token_ids"])
    assert not np.array_equal(first["token_ids"], other["token_ids"])


def test_top_k_of_one_is_greedy(model, images, greedy):
    out = model.generate(images, strategy="top_k", top_k=1, seed=3, return_details=True)
    np.testing.assert_array_equal(out["token_ids"], greedy["token_ids"])


def test_context_keys_and_values_are_projected_once_per_layer(model, images, monkeypatch):
    calls = []
    original = CrossAttention.compute_context_cache

    def counting(self, context):
        calls.append(self.name)
        return original(self, context)

    monkeypatch.setattr(CrossAttention, "compute_context_cache", counting)
    # A max_length no other test uses: a fresh trace (TF/JAX) or run (torch).
    model.generate(images[:2], max_length=9)
    assert len(calls) == model.decoder.num_layers


def loop_fused_dots(hlo):
    """`(dots, dots inside loop fusions)` of an optimized HLO module's text."""
    computations, name = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            name = header.group(1)
            computations[name] = []
        elif line.startswith("}"):
            name = None
        elif name:
            computations[name].append(line)
    lines = [x for body in computations.values() for x in body]
    has_dot = {n for n, body in computations.items() if any(" dot(" in x for x in body)}
    in_loops = []
    for line in lines:
        called = re.search(r"calls=%?([\w.\-]+)", line)
        if "kind=kLoop" in line and called and called.group(1) in has_dot:
            in_loops.append(line.strip()[:120])
    return sum(" dot(" in x for x in lines), in_loops


@pytest.mark.skipif(keras.config.backend() != "tensorflow",
                    reason="reads the XLA program TensorFlow compiles")
def test_a_one_image_decoding_step_keeps_its_matrix_products_out_of_loop_fusions(model):
    # At batch 1 XLA:CPU pulls the reshape of a 3-D or 4-D kernel into a
    # matrix-vector product's "loop fusion": an unvectorised loop that also
    # recomputes the layer norm before it for every output. The per-token
    # projections keep 2-D kernels, so every product stays a real one (a
    # TensorFlow step went from about 1.5 to 0.45 ms at the benchmark size).
    import tensorflow as tf

    select = token_selector("greedy", 1, 1.0, 1.0)
    loop = tf.function(lambda x, noise: sample_loop(model, x, noise, 3, select),
                       jit_compile=True)
    hlo = loop.experimental_get_compiler_ir(tf.zeros((1, 64, 64, 3)), tf.zeros((3, 1, 1)))(
        stage="optimized_hlo")
    dots, in_loops = loop_fused_dots(hlo)
    assert dots >= 4 * model.decoder.num_layers  # the check has dots to look at
    assert in_loops == []


def test_inputs_of_any_size_dtype_and_channels(model, images):
    image = images[0]
    gray = image.mean(-1).astype("uint8")
    rgba = np.concatenate([image, np.full((64, 64, 1), 255, "uint8")], axis=-1)
    wide16 = (image.astype("uint16") * 257)
    batch = prepare_images([image, gray, rgba, wide16, image.astype("float32")], 64)
    batch = to_numpy(batch)
    np.testing.assert_array_equal(batch[0], image.astype("float32"))
    np.testing.assert_array_equal(batch[1], np.repeat(gray[..., None], 3, -1))
    np.testing.assert_array_equal(batch[2], image)
    np.testing.assert_allclose(batch[3], image, atol=1e-3)
    # A larger image is resized the way the training pipeline resizes.
    big = np.kron(image, np.ones((2, 2, 1), "uint8"))  # 128x128
    np.testing.assert_allclose(to_numpy(prepare_images(big[None], 64))[0],
                               preprocess_image(big, 64).numpy(), atol=0.5)
    captions = model.generate([image, big, gray])
    assert len(captions) == 3
    assert model.generate(np.zeros((0, 64, 64, 3), "uint8")) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "sample"}, "strategy"),
    ({"max_length": 0}, "max_length"),
    ({"max_length": 500}, "max_length"),
    ({"strategy": "beam", "num_beams": 0}, "num_beams"),
    ({"strategy": "top_p", "top_p": 1.5}, "top_p"),
    ({"strategy": "top_k", "temperature": 0.0}, "temperature"),
])
def test_bad_arguments_are_named(model, images, kwargs, message):
    with pytest.raises(ValueError, match=f"{message}.*Received"):
        model.generate(images[:1], **kwargs)


if __name__ == "__main__":  # rewrite the goldens (under TensorFlow, after retraining)
    assert keras.config.backend() == "tensorflow"
    shipped = load_captioner(MODEL)
    details = shipped.generate(golden_images(), return_details=True)
    with open(GOLDEN, "w") as f:
        json.dump({"captions": details["captions"],
                   "log_probs": details["log_probs"].tolist(),
                   "token_ids": details["token_ids"].tolist()}, f, indent=2)
        f.write("\n")
    images, token_ids = golden_images(4), details["token_ids"][:4]
    np.savez(GOLDEN_LOGITS, images=images, token_ids=token_ids,
             logits=teacher_forced_logits(shipped, images, token_ids))
    print(details["captions"])
    print("wrote", GOLDEN, GOLDEN_LOGITS)
