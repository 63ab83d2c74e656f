"""Training a `Captioner` from a config: data, tokenizer, model, `fit`, report.

`train.py` is the command line around `train(config)`.
"""

import math
import os
import shutil
import sys
import time
import warnings

import keras
import tensorflow as tf

from vlm import datasets
from vlm.backend import resolve_jit_compile
from vlm.backend import xla_has_float16_attention
from vlm.callbacks import AtomicBackupAndRestore
from vlm.callbacks import AtomicModelCheckpoint
from vlm.callbacks import EpochLine
from vlm.callbacks import LearningRateLogger
from vlm.callbacks import ResumableEarlyStopping
from vlm.callbacks import TerminateOnNaNWithReason
from vlm.callbacks import ValidationScoreLogger
from vlm.callbacks import read_backup
from vlm.config import parse_targets
from vlm.data.batching import count_pairs
from vlm.data.batching import text_batches
from vlm.data.batching import text_rows
from vlm.data.batching import train_batches
from vlm.data.tokenizer import IMAGE
from vlm.data.tokenizer import train_tokenizer
from vlm.distribution import plan_distribution
from vlm.models.captioner import build_captioner
from vlm.models.losses import CaptionLoss
from vlm.models.losses import MaskedTokenAccuracy
from vlm.models.multi_image_captioner import build_multi_image_captioner
from vlm.models.vision_language_model import build_language_model
from vlm.models.vision_language_model import build_vision_language_model
from vlm.models.vision_language_model import preset_tokenizer
from vlm.optimization import make_optimizer
from vlm.saving import load_keras_file
from vlm.utils.atomic_files import atomic_write
from vlm.utils.atomic_files import write_json_atomically
from vlm.utils.machine import describe_machine


def output_paths(config):
    """Where a run's files go, named after `train.name`."""
    out, name = config.train.output_dir, config.train.name
    run_logs = os.path.join(config.train.log_dir, name)
    return {
        "model": os.path.join(out, f"{name}.keras"),
        "best": os.path.join(out, f"{name}.best.keras"),
        "config": os.path.join(out, f"{name}.config.json"),
        "history": os.path.join(out, f"{name}.history.json"),
        "report": os.path.join(out, f"{name}.report.json"),
        "language_model": os.path.join(out, f"{name}.language_model.keras"),
        "language_model_scores": os.path.join(out, f"{name}.language_model.json"),
        "backup": os.path.join(run_logs, "backup"),
        "tensorboard": os.path.join(run_logs, "tensorboard"),
    }


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where."""


def make_callbacks(config, paths, has_validation, score_examples=None):
    """Checkpoint of the best model, resumable backups, TensorBoard, NaN stop, a line per epoch.

    With `score_examples` (the validation examples), the first
    `train.validation_images` of them are scored after each epoch, and
    training stops where they meet `train.stop_at`. The learning rate and
    those scores go into the epoch logs first; the best-model
    checkpoint is written before the backup commits the epoch, so a kill
    between the two redoes the epoch rather than losing its checkpoint.
    Both are written atomically (`vlm.callbacks`).
    """
    monitor = "val_loss" if has_validation else "loss"
    # A resumed run's best model so far is the one to beat.
    done = (read_backup(paths["backup"]) or {}).get("history", {}).get(monitor)
    callbacks = [
        LearningRateLogger(),
        *([ValidationScoreLogger(score_examples, datasets.get(config.data.dataset).scorer,
                                 config.train.validation_images,
                                 targets=parse_targets(config.train.stop_at))]
          if score_examples is not None and config.train.validation_images else []),
        AtomicModelCheckpoint(
            paths["best"], monitor=monitor, save_best_only=True, verbose=0,
            initial_value_threshold=min(done) if done else None,
        ),
        AtomicBackupAndRestore(paths["backup"]),
        keras.callbacks.TensorBoard(paths["tensorboard"], write_graph=False),
        TerminateOnNaNWithReason(),
    ]
    if config.train.early_stopping_patience:
        callbacks.append(
            ResumableEarlyStopping(
                monitor=monitor,
                patience=config.train.early_stopping_patience,
                restore_best_weights=True,
                previous_values=done,
            )
        )
    callbacks.append(EpochLine(config.train.epochs))
    return callbacks


def atomic_save(model, path):
    """Saves to a temporary file beside `path`, then renames it into place.

    A run killed mid-save never leaves a truncated file where a good one was.
    """
    atomic_write(path, model.save)


def without_training_state(model):
    """An uncompiled copy of `model`: weights, tokenizer and image settings.

    The shipped `.keras` file is for inference: it leaves out AdamW's two
    extra copies of every weight (`compile()` it again to train or evaluate).
    """
    config = dict(model.get_config(), preprocessor=None)  # the vocabulary is an asset
    copy = model.__class__.from_config(config)
    copy.preprocessor = model.preprocessor
    copy.set_weights(model.get_weights())
    return copy


write_json = write_json_atomically  # temporary file, then rename


def build_model(model_config, tokenizer, dtype=None, language_model=None):
    """A `Captioner`, a `MultiImageCaptioner` for `model.num_images > 1`, or for
    `model.architecture="adapter"` a `VisionLanguageModel` around `language_model`."""
    if model_config.architecture == "adapter":
        return build_vision_language_model(model_config, tokenizer, language_model, dtype=dtype)
    build = build_multi_image_captioner if model_config.num_images > 1 else build_captioner
    return build(model_config, tokenizer.vocabulary_size(), tokenizer=tokenizer, dtype=dtype)


def copy_encoder(model, path):
    """Sets `model.backbone.encoder`'s weights to those of the captioner saved at `path`."""
    from vlm import load_captioner

    source, encoder = load_captioner(path).backbone.encoder, model.backbone.encoder
    for ours, theirs in zip(encoder.weights, source.weights):
        if tuple(ours.shape) != tuple(theirs.shape):
            raise ValueError(
                f"model.encoder_from={path!r}: its encoder is of other sizes (weight "
                f"{theirs.path} is {tuple(theirs.shape)}, here {tuple(ours.shape)}); give "
                "this model its image_size, patch_size and encoder_* sizes.")
    if len(encoder.weights) != len(source.weights):
        raise ValueError(f"model.encoder_from={path!r}: its encoder has "
                         f"{len(source.weights)} weights, this one {len(encoder.weights)}.")
    encoder.set_weights(source.get_weights())


def prepare_language_model(config, tokenizer, examples, paths, jit_compile):
    """The keras-hub backbone of an adapter model, trained on the text first if asked.

    With `train.language_model_epochs`, a backbone of the config's sizes
    learns the examples' text alone (questions, answers, captions; no
    images; with `train.language_model_text="scene"` also each question
    after a caption of its scene) with `fit`, standing in for a pretrained
    language model, and is saved to `paths["language_model"]`; a rerun (or
    resume) loads that file instead of training again. Its answers to the
    validation questions, with the scene written out and without, go to
    `paths["language_model_scores"]`.
    """
    model_config, train_config = config.model, config.train
    epochs = train_config.language_model_epochs
    pretrain = epochs and not (model_config.language_model_preset
                               or model_config.language_model_from)
    path = paths["language_model"]
    if pretrain and os.path.exists(path):
        print(f"Language model: {path}, trained on the text by an earlier run")
        return load_keras_file(path)
    length = train_config.language_model_sequence_length or model_config.sequence_length
    backbone = build_language_model(model_config, tokenizer.vocabulary_size(),
                                    dtype=train_config.mixed_precision, max_sequence_length=length)
    if not pretrain:
        return backbone
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    hidden = backbone({"token_ids": tokens, "padding_mask": keras.ops.ones_like(tokens)})
    logits = backbone.token_embedding(hidden, reverse=True)
    text_model = keras.Model({"tokens": tokens}, logits, name="language_model_on_text")
    batch_size = train_config.batch_size
    scene_context = train_config.language_model_text == "scene"
    texts = text_batches(examples, tokenizer, sequence_length=length, batch_size=batch_size,
                         seed=train_config.seed, repeat=True, scene_context=scene_context)
    rows = int(text_rows(examples, scene_context).reduce(0, lambda count, _: count + 1))
    steps = rows // batch_size
    text_model.compile(optimizer=make_optimizer(train_config, steps * epochs), loss=CaptionLoss(),
                       metrics=[MaskedTokenAccuracy()], jit_compile=jit_compile)
    print(f"Language model: {type(backbone).__name__}, {backbone.count_params():,} parameters, "
          f"{epochs} epoch(s) of {steps} steps on the text alone "
          f"(train.language_model_text={train_config.language_model_text!r}, {length} tokens)")
    start = time.time()
    history = text_model.fit(texts, epochs=epochs, steps_per_epoch=steps, shuffle=False,
                             verbose=1 if sys.stdout.isatty() else 2)
    record = {"train_seconds": time.time() - start, "steps": steps * epochs,
              "text": train_config.language_model_text, "sequence_length": length,
              "history": {k: [float(x) for x in v] for k, v in history.history.items()}}
    atomic_save(backbone, path)
    print(f"Language model saved: {path}")
    dataset = datasets.get(config.data.dataset)
    if "validation" in dataset.splits:
        score_examples = dataset.load(config.data, "validation", model_config.image_size)
        record["answers"] = dataset.scorer.language_model_scores(
            text_model, tokenizer, score_examples, length)
        for name, scores in record["answers"].items():
            print(f"Language model on the validation questions, {name.replace('_', ' ')}: "
                  + ", ".join(f"{k.removeprefix('answer_accuracy').lstrip('_') or 'all'} {v:.1%}"
                              for k, v in scores.items() if k.startswith("answer_accuracy")))
    write_json(paths["language_model_scores"], record)
    return backbone


def uses_image_markers(model_config):
    """Whether the model's text holds an `<image>` marker per image."""
    return model_config.num_images > 1 and model_config.multi_image == "interleaved"


def text_of(example):
    """An example's text for the vocabulary: captions, and prompts and scene captions."""
    return tf.concat([example[key] for key in ("captions", "prompts", "scene_captions")
                      if key in example], 0)


def cached(examples, data_config):
    """`examples.cache()` in memory, except COCO's, which is read from TFDS each pass.

    COCO's decoded training images (train+restval, 113,287 at about 0.8 MB
    each) would take about 95 GB of memory.
    """
    return examples.cache() if datasets.get(data_config.dataset).in_memory else examples


def fit_in_phases(model, train_data, plan, *, epochs, steps_per_epoch, optimizer_for,
                  freeze_encoder_epochs=0, done_epochs=0, **fit_kwargs):
    """`model.fit` in `plan`'s scope, with the encoder frozen for the first epochs.

    Without freezing this is one `fit` with the optimizer `model` was
    compiled with. With it, Keras' fine-tuning recipe: the encoder's
    `trainable = False`, compile with a fresh optimizer, fit; then
    `trainable = True`, compile with another fresh optimizer, fit on. Each
    phase has its own optimizer, `optimizer_for(its steps)`, so Adam's bias
    correction starts afresh for the weights it newly trains, and a backup
    taken in a phase restores into that phase.

    Args:
        model: a compiled `Captioner`, built in `plan.scope()`.
        train_data: repeated batches, positioned at epoch `done_epochs`.
        plan: the `vlm.distribution.DistributionPlan` of the run.
        epochs: the run's epochs in all.
        steps_per_epoch: batches per epoch.
        optimizer_for: `steps -> optimizer` for one phase of `steps` steps.
        freeze_encoder_epochs: epochs at the start of the run that train all
            but the image encoder.
        done_epochs: epochs a resumed run finished before this call.
        **fit_kwargs: more `model.fit` arguments (callbacks, validation, ...).

    Returns:
        A `keras.callbacks.History` of the epochs run here, both phases.
    """
    frozen = min(freeze_encoder_epochs, epochs)
    if not frozen:
        with plan.scope():
            return model.fit(train_data, initial_epoch=done_epochs, epochs=epochs,
                             steps_per_epoch=steps_per_epoch, **fit_kwargs)
    history = keras.callbacks.History()
    history.history = {}
    for first, last, trainable in [(0, frozen, False), (frozen, epochs, True)]:
        if last <= max(first, done_epochs):
            continue
        print(f"Epochs {max(first, done_epochs) + 1}-{last}: "
              + ("all weights train" if trainable else "the image encoder is frozen"))
        with plan.scope(), warnings.catch_warnings():
            # A backup from the last frozen epoch holds the frozen phase's
            # optimizer, which the fresh one is meant to replace.
            warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
            model.backbone.encoder.trainable = trainable
            model.compile(optimizer=optimizer_for((last - first) * steps_per_epoch),
                          jit_compile=model.jit_compile)
            phase = model.fit(train_data, initial_epoch=max(first, done_epochs), epochs=last,
                              steps_per_epoch=steps_per_epoch, **fit_kwargs)
        for key, values in phase.history.items():
            history.history.setdefault(key, []).extend(values)
        if model.stop_training:  # NaN or early stopping
            break
        # The next fit reads the data from its start: skip what this one ate.
        train_data = train_data.skip((last - max(first, done_epochs)) * steps_per_epoch)
    return history


def train(config):
    """Trains a captioner as `config` says; returns the output paths.

    Rerunning the same command after an interruption resumes from the last
    completed epoch (`AtomicBackupAndRestore`), with the same batches, step
    count and learning rate an uninterrupted run would have.

    Raises:
        TrainingDiverged: the loss became NaN or infinite; the history file
            records where (`stopped_on_nan`) and the final model is not written.
    """
    previous_policy = keras.config.dtype_policy()
    try:
        return _train(config)
    finally:
        # The policy is global: leave it as the caller had it.
        keras.config.set_dtype_policy(previous_policy)


def _train(config):
    model_config, train_config = config.model, config.train
    paths = output_paths(config)
    if train_config.mixed_precision:
        keras.config.set_dtype_policy(train_config.mixed_precision)
    print(f"Backend: {keras.config.backend()}; run '{train_config.name}'")
    print(f"Machine: {describe_machine()}")
    plan = plan_distribution(train_config.distribute, train_config.batch_size,
                             model_config, train_config.model_shards,
                             train_config.captions_per_image)
    print(f"Devices: {plan.description}")

    dataset = datasets.get(config.data.dataset)
    train_examples, validation_examples, num_pairs = load_splits(config, dataset)
    steps_per_epoch = train_config.steps_per_epoch or num_pairs // train_config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"train.batch_size={train_config.batch_size} is larger than the "
            f"{num_pairs} training pairs: not one batch per epoch."
        )
    # Seeded here, after the data is read: preparing it (a fresh cache) or not
    # (a warm one) then leaves the weights and dropout the same. Before the
    # tokenizer: seeding TensorFlow clears its eager kernels, and with them a
    # SentencePiece tokenizer's model.
    keras.utils.set_random_seed(train_config.seed)
    tokenizer = make_tokenizer(model_config, train_examples)
    model = build_and_compile(config, tokenizer, train_examples, plan, paths,
                              steps_per_epoch)

    resumed = read_backup(paths["backup"])
    train_data, validation_data, validation_steps = make_batches(
        config, model, train_examples, validation_examples,
        skip_batches=resumed["epoch"] * steps_per_epoch if resumed else 0)
    if resumed:
        print(f"Resuming after epoch {resumed['epoch']}/{train_config.epochs} from the "
              f"backup in {paths['backup']}")
    os.makedirs(train_config.output_dir, exist_ok=True)
    write_json(paths["config"], config.to_dict())

    score_examples = None
    if train_config.validation_images:  # a dataset with a scorer (Config.validate)
        score_examples = dataset.load(config.data, "validation", model_config.image_size)
    callbacks = make_callbacks(config, paths, validation_data is not None, score_examples)
    start = time.time()
    history = fit_in_phases(
        model, train_data, plan,
        optimizer_for=lambda steps: make_optimizer(train_config, steps),
        freeze_encoder_epochs=train_config.freeze_encoder_epochs,
        done_epochs=resumed["epoch"] if resumed else 0,
        shuffle=False,  # the tf.data pipeline shuffles
        epochs=train_config.epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=validation_data,
        validation_steps=validation_steps,
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 0,  # a log file gets EpochLine's lines, no bar
    )
    train_seconds = time.time() - start
    record = history_record(model, history, resumed, train_seconds)
    nan_stop = next(c for c in callbacks if isinstance(c, TerminateOnNaNWithReason))
    if nan_stop.stopped:
        record["stopped_on_nan"] = dict(nan_stop.stopped, loss=str(nan_stop.stopped["loss"]))
        write_json(paths["history"], record)
        backed_up = read_backup(paths["backup"])
        kept = (f"epoch {backed_up['epoch']} is backed up in {paths['backup']} (rerun "
                "with a lower train.learning_rate to resume from it)" if backed_up
                else "no epoch finished with a finite loss")
        raise TrainingDiverged(
            f"Training stopped: {nan_stop.message()}. {paths['model']} was not written; {kept}. "
            f"History: {paths['history']}"
        )
    atomic_save(without_training_state(model), paths["model"])
    write_json(paths["history"], record)
    shutil.rmtree(paths["backup"], ignore_errors=True)  # the run is complete
    print(f"Trained in {train_seconds / 60:.1f} min; model: {paths['model']}")
    if train_config.report_images:
        write_report(config, dataset, model, paths["report"], train_seconds)
    return paths


def load_splits(config, dataset):
    """`(train_examples, validation_examples or None, training pairs)`, cached as asked."""
    image_size = config.model.image_size
    train_examples = cached(dataset.training_examples(
        dataset.load(config.data, "train", image_size)), config.data)
    validation_examples = dataset.training_examples(
        dataset.load(config.data, "validation", image_size))
    if validation_examples is not None:
        validation_examples = cached(validation_examples, config.data)
    captions_per_image = config.train.captions_per_image
    num_pairs = count_pairs(train_examples, captions_per_image, **long_caption_args(config.train))
    print(f"Training pairs (image, caption): {num_pairs}"
          + (f", {captions_per_image} captions per image in a batch"
             if captions_per_image > 1 else "")
          + (f", captions of {config.train.long_caption_words}+ words read "
             f"{config.train.long_caption_repeats} times" if config.train.long_caption_words
             else ""))
    return train_examples, validation_examples, num_pairs


def long_caption_args(train_config):
    """The `train_batches` arguments that read long captions more often."""
    return dict(long_caption_words=train_config.long_caption_words,
                long_caption_repeats=train_config.long_caption_repeats)


def make_tokenizer(model_config, train_examples):
    """A pretrained language model's tokenizer, or one trained on the examples' text."""
    if model_config.language_model_preset:  # the pretrained model's own
        tokenizer = preset_tokenizer(model_config)
        print(f"Vocabulary: {tokenizer.vocabulary_size()} tokens "
              f"({model_config.language_model_preset}'s {type(tokenizer).__name__})")
        return tokenizer
    tokenizer = train_tokenizer(
        train_examples.map(text_of), model_config.vocabulary_size,
        extra_special_tokens=(IMAGE,) if uses_image_markers(model_config) else (),
    )
    print(f"Vocabulary: {tokenizer.vocabulary_size()} tokens")
    return tokenizer


def build_and_compile(config, tokenizer, train_examples, plan, paths, steps_per_epoch):
    """The model the config asks for, its parts copied or frozen as asked, compiled."""
    model_config, train_config = config.model, config.train
    jit_compile = resolve_jit_compile(train_config.jit_compile) and plan.xla
    with plan.scope():  # the variables are laid out (JAX) or mirrored (TF) as made
        language_model = None
        if model_config.architecture == "adapter":
            language_model = prepare_language_model(config, tokenizer, train_examples, paths,
                                                     jit_compile)
        model = build_model(model_config, tokenizer, dtype=train_config.mixed_precision,
                            language_model=language_model)
        if model_config.encoder_from:
            copy_encoder(model, model_config.encoder_from)
            print(f"Image encoder: the weights of {model_config.encoder_from}")
        if language_model is not None and train_config.freeze_language_model:
            report = model.freeze_language_model(
                freeze_encoder=train_config.freeze_encoder_epochs >= train_config.epochs)
            print(f"Language model frozen: {report['trainable_parameters']:,} of "
                  f"{report['total_parameters']:,} parameters train "
                  f"({report['trainable_fraction']:.1%})")
    if jit_compile and train_config.mixed_precision == "mixed_float16" and (
            not xla_has_float16_attention()):
        print("mixed_float16 on JAX's CPU backend trains without jit_compile: XLA:CPU "
              "has no float16 x float16 -> float32 matmul, which Keras' attention asks for")
        jit_compile = False
    with plan.scope():
        model.compile(
            optimizer=make_optimizer(train_config, steps_per_epoch * train_config.epochs),
            jit_compile=jit_compile,
        )
    print(f"Training steps: jit_compile={jit_compile} (train.jit_compile="
          f"{train_config.jit_compile!r} on {keras.config.backend()})")
    print(f"Parameters: {model.count_params():,}; {steps_per_epoch} steps/epoch x "
          f"{train_config.epochs} epochs")
    return model


def make_batches(config, model, train_examples, validation_examples, skip_batches=0):
    """`(train_data, validation_data, validation_steps)`: repeated batches of pairs.

    The model's preprocessor makes them. `skip_batches` are the batches a
    resumed run's finished epochs ate: it then sees the batches an
    uninterrupted one would.
    """
    train_config = config.train
    train_data = train_batches(
        train_examples, model.preprocessor, batch_size=train_config.batch_size,
        shuffle_buffer=config.data.shuffle_buffer, seed=train_config.seed, repeat=True,
        captions_per_image=train_config.captions_per_image, **long_caption_args(train_config),
    ).skip(skip_batches)
    if validation_examples is None:
        return train_data, None, None
    validation_steps = count_pairs(validation_examples) // train_config.batch_size
    validation_data = train_batches(validation_examples, model.preprocessor,
                                    batch_size=train_config.batch_size, shuffle_buffer=0).repeat()
    return train_data, validation_data, validation_steps


def history_record(model, history, resumed, train_seconds):
    """The `<name>.history.json` record: every epoch's logs, resumed ones included."""
    all_epochs = {k: list(v) for k, v in (resumed or {}).get("history", {}).items()}
    for key, values in history.history.items():
        # JSON has no NaN: a diverged epoch's values are null.
        all_epochs.setdefault(key, []).extend(
            float(v) if math.isfinite(v) else None for v in values
        )
    return {
        "history": all_epochs,  # the epochs before a resume included
        "train_seconds": train_seconds,  # this run only
        "backend": keras.config.backend(),
        "parameters": model.count_params(),
        "trainable_parameters": int(sum(math.prod(w.shape) for w in model.trainable_weights)),
        # Of the last phase's optimizer when train.freeze_encoder_epochs > 0.
        "optimizer_steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        "resumed_after_epoch": resumed["epoch"] if resumed else 0,
    }


def write_report(config, dataset, model, path, train_seconds):
    """Scores the model on `train.report_images` of the dataset's report split; prints a few."""
    split = dataset.report_split
    examples = dataset.load(config.data, split, config.model.image_size)
    print(f"Captioning {config.train.report_images} {split} images for the report")
    report = dataset.scorer.report(model, examples.take(config.train.report_images))
    report.update(split=split, train_seconds=train_seconds, backend=keras.config.backend())
    write_json(path, report)
    for sample in report["samples"][:3]:
        if "question" in sample:
            print(f"  {sample['question']!r}: {sample['prediction']!r} "
                  f"(answer: {sample['answer']!r})")
        else:
            print(f"  {sample['caption']!r}  (reference: {sample['references'][0]!r})")
    scores = {**report.get("grounded", {}), **report.get("change", {}),
              **report.get("answers", {})}
    for key, value in scores.items():
        print(f"  {key:>22}: {value:.4f}")
    print(f"Report: {path}")
