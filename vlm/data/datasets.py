"""One entry point from a data config to an examples dataset."""

from vlm.data.coco import coco_examples
from vlm.data.folder import folder_examples
from vlm.data.shapes import load_shapes
from vlm.data.shapes_change import load_shapes_change
from vlm.data.shapes_qa import load_shapes_qa

SPLITS = ("train", "validation", "test")
# The datasets generated locally, all from the same size and seed fields.
_GENERATED = {"shapes": load_shapes, "shapes_change": load_shapes_change,
              "shapes_qa": load_shapes_qa}
# COCO's Karpathy splits: "restval" joins the training images.
_COCO_SPLITS = {"train": "train+restval", "validation": "val", "test": "test"}


def load_examples(data_config, split, image_size):
    """The examples dataset of `split` for a `vlm.config.DataConfig`.

    Args:
        data_config: a `DataConfig`.
        split: "train", "validation" or "test".
        image_size: the model's image size (the shapes dataset renders at it).

    Returns:
        A `tf.data.Dataset` of dicts with `image`, `captions`, `image_id`
        (and `objects`, the scene graph, for shapes; `images`, the before and
        after image, in place of `image` and `change` for shapes_change;
        `objects` and six `questions`, `answers` and `question_types` for
        shapes_qa), or None when the dataset has no such split (a captions
        folder has only "train").
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: split={split!r}")
    if data_config.dataset in _GENERATED:
        return _GENERATED[data_config.dataset](
            split,
            image_size=image_size,
            train_size=data_config.train_size,
            validation_size=data_config.validation_size,
            test_size=data_config.test_size,
            seed=data_config.seed,
            data_dir=data_config.data_dir,
        )
    if data_config.dataset == "coco":
        return coco_examples(_COCO_SPLITS[split], data_dir=data_config.data_dir)
    if data_config.dataset == "folder":
        if split != "train":
            return None
        return folder_examples(data_config.captions_file, data_config.image_dir)
    raise ValueError(
        f"Unknown dataset. Received: data.dataset={data_config.dataset!r}"
    )
