"""A trained model on disk: `model.safetensors` plus `model.json` (architecture, classes, input size and
normalization), written and read without pickle: loading a pickle (fastai `export()`, `torch.save`) runs code."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from imgclf.common import PipelineError, library_versions, write_json

SAFETENSORS_HELP = (
    "a model folder written by this pipeline (model.safetensors + model.json, e.g. models/sweep/<arch>-<seed>)"
)


def save_model(
    model, out_dir: Path, *, arch: str, classes: list[str], setup: dict[str, Any], weights: bool = True
) -> None:
    """Weights as `model.safetensors` and what it takes to rebuild and feed the model as `model.json`;
    `weights=False` (sweep.save_models: false) writes model.json alone, with `"weights": null`."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    if weights:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        tmp = out_dir / ".model.safetensors.part"
        save_file(state, str(tmp))
        os.replace(tmp, out_dir / "model.safetensors")
    write_json(
        out_dir / "model.json",
        {
            "weights": "model.safetensors" if weights else None,
            "format": "fastai-timm-v1",
            "arch": arch,
            "classes": classes,
            "input_size": setup["size"],
            "mean": setup["mean"],
            "std": setup["std"],
            "model_kwargs": setup["model_kwargs"],
            **({"decoded_size": setup["decoded_size"]} if "decoded_size" in setup else {}),
            "versions": library_versions(),
        },
    )


def _check_safetensors(path: Path) -> None:
    """Refuse anything that is not a safetensors file, by its bytes, without unpickling it."""
    head = path.read_bytes()[:9] if path.is_file() else b""
    # safetensors: 8-byte little-endian header length, then a JSON header starting with '{'
    if len(head) < 9 or head[8:9] != b"{":
        raise PipelineError(
            f"{path} is not a safetensors file (pickles are refused: loading one runs code). Pass {SAFETENSORS_HELP}."
        )


def load_model(model_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """(model in eval mode, its description) from `model_dir`; never unpickles anything."""
    import torch  # noqa: F401 - safetensors.torch needs it loaded
    from fastai.vision.learner import create_timm_model
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise PipelineError(f"{model_dir} is not a folder: pass {SAFETENSORS_HELP}.")
    weights, meta_path = model_dir / "model.safetensors", model_dir / "model.json"
    if not meta_path.is_file():
        raise PipelineError(f"{model_dir} has no model.json: pass {SAFETENSORS_HELP}.")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if "weights" in meta and meta["weights"] is None:
        raise PipelineError(
            f"{model_dir} holds no weights: it was trained with sweep.save_models: false. Set it "
            f"to true and rerun its entry (`dvc repro -f sweep@{Path(model_dir).name}`)."
        )
    _check_safetensors(weights)
    model, _ = create_timm_model(meta["arch"], len(meta["classes"]), pretrained=False, **meta["model_kwargs"])
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval(), meta
