"""List timm architectures with pretrained weights, filtered like the exercise, and optionally write the
list into `sweep.archs` in params.yaml (comments and layout kept).

    python -m stages.list_archs                          # every pretrained arch except tf_* and hr*
    python -m stages.list_archs --include 'resnet*' 'convnext*' --max-params 30 --limit 10 --write
"""
from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

from stages.common import PipelineError, atomic_write_text, load_params, run_main

log = logging.getLogger(__name__)

DEFAULT_EXCLUDE = ("tf_*", "hr*")  # the exercise's filter (TensorFlow ports and HRNets)


def list_archs(include: list[str] | None = None, exclude: tuple[str, ...] | list[str] = DEFAULT_EXCLUDE,
               max_params_m: float | None = None, limit: int | None = None) -> list[str]:
    """Architecture names (one per architecture, no weight tags) with pretrained weights in timm,
    matching any `include` pattern and no `exclude` pattern, with at most `max_params_m` million
    parameters (counted on a meta-device build: no memory, no download), sorted by name."""
    import timm

    names = timm.list_models(include or "*", pretrained=True, include_tags=False, exclude_filters=list(exclude))
    if max_params_m is not None:
        names = [n for n in names if _params_m(n) <= max_params_m]
    return names[:limit] if limit else names


def _params_m(name: str) -> float:
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except Exception as e:  # noqa: BLE001 - a model that cannot be built is left out, and said so
        log.warning("skipping %s: cannot count its parameters (%s)", name, e)
        return float("inf")
    return sum(p.numel() for p in model.parameters()) / 1e6


def write_archs(params_path: Path, archs: list[str]) -> None:
    """Replace `sweep.archs` in params.yaml, keeping the file's comments; validate the result."""
    from ruamel.yaml import YAML

    if not archs:
        raise PipelineError("no architecture matches those filters: nothing written.")
    yaml = YAML()
    doc = yaml.load(params_path.read_text())
    doc["sweep"]["archs"] = archs
    buf = io.StringIO()
    yaml.dump(doc, buf)
    atomic_write_text(params_path, buf.getvalue())
    load_params(params_path)


def main(argv: list[str] | None = None) -> None:
    """CLI: print the filtered list; --write puts it into params.yaml's sweep.archs."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--include", nargs="*", help="fnmatch patterns to keep (default: all)")
    ap.add_argument("--exclude", nargs="*", default=list(DEFAULT_EXCLUDE), help="patterns to drop (default: tf_* hr*)")
    ap.add_argument("--max-params", type=float, help="at most this many million parameters")
    ap.add_argument("--limit", type=int, help="keep the first N (by name)")
    ap.add_argument("--write", action="store_true", help="write the list into params.yaml sweep.archs")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    archs = list_archs(args.include, args.exclude, args.max_params, args.limit)
    for name in archs:
        print(name)
    log.info("%d architectures", len(archs))
    if args.write:
        write_archs(args.params, archs)
        log.info("wrote %d architectures to %s (sweep.archs)", len(archs), args.params)


if __name__ == "__main__":
    run_main(main)
