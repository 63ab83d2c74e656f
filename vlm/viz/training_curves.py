"""Training curves of several runs from their history files, against wall time.

    python -m vlm.viz.training_curves docs/shapes_change_curves.png \
        interleaved=saved_models/shapes_change.history.json \
        sources=results/shapes_change_sources.history.json
"""

import json
import sys

from vlm.viz.figures import plt

PANELS = (("val_loss", "validation loss"), ("val_token_accuracy", "validation token accuracy"),
          ("val_answer_accuracy", "validation answer accuracy"))


def plot_training_curves(runs, path, title=None):
    """One line per run: each validation measure after each epoch, against minutes.

    Args:
        runs: `{label: history}`, each a `train.py` history file's contents
            (`history` per epoch and `train_seconds`); an epoch is placed at
            its `elapsed_seconds` where logged, else evenly over
            `train_seconds`. A panel is drawn for each measure some run has.
        path: the PNG to write.
        title: optional figure title.
    """
    panels = [(k, n) for k, n in PANELS if any(k in r["history"] for r in runs.values())]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    axes = axes[0]
    for label, record in runs.items():
        history = record["history"]
        epochs = len(next(iter(history.values())))
        minutes = [record["train_seconds"] / 60 * (i + 1) / epochs for i in range(epochs)]
        if "elapsed_seconds" in history:
            minutes = [s / 60 for s in history["elapsed_seconds"]]
        for axis, (key, name) in zip(axes, panels):
            if key in history:
                axis.plot(minutes, history[key], marker="o", label=label)
                axis.set_xlabel("training minutes (2-core CPU)")
                axis.set_title(name)
    axes[0].legend()
    for axis in axes:
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or not all("=" in a for a in argv[1:]):
        print("usage: python -m vlm.viz.training_curves OUT.png LABEL=HISTORY.json ...",
              file=sys.stderr)
        return 2
    runs = {}
    for argument in argv[1:]:
        label, path = argument.split("=", 1)
        with open(path) as f:
            runs[label] = json.load(f)
    print(plot_training_curves(runs, argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
