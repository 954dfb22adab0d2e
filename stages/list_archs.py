"""List timm architectures with pretrained weights, filtered like the exercise, and optionally write the
list into `sweep.archs` in params.yaml (comments and layout kept). `--sizes` adds each one's parameters and
weights size (the hub's when online, else 4 bytes per parameter, marked "est."); `--estimate` adds the whole
sweep's time and disk, from the entries already measured in records/sweep (counting builds each model on the meta
device, one after another).

    python -m stages.list_archs                          # every pretrained arch except tf_* and hr*
    python -m stages.list_archs --include 'resnet*' 'convnext*' --max-params 30 --limit 10 --write
    python -m stages.list_archs --sample 20 --write      # 20 architectures spread over the sizes, to time
    python -m stages.list_archs --sizes --estimate       # the whole zoo's parameters, weights, time and disk
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import yaml

from imgclf.common import atomic_write_text, run_main
from imgclf.params import load_params, validate
from imgclf.training.archs import DEFAULT_EXCLUDE, list_archs, with_archs
from imgclf.zoo import arch_sizes, estimate_text, sample_by_size, size_row

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    """CLI: print the filtered list; --write puts it into params.yaml's sweep.archs."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--include", nargs="*", help="fnmatch patterns to keep (default: all)")
    ap.add_argument("--exclude", nargs="*", default=list(DEFAULT_EXCLUDE), help="patterns to drop (default: tf_* hr*)")
    ap.add_argument("--max-params", type=float, help="at most this many million parameters")
    ap.add_argument("--limit", type=int, help="keep the first N (by name)")
    ap.add_argument("--write", action="store_true", help="write the list into params.yaml sweep.archs")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--sizes", action="store_true", help="print each one's parameters and weights size")
    ap.add_argument("--estimate", action="store_true", help="estimate the sweep's time and disk from records/sweep")
    ap.add_argument("--sample", type=int, help="keep N architectures spread evenly over the parameter counts")
    ap.add_argument("--records-dir", type=Path, default=Path("records/sweep"))
    args = ap.parse_args(argv)
    if args.write:
        load_params(args.params)  # refuse to edit a params file that is already broken
    archs = list_archs(args.include, args.exclude, args.max_params, args.limit)
    if args.sizes or args.estimate or args.sample:
        from huggingface_hub import constants

        sizes = arch_sizes(archs, online=not constants.HF_HUB_OFFLINE and not args.sample)
        if args.sample:
            archs = sample_by_size(sizes, args.sample)
            sizes = [s for s in sizes if s["arch"] in archs]
    if args.sizes:
        for s in sizes:
            print(size_row(s))
    elif not args.estimate:
        for name in archs:
            print(name)
    log.info("%d architectures", len(archs))
    if args.estimate:
        print(estimate_text(sizes, args.records_dir))
    if args.write:
        text = with_archs(args.params.read_text(encoding="utf-8"), archs)
        validate(yaml.safe_load(text))  # never write a params file the pipeline would refuse
        atomic_write_text(args.params, text)
        log.info("wrote %d architectures to %s (sweep.archs)", len(archs), args.params)


if __name__ == "__main__":
    run_main(main, ("timm",))
