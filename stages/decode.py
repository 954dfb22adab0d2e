"""Stage decode: the sweep dataset decoded once, for every sweep entry to share.

    python -m stages.decode --data data/five_class/images --out data/five_class/decoded.safetensors

Each image is decoded (Pillow) with its shorter side resized to train.img_size, aspect ratio kept, and stored
as uint8 in one safetensors file with its name, label and file size (DVC caches it like any output). Each sweep
entry reads it instead of decoding the folder again, and DVC checks one file per entry instead of the whole
folder. With train.img_size null (each architecture at its own input size) the images are stored at the largest
input size among sweep.archs, and an entry whose model takes a smaller one resizes them down once;
`stages.predict` does the same for its model.

The pipeline passes that size as a file (`--size-file`, written by check_params) rather than as params: the
file's bytes change only when the size does, so adding an architecture decodes nothing again.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from imgclf.common import PipelineError, run_main
from imgclf.datasets import labelled_items
from imgclf.params import load_params
from imgclf.training.archs import decoded_size
from imgclf.training.data import write_decoded

log = logging.getLogger(__name__)


def read_size(path: Path) -> int:
    """The size in check_params' file (one whole number)."""
    text = path.read_text(encoding="utf-8").strip() if path.is_file() else ""
    if not text.isdigit():
        raise PipelineError(f"{path} does not hold an image size: rerun `dvc repro check_params decode`.")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    """Decode the dataset folder into one file."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size-file", type=Path, help="the size to store (check_params' file); default: from params")
    args = ap.parse_args(argv)
    params = load_params()
    files, labels = labelled_items(args.data, "folder")
    size = read_size(args.size_file) if args.size_file else decoded_size(params)
    n = write_decoded(args.out, args.data, files, labels, size, threads=params["runtime"]["num_workers"])
    log.info("%d images decoded at %d px: %s (%.0f MB)", len(files), size, args.out, n / 1e6)


if __name__ == "__main__":
    run_main(main, ("torch", "torchvision"))
