"""The test suite's small trained detector, trained in a process of its own.

    python -m tests.trained_detector OUT_DIR

Trains on generated shapes (val mAP50 about 0.2): its scores are distinct, so NMS decisions
compare between implementations. (10 epochs at 160 px learned nothing: every image got the
same scores.) Writes OUT_DIR/result.json with the checkpoint's path once done. The suite starts
it when the session starts (tests/conftest.py) so that it trains while the tests before the
first one that needs it run; it takes the cores they leave idle (one thread while they keep
the cores busy, all of them once every test process waits for it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def train(out: Path) -> Path:
    from control_plane.training.train import train_bootstrap

    result = train_bootstrap(out, epochs=8, imgsz=256, n_train=300, n_val=60, seed=3,
                             tracking_uri=f"sqlite:///{out / 'mlflow.db'}",
                             train_args={"nbs": 16, "warmup_epochs": 1, "optimizer": "AdamW",
                                         "lr0": 0.003, "close_mosaic": 2},
                             threads="idle", val_every=1)
    # Whole or absent (written, then renamed): the suite's sessions wait for this file.
    (out / "result.json.tmp").write_text(json.dumps({"best_pt": str(result.best_pt),
                                                     "train_s": result.train_s}))
    (out / "result.json.tmp").replace(out / "result.json")
    return result.best_pt


if __name__ == "__main__":
    train(Path(sys.argv[1]).resolve())
