"""Training a `Captioner` from a config: data, tokenizer, model, `fit`, report.

`train.py` is the command line around `train(config)`.
"""

import json
import os
import time
import warnings

import keras

from vlm.data.datasets import load_examples
from vlm.data.pipeline import count_pairs
from vlm.data.pipeline import train_batches
from vlm.data.tokenizer import train_tokenizer
from vlm.distribution import plan_distribution
from vlm.evaluation import caption_split
from vlm.metrics.grounded import grounded_scores
from vlm.models.captioner import build_captioner


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
        "backup": os.path.join(run_logs, "backup"),
        "tensorboard": os.path.join(run_logs, "tensorboard"),
    }


def learning_rate_schedule(train_config, total_steps):
    """Linear warmup to `learning_rate`, then cosine decay to zero."""
    warmup = int(total_steps * train_config.warmup_fraction)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total_steps - warmup, 1),
        warmup_target=train_config.learning_rate,
        warmup_steps=warmup,
    )


def make_optimizer(train_config, total_steps):
    """AdamW on the warmup-cosine schedule; no decay on biases and norms."""
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate_schedule(train_config, total_steps),
        weight_decay=train_config.weight_decay,
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def make_callbacks(config, paths, has_validation):
    """Checkpoint of the best model, resumable backups, TensorBoard, NaN stop."""
    monitor = "val_loss" if has_validation else "loss"
    callbacks = [
        keras.callbacks.BackupAndRestore(paths["backup"]),
        keras.callbacks.ModelCheckpoint(
            paths["best"], monitor=monitor, save_best_only=True, verbose=0
        ),
        keras.callbacks.TensorBoard(paths["tensorboard"], write_graph=False),
        keras.callbacks.TerminateOnNaN(),
    ]
    if config.train.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor,
                patience=config.train.early_stopping_patience,
                restore_best_weights=True,
            )
        )
    return callbacks


def atomic_save(model, path):
    """Saves to a temporary file beside `path`, then renames it into place.

    A run killed mid-save never leaves a truncated file where a good one was.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.tmp.keras")
    model.save(temporary)
    os.replace(temporary, path)


def without_training_state(model):
    """An uncompiled copy of `model`: weights, tokenizer and image settings.

    The shipped `.keras` file is for inference: it leaves out AdamW's two
    extra copies of every weight (`compile()` it again to train or evaluate).
    """
    config = dict(model.get_config(), tokenizer=None)  # its vocabulary is an asset
    copy = model.__class__.from_config(config)
    copy.tokenizer = model.tokenizer
    copy.set_weights(model.get_weights())
    return copy


def write_json(path, data):
    """Writes JSON atomically (temporary file, then rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(temporary, path)


def caption_report(model, examples, num_images, batch_size=250):
    """Greedy-captions `num_images` images (cached decoding) and scores what they say.

    For the shapes dataset (examples carry `objects`, the scene graph) the
    captions are parsed back into objects and relations and compared with
    the scene: `vlm.metrics.grounded.grounded_scores`.

    Returns:
        dict with `num_images`, `samples` (a few image ids, captions and
        references) and, for shapes, the grounded scores.
    """
    ids, captions, references, scenes, _ = caption_split(
        model, examples.take(num_images), batch_size
    )
    report = {
        "num_images": len(captions),
        "samples": [
            {"image_id": i, "caption": c, "references": r}
            for i, c, r in list(zip(ids, captions, references))[:10]
        ],
    }
    if scenes:
        report["grounded"] = grounded_scores(captions, scenes)
    return report


def cached(examples, data_config):
    """`examples.cache()` in memory, except COCO's, which is read from TFDS each pass.

    COCO's decoded training images (train+restval, 113,287 at about 0.8 MB
    each) would take about 95 GB of memory.
    """
    return examples if data_config.dataset == "coco" else examples.cache()


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
            return model.fit(train_data, epochs=epochs, steps_per_epoch=steps_per_epoch,
                             **fit_kwargs)
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
            model.encoder.trainable = trainable
            model.compile(optimizer=optimizer_for((last - first) * steps_per_epoch),
                          jit_compile=model.jit_compile)
            phase = model.fit(train_data, initial_epoch=first, epochs=last,
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
    completed epoch (`BackupAndRestore`).
    """
    model_config, data_config, train_config = config.model, config.data, config.train
    paths = output_paths(config)
    keras.utils.set_random_seed(train_config.seed)
    if train_config.mixed_precision:
        keras.config.set_dtype_policy(train_config.mixed_precision)
    print(f"Backend: {keras.config.backend()}; run '{train_config.name}'")
    plan = plan_distribution(train_config.distribute, train_config.batch_size,
                             model_config, train_config.model_shards)
    print(f"Devices: {plan.description}")

    train_examples = cached(load_examples(data_config, "train", model_config.image_size),
                            data_config)
    validation_examples = load_examples(data_config, "validation", model_config.image_size)
    num_pairs = count_pairs(train_examples)
    print(f"Training pairs (image, caption): {num_pairs}")
    tokenizer = train_tokenizer(
        train_examples.map(lambda e: e["captions"]), model_config.vocabulary_size
    )
    print(f"Vocabulary: {tokenizer.vocabulary_size()} tokens")

    with plan.scope():  # the variables are laid out (JAX) or mirrored (TF) as made
        model = build_captioner(
            model_config, tokenizer.vocabulary_size(), tokenizer=tokenizer,
            dtype=train_config.mixed_precision,
        )
    steps_per_epoch = train_config.steps_per_epoch or num_pairs // train_config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"train.batch_size={train_config.batch_size} is larger than the "
            f"{num_pairs} training pairs: not one batch per epoch."
        )
    with plan.scope():
        model.compile(
            optimizer=make_optimizer(train_config, steps_per_epoch * train_config.epochs),
            jit_compile=train_config.jit_compile and plan.xla,
        )
    print(f"Parameters: {model.count_params():,}; {steps_per_epoch} steps/epoch x "
          f"{train_config.epochs} epochs")

    batch_args = dict(
        image_size=model_config.image_size,
        sequence_length=model_config.sequence_length,
        batch_size=train_config.batch_size,
    )
    train_data = train_batches(
        train_examples, tokenizer, shuffle_buffer=data_config.shuffle_buffer,
        seed=train_config.seed, repeat=True, **batch_args,
    )
    validation_data, validation_steps = None, None
    if validation_examples is not None:
        validation_examples = cached(validation_examples, data_config)
        validation_steps = count_pairs(validation_examples) // train_config.batch_size
        validation_data = train_batches(
            validation_examples, tokenizer, shuffle_buffer=0, **batch_args
        ).repeat()
    os.makedirs(train_config.output_dir, exist_ok=True)
    write_json(paths["config"], config.to_dict())

    start = time.time()
    history = fit_in_phases(
        model, train_data, plan,
        optimizer_for=lambda steps: make_optimizer(train_config, steps),
        freeze_encoder_epochs=train_config.freeze_encoder_epochs,
        shuffle=False,  # the tf.data pipeline shuffles
        epochs=train_config.epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=validation_data,
        validation_steps=validation_steps,
        callbacks=make_callbacks(config, paths, validation_data is not None),
    )
    train_seconds = time.time() - start
    atomic_save(without_training_state(model), paths["model"])
    write_json(paths["history"], {
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "train_seconds": train_seconds,
        "backend": keras.config.backend(),
        "parameters": model.count_params(),
    })
    print(f"Trained in {train_seconds / 60:.1f} min; model: {paths['model']}")

    if train_config.report_images:
        split = "test" if data_config.dataset != "folder" else "train"
        examples = load_examples(data_config, split, model_config.image_size)
        print(f"Captioning {train_config.report_images} {split} images for the report")
        report = caption_report(model, examples, train_config.report_images)
        report.update(split=split, train_seconds=train_seconds,
                      backend=keras.config.backend())
        write_json(paths["report"], report)
        for sample in report["samples"][:3]:
            print(f"  {sample['caption']!r}  (reference: {sample['references'][0]!r})")
        for key, value in report.get("grounded", {}).items():
            print(f"  {key:>22}: {value:.4f}")
        print(f"Report: {paths['report']}")
    return paths
