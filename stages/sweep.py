"""Stage sweep@<arch>-<seed>: fine-tune one architecture on the sweep dataset with one training seed (one DVC
matrix entry per arch and seed; the train/valid split always uses base.seed).

    python -m stages.sweep --arch resnet18 --seed 42 --data data/five_class/decoded.safetensors \
        --out models/sweep/resnet18-42 --record records/sweep/resnet18-42.json \
        --metrics metrics/sweep/resnet18-42.json --curves plots/live/sweep/resnet18-42 \
        --confusion plots/confusion/sweep/resnet18-42.csv

The record (`--record`, a plain output) holds everything the entry measured; the metrics file (`--metrics`, a
DVC metric) only its accuracy (imgclf/metrics.py). An architecture that cannot be built or trained on this data
does not stop the sweep: its record holds `status: failed`, the reason and its `cause`, and the plot lists it as
failed. The cause is `model` (the architecture itself failed), or one that depends on the machine
(`machine_dependent: true`, with the `device`): `out_of_memory` even at batch 8 (above that, any form of
out-of-memory error halves the batch, keeps the learning rate and retries; `batch_size` records the batch it
trained at), or `time_limit` (past sweep.time_limit_s, stopped at an epoch boundary). Problems a rerun may fix (no
network for the weights, bad params, missing data) fail the stage instead, so DVC does not record them; running
out of GPU memory while other processes share the GPU exits with code 75, for the parallel runner to rerun the
entry alone. A failure that depends on the machine is not a result: under a plain `dvc repro` the stage then
fails in one line, so DVC neither records nor run-caches it; `make sweep` passes RUNNER_FLAG, records it in
dvc.lock for the plot and keeps it out of the run-cache. An architecture over sweep.max_params_m is recorded
`skipped` before anything loads. Downloaded hub weights are deleted after it unless runtime.keep_weights.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from imgclf.common import PipelineError, library_versions, run_main, write_json
from imgclf.metrics import accuracy_metrics
from imgclf.params import load_params
from imgclf.training.device import RUNNER_FLAG, SHARED_EXIT, SHARED_MESSAGE, OutOfMemoryWhileShared
from imgclf.training.learner import TRAINING_LIBRARIES
from imgclf.training.sweep import run_arch

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    """Train one sweep architecture and write its record and metrics."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", required=True)
    ap.add_argument("--seed", type=int, help="the training seed (default: base.seed)")
    ap.add_argument(RUNNER_FLAG, action="store_true", help="write a machine-dependent failure (make sweep's workers)")
    for flag in ("--data", "--out", "--record", "--metrics", "--curves", "--confusion"):
        ap.add_argument(flag, type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        record = run_arch(args.arch, args.data, load_params(), args.out, args.curves, args.confusion, seed=args.seed)
    except OutOfMemoryWhileShared as e:
        print(f"error: {SHARED_MESSAGE} ({e})", file=sys.stderr)
        sys.exit(SHARED_EXIT)
    if record.get("machine_dependent") and not args.record_machine_failure:
        raise PipelineError(
            f"{args.arch}-{record['seed']} failed for the machine's sake ({record['cause']}: {record['reason']}): "
            "not a result, so DVC records and caches nothing. Train it on a machine with more memory or time, or "
            "run `make sweep`, which records such failures for the plot and keeps them out of the run-cache."
        )
    write_json(args.record, {**record, "versions": library_versions()})  # the libraries that computed it
    write_json(args.metrics, accuracy_metrics(record))
    if record["status"] == "ok":
        log.info("%s: accuracy %.4f in %.1f s", args.arch, record["accuracy"], record["train_time_s"])


if __name__ == "__main__":
    run_main(main, TRAINING_LIBRARIES)
