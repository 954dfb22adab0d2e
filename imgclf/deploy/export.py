"""Export a trained model to ONNX and check the export against PyTorch, for deployment outside this project.

The export is torch's own exporter (`torch.onnx.export`, dynamo) with a dynamic batch dimension. The check runs
both on the validation images, preprocessed as `predict` does: the largest logit difference, and the top-1
agreement on every image whose top-2 margin exceeds that difference (an untrained model's near-tied logits may
swap places within rounding, which says nothing about the export). onnxruntime's CPU latency at batch 1 and its
throughput come with it. Nothing is written inside the model's own folder: that is a sweep entry's output.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import tempfile
from pathlib import Path
from typing import Any

from imgclf.common import PipelineError, write_folder
from imgclf.deploy.predict import DESCRIPTION, ONNX_FILE, logits, onnx_logits, onnx_session, preprocess

log = logging.getLogger(__name__)

OPSET = 18
THROUGHPUT_BATCH = 32  # onnxruntime's throughput batch: fixed, so architectures compare at the same batch
TIMED_RUNS = 20  # timed runs per measurement, after WARMUP_RUNS untimed ones
WARMUP_RUNS = 3
_OPERATOR = re.compile(r"((?:aten|prims|torchvision)[.:]{1,2}[A-Za-z0-9_.]+)")


def export_onnx(model, meta: dict[str, Any], path: Path) -> None:
    """Write `model` (eval mode, CPU, fp32) to `path` as ONNX with a dynamic batch; one clear PipelineError naming
    the operator when the exporter cannot translate it."""
    import torch

    size = meta["input_size"]
    example = torch.zeros(2, 3, size, size)  # not 1: torch.export specialises a dimension of size 1
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; each becomes one message
        text = f"{type(e).__name__}: {e}"
        op = _OPERATOR.search(text)
        what = f"operator {op.group(1)}" if op else text.splitlines()[0][:300]
        raise PipelineError(
            f"{meta['arch']} cannot be exported to ONNX ({what}): choose another entry in export.model."
        ) from None


def parity(torch_logits, onnx_out) -> dict[str, Any]:
    """How far the ONNX logits are from PyTorch's: the largest absolute difference, and the top-1 agreement on
    the images whose top-2 margin (under PyTorch) exceeds it."""
    import numpy as np

    ref = np.asarray(torch_logits, dtype=np.float32)
    diff = float(np.abs(ref - np.asarray(onnx_out, dtype=np.float32)).max()) if len(ref) else 0.0
    top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.zeros((len(ref), 2))
    clear = (top2[:, 1] - top2[:, 0]) > diff
    same = ref.argmax(1) == np.asarray(onnx_out).argmax(1)
    return {
        "max_abs_logit_diff": diff,
        "images": len(ref),
        "images_clear_margin": int(clear.sum()),
        "top1_agreement_clear_margin": float(same[clear].mean()) if clear.any() else None,
        "top1_agreement_all": float(same.mean()) if len(ref) else None,
    }


def onnx_speed(session, size: int) -> dict[str, Any]:
    """onnxruntime's CPU latency at batch 1 (median and p90, ms) and throughput (images/s) at THROUGHPUT_BATCH,
    on zeros of the model's input size, warm-up runs excluded."""
    import numpy as np

    from imgclf.training.inference import seconds_per_call

    def timed(batch: int) -> list[float]:
        x = np.zeros((batch, 3, size, size), dtype=np.float32)
        return seconds_per_call(lambda: session.run(["logits"], {"image": x}), TIMED_RUNS, WARMUP_RUNS)

    one = sorted(timed(1))
    many = timed(THROUGHPUT_BATCH)
    return {
        "latency_ms_median": 1000 * statistics.median(one),
        "latency_ms_p90": 1000 * one[int(0.9 * (len(one) - 1))],
        "throughput_images_per_s": THROUGHPUT_BATCH / statistics.median(many),
        "throughput_batch": THROUGHPUT_BATCH,
    }


def export_model(model_dir: Path, images: list[Path], out_dir: Path) -> dict[str, Any]:
    """The stage: export the model in `model_dir` to `out_dir/model.onnx`, check it on `images` (the validation
    images), and write `out_dir/export.json` (the model's description, the parity and the speed). `out_dir` is
    written whole or not at all."""
    import torch

    from imgclf.training.artifacts import load_model

    if not images:
        raise PipelineError("no validation images to check the export on: run `dvc repro` for the data first.")
    model, meta = load_model(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / ONNX_FILE
        with torch.no_grad():
            export_onnx(model, meta, onnx_path)
        session = onnx_session(onnx_path)
        batch = torch.stack([preprocess(p, meta) for p in images])
        checked = parity(logits(model, meta, images), onnx_logits(session, batch))
        record = {
            **{k: v for k, v in meta.items() if k not in ("weights", "versions", "format")},
            "format": "onnx",
            "onnx": ONNX_FILE,
            "source": str(model_dir),
            "opset": OPSET,
            "parity": checked,
            "onnxruntime_cpu": onnx_speed(session, meta["input_size"]),
            "versions": {**meta.get("versions", {}), **_onnx_versions()},
        }
        description = json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        # the exporter may put the weights beside the graph (model.onnx.data): the folder is the export
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir()}
        write_folder({**files, DESCRIPTION: description.encode("utf-8")}, out_dir)
    log.info(
        "%s -> %s: largest logit difference %.2e, top-1 agreement %s on the %d of %d images with a clear margin",
        model_dir,
        out_dir / ONNX_FILE,
        checked["max_abs_logit_diff"],
        checked["top1_agreement_clear_margin"],
        checked["images_clear_margin"],
        checked["images"],
    )
    return record


def _onnx_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
