"""Every dataset `vlm` trains and scores on, as one `Dataset` description each.

TensorFlow and the TFDS builders load when a dataset is first loaded, not here.
"""

import dataclasses
from typing import Callable
from typing import Optional

from vlm.datasets.shapes.questions import as_prompted
from vlm.datasets.shapes.scorers import AnswerScorer
from vlm.datasets.shapes.scorers import SceneScorer
from vlm.evaluation import CaptionScorer

SPLITS = ("train", "validation", "test")
# COCO's Karpathy splits: "restval" joins the training images.
_COCO_SPLITS = {"train": "train+restval", "validation": "val", "test": "test"}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What generic code asks of a dataset, so that it never tests for one.

    Args:
        name: the `data.dataset` value.
        load: `(data_config, split, image_size) -> tf.data.Dataset`, or None
            where the dataset has no such split.
        scorer: how a model is scored on it: `score_names` and
            `validation_scores` (after each epoch), `report` (after
            training) and `evaluate` (`evaluate.py`), as
            `vlm.evaluation.CaptionScorer` has them.
        as_prompted: for examples of questions and answers, the map that
            makes them prompts and captions for training; None where the
            examples are captions already.
        splits: the splits it has.
        in_memory: whether training may cache its decoded examples in memory.
    """

    name: str
    load: Callable
    scorer: object
    as_prompted: Optional[Callable] = None
    splits: tuple = SPLITS
    in_memory: bool = True

    @property
    def prompted(self):
        """Whether a model reads a prompt (a question) before each caption (its answer)."""
        return self.as_prompted is not None

    def training_examples(self, examples):
        """`examples` as `vlm.data.batching.train_batches` reads them (None stays None)."""
        if examples is None or self.as_prompted is None:
            return examples
        return self.as_prompted(examples)

    @property
    def report_split(self):
        """The split a training report captions: the test split, where there is one."""
        return "test" if "test" in self.splits else "train"


def _shapes_sizes(data_config, image_size):
    return dict(image_size=image_size, train_size=data_config.train_size,
                validation_size=data_config.validation_size, test_size=data_config.test_size,
                seed=data_config.seed, data_dir=data_config.data_dir)


def _load_shapes(data_config, split, image_size):
    from vlm.datasets.shapes.builders import load_shapes

    return load_shapes(split, **_shapes_sizes(data_config, image_size))


def _load_shapes_change(data_config, split, image_size):
    from vlm.datasets.shapes.builders import load_shapes_change

    return load_shapes_change(split, **_shapes_sizes(data_config, image_size))


def _load_shapes_qa(data_config, split, image_size):
    from vlm.datasets.shapes.builders import load_shapes_qa

    return load_shapes_qa(split, **_shapes_sizes(data_config, image_size))


def _load_coco(data_config, split, image_size):
    del image_size  # COCO's images come at their own sizes
    from vlm.data.coco import coco_examples

    return coco_examples(_COCO_SPLITS[split], data_dir=data_config.data_dir)


def _load_folder(data_config, split, image_size):
    del image_size
    from vlm.data.folder import folder_examples

    if split != "train":
        return None
    return folder_examples(data_config.captions_file, data_config.image_dir)


DATASETS = {dataset.name: dataset for dataset in (
    Dataset("shapes", _load_shapes, SceneScorer()),
    Dataset("shapes_change", _load_shapes_change, CaptionScorer()),
    Dataset("shapes_qa", _load_shapes_qa, AnswerScorer(), as_prompted=as_prompted),
    # COCO's decoded training images (about 95 GB) are read from TFDS each pass.
    Dataset("coco", _load_coco, CaptionScorer(), in_memory=False),
    Dataset("folder", _load_folder, CaptionScorer(), splits=("train",)),
)}
