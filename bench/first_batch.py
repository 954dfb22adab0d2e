"""Child process of section 5: the stage's training path (`stages.training.train_model`) from a fresh
interpreter, stopped at its first training batch. Prints one JSON line of wall-clock timestamps.

    python -m bench.first_batch IMAGES_DIR OUT_DIR
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

STARTED = time.time()  # the first line a stage's own code runs: the interpreter is up


def main(argv: list[str] | None = None) -> None:
    """Import what train_model imports, then run it on IMAGES_DIR until the first training batch."""
    args = sys.argv[1:] if argv is None else argv
    images, out = Path(args[0]), Path(args[1])
    marks = {"started": STARTED}
    import dvclive.fastai  # noqa: F401 - imported here only to time the imports apart from the rest
    import fastai.vision.all  # noqa: F401
    import timm  # noqa: F401
    import torch  # noqa: F401

    marks["imported"] = time.time()
    from fastai.callback.core import Callback

    import imgclf.training.learner as training
    from bench.training import ARCH, _train_cfg

    class FirstBatch(Callback):
        def before_batch(self) -> None:
            if self.training:
                marks["first_batch"] = time.time()
                print(json.dumps(marks), flush=True)
                os._exit(0)  # the measurement ends here; nothing to clean up in a scratch folder

    build_dls, make_learner = training.build_dls, training.make_learner

    def timed_build_dls(*a, **k):
        dls = build_dls(*a, **k)
        marks["data_ready"] = time.time()
        return dls

    def timed_make_learner(*a, **k):
        learn = make_learner(*a, **k)
        marks["learner_ready"] = time.time()
        learn.add_cb(FirstBatch())
        return learn

    training.build_dls, training.make_learner = timed_build_dls, timed_make_learner
    files = sorted(images.rglob("*.jpg"))
    train, base = _train_cfg()
    training.train_model(ARCH, files, [f.parent.name for f in files], epochs=1, train=train, base=base,
                         out_dir=out)
    raise SystemExit("train_model finished without a training batch")


if __name__ == "__main__":
    main()
