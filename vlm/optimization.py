"""The optimizer and learning-rate schedule a `TrainConfig` asks for."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="vlm")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak`, a plateau, then a straight line down to 0 at `total_steps`.

    Decay to zero over exactly the steps a run has, as time-budgeted recipes
    (airbench, cramming) fit their schedule to the budget; with `decay_steps`
    the rate stays at its peak until the last `decay_steps` steps
    (warmup-stable-decay), so what is learned late in a run is learned at a
    high rate.

    Args:
        peak: float, the learning rate at the end of the warmup.
        total_steps: int, the step at which the rate reaches 0.
        warmup_steps: int, steps of the linear warmup (0: none).
        decay_steps: int, steps of the final decay (None: all after the warmup).

    Example:

    >>> schedule = WarmupLinearDecay(peak=1e-3, total_steps=100, warmup_steps=10)
    >>> [round(float(schedule(step)), 6) for step in (0, 5, 10, 55, 100)]
    [0.0, 0.0005, 0.001, 0.0005, 0.0]
    """

    def __init__(self, peak, total_steps, warmup_steps=0, decay_steps=None):
        if total_steps < 1 or not 0 <= warmup_steps < total_steps:
            raise ValueError("`total_steps` must be positive and `warmup_steps` in "
                             f"[0, total_steps). Received: total_steps={total_steps}, "
                             f"warmup_steps={warmup_steps}")
        if decay_steps is None:
            decay_steps = total_steps - warmup_steps
        if not 0 < decay_steps <= total_steps - warmup_steps:
            raise ValueError("`decay_steps` must be in [1, total_steps - warmup_steps]. "
                             f"Received: decay_steps={decay_steps}, total_steps={total_steps}, "
                             f"warmup_steps={warmup_steps}")
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = int(decay_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = step / max(self.warmup_steps, 1)
        decay = (self.total_steps - step) / self.decay_steps
        fraction = ops.where(step < self.warmup_steps, warmup, decay)
        return self.peak * ops.clip(fraction, 0.0, 1.0)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "decay_steps": self.decay_steps}


def learning_rate_schedule(train_config, total_steps):
    """Linear warmup to `train.learning_rate`, then cosine or linear decay to zero.

    "wsd" holds the peak and decays linearly over the last `train.decay_fraction`.
    """
    warmup = int(total_steps * train_config.warmup_fraction)
    if train_config.schedule in ("linear", "wsd"):
        total_steps = max(total_steps, 1)
        decay = None
        if train_config.schedule == "wsd":
            decay = min(max(int(total_steps * train_config.decay_fraction), 1),
                        total_steps - warmup)
        return WarmupLinearDecay(train_config.learning_rate, total_steps, warmup, decay)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total_steps - warmup, 1),
        warmup_target=train_config.learning_rate,
        warmup_steps=warmup,
    )


def make_optimizer(train_config, total_steps):
    """AdamW or Muon on the config's schedule, no weight decay on biases, norms and gates.

    Muon orthogonalises the updates of 2D kernels; embeddings and every other
    variable take its AdamW path (`keras.optimizers.Muon`).
    """
    common = dict(learning_rate=learning_rate_schedule(train_config, total_steps),
                  weight_decay=train_config.weight_decay)
    if train_config.optimizer == "muon":
        optimizer = keras.optimizers.Muon(adam_weight_decay=train_config.weight_decay, **common)
    else:
        optimizer = keras.optimizers.AdamW(**common)
    # Names are regexes searched in `variable.name`: "gate" is the adapters' tanh
    # gates ("gate", "mlp_gate"), which start at 0 and must be free to open.
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "gate"])
    return optimizer
