"""`Sampler`: the base class of the decoding strategies, and its loop."""

import keras
import numpy as np
from keras import ops

from vlm.compilation import while_loop

NEG_INF = -1e9  # "impossible" in log space, finite so sums never make NaN


@keras.saving.register_keras_serializable(package="vlm")
class Sampler:
    """Picks each next token and runs the cached decoding loop.

    A sampler is a small serializable object: its constructor arguments are
    its config. It knows nothing of the model: it is given a `next` function
    that returns the next token's log-probabilities and the updated cache,
    and runs one while loop that compiles once per setting. Randomness
    comes in as a noise tensor drawn with NumPy (`noise`), so a seed gives
    the same samples on every backend and a new seed needs no new trace.

    Subclasses implement `select`; `BeamSampler` replaces the loop.

    Example:

    >>> sampler = vlm.samplers.get("greedy")
    >>> model.generate(images, sampler=sampler)
    """

    # Decoding rows per input (image): beams share their image's context.
    rows_per_input = 1

    def __call__(self, next, tokens, cache, noise, max_length, end_token_id, pad_token_id):
        """Decodes up to `max_length` tokens after each row's first.

        Args:
            next: `next(tokens, cache, index) -> (log_probs, cache)`: float32
                `(rows, vocabulary)` log-probabilities of the token after
                `tokens[:, index]`, and the cache with that position written.
            tokens: int32 `(rows, max_length + 1)`, the start token in column
                0 and padding after it.
            cache: any structure of tensors with the rows first.
            noise: float32 `(max_length, rows or 1, vocabulary or 1)` from
                `noise()`.
            max_length: int, new tokens at most.
            end_token_id, pad_token_id: int. A row stops at its end token and
                is padded after it.

        Returns:
            `(ids, log_probs)`: int32 `(rows, max_length)` new tokens (the
            end token included, then padding) and float32 `(rows,)` summed
            log-probabilities of the chosen tokens.
        """
        batch = ops.shape(tokens)[0]
        done = ops.zeros((batch,), "bool")
        total = ops.zeros((batch,), "float32")

        noise = ops.convert_to_tensor(noise)

        def body(index, tokens, cache, done, total):
            log_probs, cache = next(tokens, cache, index)
            chosen = self.select(log_probs, ops.take(noise, index, axis=0))
            chosen = ops.where(done, pad_token_id, chosen)
            picked = ops.take_along_axis(log_probs, chosen[:, None], axis=1)[:, 0]
            total = total + ops.where(done, 0.0, picked)
            tokens = ops.slice_update(tokens, [0, index + 1], chosen[:, None])
            done = ops.logical_or(done, ops.equal(chosen, end_token_id))
            return index + 1, tokens, cache, done, total

        start = ops.convert_to_tensor(0, "int32")
        _, tokens, _, _, total = while_loop(
            keep_going(max_length), body, (start, tokens, cache, done, total))
        return tokens[:, 1:], total

    def select(self, log_probs, noise):
        """int32 `(rows,)` chosen tokens from `(rows, vocabulary)` log-probs and noise."""
        raise NotImplementedError(f"{type(self).__name__} does not implement `select`.")

    def noise(self, max_length, rows, vocabulary_size):
        """Per-step noise for `select`; deterministic samplers need none."""
        return np.zeros((max_length, 1, 1), "float32")

    def trace_key(self):
        """What a compiled loop depends on: the config, less the seed (an input)."""
        config = self.get_config()
        config.pop("seed", None)
        return (type(self).__name__, tuple(sorted(config.items())))

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({arguments})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


def keep_going(max_length):
    """The loop condition: `(index, tokens, cache, done, ...)` has steps left and a live row."""
    def cond(index, tokens, cache, done, *rest):
        return ops.logical_and(index < max_length, ops.logical_not(ops.all(done)))
    return cond


def check_temperature(temperature):
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            temperature > 0.0 and np.isfinite(temperature)):
        raise ValueError(
            f"`temperature` must be a finite number > 0. Received: temperature={temperature!r}")
    return float(temperature)


def gumbel_noise(seed, max_length, rows, vocabulary_size):
    """Gumbel noise drawn with NumPy: the same samples on every backend.

    `argmax(logits + noise)` is then a sample of `softmax(logits)` (Gumbel-max).
    """
    uniform = np.random.default_rng(seed).random((max_length, rows, vocabulary_size))
    return (-np.log(-np.log(np.clip(uniform, 1e-12, 1.0 - 1e-7)))).astype("float32")
