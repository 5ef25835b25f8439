"""The method's anomaly maps against the split's labels and masks (evaluator type `anomaly_map`).

Options (`configs/common.py:anomaly_map_eval`): `full_resolution` False scores the split
resized to `data.image_size` in global batches with `method.score` (image scores from
`method.image_scores`); True scores each image at its own size with `method.dense_map`
(window-based methods such as PICARD on 2000 x 2500 px slices), the image score being the
map's maximum inside the field of view. `output` names another map of `score`'s outputs
(`<output>` [B, H, W] with its image scores `<output>_score` [B]), e.g. a variant trained in
the same run. `smooth_sigma`, `image_score` and `top_k` post-process the maps and image scores
before the metrics (`jaxad.evals.postprocess`; the defaults leave the method's own). Metrics:
`jaxad.evals.core.MapAccumulator`.
"""

from __future__ import annotations

import jax
import ml_collections

from jaxad.evals import core, postprocess
from jaxad.methods import base


def check(ecfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict, method) -> None:
    if ecfg.full_resolution and ecfg.output != "map":
        raise ValueError(
            f"output={ecfg.output!r} needs full_resolution=False: dense_map gives one map."
        )
    name = next((n for n, e in config.evals.items() if e is ecfg), "<anomaly_map>")
    postprocess.check(*_post(ecfg), where=f"config.evals.{name}")
    hook = "dense_map" if ecfg.full_resolution else "score"
    if not base.provides(method, hook):
        raise ValueError(
            f"method {config.method!r} has no {hook}: it cannot make the anomaly maps of "
            f"evaluator type 'anomaly_map' (full_resolution={bool(ecfg.full_resolution)})."
        )


def own_evaluator(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
    """The run's own maps' evaluator: its unprefixed `anomaly_map` one, else its first."""
    maps = [e for e in (config.get("evals") or {}).values() if e.type == "anomaly_map"]
    own = [e for e in maps if not e.prefix] or maps
    return own[0] if own else None


def settings(config: ml_collections.ConfigDict) -> tuple[float, str, float]:
    """The post-processing of the run's own maps, so that prediction makes the maps that
    evaluation scored."""
    own = own_evaluator(config)
    return _post(own) if own is not None else (0.0, "method", 0.01)


def _post(ecfg) -> tuple[float, str, float]:
    """(smooth_sigma, image_score, top_k), with the defaults for configs saved before them."""
    return (
        float(ecfg.get("smooth_sigma", 0.0)),
        str(ecfg.get("image_score", "method")),
        float(ecfg.get("top_k", 0.01)),
    )


def evaluate(ecfg, config, method, state, mesh) -> core.Result:
    split = core.eval_split(config, ecfg)
    acc = core.MapAccumulator(
        pixel_metrics=bool(config.eval.pixel_metrics), num_overlays=int(config.eval.num_overlays)
    )
    return accumulate(ecfg, config, method, state, mesh, split, acc).finish(split)


def accumulate(ecfg, config, method, state, mesh, split: str, acc: core.MapAccumulator):
    """Adds the maps of `split`, made and post-processed as `ecfg` says, to `acc`."""
    sigma, kind, top_k = _post(ecfg)
    if ecfg.full_resolution:
        key = jax.random.fold_in(jax.random.key(config.seed), 2)

        def map_of(rec, image, index):
            amap = method.dense_map(state, image, jax.random.fold_in(key, index))
            return postprocess.smooth(amap, sigma)

        def score_of(amap, fov):
            return postprocess.image_scores(amap[None], fov[None], kind, top_k)[0]

        score = None if kind == "method" else score_of
        core.accumulate_full_resolution(config, split, map_of, acc, score_of=score)
    else:
        scores_of = core.batch_scorer(method, state, mesh, config.seed)

        def maps_of(local):
            out = scores_of(local)
            if ecfg.output == "map":
                maps, scores = out["map"], out["image_score"]
            else:
                maps, scores = out[ecfg.output], out[f"{ecfg.output}_score"]
            return postprocess.apply(
                maps, scores, local["fov"], sigma=sigma, kind=kind, top_k=top_k
            )

        core.accumulate_batched(config, split, mesh, maps_of, acc)
    return acc
