"""Writes the cross-backend golden files. Run under TensorFlow:

    KERAS_BACKEND=tensorflow python -m tests.layers.golden.make_golden

Every backend's test suite then loads `cross_attention.keras` (saved here,
under TF) and must reproduce `cross_attention.npz` to 1e-5.
"""

import os

import keras
import numpy as np

from tests.layers.test_cross_attention import random_inputs
from tests.layers.test_cross_attention import random_mask
from tests.layers.test_cross_attention import randomize_biases
from vlm.layers import CrossAttention

HERE = os.path.dirname(__file__)


def main():
    assert keras.config.backend() == "tensorflow", "make the goldens under TF"
    keras.utils.set_random_seed(2024)
    query, context = random_inputs(batch=3, q_len=6, k_len=9, seed=42)
    mask = random_mask(batch=3, k_len=9, seed=43)
    mask[2] = False  # one example with no visible context
    q_in = keras.Input((6, 16), name="query")
    c_in = keras.Input((9, 24), name="context")
    m_in = keras.Input((9,), dtype="bool", name="mask")
    layer = CrossAttention(num_heads=4, key_dim=8, value_dim=6,
                           num_key_value_heads=2, output_dim=12, gated=True,
                           name="cross_attention")
    out, scores = layer(q_in, c_in, context_mask=m_in, return_attention_scores=True)
    model = keras.Model([q_in, c_in, m_in], [out, scores])
    randomize_biases(layer)
    layer.gate.assign(0.5)
    out, scores = model([query, context, mask])
    model.save(os.path.join(HERE, "cross_attention.keras"))
    np.savez(
        os.path.join(HERE, "cross_attention.npz"),
        query=query, context=context, mask=mask,
        output=keras.ops.convert_to_numpy(out),
        scores=keras.ops.convert_to_numpy(scores),
    )
    print("wrote", HERE)


if __name__ == "__main__":
    main()
