"""Training curves of several runs from their history files, against wall time or epochs.

    python -m vlm.viz.training_curves docs/shapes_change_curves.png \
        interleaved=saved_models/shapes_change.history.json \
        sources=results/shapes_change_sources.history.json
    python -m vlm.viz.training_curves --keys val_relation_accuracy,val_object_accuracy \
        docs/shapes_training_curves.png new=saved_models/shapes.history.json ...
    python -m vlm.viz.training_curves --by-epoch docs/levers.png a=a.history.json ...
"""

import json
import math
import sys

from matplotlib.lines import Line2D

from vlm.viz.figures import plt

PANELS = (("val_loss", "validation loss"), ("val_token_accuracy", "validation token accuracy"),
          ("val_answer_accuracy", "validation answer accuracy"),
          ("val_object_accuracy", "validation object accuracy"),
          ("val_relation_accuracy", "validation relation accuracy"),
          ("val_exact_scene_accuracy", "validation exact scenes"),
          ("val_hallucination_rate", "validation hallucination rate"))


def plot_training_curves(runs, path, title=None, keys=None, targets=None, by_epoch=False):
    """One line per run: each validation measure after each epoch, against minutes.

    Args:
        runs: `{label: history}`, each a `train.py` history file's contents
            (`history` per epoch and `train_seconds`); an epoch is placed at
            its `elapsed_seconds` where logged, else evenly over
            `train_seconds`. A panel is drawn for each measure some run has.
        path: the PNG to write.
        title: optional figure title.
        keys: the measures to draw, in order (default: every one of `PANELS`
            some run has).
        targets: optional `{key: value}` drawn as a dashed line in its panel.
        by_epoch: against epochs instead (runs timed on shared cores, or
            stopped before their `train_seconds` were written).
    """
    names = dict(PANELS)
    keys = keys or [k for k, _ in PANELS]
    panels = [(k, names.get(k, k)) for k in keys
              if any(k in r["history"] for r in runs.values())]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    axes = axes[0]
    for index, (label, record) in enumerate(runs.items()):
        history = record["history"]
        epochs = len(next(iter(history.values())))
        if by_epoch:
            minutes = list(range(1, epochs + 1))
        elif "elapsed_seconds" in history:
            minutes = [s / 60 for s in history["elapsed_seconds"]]
        else:
            minutes = [record["train_seconds"] / 60 * (i + 1) / epochs for i in range(epochs)]
        for axis, (key, name) in zip(axes, panels):
            if key in history:
                # One colour per run in every panel, whichever measures it has.
                values = [math.nan if v is None else v for v in history[key]]
                axis.plot(minutes, values, marker="o", color=f"C{index}", label=label)
                axis.set_xlabel("epoch" if by_epoch else "training minutes (2-core CPU)")
                axis.set_title(name)
    for axis, (key, _) in zip(axes, panels):
        if key in (targets or {}):
            axis.axhline(targets[key], color="gray", linestyle="--", linewidth=1)
    handles = [Line2D([], [], color=f"C{i}", marker="o", label=label)
               for i, label in enumerate(runs)]
    axes[0].legend(handles=handles, fontsize=8)
    for axis in axes:
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    keys, by_epoch = None, False
    while argv[:1] in (["--keys"], ["--by-epoch"]):
        if argv[0] == "--by-epoch":
            by_epoch, argv = True, argv[1:]
        elif len(argv) > 1:
            keys, argv = argv[1].split(","), argv[2:]
        else:
            break
    if len(argv) < 2 or not all("=" in a for a in argv[1:]):
        print("usage: python -m vlm.viz.training_curves [--keys K1,K2] [--by-epoch] OUT.png "
              "LABEL=HISTORY.json ...", file=sys.stderr)
        return 2
    runs = {}
    for argument in argv[1:]:
        label, path = argument.split("=", 1)
        with open(path) as f:
            runs[label] = json.load(f)
    print(plot_training_curves(runs, argv[0], keys=keys, by_epoch=by_epoch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
