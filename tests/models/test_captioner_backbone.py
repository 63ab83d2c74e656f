"""`CaptionerBackbone`: the captioner's graph, checked by the shared backbone test."""

import numpy as np

from tests.test_case import run_backbone_test
from vlm.models.captioner_backbone import CaptionerBackbone
from vlm.models.image_encoder import ImageEncoder
from vlm.models.text_decoder import TextDecoder


def parts(vocabulary_size=20, sources=None):
    encoder = ImageEncoder.from_sizes(image_size=16, patch_size=4, num_layers=1, num_heads=2,
                                      hidden_dim=16, mlp_dim=32, name="encoder")
    decoder = TextDecoder(vocabulary_size, 8, 16, 2, 2, 32, sources=sources, name="decoder")
    return encoder, decoder


def inputs(batch=2, length=8, images_per_example=None, vocabulary_size=20, seed=0):
    rng = np.random.default_rng(seed)
    shape = (batch,) + ((images_per_example,) if images_per_example else ()) + (16, 16, 3)
    tokens = rng.integers(4, vocabulary_size, (batch, length)).astype("int32")
    return {"images": (rng.random(shape) * 255).astype("float32"), "tokens": tokens}


def test_the_shared_backbone_checks():
    encoder, decoder = parts()
    backbone = run_backbone_test(CaptionerBackbone, {"encoder": encoder, "decoder": decoder},
                                 inputs(), (2, 8, 20))
    assert (backbone.image_size, backbone.sequence_length, backbone.vocabulary_size) == (16, 8, 20)
    assert backbone.count_params() == encoder.count_params() + decoder.count_params()
