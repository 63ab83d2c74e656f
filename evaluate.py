"""Scores captions: `python evaluate.py [--model PATH] [--dataset shapes] [--split test]`.

Generates captions for the whole split (with a progress bar), scores them
against every reference (BLEU-1..4, ROUGE-L, CIDEr-D as the COCO caption
evaluation computes them; on shapes also grounded scene scores), reports the
loss and perplexity, prints a table and writes: the metrics JSON, a markdown
report, a gallery PNG and the predictions as JSONL.

Score captions from any system, without a model (numpy only):

    python evaluate.py --predictions preds.jsonl --references refs.jsonl
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

from vlm import datasets  # noqa: E402
from vlm.evaluation import evaluate_predictions  # noqa: E402
from vlm.evaluation import metrics_table  # noqa: E402
from vlm.evaluation import output_paths  # noqa: E402
from vlm.evaluation import write_outputs  # noqa: E402

DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             "saved_models", "shapes.keras")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="default: %(default)s")
    parser.add_argument("--dataset",
                        choices=datasets.names(),
                        help="default: the model's own (shapes_change for a model that "
                             "reads image pairs, shapes_qa for a language model with "
                             "cross-attention adapters, else shapes)")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--captions-file", help="for --dataset folder: CSV or JSONL")
    parser.add_argument("--data-dir", help="TFDS data folder (default: the vlm cache)")
    parser.add_argument("--sampler", default="greedy",
                        help="decoding strategy: greedy, beam, top_k or top_p "
                             "(default: %(default)s)")
    parser.add_argument("--beams", type=int, help="beams for --sampler beam")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-images", type=int, help="only the first N images")
    parser.add_argument("--scenes-seed", type=int,
                        help="score scenes never trained on: render --max-images (default "
                             "1000) shapes scenes (or change pairs, or questions) from this "
                             "seed, which no split of the training data uses, and score "
                             "the model on them")
    parser.add_argument("--output", default="results/results.json",
                        help="metrics JSON; the report files go beside it (default: %(default)s)")
    parser.add_argument("--predictions", help="JSONL of {image_id, caption}: score these")
    parser.add_argument("--references", help="JSONL of {image_id, captions: [...]}")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    paths = output_paths(args.output)
    try:
        if args.predictions or args.references:
            if not (args.predictions and args.references):
                raise ValueError("--predictions and --references go together.")
            metrics, per_image = evaluate_predictions(args.predictions, args.references)
            entries, title = None, f"Scores of {os.path.basename(args.predictions)}"
        else:
            metrics, per_image, entries, title = _evaluate_model(args)
    except ValueError as error:
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        return 2
    write_outputs(paths, metrics, per_image, title, entries)
    print(metrics_table(metrics))
    written = [p for key, p in paths.items() if key != "gallery" or entries]
    print("\nWrote " + ", ".join(written))
    return 0


def _evaluate_model(args):
    if not os.path.exists(args.model):  # a folder gets load_captioner's clearer error
        raise ValueError(f"model file not found: {args.model}")
    from vlm import load_captioner
    from vlm.cli import sampler_from_args
    from vlm.config import DataConfig
    from vlm.evaluation import evaluate_model

    sampler = sampler_from_args(args)
    model = load_captioner(args.model)
    if args.dataset is None:
        args.dataset = ("shapes_change" if model.images_per_example is not None else
                        "shapes_qa" if model.prompted else "shapes")
    data_config = DataConfig(dataset=args.dataset, captions_file=args.captions_file,
                             data_dir=args.data_dir)
    where = args.split
    if args.scenes_seed is not None:
        data_config, args.split = fresh_scenes(args, data_config), "test"
        where = f"seed {args.scenes_seed}"
        print(f"Scoring {args.model} on {data_config.test_size} {args.dataset} examples "
              f"rendered from seed {args.scenes_seed}")
    else:
        print(f"Captioning the {args.dataset} {args.split} split with {args.model}")
    metrics, per_image, entries = evaluate_model(
        model, data_config, args.split, sampler=sampler, batch_size=args.batch_size,
        max_images=args.max_images)
    if args.scenes_seed is not None:
        metrics["scenes_seed"] = args.scenes_seed
    title = f"{os.path.basename(args.model)} on {args.dataset}/{where} ({sampler!r})"
    return metrics, per_image, entries, title


SHAPES_DATASETS = ("shapes", "shapes_change", "shapes_qa")


def fresh_scenes(args, data_config):
    """A shapes dataset (captions, changes or questions) of `--max-images` examples (its test
    split) from `--scenes-seed`.

    Its examples come from their own stream: `split_seed(seed, "test")` is
    none of the default dataset's split streams (checked).
    """
    import dataclasses

    from vlm.config import DataConfig
    from vlm.datasets.shapes.builders import SPLITS
    from vlm.datasets.shapes.builders import split_seed

    if args.dataset not in SHAPES_DATASETS:
        raise ValueError(f"--scenes-seed renders shapes scenes; it applies to --dataset "
                         f"{', '.join(SHAPES_DATASETS)}. Received: --dataset {args.dataset}")
    default = DataConfig()
    if split_seed(args.scenes_seed, "test") in {split_seed(default.seed, s) for s in SPLITS}:
        raise ValueError(f"--scenes-seed {args.scenes_seed} renders the scenes of a "
                         "training split.")
    return dataclasses.replace(data_config, train_size=1, validation_size=1,
                               test_size=args.max_images or 1000, seed=args.scenes_seed)


if __name__ == "__main__":
    sys.exit(main())
