"""Export a trained model to ONNX and check the export against PyTorch, for deployment outside this project.

The export is torch's own exporter (`torch.onnx.export`, dynamo) with a dynamic batch dimension. The check runs
both on the validation images, preprocessed as `predict` does, and is a gate: the largest logit difference must
stay within LOGIT_TOLERANCE of the largest logit's size, and the top-1 agreement over all images must reach
MIN_TOP1_AGREEMENT; past either, the stage fails and writes nothing. onnxruntime's CPU latency at batch 1 and its
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
LOGIT_TOLERANCE = 1e-3  # the largest |PyTorch - ONNX| logit difference allowed, per unit of max(1, largest |logit|)
MIN_TOP1_AGREEMENT = 0.99  # the share of all images on which both give the same class
QUIET_LOGGERS = ("onnx_ir", "onnxscript")  # the exporter's optimiser passes; their warnings still show
_OPERATOR = re.compile(r"((?:aten|prims|torchvision)[.:]{1,2}[A-Za-z0-9_.]+)")


def export_onnx(model, meta: dict[str, Any], path: Path) -> None:
    """Write `model` (eval mode, CPU, fp32) to `path` as ONNX with a dynamic batch; one clear PipelineError naming
    the operator when the exporter cannot translate it."""
    import torch

    for name in QUIET_LOGGERS:  # their INFO lines (nodes removed, rewrite rules applied) say nothing a user can act on
        logging.getLogger(name).setLevel(logging.WARNING)
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
    """How far the ONNX logits are from PyTorch's, over all images: the largest absolute difference against its
    tolerance (LOGIT_TOLERANCE x max(1, largest |logit|)), and the top-1 agreement against MIN_TOP1_AGREEMENT.
    `passed` is whether both hold; logits of another shape (other images, another head) or none never pass."""
    import numpy as np

    ref = np.asarray(torch_logits, dtype=np.float32)
    out = np.asarray(onnx_out, dtype=np.float32) if onnx_out is not None else np.zeros((0,))
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    checked: dict[str, Any] = {
        "images": len(ref),
        "max_abs_logit": scale,
        "logit_tolerance": LOGIT_TOLERANCE * max(1.0, scale),
        "min_top1_agreement": MIN_TOP1_AGREEMENT,
        "max_abs_logit_diff": None,
        "top1_agreement": None,
    }
    if ref.ndim != 2 or out.shape != ref.shape or not len(ref):
        return {**checked, "passed": False, "problem": f"ONNX gave logits of shape {out.shape}, PyTorch {ref.shape}"}
    diff = float(np.abs(ref - out).max())
    agreement = float((ref.argmax(1) == out.argmax(1)).mean())
    checked.update(max_abs_logit_diff=diff, top1_agreement=agreement)
    problems = []
    if not diff <= checked["logit_tolerance"]:  # NaN fails too
        problems.append(f"largest logit difference {diff:.3g} > {checked['logit_tolerance']:.3g}")
    if agreement < MIN_TOP1_AGREEMENT:
        problems.append(f"top-1 agreement {agreement:.1%} < {MIN_TOP1_AGREEMENT:.0%}")
    return {**checked, "passed": not problems, "problem": "; ".join(problems) or None}


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
        if not checked["passed"]:
            raise PipelineError(
                f"the ONNX export of {model_dir} does not give PyTorch's outputs on the {len(images)} validation "
                f"images ({checked['problem']}): nothing is written; choose another entry in export.model."
            )
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
        "%s -> %s: largest logit difference %.2e (tolerance %.1e), top-1 agreement %.1f%% on all %d images",
        model_dir,
        out_dir / ONNX_FILE,
        checked["max_abs_logit_diff"],
        checked["logit_tolerance"],
        100 * checked["top1_agreement"],
        checked["images"],
    )
    return record


def _onnx_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
