"""`VisionLanguageBackbone`: a keras-hub LM with gated blocks, checked by the shared test."""

import numpy as np
import pytest

from tests.models.test_captioner_backbone import inputs
from tests.models.test_vision_language_model import LENGTH
from tests.models.test_vision_language_model import backbone as language_model
from tests.models.test_vision_language_model import encoder
from tests.test_case import run_backbone_test
from tests.test_case import to_numpy
from vlm.models.vision_language_backbone import VisionLanguageBackbone


@pytest.mark.parametrize("kind", ["gpt2", "gemma", "llama"])
def test_the_shared_backbone_checks(kind):
    lm = language_model(kind, 20)
    backbone = run_backbone_test(
        VisionLanguageBackbone,
        {"language_model": lm, "encoder": encoder(), "cross_attention_every": 1,
         "cross_attention_layers": None, "num_heads": 2, "num_key_value_heads": None,
         "mlp_dim": 24, "dropout": 0.0, "sequence_length": LENGTH, "gate_type": "vector",
         "gate_scale": 1.0},
        inputs(length=LENGTH), (2, LENGTH, 20), atol=1e-4)
    assert backbone.language_model is lm
    for block in backbone.decoder.blocks:  # gates start closed: the LM as it was
        np.testing.assert_array_equal(to_numpy(block.mlp_gate), np.zeros(16))
