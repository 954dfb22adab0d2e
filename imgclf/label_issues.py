"""Label issues by confident learning (Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in
Dataset Labels", JAIR 2021), written from the paper (cleanlab is AGPL-3.0: none of its code is used).

The probabilities must be out of sample (each image scored by a model that did not train on it, e.g. K folds):
a model fitted to the labels memorises its errors, and they then look right.
"""

from __future__ import annotations

import numpy as np


def confident_joint(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """C[i, j]: images labelled i whose probability of class j reaches class j's threshold (the mean probability
    of j over the images labelled j), taking the most probable class among those that pass."""
    n, k = probs.shape
    thresholds = np.array([probs[labels == j, j].mean() if (labels == j).any() else np.inf for j in range(k)])
    above = probs >= thresholds
    confident = above.any(axis=1)
    true = np.where(above, probs, -np.inf).argmax(axis=1)
    joint = np.zeros((k, k))
    np.add.at(joint, (labels[confident], true[confident]), 1)
    return joint


def label_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the images whose label looks wrong, worst first; the label suggested for each).

    The confident joint's rows are calibrated to the label counts; then, per given class i and other class j,
    prune by noise rate: the round(C[i, j]) images labelled i with the largest margin p(j) - p(i) are flagged,
    with j suggested. The flags are ranked by self-confidence p(given label), lowest first."""
    labels = np.asarray(labels)
    n, k = probs.shape
    joint = confident_joint(labels, probs)
    counts = np.bincount(labels, minlength=k)
    rows = joint.sum(axis=1, keepdims=True)
    calibrated = np.divide(joint * counts[:, None], rows, out=np.zeros_like(joint), where=rows > 0)
    suggested = np.full(n, -1)
    best_margin = np.full(n, -np.inf)
    for i in range(k):
        members = np.flatnonzero(labels == i)
        for j in range(k):
            take = int(round(calibrated[i, j]))
            if i == j or take == 0:
                continue
            margin = probs[members, j] - probs[members, i]
            chosen = members[np.argsort(-margin, kind="stable")[:take]]
            better = probs[chosen, j] - probs[chosen, i] > best_margin[chosen]
            suggested[chosen[better]] = j
            best_margin[chosen[better]] = (probs[chosen, j] - probs[chosen, i])[better]
    flagged = np.flatnonzero(suggested >= 0)
    flagged = flagged[np.argsort(probs[flagged, labels[flagged]], kind="stable")]
    return flagged, suggested[flagged]
