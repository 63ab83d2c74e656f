"""Evaluating captions: COCO metrics, grounded scene scores, loss, and the report files.

`evaluate.py` is the command line around `evaluate_model` and
`evaluate_predictions`.
"""

import json
import math
import os
import sys

from vlm.data.jsonl import line_error
from vlm.data.jsonl import read_jsonl
from vlm.metrics.change import change_scores
from vlm.metrics.change import moved_breakdown
from vlm.metrics.coco import score_captions
from vlm.metrics.grounded import grounded_scores
from vlm.metrics.grounded import relation_breakdown

METRIC_KEYS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d")


def read_captions_jsonl(path, key):
    """`{image_id: value of key}` from a JSONL file; errors name the file and line.

    Args:
        path: a JSONL file of `{"image_id": ..., key: ...}` lines.
        key: "caption" (a string) or "captions" (a non-empty list of strings).

    Returns:
        A dict from each line's `image_id` (as str) to its `key`'s value.
    """
    rows = {}
    kind = "string" if key == "caption" else "strings"
    for line, record in read_jsonl(path, fields={"image_id": None, key: kind}):
        image_id = str(record["image_id"])
        if image_id in rows:
            raise line_error(path, line, f"image_id {image_id!r} repeated")
        rows[image_id] = record[key]
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def evaluate_predictions(predictions_path, references_path):
    """Scores a predictions JSONL against a references JSONL (no model, numpy only).

    Returns:
        `(metrics, per_image)`: the corpus metrics dict and, per image,
        `{"image_id", "caption", "references", **scores}`.
    """
    predictions = read_captions_jsonl(predictions_path, "caption")
    references = read_captions_jsonl(references_path, "captions")
    missing = sorted(set(predictions) - set(references))
    if missing:
        raise ValueError(
            f"{references_path}: no references for {len(missing)} predicted image(s), "
            f"e.g. image_id {missing[0]!r}"
        )
    ids = list(predictions)
    return score(ids, [predictions[i] for i in ids], [references[i] for i in ids])


def score(ids, captions, references, scenes=None, changes=None):
    """COCO metrics with per-image rows, plus scene or change scores where given.

    Args:
        ids: one image id per caption.
        captions: the generated captions.
        references: one list of reference captions per image.
        scenes: optional scene graphs (`caption_split`'s, shapes): adds
            `grounded_scores` and, under `"relation_errors"`,
            `relation_breakdown`.
        changes: optional `caption_split` changes (shapes_change): adds
            `change_scores` and, under `"moved_errors"`, `moved_breakdown`.

    Returns:
        `(metrics, per_image)`: the metrics dict (floats and ints, and the
        breakdowns as nested dicts) and per image `{"image_id", "caption",
        "references", **scores}`.
    """
    scores = score_captions(captions, references)
    metrics = {key: float(scores[key]) for key in METRIC_KEYS}
    per_image = [
        {"image_id": image_id, "caption": caption, "references": refs,
         **{k: float(v) for k, v in row.items()}}
        for image_id, caption, refs, row in zip(ids, captions, references, scores["per_image"])
    ]
    if scenes is not None:
        metrics.update(grounded_scores(captions, scenes))
        metrics["relation_errors"] = relation_breakdown(captions, scenes)
    if changes is not None:
        metrics.update(change_scores_of(captions, changes))
        metrics["moved_errors"] = moved_errors_of(captions, changes)
    metrics.update(shuffled_image_scores(captions, scenes, changes))
    metrics["num_images"] = len(ids)
    return metrics, per_image


def shuffled_image_scores(captions, scenes=None, changes=None):
    """The shuffled-image control: each example scored on what the model writes for the
    previous example's image(s).

    A captioner reads nothing but its images, so its caption of the previous
    example's image is exactly what it writes when given that image instead:
    the control needs no decoding. A model that reads its images falls to
    what a caption of another scene scores; one that does not stays where it
    was.

    Args:
        captions: the generated captions, in example order.
        scenes: optional scene graphs: adds `object_accuracy_shuffled_images`.
        changes: optional `caption_split` changes: adds
            `exact_change_accuracy_shuffled_images`.

    Returns:
        dict of the scores with shuffled images; empty with fewer than two
        examples, where there is nothing to swap.
    """
    if len(captions) < 2:
        return {}
    # Each example gets the previous example's caption, the first the last's.
    shuffled, scores = list(captions[-1:]) + list(captions[:-1]), {}
    if scenes:
        scores["object_accuracy_shuffled_images"] = (
            grounded_scores(shuffled, scenes)["object_accuracy"])
    if changes:
        scores["exact_change_accuracy_shuffled_images"] = (
            change_scores_of(shuffled, changes)["exact_change_accuracy"])
    return scores


def output_paths(output):
    """The report files that go with a metrics JSON path."""
    root = output[:-5] if output.endswith(".json") else output
    return {
        "metrics": output,
        "report": root + ".md",
        "gallery": root + "_gallery.png",
        "predictions": root + ".predictions.jsonl",
    }


def write_outputs(paths, metrics, per_image, title, gallery_entries=None):
    """Writes the metrics JSON, the predictions JSONL, the markdown report and gallery."""
    os.makedirs(os.path.dirname(paths["metrics"]) or ".", exist_ok=True)
    with open(paths["metrics"], "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    with open(paths["predictions"], "w", encoding="utf-8") as f:
        for row in per_image:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if gallery_entries:
        from vlm.viz.gallery import plot_gallery

        plot_gallery(gallery_entries, paths["gallery"], title=title)
    with open(paths["report"], "w", encoding="utf-8") as f:
        f.write(markdown_report(metrics, per_image, title,
                                os.path.basename(paths["gallery"]) if gallery_entries else None))


def _cell(value):
    """A table cell: floats to 4 decimals, anything else as written."""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(header, rows):
    """The lines of a markdown table with columns `header` and cells `rows`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]


def metrics_table(metrics):
    """A two-column markdown table of the metrics; nested breakdowns are left to
    `breakdown_sections`."""
    rows = [(key, value) for key, value in metrics.items() if not isinstance(value, dict)]
    return "\n".join(_table(("metric", "value"), rows))


def breakdown_sections(metrics):
    """Markdown sections for the error breakdowns among `metrics`, where present.

    Args:
        metrics: `score`'s metrics, with `"relation_errors"`
            (`vlm.metrics.grounded.relation_breakdown`) and/or
            `"moved_errors"` (`vlm.metrics.change.moved_breakdown`).

    Returns:
        list of lines: a table of relation scores by number of objects and
        one of relation errors by kind, and a table of what "moved" captions
        get; empty when `metrics` has neither.
    """
    parts = []
    relations = metrics.get("relation_errors")
    if relations and relations["by_objects"]:
        by_objects = relations["by_objects"]
        columns = list(next(iter(by_objects.values())))
        parts += ["## Relations by number of objects", "",
                  *_table(("objects", *columns),
                          [(group, *row.values()) for group, row in by_objects.items()]), ""]
        parts += ["## Relation errors", "",
                  "Each relation a caption gets wrong or leaves out, in one class, per number "
                  "of objects in the scene. `true_of_another_object`: wrong_axis and "
                  "wrong_direction relations that hold between the subject and another object "
                  "than the anchor named.", "",
                  *_table(("error", *by_objects, "all"),
                          [(kind, *row.values()) for kind, row in relations["errors"].items()]),
                  ""]
    moved = metrics.get("moved_errors")
    if moved and moved["examples"]:
        examples = moved["examples"]
        parts += ["## Moved changes", "",
                  f"What the captions of the {examples} \"moved\" changes state, one class "
                  "each.", "",
                  *_table(("outcome", "examples", "share"),
                          [(kind, count, count / examples)
                           for kind, count in moved.items() if kind != "examples"]), ""]
    return parts


def markdown_report(metrics, per_image, title, gallery_name=None, worst=5):
    """The markdown report: metrics, error breakdowns, the gallery, and the worst-scored images."""
    parts = [f"# {title}", "", metrics_table(metrics), "", *breakdown_sections(metrics)]
    if gallery_name:
        parts += [f"![gallery]({gallery_name})", ""]
    if per_image and all("cider_d" in row for row in per_image):  # answer rows have none
        ranked = sorted(per_image, key=lambda row: row["cider_d"])[:worst]
        parts += ["## Lowest CIDEr-D", "", "| image | generated | first reference | CIDEr-D |",
                  "|---|---|---|---|"]
        for row in ranked:
            parts.append(f"| {row['image_id']} | {row['caption']} | {row['references'][0]} | "
                         f"{row['cider_d']:.3f} |")
    return "\n".join(parts) + "\n"


def perplexity(loss):
    """exp(mean token cross-entropy), guarded against overflow."""
    return math.exp(min(loss, 700.0))


def _progbar_verbosity(verbose):
    """`verbose`, or when None: a live bar on a terminal, one closing line in a log file."""
    if verbose is not None:
        return verbose
    return 1 if sys.stdout.isatty() else 2


def progress_batches(model, examples, batch_size, verbose=None):
    """`eval_batches` of `examples` for `model`, behind a progress bar of the images done."""
    import keras

    from vlm.data.batching import eval_batches

    cardinality = int(examples.cardinality())
    progress = keras.utils.Progbar(cardinality if cardinality > 0 else None,
                                   unit_name="image", verbose=_progbar_verbosity(verbose))
    for batch in eval_batches(examples, model.preprocessor, batch_size=batch_size):
        yield batch
        progress.add(len(batch["images"]))


def caption_split(model, examples, batch_size, sampler="greedy", keep_images=0, verbose=None):
    """Captions every image of an examples dataset, with a progress bar (`progress_batches`).

    Returns:
        `(ids, captions, references, scenes, kept_images, changes)`: per
        example its id, generated caption, reference list and (for the shapes
        dataset, whose examples carry `objects`) scene graph, else `scenes` is
        empty; `{id: image}` for the first `keep_images` examples; and for
        shapes_change each example's `{"change": canonical change, "scenes":
        (before, after)}`, else empty.
    """
    ids, captions, references, scenes, kept_images, changes = [], [], [], [], {}, []
    for batch in progress_batches(model, examples, batch_size, verbose):
        images = batch["images"].numpy()
        captions += model.generate(images, sampler=sampler)
        batch_ids = [plain_id(i) for i in batch["image_id"].numpy()]
        ids += batch_ids
        references += [[c.decode() for c in row if c] for row in batch["captions"].numpy()]
        if "change" in batch:
            pairs = [_scenes_of(batch[key]) for key in ("before", "after")]
            changes += [{"change": c.decode(), "scenes": (before, after)}
                        for c, before, after in zip(batch["change"].numpy(), *pairs)]
        if "objects" in batch:
            scenes += _scenes_of(batch["objects"])
        for image_id, image in zip(batch_ids, images):
            if len(kept_images) < keep_images:
                kept_images[image_id] = side_by_side(image)
    return ids, captions, references, scenes, kept_images, changes


def evaluate_model(model, data_config, split="test", sampler="greedy", batch_size=64,
                   max_images=None, gallery_size=8):
    """Runs a model over a whole split and scores it as the dataset says (its `scorer`).

    Args:
        model: a `Captioner` (compiled here for the loss if it is not).
        data_config: a `vlm.config.DataConfig` naming the dataset.
        split: "train", "validation" or "test".
        sampler: a `vlm.samplers` name or `Sampler` ("greedy", "beam", ...).
        batch_size: images per generation batch.
        max_images: evaluate only the first images (None: all).
        gallery_size: sample images drawn in the gallery (plus as many of
            the worst-scored).

    Returns:
        `(metrics, per_image, gallery_entries)`.
    """
    from vlm import datasets
    from vlm import samplers

    dataset = datasets.get(data_config.dataset)
    examples = dataset.load(data_config, split, model.image_size)
    if examples is None:
        raise ValueError(f"Dataset {data_config.dataset!r} has no {split!r} split.")
    if max_images:
        examples = examples.take(max_images)
    metrics, per_image, entries = dataset.scorer.evaluate(
        model, examples, sampler=sampler, batch_size=batch_size, gallery_size=gallery_size)
    metrics.update(split=split, sampler=repr(samplers.get(sampler)), dataset=data_config.dataset)
    return metrics, per_image, entries


def greedy_answer_hits(text_model, tokenizer, prompts, answers, sequence_length,
                       batch_size=256):
    """Whether greedy decoding gives each answer exactly, from a language model on text alone.

    Teacher-forced: an answer is right when every one of its tokens and its
    [END] is the model's argmax after the right prefix, which is exactly
    when greedy decoding after the prompt writes it.

    Args:
        text_model: `{"tokens": (B, T)} -> logits (B, T, V)`.
        tokenizer: the model's tokenizer.
        prompts, answers: lists of str, one per question.
        sequence_length: tokens per row (`prompted_captions`).
        batch_size: rows per forward pass.

    Returns:
        numpy bool array, one per question.
    """
    import numpy as np

    from vlm.data.tokenizer import prompted_captions

    hits = []
    for start in range(0, len(prompts), batch_size):
        tokens, labels = prompted_captions(tokenizer, prompts[start:start + batch_size],
                                           answers[start:start + batch_size], sequence_length)
        logits = text_model.predict_on_batch({"tokens": tokens.numpy()})
        labels = labels.numpy()
        predicted = np.argmax(np.asarray(logits), axis=-1)
        hits.append(np.all((predicted == labels) | (labels == 0), axis=1))
    return np.concatenate(hits) if hits else np.zeros(0, bool)


class CaptionScorer:
    """Scores the captions a model writes for a dataset's images: a dataset's `scorer`.

    COCO metrics against the references, the loss, and grounded scene scores
    or change scores where the examples carry scene graphs (`objects`) or
    changes (see `caption_split`). Datasets that score more bring a subclass
    (`vlm.datasets.shapes.scorers`).
    """

    # What `validation_scores` measures after each epoch (`train.validation_images`): none.
    score_names = ()

    def validation_scores(self, model, examples, batch_size):
        """`{name: value}` of `score_names` for the model as it stands, without a progress bar."""
        raise ValueError(f"{type(self).__name__} has no validation scores.")

    def language_model_scores(self, text_model, tokenizer, examples, sequence_length):
        """A text-only language model's scores: none, where the captions answer no question."""
        return {}

    def report(self, model, examples, batch_size=250):
        """Greedy captions of `examples` (cached decoding) for a training report.

        Returns:
            dict with `num_images`, `samples` (a few image ids, captions and
            references) and the scene or change scores where there are scenes
            or changes.
        """
        ids, captions, references, scenes, _, changes = caption_split(model, examples,
                                                                      batch_size)
        report = {
            "num_images": len(captions),
            "samples": [
                {"image_id": i, "caption": c, "references": r}
                for i, c, r in list(zip(ids, captions, references))[:10]
            ],
        }
        if scenes:
            report["grounded"] = grounded_scores(captions, scenes)
            report["relation_errors"] = relation_breakdown(captions, scenes)
        if changes:
            report["change"] = change_scores_of(captions, changes)
            report["moved_errors"] = moved_errors_of(captions, changes)
        if scenes or changes:
            report["shuffled_images"] = shuffled_image_scores(captions, scenes, changes)
        return report

    def evaluate(self, model, examples, sampler="greedy", batch_size=64, gallery_size=8):
        """Captions and scores every example; `evaluate_model`'s work once the split is loaded.

        Returns:
            `(metrics, per_image, gallery_entries)`.
        """
        from vlm.data.batching import count_pairs
        from vlm.data.batching import eval_batches
        from vlm.data.batching import train_batches

        ids, captions, references, scenes, kept_images, changes = caption_split(
            model, examples, batch_size, sampler=sampler, keep_images=gallery_size)
        metrics, per_image = score(ids, captions, references, scenes or None, changes or None)

        if not model.compiled:
            model.compile()  # the masked caption loss and token accuracy
        # Batches drop their remainder (one static shape): fewer pairs than a
        # batch are one smaller batch.
        batch_size = max(min(batch_size, count_pairs(examples)), 1)
        pairs = train_batches(examples, model.preprocessor, batch_size=batch_size,
                              shuffle_buffer=0)
        steps = max(count_pairs(examples) // batch_size, 1)
        results = model.evaluate(pairs, steps=steps, verbose=0, return_dict=True)
        metrics["loss"] = float(results["loss"])
        metrics["perplexity"] = perplexity(metrics["loss"])
        metrics["token_accuracy"] = float(results.get("token_accuracy", float("nan")))

        samples = list(kept_images)
        others = [row for row in per_image if row["image_id"] not in kept_images]
        worst = sorted(others, key=lambda row: row["cider_d"])[:gallery_size // 2]
        worst_ids = {row["image_id"] for row in worst}
        if worst_ids:
            for batch in eval_batches(examples, model.preprocessor, batch_size=batch_size):
                for image_id, image in zip(batch["image_id"].numpy(), batch["images"].numpy()):
                    if plain_id(image_id) in worst_ids:
                        kept_images[plain_id(image_id)] = side_by_side(image)
        rows = {row["image_id"]: row for row in per_image}
        entries = [dict(rows[i], image=kept_images[i]) for i in samples]
        entries += [dict(row, image=kept_images[row["image_id"]],
                         label=f"worst: CIDEr-D {row['cider_d']:.2f}") for row in worst]
        return metrics, per_image, entries


def _scenes_of(objects):
    """The scene graph of each example from a batch's padded `objects` features."""
    from vlm.datasets.shapes.scene import scene_from_features

    objects = {k: v.numpy() for k, v in objects.items()}
    real = objects["shape"] >= 0  # padded objects are -1
    return [scene_from_features({k: v[i][real[i]] for k, v in objects.items()})
            for i in range(len(real))]


def change_scores_of(captions, changes):
    """`change_scores` of `caption_split`'s changes (canonical strings and scenes)."""
    return change_scores(captions, [c["change"] for c in changes],
                         scenes=[c["scenes"] for c in changes])


def moved_errors_of(captions, changes):
    """`moved_breakdown` of `caption_split`'s changes (canonical strings and scenes)."""
    return moved_breakdown(captions, [c["change"] for c in changes],
                           [c["scenes"] for c in changes])


def side_by_side(image):
    """One picture of an example: its image, or its images left to right."""
    import numpy as np

    return np.concatenate(list(image), axis=1) if image.ndim == 4 else image


def plain_id(value):
    """A JSON-friendly image id (bytes -> str, NumPy ints -> int)."""
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if hasattr(value, "item") else value
