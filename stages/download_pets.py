"""Stage download_pets: fetch (or reuse), verify and safely read the Oxford-IIIT Pets tarball; resize once.

    python -m stages.download_pets --tarball downloads/oxford-iiit-pet.tgz --out data/pets/images \
        --record records/download_pets.json

Its counts are a record (a plain output), not a DVC metric: nothing in them is compared between runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.common import run_main, write_json
from imgclf.params import load_params
from imgclf.sources.pets import download_pets


def main(argv: list[str] | None = None) -> None:
    """Download or reuse the tarball, extract the resized images and write the stage's record."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tarball", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--record", type=Path, required=True)
    args = ap.parse_args(argv)
    cfg = load_params()["download_pets"]
    write_json(args.record, download_pets(cfg, args.tarball, args.out))


if __name__ == "__main__":
    run_main(main)
