"""Decision thresholds chosen on a split and saved with the run (evaluator type `threshold`).

A map method gives scores, not decisions; a user of `jaxad.predict` needs to know which
images, and which pixels, to call anomalous. This evaluator scores a split other than the test
split (`split`, by default `data.val_split`) with the run's own maps (the unprefixed
`anomaly_map` evaluator's settings, post-processing included) and picks:

- the image threshold: F1-optimal when the split holds normal and anomalous images, else the
  `normal_quantile` quantile of the normal images' scores (anomalib's rules);
- the pixel threshold: the threshold of the best Dice when the split has anomaly masks, else
  the `normal_quantile` quantile of the normal pixels inside the field of view (float16
  rounded, `metrics.Float16Histogram`);
- the range of the image scores, by which `jaxad.predict` maps a score to [0, 1] with the
  threshold at 0.5 (anomalib's min-max normalisation: `calibrate`).

Its metrics (`image_threshold`, `pixel_threshold`, `image_rule`, `pixel_rule`,
`image_score_min`, `image_score_max`, `num_images`) go to `eval/metrics.json` under its prefix
(`threshold/`), where `jaxad.predict` reads them; it adds no rows to `scores.csv`.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from jaxad import metrics
from jaxad.evals import anomaly_map, core


def check(ecfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict, method) -> None:
    if not 0 < float(ecfg.normal_quantile) < 1:
        raise ValueError(
            f"evals threshold normal_quantile={ecfg.normal_quantile}: a fraction in (0, 1)"
        )
    own = anomaly_map.own_evaluator(config)
    if own is None:
        raise ValueError(
            "evaluator type 'threshold' needs an 'anomaly_map' evaluator in config.evals (the "
            "maps whose thresholds it picks)"
        )
    anomaly_map.check(own, config, method)


def image_threshold(scores: np.ndarray, labels: np.ndarray, q: float) -> tuple[float, str]:
    """(threshold, rule): F1-optimal `score >= t` with both classes, else the normal quantile."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    if (labels == 1).any() and (labels == 0).any():
        return metrics.best_f1(labels, scores)[1], "f1"
    normal = scores[labels == 0] if (labels == 0).any() else scores
    return float(np.quantile(normal, q, method="inverted_cdf")), f"normal_quantile {q:g}"


def calibrate(score, threshold: float, low: float, high: float):
    """A score in [0, 1] with the threshold at 0.5: (s - t) / (max - min) + 0.5, clipped."""
    span = max(high - low, 1e-12)
    return np.clip((np.asarray(score, np.float64) - threshold) / span + 0.5, 0.0, 1.0)


def evaluate(ecfg, config, method, state, mesh) -> core.Result:
    split = ecfg.split or config.data.val_split
    acc = core.MapAccumulator(pixel_metrics=True)
    own = anomaly_map.own_evaluator(config)
    normal = anomaly_map.normal_stats(own, config, method, state, mesh)
    anomaly_map.accumulate(own, config, method, state, mesh, split, acc, normal=normal)
    # `finish` gathers every process's rows and pixel counts (into acc.hist).
    rows = [r for r in acc.finish(split).rows if np.isfinite(r["score"])]
    scores = np.array([r["score"] for r in rows], np.float64)
    labels = np.array([r["label"] for r in rows], np.int64)
    q = float(ecfg.normal_quantile)
    image_t, image_rule = image_threshold(scores, labels, q)
    neg, pos = acc.hist.counts.sum(axis=1)
    if pos and neg:
        pixel_t, pixel_rule = acc.hist.best_dice_threshold(), "best_dice"
    else:
        pixel_t, pixel_rule = acc.hist.quantile(q), f"normal_quantile {q:g}"
    out = {
        "split": split,
        "num_images": len(rows),
        "image_threshold": image_t,
        "image_rule": image_rule,
        "pixel_threshold": pixel_t,
        "pixel_rule": pixel_rule,
        "image_score_min": float(scores.min()) if len(scores) else float("nan"),
        "image_score_max": float(scores.max()) if len(scores) else float("nan"),
    }
    return core.Result(out, [])


def saved(config: ml_collections.ConfigDict, results: dict) -> dict | None:
    """The thresholds of a run's `threshold` evaluator from its metrics.json, or None."""
    for ecfg in (config.get("evals") or {}).values():
        if ecfg.type == "threshold" and f"{ecfg.prefix}image_threshold" in results:
            keys = ("image_threshold", "pixel_threshold", "image_score_min", "image_score_max")
            return {k: float(results[f"{ecfg.prefix}{k}"]) for k in keys}
    return None
