"""Reference greedy decoding: re-runs the whole decoder over the prefix each step."""

import weakref

import numpy as np
from keras import ops

from vlm.compilation import compiled_inference


def naive_greedy(model, images, max_length=None):
    """Greedy token ids by re-running the whole model at every step.

    Slow on purpose: it is the reference that cached decoding must equal,
    token for token. Each step runs the whole model (compiled like the
    cached loop, `vlm.compilation.compiled_inference`) on the full fixed-length
    token array; causal attention makes the padding after the prefix
    irrelevant, and the fixed shape means one trace, not one per length.

    Args:
        model: a `Captioner` whose tokenizer has `start_token_id`,
            `end_token_id` and `pad_token_id`.
        images: `(batch, S, S, 3)` floats in [0, 255] at the model's size.
        max_length: new tokens at most; defaults to the model's
            `sequence_length - 1`.

    Returns:
        `(ids, log_probs)`: int32 NumPy `(batch, max_length)` generated ids
        (the end token included, then padding) and float32 `(batch,)`
        summed log-probabilities of the generated tokens.
    """
    tokenizer = model.tokenizer
    max_length = max_length or model.sequence_length - 1
    if max_length + 1 > model.sequence_length:
        raise ValueError(
            f"`max_length` + 1 must be <= the model's sequence_length "
            f"({model.sequence_length}). Received: max_length={max_length}"
        )
    images = np.asarray(images, "float32")
    batch = images.shape[0]
    tokens = np.full((batch, max_length + 1), tokenizer.pad_token_id, "int32")
    tokens[:, 0] = tokenizer.start_token_id
    done = np.zeros(batch, bool)
    log_probs = np.zeros(batch, "float32")
    rows = np.arange(batch)
    forward = _forward(model)
    for step in range(max_length):
        logits = ops.convert_to_numpy(forward(images, tokens))
        step_logits = np.asarray(logits[:, step], "float64")
        step_log_probs = step_logits - _logsumexp(step_logits)
        next_ids = step_log_probs.argmax(-1).astype("int32")
        next_ids = np.where(done, tokenizer.pad_token_id, next_ids)
        log_probs += np.where(done, 0.0, step_log_probs[rows, next_ids]).astype("float32")
        tokens[:, step + 1] = next_ids
        done |= next_ids == tokenizer.end_token_id
        if done.all():
            break
    return tokens[:, 1:], log_probs


_FORWARDS = weakref.WeakKeyDictionary()


def _forward(model):
    """The model's compiled full forward pass, made once per model."""
    if model not in _FORWARDS:
        _FORWARDS[model] = compiled_inference(
            lambda x, t: model({"images": x, "tokens": t}, training=False), model.variables
        )
    return _FORWARDS[model]


def _logsumexp(x):
    peak = x.max(-1, keepdims=True)
    return peak + np.log(np.exp(x - peak).sum(-1, keepdims=True))
