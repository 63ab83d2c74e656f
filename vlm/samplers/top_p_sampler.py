"""`TopPSampler`: nucleus sampling."""

import keras
from keras import ops

from vlm.samplers.sampler import NEG_INF
from vlm.samplers.sampler import Sampler
from vlm.samplers.sampler import check_temperature
from vlm.samplers.sampler import gumbel_noise


@keras.saving.register_keras_serializable(package="vlm")
class TopPSampler(Sampler):
    """Samples among the fewest most likely tokens whose probability reaches `p`.

    Args:
        p: float in (0, 1], the probability mass kept at each step.
        temperature: float > 0; softens (> 1) or sharpens (< 1) the
            distribution before the mass is counted.
        seed: int; the same seed gives the same samples on every backend.

    Example:

    >>> model.generate(images, sampler=TopPSampler(p=0.8, seed=2))
    """

    def __init__(self, p=0.9, temperature=1.0, seed=0):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
            raise ValueError(f"`p` must be a number in (0, 1]. Received: p={p!r}")
        self.p = float(p)
        self.temperature = check_temperature(temperature)
        self.seed = seed

    def select(self, log_probs, noise):
        logits = log_probs / self.temperature
        ordered = ops.flip(ops.sort(logits, axis=-1), axis=-1)
        probs = ops.softmax(ordered, axis=-1)
        before = ops.cumsum(probs, axis=-1) - probs  # mass of the better tokens
        kept = ops.where(before < self.p, ordered, -NEG_INF)
        logits = ops.where(logits < ops.min(kept, axis=-1, keepdims=True), NEG_INF, logits)
        return ops.cast(ops.argmax(logits + noise, axis=-1), "int32")

    def noise(self, max_length, rows, vocabulary_size):
        return gumbel_noise(self.seed, max_length, rows, vocabulary_size)

    def get_config(self):
        return {"p": self.p, "temperature": self.temperature, "seed": self.seed}
