"""Seeds and ties: the sweep's entries (one per architecture and seed) combined into one row per architecture,
each accuracy given its 95% interval, and the architectures the validation images cannot rule out as the best
found with a confidence set for the best, so that they are called tied rather than ranked.

The rules, for one seed or several (README, "Reading the results"):
- Images are the sample. An architecture's score on an image is the share of its seeds that got it right (1 or
  0 with one seed); its accuracy is the mean over seeds, and its interval the Wilson interval of the mean number
  of right images (rounded to a whole image, halves up) out of the validation images. Pooling the seeds' counts
  would count each image once per seed and make the interval too narrow by up to sqrt(seeds).
- Tied with the best: in the confidence set for the best at level 1 - report.alpha (stats.best_set: Mogstad,
  Romano, Shaikh and Wilhelm's set for the best, bootstrapping the images with BOOTSTRAP_REPS resamples drawn
  from BOOTSTRAP_SEED). It holds every architecture whose true accuracy is the highest with probability at
  least 1 - alpha, for these trained models on images like these; with one seed, seed-to-seed noise is left out.
- Descriptive only: `p_value`, McNemar's exact test of each architecture against the highest accuracy (an image
  counts for the one whose score there is higher), and `p_holm`, those Holm-adjusted over the comparisons. The
  highest accuracy is picked on the same images, so these p-values do not decide the tie.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import NamedTuple

from imgclf.common import PipelineError
from imgclf.metrics import RECORD_NUMBERS
from imgclf.reporting.records import entry_name, is_ok, number
from imgclf.reporting.stats import best_set, discordant, holm, mcnemar_exact, wilson_interval

LEVEL = 0.95  # the intervals' confidence level
BOOTSTRAP_REPS = 1000  # resamples of the validation images for the confidence set for the best
BOOTSTRAP_SEED = 0  # fixed, so the plot stage's outputs reproduce
METHOD = "Mogstad, Romano, Shaikh & Wilhelm 2024, step-down"
GUARANTEE = (
    "holds every architecture whose true accuracy is the highest with probability at least {level:g}, for these "
    "trained models on images like these{seeds}"
)
PREDICTION_COLUMNS = ("actual", "predicted", "image")


class Ties(NamedTuple):
    """What the comparison found: the confidence set for the best (best first), over how many images and
    architectures, at which level, and the most seeds any architecture had."""

    tied: list[str]
    n_images: int | None
    n_compared: int
    alpha: float
    max_seeds: int = 1


def guarantee(ties: Ties) -> str:
    """What the tied set guarantees, in one clause, and with one seed what it leaves out."""
    seeds = "; with one seed per architecture it leaves seed-to-seed noise out" if ties.max_seeds <= 1 else ""
    return GUARANTEE.format(level=1 - ties.alpha, seeds=seeds)


def combine_seeds(records: list[dict]) -> list[dict]:
    """One record per architecture (in first-seen order) from its entries' records: with ok seeds, the means of
    RECORD_NUMBERS over them, `seeds`, `n_seeds`, `seed_accuracies`, `seed_sd` (their sample standard deviation, None
    with one seed), `entries` (their names) and a reason naming any seed that did not finish; with none, the first
    entry's record as it is."""
    by_arch: dict[str, list[dict]] = {}
    for r in records:
        by_arch.setdefault(str(r.get("arch")), []).append(r)
    combined = []
    for rs in by_arch.values():
        good = [r for r in rs if is_ok(r)]
        if not good:
            combined.append({**rs[0], "seeds": [], "n_seeds": 0, "seed_sd": None, "entries": []})
            continue
        row = dict(good[0])
        for key in RECORD_NUMBERS:
            values = [number(r.get(key)) for r in good]
            row[key] = round(statistics.fmean(values), 6) if None not in values else None  # type: ignore[arg-type]
        accs = [r["accuracy"] for r in good]
        others = [f"seed {r.get('seed')} {r.get('status')}: {r.get('reason')}" for r in rs if not is_ok(r)]
        row.update(
            status="ok",
            reason="; ".join(others) or None,
            seeds=[r.get("seed") for r in good],
            n_seeds=len(good),
            seed_sd=round(statistics.stdev(accs), 6) if len(good) > 1 else None,
            seed_accuracies=accs,
            entries=[entry_name(r) for r in good],
        )
        combined.append(row)
    return combined


def read_predictions(path: Path, entry: str) -> dict[str, bool]:
    """image -> whether the entry got it right, from its predictions file (columns actual, predicted, image)."""
    rerun = f"rerun the entry (`dvc repro -f sweep@{entry}`)"
    if not Path(path).is_file():
        raise PipelineError(f"no predictions for {entry} ({path}): {rerun}.")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not set(PREDICTION_COLUMNS) <= set(reader.fieldnames or ()):
            raise PipelineError(
                f"{path} has columns {reader.fieldnames}, not {', '.join(PREDICTION_COLUMNS)} (written by an older "
                f"version?): the paired comparison needs each image's name; {rerun}."
            )
        correct: dict[str, bool] = {}
        for row in reader:
            if row["image"] in correct:
                raise PipelineError(f"{path} lists the image {row['image']!r} twice: {rerun}.")
            correct[row["image"]] = row["actual"] == row["predicted"]
    return correct


def compare_with_best(ok: list[dict], predictions: dict[str, dict[str, bool]] | None, alpha: float) -> Ties:
    """Give each ok record (best first) `ci_low`, `ci_high`, `tied_with_best` (in the confidence set for the
    best) and the descriptive `p_value` and `p_holm` (None for the best), from its entries' predictions (entry
    name -> image -> right). Without predictions, the interval comes from the record's accuracy and `n_valid`
    when it has one, and nothing is compared (None)."""
    for r in ok:
        r.update(ci_low=None, ci_high=None, p_value=None, p_holm=None, tied_with_best=None)
    if predictions is None or not ok:
        for r in ok:
            n = r.get("n_valid")
            if isinstance(n, int) and n > 0:
                r["ci_low"], r["ci_high"] = wilson_interval(whole(r["accuracy"] * n), n, LEVEL)
        return Ties([], None, 0, alpha)
    import numpy as np

    images = _shared_images(ok, predictions)
    scores = {r["arch"]: [statistics.fmean(predictions[e][i] for e in r["entries"]) for i in images] for r in ok}
    for r in ok:
        _check_accuracy(r, predictions, len(images))
        r["ci_low"], r["ci_high"] = wilson_interval(whole(sum(scores[r["arch"]])), len(images), LEVEL)
    inside = best_set(np.array([scores[r["arch"]] for r in ok]).T, alpha, BOOTSTRAP_REPS, BOOTSTRAP_SEED)
    best, others = ok[0], ok[1:]
    raw = [mcnemar_exact(*discordant(scores[best["arch"]], scores[r["arch"]])) for r in others]
    for r, p, adjusted in zip(others, raw, holm(raw)):
        r.update(p_value=p, p_holm=adjusted)
    for r, tied in zip(ok, inside):
        r["tied_with_best"] = bool(tied)
    tied = [r["arch"] for r in ok if r["tied_with_best"]]
    return Ties(tied, len(images), len(ok), alpha, max(r["n_seeds"] for r in ok))


def whole(count: float) -> int:
    """A mean number of images rounded to a whole one, halves up (Python's round() would send 126.5 down and
    125.5 up, giving two different means the same interval)."""
    return math.floor(count + 0.5)


def _shared_images(ok: list[dict], predictions: dict[str, dict[str, bool]]) -> list[str]:
    """The validation images every ok entry was evaluated on (sorted); refuse entries evaluated on others."""
    first = ok[0]["entries"][0]
    reference = set(predictions[first])
    if not reference:
        raise PipelineError(f"{first}'s predictions list no images: rerun it (`dvc repro -f sweep@{first}`).")
    odd = [
        f"{e} ({len(set(predictions[e]) - reference)} images not in {first}'s, "
        f"{len(reference - set(predictions[e]))} of them missing)"
        for r in ok
        for e in r["entries"]
        if set(predictions[e]) != reference
    ]
    if odd:
        shown = "; ".join(odd[:5]) + (f"; and {len(odd) - 5} more" if len(odd) > 5 else "")
        raise PipelineError(
            "the sweep's entries were not all evaluated on the same validation images, so they cannot be compared "
            f"image by image: {shown}. Every entry must read the same data with the same base.seed and "
            "train.valid_pct: rerun the odd ones (`dvc repro -f sweep@<arch>-<seed>`)."
        )
    return sorted(reference)


def _check_accuracy(r: dict, predictions: dict[str, dict[str, bool]], n: int) -> None:
    """The predictions must be the run the metrics describe: their accuracy within half an image of the record's."""
    for e, recorded in zip(r["entries"], r["seed_accuracies"]):
        share = sum(predictions[e].values()) / n
        if abs(share - recorded) > 0.5 / n:
            raise PipelineError(
                f"{e}: its predictions give accuracy {share:.4f} and its metrics {recorded:.4f}: they come from "
                f"different runs; rerun the entry (`dvc repro -f sweep@{e}`)."
            )
