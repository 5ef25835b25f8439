"""Image- and pixel-level anomaly-detection metrics, and the baseline every method must beat.

All functions run on the host with numpy and scikit-learn, the reference implementation the medical
UAD literature reports against; nothing here re-derives ROC or precision-recall curves.

Conventions:
- Anomalous is the positive class everywhere (label != 0, mask > 0.5).
- A metric that is undefined because only one class is present is returned as NaN instead of
  raising, so that an evaluation over e.g. an all-normal split still writes its other numbers.
- Dice and F1 are the same quantity (2TP / (2TP + FP + FN)); `best_dice` is the pooled pixel-level
  F1 maximised over thresholds, as in the BraTS and MOOD evaluations.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "Float16Histogram",
    "MeanImage",
    "best_f1",
    "distance_to_mean",
    "grade_aurocs",
    "image_metrics",
    "max_f1",
    "pixel_metrics",
    "trivial_baseline",
]


def max_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    """Maximum F1 (= Dice) over all thresholds `score >= t`, read exactly off the PR curve.

    Every distinct score is a threshold of `precision_recall_curve`, so no binarisation is missed.
    Points with precision + recall == 0 count as F1 = 0.
    """
    return best_f1(labels, scores)[0]


def best_f1(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(maximum F1, the threshold t of `score >= t` that reaches it), off the PR curve."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.divide(2.0 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    # The curve's last point (recall 0, precision 1) has no threshold.
    best = int(np.argmax(f1[:-1]))
    return float(f1.max()), float(thresholds[best])


def _binary_scores(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    return scores, labels != 0


def _has_both_classes(labels: np.ndarray) -> bool:
    return bool(labels.any() and not labels.all())


def fpr_at_tpr(labels: Any, scores: Any, tpr_level: float) -> float:
    """The false-positive rate of the first ROC threshold whose TPR reaches `tpr_level`.

    What MorphAEus reports (FPR@TPR95/99): how many normal images an operator must review to
    catch that share of the anomalous ones.
    """
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(fpr[int(np.argmax(tpr >= tpr_level))])


def image_metrics(scores: Any, labels: Any) -> dict[str, float]:
    """Image-level AUROC, average precision, F1-max and the FPR at 95 % and 99 % TPR.

    Args:
      scores: [N] anomaly scores, higher = more anomalous.
      labels: [N] 0 for normal, anything else for anomalous.

    Returns:
      dict with `image_auroc`, `image_auprc` (average precision), `f1_max` (best F1 over
      thresholds), `fpr_at_tpr95` and `fpr_at_tpr99`. All are NaN when only one class is
      present: none is meaningful then (sklearn would raise for AUROC and return trivial values
      for the others).
    """
    scores, labels = _binary_scores(scores, labels)
    keys = ("image_auroc", "image_auprc", "f1_max", "fpr_at_tpr95", "fpr_at_tpr99")
    if not _has_both_classes(labels):
        return dict.fromkeys(keys, float("nan"))
    return {
        "image_auroc": float(roc_auc_score(labels, scores)),
        "image_auprc": float(average_precision_score(labels, scores)),
        "f1_max": max_f1(labels, scores),
        "fpr_at_tpr95": fpr_at_tpr(labels, scores, 0.95),
        "fpr_at_tpr99": fpr_at_tpr(labels, scores, 0.99),
    }


def _match_shape(arr: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Lets masks carry (or lack) a trailing channel of 1 and a FOV be shared by all images."""
    if arr.ndim == len(shape) + 1 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    try:
        return np.broadcast_to(arr, shape)
    except ValueError as e:
        raise ValueError(f"{name} of shape {arr.shape} does not match maps of shape {shape}") from e


def pixel_metrics(
    maps: Any,
    masks: Any,
    *,
    valid: Any | None = None,
    max_pixels: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Pixel-level AUROC, average precision and best Dice, pooled over all pixels of all images.

    Pooling (rather than averaging per image) is what BraTS/MOOD-style UAD papers report, and it
    keeps images without lesions in the computation.

    Args:
      maps: [N, ...] anomaly maps (2D images or 3D volumes), higher = more anomalous.
      masks: ground truth of the same shape (a trailing channel of 1 is allowed); a pixel is
        anomalous where mask > 0.5, which covers bool, {0, 1}, {0, 255} and interpolated soft masks.
      valid: optional mask (e.g. the field of view), same shape as `maps` or broadcastable to it,
        such as one [H, W] FOV for all images; only pixels where valid > 0.5 are scored.
      max_pixels: if set and more pixels remain, score a uniform random subsample of this many
        pixels (without replacement, seeded by `seed`) to bound memory and time on very large sets.
        With None (the default) the metrics are exact.
      seed: seed of the subsample.

    Returns:
      dict with `pixel_auroc`, `pixel_auprc` and `best_dice` (pooled Dice maximised over
      thresholds). All three are NaN when the scored pixels hold only one class.
    """
    maps = np.asarray(maps)
    scores = maps.reshape(-1)
    truth = (_match_shape(np.asarray(masks), maps.shape, "masks") > 0.5).reshape(-1)
    if valid is not None:
        keep = (_match_shape(np.asarray(valid), maps.shape, "valid") > 0.5).reshape(-1)
        scores, truth = scores[keep], truth[keep]
    if max_pixels is not None and scores.size > max_pixels:
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(scores.size, size=max_pixels, replace=False))
        scores, truth = scores[idx], truth[idx]
    if not _has_both_classes(truth):
        nan = float("nan")
        return {"pixel_auroc": nan, "pixel_auprc": nan, "best_dice": nan}
    return {
        "pixel_auroc": float(roc_auc_score(truth, scores)),
        "pixel_auprc": float(average_precision_score(truth, scores)),
        "best_dice": max_f1(truth, scores),
    }


def grade_aurocs(scores: Any, grades: Any) -> dict[str, float]:
    """Lesion2Void's per-grade AUROCs: grade 0 against each higher grade, and against all of them.

    Args:
      scores: [N] image anomaly scores.
      grades: [N] integer disease grades (DR 0-4 for EyeQ); grade 0 is the negative class.

    Returns:
      `auroc_grade0_vs_{g}` for every grade g > 0 present (absent grades get no key) and
      `auroc_grade0_vs_all` with all grades > 0 pooled. A value is NaN when grade 0 is absent;
      `auroc_grade0_vs_all` is NaN when no grade > 0 is present. Unlike the original script, the
      scores are not min-max rescaled first, which cannot change an AUROC.
    """
    scores = np.asarray(scores).ravel()
    grades = np.asarray(grades).ravel()
    if scores.shape != grades.shape:
        raise ValueError(f"{scores.size} scores but {grades.size} grades")
    if (grades < 0).any():
        raise ValueError("grades must be >= 0")
    negatives = grades == 0

    def auroc(positives: np.ndarray) -> float:
        if not negatives.any() or not positives.any():
            return float("nan")
        keep = negatives | positives
        return float(roc_auc_score(positives[keep], scores[keep]))

    out = {}
    for g in np.unique(grades[grades > 0]):
        out[f"auroc_grade0_vs_{int(g)}"] = auroc(grades == g)
    out["auroc_grade0_vs_all"] = auroc(grades > 0)
    return out


class MeanImage:
    """Running per-pixel mean of a stream of image batches, so a training set needn't fit in memory.

    Sums are kept in float64, so the result does not depend on how the stream is batched beyond
    float64 rounding.
    """

    def __init__(self) -> None:
        self._sum: np.ndarray | None = None
        self._count = 0

    def update(self, batch: Any) -> MeanImage:
        """Adds a batch [B, ...] of images; returns self so calls can be chained."""
        batch = np.asarray(batch, dtype=np.float64)
        if batch.ndim < 2:
            raise ValueError(f"expected a batch [B, ...], got shape {batch.shape}")
        if self._sum is None:
            self._sum = np.zeros(batch.shape[1:], np.float64)
        elif batch.shape[1:] != self._sum.shape:
            raise ValueError(f"batch of images {batch.shape[1:]} after images {self._sum.shape}")
        self._sum += batch.sum(axis=0)
        self._count += batch.shape[0]
        return self

    @property
    def count(self) -> int:
        return self._count

    @property
    def total(self) -> np.ndarray:
        """Float64 per-pixel sum so far; hosts sum `total` and `count` to get a global mean."""
        if self._sum is None:
            raise ValueError("MeanImage has seen no batch, so its image shape is unknown")
        return self._sum.copy()

    @property
    def mean(self) -> np.ndarray:
        if self._sum is None or self._count == 0:
            raise ValueError("MeanImage has seen no images")
        return self._sum / self._count


def distance_to_mean(mean: np.ndarray, images: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel L2 distance over channels to the mean image, and its spatial mean per image.

    Args:
      mean: [..., C] mean training image (e.g. `MeanImage.mean`), channels last.
      images: [N, ..., C] images on the same scale as `mean`.

    Returns:
      maps [N, ...] (float32) and scores [N] (float64).
    """
    images = np.asarray(images, dtype=np.float64)
    if images.shape[1:] != np.shape(mean):
        raise ValueError(f"images {images.shape[1:]} do not match the mean image {np.shape(mean)}")
    maps = np.sqrt(np.sum(np.square(images - mean), axis=-1))
    scores = maps.reshape(maps.shape[0], -1).mean(axis=1)
    return maps.astype(np.float32), scores


def trivial_baseline(train_images: Any, test_images: Any) -> tuple[np.ndarray, np.ndarray]:
    """The baseline every method must beat: distance from the mean training image.

    A method that does not beat it has learnt no more than the average appearance of normal images.

    Args:
      train_images: the normal training images [N, H, W, C], a filled `MeanImage`, or an iterable of
        batches [B, H, W, C] (consumed once, so the training set needn't be in memory).
      test_images: [M, H, W, C] images to score, on the same scale as the training images.

    Returns:
      maps [M, H, W] (L2 over channels of the difference to the mean image) and scores [M]
      (the mean of each map).
    """
    if isinstance(train_images, MeanImage):
        mean = train_images.mean
    elif hasattr(train_images, "shape"):
        mean = MeanImage().update(train_images).mean
    elif isinstance(train_images, Iterable):
        acc = MeanImage()
        for batch in train_images:
            acc.update(batch)
        mean = acc.mean
    else:
        raise TypeError(f"cannot take a mean image of {type(train_images).__name__}")
    return distance_to_mean(mean, test_images)


class Float16Histogram:
    """Pooled pixel (or voxel) AUROC, average precision and best Dice in constant memory.

    Scores are rounded to float16, which has 63,488 finite values; the accumulator counts
    positives and negatives per value. Curves computed from those counts are exact for the
    rounded scores, because scikit-learn (and every ROC/PR routine) treats equal scores as one
    threshold: the metrics equal `roc_auc_score`, `average_precision_score` and `max_f1` of the
    float16-rounded scores. That is how the MOOD challenge evaluates (it reads predictions as
    float16), and it lets a split of billions of pixels (full-resolution tomosynthesis, 512^3 CT
    volumes) be scored without keeping or sorting them. Float16 keeps three significant digits
    and overflows above 65504: scale scores into a sensible range first. NaN scores raise.

    Counts from several processes add (`merge`, or summing `counts` across hosts).
    """

    SIZE = 1 << 16

    def __init__(self) -> None:
        self.counts = np.zeros((2, self.SIZE), np.int64)  # [negatives, positives] per key

    @staticmethod
    def keys(scores: Any) -> np.ndarray:
        """Order-preserving uint16 keys of the float16-rounded scores (-0.0 and 0.0 share one)."""
        bits = np.asarray(scores, np.float16).reshape(-1)
        if np.isnan(bits).any():
            raise ValueError("scores contain NaN")
        bits = np.where(bits == 0, np.float16(0), bits).view(np.uint16)
        negative = (bits & 0x8000) != 0
        return np.where(negative, ~bits, bits | 0x8000).astype(np.uint16)

    def update(self, scores: Any, labels: Any, valid: Any | None = None) -> Float16Histogram:
        """Adds pixels: `labels` > 0.5 is anomalous; only pixels with `valid` > 0.5 count."""
        scores = np.asarray(scores)
        truth = (_match_shape(np.asarray(labels), scores.shape, "labels") > 0.5).reshape(-1)
        keys = self.keys(scores)
        if valid is not None:
            keep = (_match_shape(np.asarray(valid), scores.shape, "valid") > 0.5).reshape(-1)
            keys, truth = keys[keep], truth[keep]
        self.counts[1] += np.bincount(keys[truth], minlength=self.SIZE)
        self.counts[0] += np.bincount(keys[~truth], minlength=self.SIZE)
        return self

    def merge(self, other: Float16Histogram) -> Float16Histogram:
        self.counts += other.counts
        return self

    @staticmethod
    def value(key: int) -> float:
        """The float16 score of a key (the inverse of `keys`)."""
        key = int(key)
        bits = key & 0x7FFF if key & 0x8000 else ~key & 0xFFFF
        return float(np.array(bits, np.uint16).view(np.float16))

    def best_dice_threshold(self) -> float:
        """The score t for which `score >= t` gives `best_dice` (NaN without both classes)."""
        neg, pos = self.counts.astype(np.float64)
        if neg.sum() == 0 or pos.sum() == 0:
            return float("nan")
        tp, fp = np.cumsum(pos[::-1]), np.cumsum(neg[::-1])
        seen = (pos + neg)[::-1] > 0
        dice = np.where(seen, 2 * tp / (tp + fp + pos.sum()), -1.0)
        return self.value(self.SIZE - 1 - int(np.argmax(dice)))

    def quantile(self, q: float, positives: bool = False) -> float:
        """The lowest score with at least a fraction `q` of the class's pixels at or below it."""
        counts = self.counts[int(positives)]
        total = counts.sum()
        if total == 0:
            return float("nan")
        return self.value(int(np.searchsorted(np.cumsum(counts), q * total)))

    def metrics(self, prefix: str = "pixel_") -> dict[str, float]:
        """`<prefix>auroc`, `<prefix>auprc` and `best_dice` (NaN when one class is absent)."""
        neg, pos = self.counts.astype(np.float64)
        n_neg, n_pos = neg.sum(), pos.sum()
        if n_neg == 0 or n_pos == 0:
            nan = float("nan")
            return {f"{prefix}auroc": nan, f"{prefix}auprc": nan, "best_dice": nan}
        # AUROC: P(score of a positive > score of a negative) + 1/2 P(equal).
        neg_below = np.cumsum(neg) - neg
        auroc = float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))
        # Thresholds from the highest score down: true and false positives at or above each.
        seen = (pos + neg)[::-1] > 0
        tp = np.cumsum(pos[::-1])[seen]
        fp = np.cumsum(neg[::-1])[seen]
        precision = tp / (tp + fp)
        recall = tp / n_pos
        # Step-wise AP as scikit-learn: sum over thresholds of (R_k - R_k-1) P_k.
        auprc = float(np.sum(np.diff(recall, prepend=0.0) * precision))
        best_dice = float(np.max(2 * tp / (tp + fp + n_pos)))
        return {f"{prefix}auroc": auroc, f"{prefix}auprc": auprc, "best_dice": best_dice}
