"""Stage check_params: validate params.yaml and every architecture name before any work starts.

Every other stage depends on its output, whose content never changes, so a params edit reruns this check
(cheap) without rerunning anything else by itself. The same goes for the second file, the size the decode stage
stores images at (`--decode-size`): its bytes change only when that size does, so adding an architecture
reruns no data stage.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from imgclf.common import atomic_write_text, run_main
from imgclf.params import load_params
from imgclf.training.archs import check_params, decoded_size

log = logging.getLogger(__name__)


__all__ = ["check_params", "main"]


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m stages.check_params --out data/params.ok [--decode-size data/decode_size.txt]."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--decode-size", type=Path, help="write the decode stage's image size here")
    args = ap.parse_args(argv)
    params = load_params()
    check_params(params)
    if args.decode_size:
        atomic_write_text(args.decode_size, f"{decoded_size(params)}\n")
    atomic_write_text(args.out, "params.yaml passed stages.check_params\n")
    log.info("params.yaml is valid: %d sweep architectures", len(params["sweep"]["archs"]))


if __name__ == "__main__":
    run_main(main, ("timm",))
