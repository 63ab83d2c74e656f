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

from tests.test_case import assert_close
from tests.test_case import to_numpy
from vlm import load_captioner
from vlm.datasets.shapes.captions import generate_examples
from vlm.layers import CrossAttention
from vlm.samplers import BeamSampler
from vlm.samplers import GreedySampler
from vlm.samplers import TopKSampler
from vlm.samplers import TopPSampler
from vlm.samplers.reference import naive_greedy

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
    assert_close(greedy["images"], model.preprocessor(images))  # the pixels it read


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
    pixels = to_numpy(model.preprocessor(images))
    return to_numpy(model({"images": pixels, "tokens": tokens}))


def test_logits_match_the_tensorflow_goldens_to_1e_4(model):
    golden = np.load(GOLDEN_LOGITS)  # no pickle: plain arrays
    # The images are stored: a renderer change must not pass as a model change.
    np.testing.assert_array_equal(golden_images(len(golden["images"])), golden["images"],
                                  err_msg="the shapes renderer changed; regenerate goldens")
    logits = teacher_forced_logits(model, golden["images"], golden["token_ids"])
    assert logits.shape == golden["logits"].shape == (4, model.sequence_length - 1, 74)
    np.testing.assert_allclose(logits, golden["logits"], rtol=0, atol=1e-4)
    # Not a vacuous bound: the logits span over ten units.
    assert np.ptp(golden["logits"]) > 10


def test_beam_of_one_is_greedy_and_wider_beams_do_better_on_average(model, images, greedy):
    one = model.generate(images, sampler=BeamSampler(num_beams=1), return_details=True)
    np.testing.assert_array_equal(one["token_ids"], greedy["token_ids"])
    np.testing.assert_allclose(one["log_probs"], greedy["log_probs"], atol=1e-5)
    four = model.generate(images, sampler="beam", return_details=True)  # 4 beams
    # Not on every image: the greedy path can fall out of the 4 beams (a search error; on
    # golden image 1 the shipped model's greedy caption scores -4.90, beam 4's -5.03,
    # beam 8's -4.57), so the bound is on the mean.
    assert np.mean(four["log_probs"]) > np.mean(greedy["log_probs"])
    assert np.sum(four["log_probs"] >= greedy["log_probs"] - 1e-5) >= len(images) - 1
    # The returned score is the log-probability of the returned sequence.
    ids = four["token_ids"]
    tokens = np.concatenate([np.full((len(ids), 1), model.tokenizer.start_token_id), ids],
                            axis=1)[:, :-1].astype("int32")
    logits = to_numpy(model({"images": to_numpy(model.preprocessor(images)), "tokens": tokens}))
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_softmax, ids[..., None], axis=-1)[..., 0]
    real = np.cumsum(ids == model.tokenizer.end_token_id, axis=1) - (
        ids == model.tokenizer.end_token_id) == 0
    np.testing.assert_allclose((picked * real).sum(1), four["log_probs"], atol=1e-3)


@pytest.mark.parametrize("cls", [TopKSampler, TopPSampler])
def test_sampling_is_reproducible_with_a_seed_and_traced_once(model, images, cls):
    def sample(seed):
        return model.generate(images, sampler=cls(temperature=1.5, seed=seed),
                              return_details=True)["token_ids"]

    first = sample(7)
    functions = dict(model._generate_functions)
    np.testing.assert_array_equal(first, sample(7))
    assert not np.array_equal(first, sample(8))
    # Another seed is another input, not another compiled loop.
    assert model._generate_functions == functions


def test_top_k_of_one_is_greedy(model, images, greedy):
    out = model.generate(images, sampler=TopKSampler(k=1, seed=3), return_details=True)
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
    assert len(calls) == model.backbone.decoder.num_layers


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

    loop = tf.function(lambda x, noise: model.generate_step(x, noise, GreedySampler(), 3),
                       jit_compile=True)
    hlo = loop.experimental_get_compiler_ir(tf.zeros((1, 64, 64, 3)), tf.zeros((3, 1, 1)))(
        stage="optimized_hlo")
    dots, in_loops = loop_fused_dots(hlo)
    assert dots >= 4 * model.backbone.decoder.num_layers  # the check has dots to look at
    assert in_loops == []


def test_images_of_any_size_dtype_and_channels_caption_as_preprocessed(model, images):
    image = images[0]
    gray = image.mean(-1).astype("uint8")
    big = np.kron(image, np.ones((2, 2, 1), "uint8"))  # 128x128
    captions = model.generate([image, big, gray])
    assert captions == model.generate(model.preprocessor([image, big, gray]))
    assert captions[0] == model.generate(images[:1])[0]
    assert model.generate(np.zeros((0, 64, 64, 3), "uint8")) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"sampler": "sample"}, "sampler"),
    ({"max_length": 0}, "max_length"),
    ({"max_length": 500}, "max_length"),
])
def test_bad_arguments_are_named(model, images, kwargs, message):
    with pytest.raises(ValueError, match=f"{message}.*Received"):
        model.generate(images[:1], **kwargs)


def test_only_tests_and_benchmarks_use_the_reference_decoder():
    # It recomputes every step from scratch: a yardstick, never a path of the package.
    for folder, _, names in os.walk(os.path.join(REPO, "vlm")):
        for name in names:
            if name.endswith(".py") and name != "reference.py":
                text = open(os.path.join(folder, name)).read()
                assert not re.search(r"^\s*(from|import)\s+vlm\.samplers\.reference", text,
                                     re.M), os.path.join(folder, name)


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


def test_compile_sets_the_sampler_generate_uses(model, images, greedy):
    """`compile(sampler=...)` as keras-hub's CausalLM: set once, then every `generate` uses it."""
    assert isinstance(model.sampler, GreedySampler)  # a loaded model decodes greedily
    beam = model.generate(images, sampler="beam", return_details=True)  # loop compiled once
    try:
        model.compile(sampler="beam")
        compiled = model.generate(images, return_details=True)
        assert compiled["captions"] == beam["captions"]
        np.testing.assert_allclose(compiled["log_probs"], beam["log_probs"], atol=1e-5)
        # An argument still wins.
        assert model.generate(images, sampler="greedy") == greedy["captions"]
    finally:
        model.compile(sampler="greedy")
    assert model.generate(images) == greedy["captions"]
