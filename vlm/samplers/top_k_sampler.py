"""`TopKSampler`: samples among the `k` most likely tokens."""

import keras
from keras import ops

from vlm.samplers.sampler import NEG_INF
from vlm.samplers.sampler import Sampler
from vlm.samplers.sampler import check_temperature
from vlm.samplers.sampler import gumbel_noise
from vlm.utils.argument_checks import check_positive_int


@keras.saving.register_keras_serializable(package="vlm")
class TopKSampler(Sampler):
    """Samples the next token among the `k` most likely ones.

    Args:
        k: int, candidates kept at each step (1 is greedy).
        temperature: float > 0; softens (> 1) or sharpens (< 1) the
            distribution before sampling.
        seed: int; the same seed gives the same samples on every backend.

    Example:

    >>> model.generate(images, sampler=TopKSampler(k=5, temperature=0.7, seed=1))
    """

    def __init__(self, k=10, temperature=1.0, seed=0):
        self.k = check_positive_int("k", k)
        self.temperature = check_temperature(temperature)
        self.seed = seed

    def select(self, log_probs, noise):
        logits = log_probs / self.temperature
        kth = ops.top_k(logits, self.k)[0][:, -1:]
        logits = ops.where(logits < kth, NEG_INF, logits)
        return ops.cast(ops.argmax(logits + noise, axis=-1), "int32")

    def noise(self, max_length, rows, vocabulary_size):
        return gumbel_noise(self.seed, max_length, rows, vocabulary_size)

    def get_config(self):
        return {"k": self.k, "temperature": self.temperature, "seed": self.seed}
