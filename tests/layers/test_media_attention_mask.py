import numpy as np
import pytest

from tests.test_case import to_numpy
from vlm.layers import count_images
from vlm.layers import media_attention_mask

IMAGE = 9


def reference(ids, num_images, patches, mode):
    """Flamingo's rule in NumPy: text_time = cumsum(ids == <image>)."""
    text_time = np.cumsum(np.asarray(ids) == IMAGE, axis=1)[..., None]
    image = np.arange(num_images * patches) // patches + 1
    return text_time == image if mode == "immediate" else image <= text_time


IDS = [[5, 9, 5, 5, 9, 5, 0],   # text, image 1, text, image 2, text, padding
       [9, 5, 5, 5, 5, 5, 0]]   # one image: image 2 is padding


@pytest.mark.parametrize("mode", ["immediate", "all_previous"])
def test_equals_flamingo_rule(mode):
    mask = to_numpy(media_attention_mask(np.array(IDS), IMAGE, 2, 3, mode))
    assert mask.shape == (2, 7, 6) and mask.dtype == bool
    np.testing.assert_array_equal(mask, reference(IDS, 2, 3, mode))
    # Text before the first image sees nothing; a padded image is never seen.
    assert not mask[0, 0].any()
    assert not mask[1, :, 3:].any()


def test_modes_differ_exactly_after_the_second_image():
    immediate = to_numpy(media_attention_mask(np.array(IDS), IMAGE, 2, 3, "immediate"))
    previous = to_numpy(media_attention_mask(np.array(IDS), IMAGE, 2, 3, "all_previous"))
    differ = immediate != previous
    # Only row 0's tokens from the second marker on, and only on image 1's patches.
    expected = np.zeros_like(differ)
    expected[0, 4:, :3] = True
    np.testing.assert_array_equal(differ, expected)


@pytest.mark.parametrize("mode", ["immediate", "all_previous"])
def test_one_row_per_step_extends_the_mask(mode):
    ids = np.array(IDS)
    full = to_numpy(media_attention_mask(ids, IMAGE, 2, 3, mode))
    seen = np.zeros((2,), "int32")
    for t in range(ids.shape[1]):
        row = to_numpy(media_attention_mask(ids[:, t:t + 1], IMAGE, 2, 3, mode,
                                            previous_images=seen))
        np.testing.assert_array_equal(row[:, 0], full[:, t])
        seen = seen + to_numpy(count_images(ids[:, t:t + 1], IMAGE))
    np.testing.assert_array_equal(seen, [2, 1])


def test_bad_mode():
    with pytest.raises(ValueError, match="Received: mode='latest'"):
        media_attention_mask(np.array(IDS), IMAGE, 2, 3, "latest")
