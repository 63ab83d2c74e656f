import json

import numpy as np
import PIL.Image

from vlm.viz.training_curves import main


def test_plots_each_run_against_minutes(tmp_path):
    paths = []
    for name, seconds in (("a", 600.0), ("b", 1200.0)):
        record = {"history": {"val_loss": [2.0, 1.0, 0.5],
                              "val_token_accuracy": [0.3, 0.6, 0.9]},
                  "train_seconds": seconds}
        path = tmp_path / f"{name}.history.json"
        path.write_text(json.dumps(record))
        paths.append(f"{name}={path}")
    out = tmp_path / "curves.png"
    assert main([str(out), *paths]) == 0
    image = np.asarray(PIL.Image.open(out))
    assert image.shape[0] > 300 and image.shape[1] > 800
    assert main([str(out)]) == 2  # no runs: the usage line


def test_a_panel_per_measure_and_epochs_at_their_logged_time(tmp_path):
    record = {"history": {"val_loss": [2.0, 1.0], "val_answer_accuracy": [0.5, 0.9],
                          "elapsed_seconds": [100.0, 400.0]}, "train_seconds": 450.0}
    path = tmp_path / "qa.history.json"
    path.write_text(json.dumps(record))
    two, three = tmp_path / "two.png", tmp_path / "three.png"
    assert main([str(two), f"qa={path}"]) == 0
    old = tmp_path / "old.history.json"
    old.write_text(json.dumps({"history": {"val_token_accuracy": [0.3]}, "train_seconds": 60.0}))
    assert main([str(three), f"qa={path}", f"old={old}"]) == 0
    width = np.asarray(PIL.Image.open(two)).shape[1]
    assert np.asarray(PIL.Image.open(three)).shape[1] > width * 1.4  # 3 panels, not 2


def test_chosen_measures_only_in_their_order(tmp_path):
    record = {"history": {"val_loss": [2.0, 1.0], "val_relation_accuracy": [0.5, 0.9],
                          "val_object_accuracy": [0.8, 0.99]}, "train_seconds": 60.0}
    path = tmp_path / "run.history.json"
    path.write_text(json.dumps(record))
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    assert main(["--keys", "val_relation_accuracy", str(one), f"run={path}"]) == 0
    assert main(["--keys", "val_relation_accuracy,val_object_accuracy,val_hallucination_rate",
                 str(two), f"run={path}"]) == 0  # no run has the third: two panels
    width = np.asarray(PIL.Image.open(one)).shape[1]
    assert 1.6 * width < np.asarray(PIL.Image.open(two)).shape[1] < 2.4 * width


def test_by_epoch_plots_runs_without_a_training_time(tmp_path, monkeypatch):
    """A run stopped before `train_seconds` was written still plots, one point per epoch."""
    from vlm.viz import training_curves

    drawn = []
    real_plot = training_curves.plt.Axes.plot

    def plot(self, x, y, **kwargs):
        drawn.append(list(x))
        return real_plot(self, x, y, **kwargs)

    monkeypatch.setattr(training_curves.plt.Axes, "plot", plot)
    stopped = tmp_path / "stopped.history.json"
    stopped.write_text(json.dumps({"history": {"val_relation_accuracy": [0.1, 0.3, 0.5]}}))
    timed = tmp_path / "timed.history.json"
    timed.write_text(json.dumps({"history": {"val_relation_accuracy": [0.2, 0.6],
                                             "elapsed_seconds": [60.0, 240.0]},
                                 "train_seconds": 250.0}))
    out = tmp_path / "by_epoch.png"
    assert main(["--by-epoch", "--keys", "val_relation_accuracy", str(out),
                 f"stopped={stopped}", f"timed={timed}"]) == 0
    assert drawn == [[1, 2, 3], [1, 2]]
    assert main(["--keys", "val_relation_accuracy", str(out), f"timed={timed}"]) == 0
    assert drawn[-1] == [1.0, 4.0]  # minutes where logged
