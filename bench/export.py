"""ONNX export parity for the demo's architectures and three small real ones, built with pretrained: false:

    python -m bench.export [ARCH ...]

Each model is saved as the sweep saves it, exported by the export stage's code, and checked on 24 generated
images: the largest logit difference from PyTorch, the top-1 agreement where the margin allows it, and whether
`predict` gives the same classes with the ONNX file as with the safetensors. One JSON line per architecture.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ARCHS = ["test_resnet", "test_efficientnet", "test_vit", "resnet18", "convnext_atto", "vit_tiny_patch16_224"]
CLASSES = ["a", "b", "c", "d", "e"]


def main(archs: list[str]) -> None:
    import numpy as np
    import torch
    from fastai.vision.learner import create_timm_model
    from PIL import Image

    from imgclf.training.archs import model_setup
    from imgclf.training.artifacts import save_model
    from imgclf.training.export import export_model
    from imgclf.training.predict import predict_files

    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    images = []
    for i in range(24):
        images.append(tmp / f"img{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(images[-1])
    for arch in archs:
        torch.manual_seed(0)
        setup = model_setup(arch, None if arch.startswith("vit_") else 64)  # a ViT at its native size
        model, _ = create_timm_model(arch, len(CLASSES), pretrained=False, **setup["model_kwargs"])
        save_model(model.eval(), tmp / arch, arch=arch, classes=CLASSES, setup=setup)
        record = export_model(tmp / arch, images, tmp / f"{arch}-export")
        diff = record["parity"]["max_abs_logit_diff"]
        ours = list(predict_files(tmp / arch, images, top=2))
        theirs = list(predict_files(tmp / f"{arch}-export", images, top=2))
        clear = [(a, b) for (_, a, _), (_, b, _) in zip(ours, theirs) if a[0][1] - a[1][1] > 4 * diff]
        same = sum(a[0][0] == b[0][0] for a, b in clear)
        print(
            json.dumps(
                {
                    "arch": arch,
                    "size": setup["size"],
                    **record["parity"],
                    "predict_same_class": f"{same} of {len(clear)} images with a clear margin",
                    **record["onnxruntime_cpu"],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:] or ARCHS)
