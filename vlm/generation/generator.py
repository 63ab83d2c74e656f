"""Cached, compiled caption decoding: greedy, beam search, top-k and top-p sampling.

Per batch of images the encoder runs once, and every decoder block's
cross-attention keys and values are projected once
(`CrossAttention.compute_context_cache`) and reused at every step. The
self-attention keys and values live in a fixed-shape cache updated in place
(`ops.slice_update`), so the whole loop is one `ops.while_loop` that compiles
once: XLA on TensorFlow and JAX, eager under `no_grad` on PyTorch
(`vlm.backend.compiled_inference`).
"""

import keras
import numpy as np
from keras import ops

from vlm.backend import compiled_inference

STRATEGIES = ("greedy", "beam", "top_k", "top_p")
_NEG = -1e9  # "impossible" in log space, finite so sums never make NaN


def prepare_images(images, image_size):
    """A float32 `(batch, S, S, 3)` batch in [0, 255] from images as given.

    Args:
        images: a `(batch, H, W, C)` array or tensor, or a list of `(H, W, C)`
            / `(H, W)` arrays of any sizes. uint8 is used as is, uint16 is
            scaled to 8 bits, floats are taken to be in [0, 255]; grayscale is
            repeated to RGB and an alpha channel dropped.
        image_size: the model's image side S.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            return ops.zeros((0, image_size, image_size, 3))
        return ops.concatenate(
            [prepare_images(_batch_of_one(image), image_size) for image in images], axis=0
        )
    if len(images.shape) != 4:
        raise ValueError(
            "`images` must be a batch (batch, height, width, channels) or a list "
            f"of images. Received: shape={tuple(images.shape)}"
        )
    # Read the dtype before any conversion: not every backend has uint16.
    dtype = keras.backend.standardize_dtype(images.dtype)
    images = ops.cast(images, "float32")
    if dtype == "uint16":
        images = images / 257.0
    channels = ops.shape(images)[-1]
    if channels == 1:
        images = ops.repeat(images, 3, axis=-1)
    elif channels == 4:
        images = images[..., :3]
    elif channels != 3:
        raise ValueError(f"Images need 1, 3 or 4 channels. Received: {channels}")
    if tuple(ops.shape(images)[1:3]) != (image_size, image_size):
        images = ops.image.resize(
            images, (image_size, image_size), interpolation="bilinear", antialias=True
        )
    return ops.clip(images, 0.0, 255.0)


def _batch_of_one(image):
    """`(1, H, W, C)` from one `(H, W, C)` or `(H, W)` image, dtype kept."""
    image = image if ops.is_tensor(image) else np.asarray(image)
    return image[None, ..., None] if len(image.shape) == 2 else image[None]


class CaptionGenerator:
    """Compiled decoding functions of one `Captioner`, cached per setting.

    Use it through `Captioner.generate`.
    """

    def __init__(self, model):
        self.model = model
        self._compiled = {}

    def __call__(
        self,
        images,
        max_length=None,
        strategy="greedy",
        num_beams=4,
        top_k=10,
        top_p=0.9,
        temperature=1.0,
        seed=0,
        return_details=False,
    ):
        model = self.model
        max_length = _check_args(model, max_length, strategy, num_beams, top_k, top_p,
                                 temperature)
        images = prepare_images(images, model.image_size)
        batch = int(ops.shape(images)[0])
        if batch == 0:
            ids, log_probs = np.zeros((0, max_length), "int32"), np.zeros((0,), "float32")
        else:
            if strategy == "beam":
                key = ("beam", max_length, num_beams)
                fn = self._get(key, lambda im: beam_search(model, im, max_length, num_beams))
                ids, log_probs = fn(images)
            else:
                select = token_selector(strategy, top_k, top_p, temperature)
                key = (strategy, max_length, top_k, top_p, temperature)
                fn = self._get(
                    key, lambda im, noise: sample_loop(model, im, noise, max_length, select)
                )
                noise = _gumbel_noise(seed, max_length, batch,
                                      model.decoder.vocabulary_size, strategy)
                ids, log_probs = fn(images, noise)
            ids = ops.convert_to_numpy(ids).astype("int32")
            log_probs = ops.convert_to_numpy(log_probs).astype("float32")
        # Imported here: the decoding loop itself needs no TensorFlow (the
        # tokenizer does), so it runs where only JAX or PyTorch is installed.
        from vlm.data.tokenizer import detokenize_captions

        captions = detokenize_captions(model.tokenizer, ids) if batch else []
        if return_details:
            return {"captions": captions, "token_ids": ids, "log_probs": log_probs}
        return captions

    def _get(self, key, fn):
        if key not in self._compiled:
            self._compiled[key] = compiled_inference(fn, self.model.variables)
        return self._compiled[key]


def _check_args(model, max_length, strategy, num_beams, top_k, top_p, temperature):
    if strategy not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: {strategy!r}")
    if model.tokenizer is None:
        raise ValueError("This model has no tokenizer: it cannot turn ids into captions.")
    longest = model.sequence_length - 1
    max_length = longest if max_length is None else max_length
    if not isinstance(max_length, int) or not 1 <= max_length <= longest:
        raise ValueError(
            f"`max_length` must be an int in [1, {longest}] (the model's "
            f"sequence_length - 1). Received: max_length={max_length!r}"
        )
    for name, value in [("num_beams", num_beams), ("top_k", top_k)]:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"`top_p` must be in (0, 1]. Received: top_p={top_p!r}")
    if not temperature > 0.0:
        raise ValueError(f"`temperature` must be > 0. Received: temperature={temperature!r}")
    return max_length


def _start(model, images, repeats=1):
    """Encodes the images once; returns per-block context caches and start state."""
    patches = model.encoder(images, training=False)
    context_caches = model.decoder.compute_context_caches(patches)  # once per image
    # With `repeats` beams per image, rows i * repeats ... of the decoding
    # batch read image i's keys and values, not a copy of them per beam
    # (`CrossAttention` shares a context between consecutive rows).
    batch = ops.shape(context_caches[0][0])[0] * repeats
    return context_caches, batch


def _empty_state(model, batch, max_length):
    decoder, tokenizer = model.decoder, model.tokenizer
    head_dim = decoder.hidden_dim // decoder.num_heads
    # One cache per block: a stacked array would be sliced and restacked
    # (copied) at every step.
    caches = [
        ops.zeros((batch, 2, decoder.num_heads, max_length, head_dim),
                  dtype=decoder.compute_dtype)
        for _ in range(decoder.num_layers)
    ]
    tokens = ops.concatenate(
        [ops.full((batch, 1), tokenizer.start_token_id, "int32"),
         ops.full((batch, max_length), tokenizer.pad_token_id, "int32")],
        axis=1,
    )
    return tokens, caches


def _step(model, tokens, caches, context_caches, index):
    """One cached decoder step: log-probs of the next token `(batch, vocab)`."""
    current = ops.take(tokens, ops.expand_dims(index, 0), axis=1)  # (batch, 1)
    logits, caches = model.decoder(
        current, None, context_caches=context_caches,
        self_attention_caches=caches, cache_index=index, training=False,
    )
    return ops.log_softmax(ops.cast(logits[:, 0], "float32"), axis=-1), caches


def sample_loop(model, images, noise, max_length, select):
    """Greedy or sampled decoding; `select(log_probs, noise_t)` picks tokens."""
    tokenizer = model.tokenizer
    context_caches, batch = _start(model, images)
    tokens, caches = _empty_state(model, batch, max_length)
    done = ops.zeros((batch,), "bool")
    total = ops.zeros((batch,), "float32")

    def body(index, tokens, caches, done, total):
        log_probs, caches = _step(model, tokens, caches, context_caches, index)
        chosen = select(log_probs, ops.take(noise, index, axis=0))
        chosen = ops.where(done, tokenizer.pad_token_id, chosen)
        picked = ops.take_along_axis(log_probs, chosen[:, None], axis=1)[:, 0]
        total = total + ops.where(done, 0.0, picked)
        tokens = ops.slice_update(tokens, [0, index + 1], chosen[:, None])
        done = ops.logical_or(done, ops.equal(chosen, tokenizer.end_token_id))
        return index + 1, tokens, caches, done, total

    def cond(index, tokens, caches, done, total):
        return ops.logical_and(index < max_length, ops.logical_not(ops.all(done)))

    _, tokens, _, _, total = ops.while_loop(
        cond, body, (ops.convert_to_tensor(0, "int32"), tokens, caches, done, total)
    )
    return tokens[:, 1:], total


def token_selector(strategy, top_k, top_p, temperature):
    """The token choice of a strategy, from log-probs and Gumbel noise."""
    if strategy == "greedy":
        return lambda log_probs, noise: ops.cast(ops.argmax(log_probs, axis=-1), "int32")

    def sample(log_probs, noise):
        logits = log_probs / temperature
        if strategy == "top_k":
            kth = ops.top_k(logits, top_k)[0][:, -1:]
            logits = ops.where(logits < kth, _NEG, logits)
        else:  # top_p: the smallest set of tokens whose mass reaches top_p
            ordered = ops.flip(ops.sort(logits, axis=-1), axis=-1)
            probs = ops.softmax(ordered, axis=-1)
            before = ops.cumsum(probs, axis=-1) - probs  # mass of better tokens
            kept = ops.where(before < top_p, ordered, -_NEG)
            logits = ops.where(logits < ops.min(kept, axis=-1, keepdims=True), _NEG, logits)
        # Gumbel-max: argmax(logits + Gumbel noise) is a categorical sample.
        return ops.cast(ops.argmax(logits + noise, axis=-1), "int32")

    return sample


def _gumbel_noise(seed, max_length, batch, vocabulary_size, strategy):
    """Per-step Gumbel noise drawn with NumPy: the same samples on every backend."""
    if strategy == "greedy":
        return np.zeros((max_length, 1, 1), "float32")
    uniform = np.random.default_rng(seed).random((max_length, batch, vocabulary_size))
    return (-np.log(-np.log(np.clip(uniform, 1e-12, 1.0 - 1e-7)))).astype("float32")


def beam_search(model, images, max_length, num_beams):
    """Beam search with the beams in the batch dimension.

    Each step extends every live beam by every token, keeps the `num_beams`
    best sums of log-probabilities per image, and reorders the caches by the
    surviving beams' parents. A finished beam extends only by padding, at no
    cost. Returns the best beam per image.
    """
    tokenizer = model.tokenizer
    vocabulary = model.decoder.vocabulary_size
    context_caches, flat = _start(model, images, repeats=num_beams)
    batch = ops.shape(images)[0]
    tokens, caches = _empty_state(model, flat, max_length)
    done = ops.zeros((flat,), "bool")
    # Only the first beam is live at the start, so beams do not duplicate.
    first = ops.concatenate([ops.zeros((1,)), ops.full((num_beams - 1,), _NEG)])
    scores = ops.tile(first[None], (batch, 1))  # (batch, beams)
    pad_only = ops.where(ops.arange(vocabulary) == tokenizer.pad_token_id, 0.0, _NEG)

    def body(index, tokens, caches, done, scores):
        log_probs, caches = _step(model, tokens, caches, context_caches, index)
        log_probs = ops.where(done[:, None], pad_only[None], log_probs)
        totals = ops.reshape(scores, (-1, 1)) + log_probs  # (batch * beams, vocab)
        totals = ops.reshape(totals, (-1, num_beams * vocabulary))
        scores, flat_choice = ops.top_k(totals, num_beams)  # (batch, beams)
        parent = flat_choice // vocabulary
        token = ops.reshape(ops.cast(flat_choice % vocabulary, "int32"), (-1, 1))
        rows = ops.reshape(parent + ops.arange(batch)[:, None] * num_beams, (-1,))
        tokens = ops.take(tokens, rows, axis=0)
        caches = [ops.take(cache, rows, axis=0) for cache in caches]
        done = ops.take(done, rows, axis=0)
        tokens = ops.slice_update(tokens, [0, index + 1], token)
        done = ops.logical_or(done, ops.equal(token[:, 0], tokenizer.end_token_id))
        return index + 1, tokens, caches, done, scores

    def cond(index, tokens, caches, done, scores):
        return ops.logical_and(index < max_length, ops.logical_not(ops.all(done)))

    _, tokens, _, _, scores = ops.while_loop(
        cond, body, (ops.convert_to_tensor(0, "int32"), tokens, caches, done, scores)
    )
    # top_k sorts, so beam 0 is each image's best.
    best = ops.reshape(tokens, (-1, num_beams, max_length + 1))[:, 0, 1:]
    return best, scores[:, 0]
