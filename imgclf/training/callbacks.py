"""fastai callbacks and loggers of the training loop: DVCLive curves that never touch a repository, and the
per-epoch table for logs without a terminal. Imports fastai and DVCLive: import this module inside functions."""

from __future__ import annotations

import inspect
import time
from pathlib import Path

from dvclive import Live
from dvclive.fastai import DVCLiveCallback
from fastai.callback.core import Callback, CancelFitException


class CurvesOnlyLive(Live):
    """DVCLive writing per-epoch curves to a folder, with no DVC repository involved: plain `Live()` looks for
    one and, in a git repository without DVC, runs `dvc init` there. Nothing here uses DVC (no experiment, no
    dvc.yaml, no artifact), so skipping the lookup loses nothing."""

    def _init_dvc(self) -> None:
        self._dvc_file = self._init_dvc_file()


class CurvesCallback(DVCLiveCallback):
    """DVCLive's fastai callback, minus the `inspect.stack()` it calls at the end of every fit to tell
    fine_tune's first fit (the frozen epoch) from the last: that reads every frame's source and, for each frame,
    looks its module up among the ~4,800 loaded ones. In a sweep stage here it took 0.06 s per fit, twice per
    entry, inside the timed training (on a GPU, a few percent of a small model's fit). The frames' function
    names answer the same question. (DVCLive also logs a SaveModelCallback's file here; this pipeline has none.)"""

    def after_fit(self) -> None:
        if hasattr(self, "lr_finder") or hasattr(self, "gather_preds"):
            return
        if not self.freeze_stage_ended and {"fine_tune", "fit_one_cycle"} <= _calling_functions():
            self.freeze_stage_ended = True  # fine_tune's frozen epoch ended; its second fit logs on to the same curves
        else:
            self.live.end()


def _calling_functions() -> set[str]:
    """The function names on the current call stack."""
    names, frame = set(), inspect.currentframe()
    while frame is not None:
        names.add(frame.f_code.co_name)
        frame = frame.f_back
    return names


def live_callback(folder: Path) -> CurvesCallback:
    """DVCLive per-epoch curves in `folder`, without touching any dvc.yaml, git or DVC repository."""
    return CurvesCallback(live=CurvesOnlyLive(str(folder), dvcyaml=None, save_dvc_exp=False, report=None))


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
