"""List timm architectures with pretrained weights, filtered like the exercise, and optionally write the
list into `sweep.archs` in params.yaml (comments and layout kept). `--sizes` adds each one's parameters and
weights size (the hub's when online, else 4 bytes per parameter, marked "est."); `--estimate` adds the whole
sweep's time and disk, from the entries already measured in metrics/sweep. Counting takes ~0.1 s per architecture.

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

from imgclf.common import PipelineError, atomic_write_text, run_main
from imgclf.params import load_params, validate
from imgclf.training.archs import DEFAULT_EXCLUDE, list_archs, with_archs
from imgclf.training.zoo import arch_sizes, estimate, measured, sample_by_size

log = logging.getLogger(__name__)


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 1e9 else f"{n / 1e9:,.1f} GB"


def _row(s: dict) -> str:
    params = "?" if s["params_m"] is None else f"{s['params_m']:.2f} M params"
    weights = "?" if s["weights_bytes"] is None else _mb(s["weights_bytes"]) + (" est." if s["estimated"] else "")
    return f"{s['arch']:<48} {params:>18} {weights:>16}"


def print_estimate(sizes: list[dict], metrics_dir: Path) -> None:
    """The whole sweep's fit time and disk, from the entries already measured in `metrics_dir`."""
    records = measured(metrics_dir)
    if not records:
        raise PipelineError(f"no measured entries in {metrics_dir}: run some sweep entries first (`dvc repro "
                            "sweep@<arch>`), ideally ~20 sampled across sizes, on the machine to estimate for.")
    e = estimate(sizes, records)
    print(f"estimate for {e['entries']} architectures ({e['sized']} with a parameter count), from {e['measured']} "
          f"measured entries on {', '.join(e['devices'])}:")
    print(f"  fit time:  {e['time_s'] / 3600:.2f} h  ({e['method']} over the measured entries: "
          f"{e['seconds_fixed']:.1f} s + {e['seconds_per_m_params']:.3f} s per million parameters; fit only, "
          "the same dataset and epochs; add weights downloads and process start)")
    print(f"  disk peak: data + {_mb(e['peak_weights_bytes'])} (the largest weights; each entry's download is "
          "deleted after it unless train.keep_weights)")
    print(f"  downloads: {_mb(e['download_bytes'])} of weights from the hub over the sweep")
    print(f"  models:    {_mb(e['models_bytes'])} in models/sweep with sweep.save_models: true (none with false)")


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
    ap.add_argument("--estimate", action="store_true", help="estimate the sweep's time and disk from metrics/sweep")
    ap.add_argument("--sample", type=int, help="keep N architectures spread evenly over the parameter counts")
    ap.add_argument("--metrics-dir", type=Path, default=Path("metrics/sweep"))
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
            print(_row(s))
    elif not args.estimate:
        for name in archs:
            print(name)
    log.info("%d architectures", len(archs))
    if args.estimate:
        print_estimate(sizes, args.metrics_dir)
    if args.write:
        text = with_archs(args.params.read_text(encoding="utf-8"), archs)
        validate(yaml.safe_load(text))  # never write a params file the pipeline would refuse
        atomic_write_text(args.params, text)
        log.info("wrote %d architectures to %s (sweep.archs)", len(archs), args.params)


if __name__ == "__main__":
    run_main(main)
