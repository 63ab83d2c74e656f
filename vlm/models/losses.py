"""The caption loss and token accuracy every vlm task trains with."""

import keras
from keras import ops

from vlm.backend import replica_sum

PAD_ID = 0  # the tokenizer reserves id 0 for padding


@keras.saving.register_keras_serializable(package="vlm")
class CaptionLoss(keras.losses.Loss):
    """Token cross-entropy from logits, the mean over the non-padding labels.

    Args:
        pad_token_id: label id that contributes nothing.
    """

    def __init__(self, pad_token_id=PAD_ID, name="caption_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_token_id = pad_token_id

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        mask = ops.cast(ops.not_equal(y_true, self.pad_token_id), "float32")
        per_token = keras.losses.sparse_categorical_crossentropy(
            y_true, ops.cast(y_pred, "float32"), from_logits=True
        )
        # The mean over the batch's real tokens (a scalar, so Keras' own
        # reduction leaves it as is). Under tf.distribute each replica divides
        # its sum by the global count; Keras sums the replicas' gradients (and
        # reports the mean of the replicas' losses times their number), so both
        # are those of the global batch's token mean.
        total = ops.stop_gradient(replica_sum(ops.sum(mask)))
        return ops.sum(per_token * mask) / ops.maximum(total, 1.0)

    def get_config(self):
        config = super().get_config()
        config["pad_token_id"] = self.pad_token_id
        return config


@keras.saving.register_keras_serializable(package="vlm")
class MaskedTokenAccuracy(keras.metrics.Metric):
    """Fraction of non-padding next tokens predicted exactly (argmax).

    Args:
        pad_token_id: label id that is not counted.
    """

    def __init__(self, pad_token_id=PAD_ID, name="token_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_token_id = pad_token_id
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        mask = ops.not_equal(y_true, self.pad_token_id)
        hits = ops.logical_and(
            ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y_true), mask
        )
        self.correct.assign_add(ops.sum(ops.cast(hits, "float32")))
        self.total.assign_add(ops.sum(ops.cast(mask, "float32")))

    def result(self):
        return ops.divide_no_nan(self.correct, self.total)

    def reset_state(self):
        self.correct.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        config = super().get_config()
        config["pad_token_id"] = self.pad_token_id
        return config
