"""The method's anomaly maps against the split's labels and masks (evaluator type `anomaly_map`).

Options (`configs/common.py:anomaly_map_eval`): `full_resolution` False scores the split
resized to `data.image_size` in global batches with `method.score` (image scores from
`method.image_scores`); True scores each image at its own size with `method.dense_map`
(window-based methods such as PICARD on 2000 x 2500 px slices), the image score being the
map's maximum inside the field of view. `output` names another map of `score`'s outputs
(`<output>` [B, H, W] with its image scores `<output>_score` [B]), e.g. a variant trained in
the same run. `smooth_sigma`, `normalize`, `image_score`, `top_k` and `drop_largest`
post-process the maps and image scores before the metrics (`jaxad.evals.postprocess`; the
defaults leave the method's own). `normalize='normal'` first scores the normal images of
`data.val_split` for the per-pixel statistics and saves them with the evaluation
(`eval/<prefix>normal_maps.npz`), where `jaxad.predict` reads them. Metrics:
`jaxad.evals.core.MapAccumulator`.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from jaxad.evals import core, postprocess
from jaxad.methods import base


def check(ecfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict, method) -> None:
    if ecfg.full_resolution and ecfg.output != "map":
        raise ValueError(
            f"output={ecfg.output!r} needs full_resolution=False: dense_map gives one map."
        )
    name = next((n for n, e in config.evals.items() if e is ecfg), "<anomaly_map>")
    post = _post(ecfg)
    postprocess.check(
        post["sigma"],
        post["kind"],
        post["top_k"],
        f"config.evals.{name}",
        normalize(ecfg),
        post["drop_largest"],
    )
    if normalize(ecfg) != "none" and ecfg.full_resolution:
        raise ValueError(
            f"config.evals.{name}.normalize={normalize(ecfg)!r} needs full_resolution=False: "
            "per-pixel statistics need maps of one size."
        )
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


def settings(config: ml_collections.ConfigDict) -> dict:
    """The post-processing of the run's own maps (keyword arguments of `postprocess.apply`
    but the normal statistics), so that prediction makes the maps that evaluation scored."""
    own = own_evaluator(config)
    return _post(own if own is not None else ml_collections.ConfigDict())


def _post(ecfg) -> dict:
    """sigma, kind, top_k, drop_largest of `postprocess.apply`, with the defaults for configs
    saved before."""
    return {
        "sigma": float(ecfg.get("smooth_sigma", 0.0)),
        "kind": str(ecfg.get("image_score", "method")),
        "top_k": float(ecfg.get("top_k", 0.01)),
        "drop_largest": ecfg.get("drop_largest", 1),
    }


def normalize(ecfg) -> str:
    """The evaluator's `normalize` ('none' for configs saved before it)."""
    return str(ecfg.get("normalize", "none"))


def stats_file(ecfg) -> str:
    """Where the evaluation saves the normal statistics, relative to `workdir/eval`."""
    return f"{ecfg.prefix.strip('/').replace('/', '_')}normal_maps.npz"


def evaluate(ecfg, config, method, state, mesh) -> core.Result:
    split = core.eval_split(config, ecfg)
    acc = core.MapAccumulator(
        pixel_metrics=bool(config.eval.pixel_metrics), num_overlays=int(config.eval.num_overlays)
    )
    normal = normal_stats(ecfg, config, method, state, mesh)
    result = accumulate(ecfg, config, method, state, mesh, split, acc, normal=normal).finish(split)
    if normal is not None:
        result.files[stats_file(ecfg)] = normal
    return result


def normal_stats(ecfg, config, method, state, mesh) -> dict[str, np.ndarray] | None:
    """The per-pixel statistics of the normal validation images' smoothed maps (None when
    `normalize` is 'none'), the same on every process."""
    if normalize(ecfg) == "none":
        return None
    split = config.data.val_split
    stats = postprocess.NormalStats()
    maps_of = _batch_maps(ecfg, method, state, mesh, config)
    core.accumulate_batched(config, split, mesh, maps_of, stats)
    stats = stats.combined(core.sum_over_processes, (config.data.image_size,) * 2)
    if not stats.count:
        raise ValueError(
            f"normalize={normalize(ecfg)!r} needs normal images in split {split!r} "
            "(data.val_split): it has none; add val/good images or set normalize='none'"
        )
    return stats.arrays()


def _batch_maps(ecfg, method, state, mesh, config, normal=None):
    """maps_of(local batch) -> (maps, image scores) as `ecfg` post-processes them."""
    scores_of = core.batch_scorer(method, state, mesh, config.seed)
    post = _post(ecfg)

    def maps_of(local):
        out = scores_of(local)
        if ecfg.output == "map":
            maps, scores = out["map"], out["image_score"]
        else:
            maps, scores = out[ecfg.output], out[f"{ecfg.output}_score"]
        return postprocess.apply(maps, scores, local["fov"], normal=normal, **post)

    return maps_of


def accumulate(
    ecfg, config, method, state, mesh, split: str, acc: core.MapAccumulator, *, normal=None
):
    """Adds the maps of `split`, made and post-processed as `ecfg` says (normalised by
    `normal`, `normal_stats`'s), to `acc`."""
    post = _post(ecfg)
    sigma, kind = post["sigma"], post["kind"]
    if ecfg.full_resolution:
        key = jax.random.fold_in(jax.random.key(config.seed), 2)

        def map_of(rec, image, index):
            amap = method.dense_map(state, image, jax.random.fold_in(key, index))
            return postprocess.smooth(amap, sigma)

        def score_of(amap, fov):
            return postprocess.image_scores(
                amap[None], fov[None], kind, post["top_k"], post["drop_largest"]
            )[0]

        score = None if kind == "method" else score_of
        core.accumulate_full_resolution(config, split, map_of, acc, score_of=score)
    else:
        maps_of = _batch_maps(ecfg, method, state, mesh, config, normal)
        core.accumulate_batched(config, split, mesh, maps_of, acc)
    return acc
