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
