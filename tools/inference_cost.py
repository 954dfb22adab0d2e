"""The inference cost of saved models, measured now, one at a time, on this machine's device: for the sweep
entries whose record says "not measured (shared)" because workers shared the device while they trained.

    python -m tools.inference_cost models/sweep/resnet18-42 models/sweep/convnext_tiny-42

Prints one JSON line per model with the fields a sweep record has (gmacs, infer_images_per_s, infer_latency_ms,
...), at the precision params.yaml's train.precision gives on this device. It writes nothing: an entry's record is
a DVC output, and a number measured later is not what that entry's run produced.
"""

from __future__ import annotations

import argparse
import json

from imgclf.common import run_main
from imgclf.params import load_params
from imgclf.training.artifacts import load_model
from imgclf.training.device import device_name, resolve_device
from imgclf.training.inference import inference_cost


def main(argv: list[str] | None = None) -> None:
    """Measure each model folder given and print its cost."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model folders written by the sweep (models/sweep/<arch>-<seed>)")
    args = ap.parse_args(argv)
    import torch

    device, precision = resolve_device(load_params()["train"]["precision"])
    for folder in args.models:
        model, meta = load_model(folder)
        model = model.to(device, memory_format=torch.channels_last) if device == "cuda" else model  # as trained
        cost = inference_cost(model, meta["input_size"], device, precision, shared=False)
        print(json.dumps({"model": folder, "device": device_name(device), "precision": precision, **cost}), flush=True)


if __name__ == "__main__":
    run_main(main, ("torch", "timm", "fastai.vision.learner"))
