"""The datasets by name: how each loads, how training reads it, and how a model is scored on it.

    dataset = vlm.datasets.get("shapes_qa")
    examples = dataset.load(data_config, "test", image_size)
    metrics, per_image, gallery = dataset.scorer.evaluate(model, examples)

Generic code (training, its callbacks, evaluation) asks the dataset, never
tests for one. The shapes world lives in `vlm.datasets.shapes`; the sources
any dataset may use (image files, COCO, JSONL) in `vlm.data`.

This package imports nothing at first: `vlm.metrics` reads the shapes
vocabulary from it, and the registry (`vlm.datasets.registry`) imports the
metrics through the scorers.
"""


def get(name):
    """The `vlm.datasets.registry.Dataset` called `name` (a `data.dataset` value)."""
    from vlm.datasets.registry import DATASETS

    if name not in DATASETS:
        raise ValueError(f"Unknown dataset. Expected one of {tuple(DATASETS)}. "
                         f"Received: data.dataset={name!r}")
    return DATASETS[name]


def names():
    """Every dataset's name, in the order the registry lists them."""
    from vlm.datasets.registry import DATASETS

    return tuple(DATASETS)


def load_examples(data_config, split, image_size):
    """The examples of `split` of the dataset a `vlm.config.DataConfig` names.

    Args:
        data_config: a `DataConfig`.
        split: "train", "validation" or "test".
        image_size: the model's image size (the shapes datasets render at it).

    Returns:
        A `tf.data.Dataset` of dicts with `image`, `captions`, `image_id`
        (and `objects`, the scene graph, for shapes; `images`, the before and
        after image, in place of `image` and `change` for shapes_change;
        `objects` and six `questions`, `answers` and `question_types` for
        shapes_qa), or None when the dataset has no such split (a captions
        folder has only "train").
    """
    from vlm.datasets.registry import SPLITS

    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: split={split!r}")
    return get(data_config.dataset).load(data_config, split, image_size)
