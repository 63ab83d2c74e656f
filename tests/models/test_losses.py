"""The caption loss and token accuracy: means over the real tokens, padding ignored."""

import numpy as np
import pytest

from tests.test_case import assert_close
from tests.test_case import to_numpy
from vlm.models.losses import CaptionLoss
from vlm.models.losses import MaskedTokenAccuracy


def test_caption_loss_and_accuracy_ignore_padding():
    labels = np.array([[2, 3, 0], [1, 0, 0]], "int32")
    logits = np.random.default_rng(0).standard_normal((2, 3, 4)).astype("float32")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    real = [(0, 0), (0, 1), (1, 0)]
    expected = -np.mean([log_probs[b, t, labels[b, t]] for b, t in real])
    assert_close(CaptionLoss()(labels, logits), expected, atol=1e-6)
    logits = np.zeros((2, 3, 4), "float32")
    logits[0, 0, 2] = logits[0, 1, 1] = logits[1, 0, 1] = logits[1, 1, 0] = 1.0
    metric = MaskedTokenAccuracy()
    metric.update_state(labels, logits)  # right at (0,0) and (1,0); pads ignored
    assert float(to_numpy(metric.result())) == pytest.approx(2 / 3)
