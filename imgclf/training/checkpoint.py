"""Per-epoch training checkpoints, so that an interrupted training resumes from its last finished epoch: a
fastai callback (`Checkpoint`) around fastai's own `fine_tune` / `fit_one_cycle`.

One file, `checkpoint.safetensors`: the model's state_dict, fastai's optimizer state and torch's CPU and CUDA
RNG states as tensors, with a JSON header (in the safetensors metadata) holding the key, the fit (0-based: a
`fine_tune` is a frozen fit then an unfrozen one) and epochs done in it, the optimizer's non-tensor state, the
gradient scaler's state (fp16) and the Python/numpy/DataLoader RNG states. Never a pickle. It is written to a
temporary name and renamed, so a kill mid-write leaves the previous checkpoint (or none), never half of one.
The key is a hash of everything that shapes training, the code included: a checkpoint made under other params,
data or code is never resumed. The code is the package's and the stages' source files as this process found them
(`running_code`): a warm sweep worker notes them at its start, before it imports them (imgclf/pool.py); a stage
process, the first time it asks. Resuming ends bitwise identical to an uninterrupted run on CPU; on CUDA it
restores the same states, but CUDA kernels are not bitwise deterministic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastai.callback.core import Callback, CancelEpochException, CancelFitException

from imgclf.common import CODE_FOLDERS, library_versions

log = logging.getLogger(__name__)

FILE = "checkpoint.safetensors"
FORMAT = "train-checkpoint-v2"
_RUNNING_CODE: dict[str, str] = {}  # this process's code, file -> md5 (`running_code`)


@dataclass
class Resume:
    """Where a checkpoint left off, and what to restore."""

    fit: int  # which fit of the training (0-based)
    done: int  # epochs completed in that fit
    tensors: dict[str, Any]
    meta: dict[str, Any]


def checkpoint_key(
    arch: str,
    epochs: int,
    train: dict[str, Any],
    seed: int,
    files: list[Path],
    labels: list[str],
    file_bytes: list[int] | None = None,
) -> str:
    """sha256 of what determines the training: a checkpoint with another key belongs to another run.
    `file_bytes`: the files' sizes, when `files` are names from a decoded dataset rather than files on disk."""
    sizes = file_bytes if file_bytes is not None else [Path(f).stat().st_size for f in files]
    items = sorted((Path(f).name, y, n) for f, y, n in zip(files, labels, sizes))
    blob = json.dumps(
        {
            "arch": arch,
            "epochs": epochs,
            "train": train,
            "seed": seed,
            "items": items,
            "code": running_code(),
            "versions": library_versions(),  # a checkpoint does not resume across a pip upgrade
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def code_hashes(root: Path) -> dict[str, str]:
    """The md5 of every source file under `root`'s CODE_FOLDERS (relative POSIX path -> md5), computed by DVC's own
    file hashing (dvc_data's `file_md5`, the `md5` that dvc.lock records for a dep): the sweep runner compares
    these with the deps DVC records, so both must hash the same way."""
    from dvc_data.hashfile.hash import file_md5

    files = sorted(p for folder in CODE_FOLDERS for p in (root / folder).rglob("*.py") if p.is_file())
    return {p.relative_to(root).as_posix(): file_md5(str(p), name="md5") for p in files}


def note_running_code(hashes: dict[str, str]) -> None:
    """Say which code this process runs (a warm worker: `code_hashes` taken before it imported the code)."""
    _RUNNING_CODE.clear()
    _RUNNING_CODE.update(hashes)


def running_code() -> dict[str, str]:
    """The code this process runs, as noted; unnoted, the working directory's code now, noted from then on."""
    if not _RUNNING_CODE:
        note_running_code(code_hashes(Path.cwd()))
    return dict(_RUNNING_CODE)


def save_checkpoint(folder: Path, key: str, learn, fit: int, done: int) -> None:
    """Write the model, optimizer, gradient scaler and RNG states after `done` epochs of fit `fit`, atomically."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in learn.model.state_dict().items()}
    opt_scalars: dict[str, dict[str, Any]] = {}
    for i, (p, *_rest) in enumerate(learn.opt.all_params()):
        for name, value in learn.opt.state[p].items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{i}.{name}"] = value.detach().cpu().contiguous()
            elif isinstance(value, (bool, int, float)):
                opt_scalars.setdefault(str(i), {})[name] = value
            else:  # anything else would need a pickle: refuse rather than lose it silently
                raise TypeError(f"optimizer state {name!r} of type {type(value).__name__} cannot be checkpointed")
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    scaler = getattr(learn, "scaler", None)  # fastai's MixedPrecision keeps its GradScaler here (fp16 only)
    np_state = np.random.get_state()
    meta = {
        "format": FORMAT,
        "key": key,
        "fit": fit,
        "done": done,
        "opt": opt_scalars,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "n_params": len(learn.opt.all_params()),
        "rng_python": _jsonable(random.getstate()),
        "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        # each DataLoader shuffles with its own Random; skipped epochs do not advance it
        "rng_dls": [_jsonable(dl.rng.getstate()) for dl in learn.dls.loaders],
    }
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{FILE}.part"
    save_file(tensors, str(tmp), metadata={"checkpoint": json.dumps(meta)})
    os.replace(tmp, folder / FILE)


def load_checkpoint(folder: Path, key: str) -> Resume | None:
    """The checkpoint in `folder` if its key is `key`; otherwise delete the folder (stale or unreadable)
    and return None."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = folder / FILE
    if not path.is_file():
        discard(folder)  # leftovers such as a killed write's .part file
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["checkpoint"])
        if meta.get("format") != FORMAT or meta.get("key") != key:
            log.info("discarding checkpoint in %s: made with other params or data", folder)
            discard(folder)
            return None
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint only costs the epochs it held
        log.warning("discarding unreadable checkpoint in %s (%s: %s)", folder, type(e).__name__, e)
        discard(folder)
        return None
    return Resume(meta["fit"], meta["done"], tensors, meta)


def restore_weights(learn, ckpt: Resume) -> None:
    """Load the checkpoint's model weights (buffers included)."""
    state = {k[len("model.") :]: v for k, v in ckpt.tensors.items() if k.startswith("model.")}
    learn.model.load_state_dict(state)


def restore_optimizer(learn, ckpt: Resume) -> None:
    """Replace fastai's optimizer state (param -> dict), matching parameters by their `all_params()` index."""
    params = [p for p, *_ in learn.opt.all_params()]
    if len(params) != ckpt.meta["n_params"]:
        raise ValueError(f"checkpoint has {ckpt.meta['n_params']} optimizer parameters, the model {len(params)}")
    states: list[dict[str, Any]] = [dict(ckpt.meta["opt"].get(str(i), {})) for i in range(len(params))]
    for name, value in ckpt.tensors.items():
        if name.startswith("opt."):
            _, i, key = name.split(".", 2)
            states[int(i)][key] = value.to(params[int(i)].device)
    for p, state in zip(params, states):
        learn.opt.state[p] = state


def restore_scaler(learn, ckpt: Resume) -> None:
    """Load the gradient scaler's state (scale, growth tracker) into fastai's GradScaler, when both exist."""
    scaler = getattr(learn, "scaler", None)
    if scaler is not None and ckpt.meta.get("scaler"):
        scaler.load_state_dict(ckpt.meta["scaler"])


def restore_rng(learn, ckpt: Resume) -> None:
    """Put torch (CPU and CUDA), Python, numpy and the DataLoaders' random generators back where the
    checkpoint saw them."""
    import numpy as np
    import torch

    torch.set_rng_state(ckpt.tensors["rng.torch"])
    cuda = [ckpt.tensors[k] for k in sorted(ckpt.tensors, key=_cuda_index) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    random.setstate(_tupled(ckpt.meta["rng_python"]))
    kind, keys, *rest = ckpt.meta["rng_numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    for dl, state in zip(learn.dls.loaders, ckpt.meta["rng_dls"]):
        dl.rng.setstate(_tupled(state))


class Checkpoint(Callback):
    """Saves a checkpoint after every trained epoch; with one from an interrupted run, restores the weights
    before the first fit, skips the fits and epochs it had finished, restores the optimizer and gradient
    scaler when its fit starts, and the random states just before its first epoch left to train.

    Order 70, that of fastai's `SkipToEpoch` (which `fit(start_epoch=...)` uses): a skipped epoch is cancelled
    after the Recorder has started it, which is what DVCLive expects, and an epoch is saved after the
    Recorder and DVCLive have logged it."""

    order = 70

    def __init__(self, folder: Path, key: str):
        self.folder, self.key = folder, key
        self.resume = load_checkpoint(folder, key)
        self.fit_no, self.trained, self.skipping = -1, 0, False
        if self.resume:
            log.info(
                "resuming from the checkpoint after %d epoch(s) of fit %d in %s",
                self.resume.done,
                self.resume.fit,
                folder,
            )

    def before_fit(self) -> None:
        self.fit_no += 1
        r = self.resume
        if r is None:
            return
        if self.fit_no == 0:
            restore_weights(self.learn, r)
        if self.fit_no < r.fit:
            raise CancelFitException  # finished before the checkpoint (the frozen fit of a fine_tune)
        if self.fit_no == r.fit:
            restore_optimizer(self.learn, r)  # after fastai has set this fit's optimizer up (and frozen it)
            restore_scaler(self.learn, r)

    def before_epoch(self) -> None:
        r = self.resume
        self.skipping = r is not None and self.fit_no == r.fit and self.epoch < r.done
        if self.skipping:
            raise CancelEpochException
        if r is not None and self.fit_no == r.fit:
            restore_rng(self.learn, r)  # continue the random streams where the checkpoint left them
            self.resume = None

    def after_epoch(self) -> None:
        if not self.skipping:
            self.trained += 1
            save_checkpoint(self.folder, self.key, self.learn, self.fit_no, self.epoch + 1)


def discard(folder: Path) -> None:
    """Delete a checkpoint folder (no error if there is none)."""
    shutil.rmtree(folder, ignore_errors=True)


def _cuda_index(name: str) -> int:
    return int(name.rsplit(".", 1)[1]) if name.startswith("rng.cuda.") else -1


def _jsonable(state: Any) -> Any:
    return [_jsonable(x) for x in state] if isinstance(state, (tuple, list)) else state


def _tupled(state: Any) -> Any:
    """random.setstate wants the nested tuples random.getstate gave (JSON made them lists)."""
    return tuple(_tupled(x) for x in state) if isinstance(state, list) else state
