"""How a model is scored on each shapes dataset: the scorer each brings (`vlm.datasets`).

    SceneScorer    shapes captions, also checked against their scene graphs each epoch
    CaptionScorer  shapes change captions: `vlm.evaluation.CaptionScorer` as it is
                   (its change scores come from the examples' canonical changes)
    AnswerScorer   shapes questions: each image asked its six questions, answers scored

Plain Python at import (the model and TensorFlow are met at call time).
"""

import math

from vlm.datasets.shapes.questions import qa_prompt
from vlm.datasets.shapes.vocabulary import QUESTION_TYPES
from vlm.evaluation import CaptionScorer
from vlm.evaluation import caption_split
from vlm.evaluation import greedy_answer_hits
from vlm.evaluation import plain_id
from vlm.evaluation import progress_batches
from vlm.metrics.grounded import grounded_scores
from vlm.metrics.qa import answer_scores


class SceneScorer(CaptionScorer):
    """Scores shapes captions as `CaptionScorer` does, and each epoch against the scene graphs."""

    score_names = ("object_accuracy", "color_accuracy", "shape_accuracy", "size_accuracy",
                   "relation_accuracy", "exact_scene_accuracy", "hallucination_rate")

    def validation_scores(self, model, examples, batch_size):
        _, captions, _, scenes, _, _ = caption_split(model, examples, batch_size, verbose=0)
        return grounded_scores(captions, scenes)


class AnswerScorer:
    """Scores the answers a model gives to the shapes questions, overall and per question type.

    The examples are those of `vlm.datasets.shapes.builders.load_shapes_qa`;
    each image is asked its questions as `qa_prompt(question)` prompts (a
    model whose `generate` takes `prompts`).
    """

    score_names = ("answer_accuracy", *(f"answer_accuracy_{t}" for t in QUESTION_TYPES))

    def validation_scores(self, model, examples, batch_size):
        rows = answer_split(model, examples, batch_size, verbose=0)[0]
        return {k: v for k, v in answer_scores_of(rows).items() if k != "num_questions"}

    def language_model_scores(self, text_model, tokenizer, examples, sequence_length):
        """The answers of a language model that reads text alone (the stand-in before adapters).

        Each question of `examples` (raw QA examples) is asked twice, greedy:
        after a reference caption of its scene (`with_scene`; the answer
        follows from the text) and alone (what the text tells without the
        scene: the prior an image must overcome).

        Returns:
            `{"with_scene": scores, "question_only": scores}`, each as
            `answer_scores` gives them.
        """
        import numpy as np
        import tensorflow as tf

        from vlm.data.batching import with_scene

        prompts, scene_prompts, answers, types = [], [], [], []
        for example in examples.as_numpy_iterator():
            questions = [qa_prompt(q.decode()) for q in example["questions"]]
            prompts += questions
            scene_prompts += [p.decode() for p in with_scene(
                tf.constant(questions), tf.constant(example["captions"])).numpy()]
            answers += [a.decode() for a in example["answers"]]
            types += list(example["question_types"])
        scores = {}
        for name, asked in (("with_scene", scene_prompts), ("question_only", prompts)):
            hits = greedy_answer_hits(text_model, tokenizer, asked, answers, sequence_length)
            scores[name] = answer_scores(np.where(hits, answers, ""), answers, types)
        return scores

    def report(self, model, examples, batch_size=250):
        rows, _ = answer_split(model, examples, batch_size)
        return {"num_images": len({row["image_id"] for row in rows}), "samples": rows[:12],
                "answers": answer_metrics(model, rows)}

    def evaluate(self, model, examples, sampler="greedy", batch_size=64, gallery_size=8):
        """Answers every question, and again with each image swapped for the previous
        example's (`answer_accuracy_shuffled_images`, per type too): a model that reads
        the image falls to its text prior there (existence near 50%).

        Returns:
            `(metrics, rows, gallery_entries)`; each row also holds
            `prediction_shuffled_images`.
        """
        rows, kept_images = answer_split(model, examples, batch_size, sampler=sampler,
                                         keep_images=gallery_size)
        shuffled, _ = answer_split(model, examples, batch_size, sampler=sampler,
                                   shuffle_images=True)
        for row, other in zip(rows, shuffled):
            row["prediction_shuffled_images"] = other["prediction"]
        entries = []
        for image_id, image in kept_images.items():
            asked = [r for r in rows if r["image_id"] == image_id]
            entries.append({"image_id": image_id, "image": image,
                            "caption": "; ".join(f"{r['question']}? {r['prediction']}"
                                                 for r in asked[:3]),
                            "references": [f"{r['question']}? {r['answer']}" for r in asked[:3]]})
        metrics = answer_metrics(model, rows)
        metrics.update({f"{key}_shuffled_images": value
                        for key, value in answer_scores_of(shuffled).items()
                        if key.startswith("answer_accuracy")})
        return metrics, rows, entries


def answer_split(model, examples, batch_size, sampler="greedy", keep_images=0, verbose=None,
                 shuffle_images=False):
    """Answers every question of a shapes QA examples dataset, with a progress bar.

    With `shuffle_images`, each example's questions are asked of the previous
    example's image (the first example's of the first batch's last): the
    shuffled-image control.

    Returns:
        `(rows, kept_images)`: one dict per question (`image_id`,
        `question`, `type`, `answer`, `prediction`), and `{id: image}` for
        the first `keep_images` examples.
    """
    import numpy as np

    rows, kept_images, previous = [], {}, None
    for batch in progress_batches(model, examples, batch_size, verbose):
        images = batch["images"].numpy()
        if shuffle_images:
            last = images[-1:]
            images = np.concatenate([last if previous is None else previous, images[:-1]])
            previous = last
        questions = [[q.decode() for q in row] for row in batch["questions"].numpy()]
        per_image = len(questions[0])
        predictions = model.generate(np.repeat(images, per_image, axis=0), sampler=sampler,
                                     prompts=[qa_prompt(q) for row in questions for q in row])
        answers = batch["answers"].numpy()
        types = batch["question_types"].numpy()
        for i, image_id in enumerate(plain_id(x) for x in batch["image_id"].numpy()):
            for j, question in enumerate(questions[i]):
                rows.append({"image_id": image_id, "question": question,
                             "type": QUESTION_TYPES[int(types[i, j])],
                             "answer": answers[i, j].decode(),
                             "prediction": predictions[i * per_image + j]})
            if len(kept_images) < keep_images:
                kept_images[image_id] = images[i]
    return rows, kept_images


def answer_scores_of(rows):
    """`vlm.metrics.qa.answer_scores` of `answer_split`'s rows."""
    return answer_scores([r["prediction"] for r in rows], [r["answer"] for r in rows],
                         [r["type"] for r in rows])


def answer_metrics(model, rows):
    """`answer_scores_of(rows)`, and the model's `trainable_fraction`.

    `trainable_fraction` is trainable / total parameters as the model stands
    (a loaded model's layers keep the `trainable` they were saved with).
    """
    metrics = answer_scores_of(rows)
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    metrics["trainable_fraction"] = trainable / sum(math.prod(w.shape) for w in model.weights)
    return metrics
