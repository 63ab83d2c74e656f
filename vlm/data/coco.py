"""COCO Captions (Karpathy splits) from TensorFlow Datasets as an examples dataset."""

import tensorflow as tf

from vlm.data.paths import tfds_data_dir


def coco_examples(split, *, data_dir=None, download=False, shuffle_files=False, seed=None):
    """Loads COCO Captions (Karpathy splits) from TensorFlow Datasets as examples.

    Reads the TFDS `coco_captions` dataset (COCO 2014 images, 5 or more
    references per image) and keeps "image", "image_id" (COCO's int64 id) and
    "captions" (the reference texts).

    Args:
        split: "train" (82,783 images in TFDS' Karpathy split), "val", "test"
            (5,000 each), "restval", or any TFDS split expression over those,
            such as "train+restval" or "val[:100]".
        data_dir: TFDS data folder. Defaults to `tfds_data_dir()`, that is
            `$VLM_CACHE_DIR/tensorflow_datasets` or
            `~/.cache/vlm/tensorflow_datasets`.
        download: bool. If True and the data is not prepared yet, TFDS
            downloads COCO 2014 (about 20 GB over the network) and prepares
            it. If False, missing data is an error.
        shuffle_files: bool. Read the TFDS shards in shuffled order, which
            mixes training images more than a shuffle buffer can.
        seed: int or None. Shard shuffling seed when `shuffle_files`.

    Returns:
        An examples dataset (see `vlm.data.batching`).

    Example:

    >>> examples = coco_examples("val", data_dir="/data/tfds")
    >>> next(iter(examples))["captions"].shape
    TensorShape([5])
    """
    import tensorflow_datasets as tfds  # Slow to import; only COCO needs it.

    data_dir = str(data_dir if data_dir is not None else tfds_data_dir())
    try:
        dataset = tfds.load(
            "coco_captions",
            split=split,
            data_dir=data_dir,
            try_gcs=False,
            download=download,
            shuffle_files=shuffle_files,
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
    except (AssertionError, tfds.core.DatasetNotFoundError) as error:
        if download:
            raise
        raise ValueError(
            f"COCO Captions is not prepared in {data_dir} (split={split!r}). Pass "
            "download=True to download and prepare it (about 20 GB over the "
            f"network), or data_dir= the folder that holds it. TFDS said: {error}"
        ) from error

    def to_example(features):
        return {
            "image": features["image"],
            "image_id": features["image/id"],
            "captions": features["captions"]["text"],
        }

    return dataset.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
