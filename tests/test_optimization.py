import keras
import numpy as np
import pytest

from vlm.config import TrainConfig
from vlm.layers import DecoderBlock
from vlm.layers import GatedCrossAttentionBlock
from vlm.optimization import WarmupLinearDecay
from vlm.optimization import learning_rate_schedule
from vlm.optimization import make_optimizer


def rates(schedule, steps):
    return np.array([float(schedule(step)) for step in steps])


def test_linear_schedule_warms_up_then_falls_to_zero_at_the_last_step():
    schedule = learning_rate_schedule(
        TrainConfig(learning_rate=2e-3, warmup_fraction=0.1, schedule="linear"), 200)
    assert isinstance(schedule, WarmupLinearDecay)
    np.testing.assert_allclose(rates(schedule, [0, 10, 20, 110, 200, 250]),
                               [0.0, 1e-3, 2e-3, 1e-3, 0.0, 0.0], atol=1e-9)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    np.testing.assert_allclose(rates(again, range(0, 200, 7)), rates(schedule, range(0, 200, 7)))


def test_wsd_holds_the_peak_then_decays_over_the_last_fraction():
    schedule = learning_rate_schedule(
        TrainConfig(learning_rate=1.0, warmup_fraction=0.1, schedule="wsd", decay_fraction=0.25),
        100)
    np.testing.assert_allclose(rates(schedule, [0, 5, 10, 50, 75, 80, 90, 100]),
                               [0.0, 0.5, 1.0, 1.0, 1.0, 0.8, 0.4, 0.0], atol=1e-6)


def test_no_warmup_starts_at_the_peak():
    np.testing.assert_allclose(rates(WarmupLinearDecay(1.0, 4), [0, 1, 2, 4]),
                               [1.0, 0.75, 0.5, 0.0])


def test_cosine_schedule_is_the_default():
    schedule = learning_rate_schedule(TrainConfig(learning_rate=1e-3, warmup_fraction=0.0), 100)
    np.testing.assert_allclose(rates(schedule, [0, 50, 100]), [1e-3, 5e-4, 0.0], atol=1e-9)


@pytest.mark.parametrize("name, cls", [("adamw", keras.optimizers.AdamW),
                                       ("muon", keras.optimizers.Muon)])
def test_optimizer_choice(name, cls):
    optimizer = make_optimizer(TrainConfig(optimizer=name, weight_decay=0.02), 10)
    assert isinstance(optimizer, cls) and optimizer.weight_decay == 0.02


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_gates_biases_and_norms_get_no_weight_decay(name):
    optimizer = make_optimizer(TrainConfig(optimizer=name, weight_decay=0.1), 10)
    x, context = np.zeros((1, 5, 16), "float32"), np.zeros((1, 9, 8), "float32")
    block = GatedCrossAttentionBlock(num_heads=2, mlp_dim=32, gate_type="vector")
    block(x, context)
    # A GeGLU decoder block's Dense "mlp_gate" holds a kernel, which decays.
    decoder = DecoderBlock(num_heads=2, mlp_dim=32, gated_mlp=True)
    decoder(x, context)
    decays = {v.path: optimizer._use_weight_decay(v) for v in block.weights + decoder.weights}
    assert not decays[block.cross_attention.gate.path] and not decays[block.mlp_gate.path]
    assert decays[block.mlp_up.kernel.path]
    assert decays[block.cross_attention.query_dense.kernel.path]
    assert decays[decoder.mlp_gate.kernel.path] and not decays[decoder.mlp_gate.bias.path]
    assert not decays[block.mlp_norm.gamma.path] and not decays[block.mlp_norm.beta.path]
    # Every kernel and embedding decays; nothing else does.
    assert sorted(p for p, d in decays.items() if d) == sorted(
        v.path for v in block.weights + decoder.weights if v.name in ("kernel", "embeddings"))


def test_bad_schedule_lengths_are_errors():
    with pytest.raises(ValueError, match="total_steps=10, warmup_steps=10"):
        WarmupLinearDecay(1.0, 10, 10)
    with pytest.raises(ValueError, match="decay_steps=9, total_steps=10, warmup_steps=2"):
        WarmupLinearDecay(1.0, 10, 2, decay_steps=9)
