"""fastai callbacks and loggers of the training loop: DVCLive's per-epoch curves with no DVC repository involved,
the per-epoch table for logs without a terminal, and a time limit. Imports fastai and DVCLive: import this module
inside functions."""

from __future__ import annotations

import time
from pathlib import Path

from dvclive import Live
from dvclive.fastai import DVCLiveCallback
from fastai.callback.core import Callback, CancelFitException


class CurvesOnlyLive(Live):
    """DVCLive writing per-epoch curves to a folder, with no DVC repository involved. Plain `Live()` opens the
    repository of the working directory (in a git repository without DVC it runs `dvc init` there), and under
    `dvc exp run` its `end()` loads the whole pipeline's index to git-add the folder, which at the zoo's size
    costs more than a small model's training (docs/performance.md). Nothing here uses DVC (no experiment, no
    dvc.yaml, no artifact), so skipping that private step loses nothing; no public argument skips it."""

    def _init_dvc(self) -> None:
        self._dvc_file = self._init_dvc_file()


def live_callback(folder: Path) -> DVCLiveCallback:
    """DVCLive's fastai callback writing per-epoch curves in `folder`, without touching any dvc.yaml, git or DVC
    repository. It ends the curves after `fine_tune`'s second fit, so both fits log to one set."""
    return DVCLiveCallback(live=CurvesOnlyLive(str(folder), dvcyaml=None, save_dvc_exp=False, report=None))


class EpochTable:
    """fastai's `Learner.logger` for logs without a terminal: a header line of column names once, then one
    aligned row per epoch (fastai's default prints each epoch as a bare Python list)."""

    def __init__(self, learn, print_fn=print):
        self.learn, self.print, self.header_done = learn, print_fn, False

    def __call__(self, log) -> None:
        names = list(self.learn.recorder.metric_names)
        if len(log) < len(names):  # an epoch skipped when resuming from a checkpoint: nothing was measured
            return
        widths = [max(len(n), 10) for n in names]
        if not self.header_done:
            self.print("  ".join(n.ljust(w) for n, w in zip(names, widths)).rstrip())
            self.header_done = True
        cells = [f"{v:.6f}" if isinstance(v, float) else str(v) for v in log]
        self.print("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())


class TimeLimit(Callback):
    """Stop training at the first epoch boundary after `limit_s` seconds since the first fit began, unless that
    was the last of `total_epochs` (then training is complete: nothing to stop). It spans fits: `fine_tune` is
    two (the frozen epoch, then the rest), and a stop in the first must not let the second start. `stopped`
    says whether it stopped the training, `epochs` how many epochs had finished."""

    order = 80  # after the Recorder, DVCLive and Checkpoint (70) have logged and saved the epoch that crossed it

    def __init__(self, limit_s: float, total_epochs: int):
        self.limit_s, self.total, self.start, self.epochs, self.stopped = limit_s, total_epochs, None, 0, False

    def before_fit(self) -> None:
        if self.start is None:
            self.start = time.perf_counter()
        elif self.stopped:
            raise CancelFitException()

    def after_epoch(self) -> None:
        self.epochs += 1
        if self.epochs < self.total and time.perf_counter() - self.start > self.limit_s:
            self.stopped = True
            raise CancelFitException()
