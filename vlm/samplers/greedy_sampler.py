"""`GreedySampler`: the most likely token at every step."""

import keras
from keras import ops

from vlm.samplers.sampler import Sampler


@keras.saving.register_keras_serializable(package="vlm")
class GreedySampler(Sampler):
    """Picks the most likely next token at every step.

    Example:

    >>> model.generate(images, sampler=vlm.samplers.GreedySampler())
    """

    def select(self, log_probs, noise):
        return ops.cast(ops.argmax(log_probs, axis=-1), "int32")
