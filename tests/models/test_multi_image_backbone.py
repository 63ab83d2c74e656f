"""`MultiImageBackbone`: both designs checked by the shared backbone test."""

import pytest

from tests.models.test_captioner_backbone import inputs
from tests.models.test_captioner_backbone import parts
from tests.test_case import run_backbone_test
from vlm.models.multi_image_backbone import MultiImageBackbone

MARKER = 3


def test_interleaved_images_read_through_flamingo_masks():
    encoder, decoder = parts()
    data = inputs(images_per_example=2)
    data["tokens"][:, 0] = data["tokens"][:, 2] = MARKER  # an <image> before each image's text
    backbone = run_backbone_test(
        MultiImageBackbone, {"encoder": encoder, "decoder": decoder, "num_images": 2,
                             "mode": "immediate", "image_token_id": MARKER}, data, (2, 8, 20))
    assert backbone.image_index_embedding is not None and backbone.sources is None


def test_images_as_named_sources():
    encoder, decoder = parts(sources=("before", "after"))
    backbone = run_backbone_test(
        MultiImageBackbone, {"encoder": encoder, "decoder": decoder, "num_images": 2,
                             "mode": "all_previous", "image_token_id": None},
        inputs(images_per_example=2), (2, 8, 20))
    assert backbone.image_index_embedding is None and backbone.image_token_id is None


def test_bad_arguments_are_named():
    encoder, decoder = parts()
    with pytest.raises(ValueError, match="needs `image_token_id`"):
        MultiImageBackbone(encoder, decoder, num_images=2)
    with pytest.raises(ValueError, match="Received: mode='later'"):
        MultiImageBackbone(encoder, decoder, num_images=2, mode="later", image_token_id=3)
    encoder, decoder = parts(sources=("before", "after"))
    with pytest.raises(ValueError, match=r"sources=\('before', 'after'\), num_images=3"):
        MultiImageBackbone(encoder, decoder, num_images=3)
