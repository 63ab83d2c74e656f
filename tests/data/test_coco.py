"""The COCO examples source (TFDS mock data) and the cache folders it reads."""

import numpy as np
import pytest
import tensorflow as tf

from tests.data.caption_examples import S
from tests.data.caption_examples import T
from vlm.data.batching import eval_batches
from vlm.data.batching import train_batches
from vlm.data.coco import coco_examples
from vlm.data.paths import cache_dir
from vlm.data.paths import tfds_data_dir
from vlm.models.captioner_preprocessor import CaptionerPreprocessor


def test_coco_examples_from_mock_tfds_feed_train_batches(tmp_path, tokenizer):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=4):
        examples = coco_examples("train", data_dir=tmp_path)
        spec = examples.element_spec
        assert spec["image"].dtype == tf.uint8 and spec["image"].shape.as_list() == [None, None, 3]
        assert spec["captions"].dtype == tf.string and spec["captions"].shape.rank == 1
        assert spec["image_id"].dtype == tf.int64
        assert sorted(spec) == ["captions", "image", "image_id"]
        batches = train_batches(examples, CaptionerPreprocessor(tokenizer, S, T), batch_size=3)
        for inputs, labels in batches.take(2).as_numpy_iterator():
            assert inputs["images"].shape == (3, S, S, 3) and inputs["images"].dtype == np.float32
            assert inputs["tokens"].shape == (3, T) and labels.shape == (3, T)
            assert (inputs["tokens"][:, 0] == 2).all()
            np.testing.assert_array_equal(inputs["tokens"][:, 1:], labels[:, :-1])
        preprocessor = CaptionerPreprocessor(tokenizer, S, T)
        evaluation = next(iter(eval_batches(examples, preprocessor, batch_size=4)))
        assert evaluation["captions"].shape == (4, 5)


def test_coco_examples_without_data_says_how_to_get_it(tmp_path):
    with pytest.raises(ValueError, match="download=True"):
        coco_examples("val", data_dir=tmp_path)


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path
    assert tfds_data_dir() == tmp_path / "tensorflow_datasets"
    monkeypatch.delenv("VLM_CACHE_DIR")
    assert str(cache_dir()).endswith("/.cache/vlm")
