"""Fixtures of the data tests."""

import pytest

from tests.data.caption_examples import VOCABULARY
from vlm.data.tokenizer import CaptionTokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return CaptionTokenizer(vocabulary=VOCABULARY)
