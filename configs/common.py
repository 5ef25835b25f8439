"""The base config: every key the shared code reads, with its default, declared once.

An experiment config starts from `get_config()` and states only what differs:

    from configs import common

    def get_config(arg=None):
        c = common.get_config()
        c.method = "lesion2void"
        c.data.tfds_name = "eyeq/good"
        c.evals.model = common.anomaly_map_eval()
        ...

Sections: the loop (top level), `init_from` (start from another run's weights), `validation`,
`eval` (settings every evaluator shares) and `evals` (the evaluations to run, by name, each
with a `type` that names a module of `jaxad/evals/`), `data`, `model`, `distributed`. Method
sections (`l2v`, `picard`, ...) belong to each experiment's file.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = ""  # a module of jaxad/methods/ (or a dotted module path with create(config))
    c.mode = "train"  # 'eval' evaluates the latest checkpoint in workdir.
    c.seed = 0

    # Start from another finished run's weights (parameters and statistics whose path and
    # shape match, or what the method's `init_from` hook takes); '' starts from scratch. A run
    # that already has checkpoints in its own workdir resumes from them instead.
    c.init_from = ml_collections.ConfigDict()
    c.init_from.workdir = ""
    c.init_from.prefer = "best"  # 'best' validated state if the run kept one, else 'latest'

    # Optimisation length.
    c.batch_size = 32  # global; a multiple of the number of devices
    c.num_epochs = 1
    c.total_steps = 0  # > 0 overrides num_epochs.

    # Loop.
    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.eval_every = 0  # 0: evaluate once, at the end.
    # A JAX profiler trace of training steps N to M-1 ('N,M'; '' = off), written by process 0
    # into workdir/profile (read by TensorBoard's profile plugin or XProf).
    c.profile_steps = ""

    # Validation loss every N steps (methods with `eval_loss`), keeping the best state in
    # workdir/best and stopping after `patience` validations without a gain of `min_delta`.
    c.validation = ml_collections.ConfigDict()
    c.validation.every = 0  # 0: off
    c.validation.patience = 0  # 0: no early stopping
    c.validation.min_delta = 0.0

    # Settings every evaluator shares.
    c.eval = ml_collections.ConfigDict()
    c.eval.enabled = True  # False skips every evaluation (e.g. data without a labelled split)
    c.eval.batch_size = 32  # global batch of scoring and of the validation loss
    c.eval.split = ""  # '' = data.test_split
    c.eval.pixel_metrics = True  # pixel AUROC/AUPRC/Dice where the split has masks
    c.eval.num_overlays = 8  # heatmap PNGs of the model's maps (half anomalous, half normal)
    # The evaluations to run: name -> evaluator config (see the functions below). Metrics go
    # to workdir/eval/metrics.json under each evaluator's `prefix`.
    c.evals = ml_collections.ConfigDict()

    c.data = data_config()

    c.model = ml_collections.ConfigDict()
    # Kernel gradients of the convs by matrix products (jaxad.ops.conv): 'auto' (the CPU
    # backend, on the layer shapes where it measured faster; off on TPU/GPU), True (every
    # layer) or False (XLA's lowering everywhere). It changes neither parameters nor outputs.
    c.model.fast_conv_grad = ml_collections.FieldReference("auto", field_type=object)
    # Compute dtype of the networks (jaxad.precision): 'auto' (bfloat16 on TPU/GPU, float32 on
    # CPU), 'float32' or 'bfloat16'. Parameters, optimiser state, normalisation statistics,
    # losses and metrics stay float32 either way.
    c.model.dtype = "auto"
    # XLA's CPU backend hands matrix products and convolutions to YNNPACK by default (True).
    # False compiles the method's jitted functions with XLA's own kernels for them instead
    # (`jaxad.methods.jit`; YNNPACK's reductions stay): ResNet-50 steps and inference measured
    # 1.00-1.12x as fast on 2 cores that way, as YNNPACK's kernels gained little from the
    # second core (bench/README.md). No effect on TPU/GPU; changes only float rounding.
    c.model.cpu_ynnpack = True

    c.distributed = ml_collections.ConfigDict()
    c.distributed.enabled = False
    c.distributed.coordinator_address = ""  # empty on Cloud TPU: peers are found automatically.
    c.distributed.num_processes = 1
    c.distributed.process_id = 0
    return c


def data_config() -> ml_collections.ConfigDict:
    """Every key `jaxad.data` reads (sources, pipeline, transforms), with its default."""
    d = ml_collections.ConfigDict()
    # Where the data comes from: a tfds builder's name ('eyeq', 'mood', ...: reads tfds_name),
    # 'folder' (an MVTec-layout folder at root), 'graded_folder' (<root>/<split>/<grade>/
    # images, grades 0-4), 'nifti_folder' (NIfTI volumes under root) or 'demo' (generated
    # locally: `demo` is 'fundus', 'phantom', 'brain', 'cxr' or 'dr', graded fundus photos).
    d.name = "folder"
    d.tfds_name = ""  # 'NAME/CONFIG'; several comma-separated are read as one dataset
    d.data_dir = ""  # tfds default: $TFDS_DATA_DIR or ~/tensorflow_datasets.
    d.root = ""
    d.demo = "fundus"
    d.train_split = "train"
    d.val_split = "validation"
    d.test_split = "test"
    # Low-label training: keep this fraction (in (0, 1]) of train_split's records per grade,
    # drawn with label_fraction_seed (jaxad.data.splits.stratified_fraction); graded data only.
    d.label_fraction = 1.0
    d.label_fraction_seed = 0
    # Lesion boxes (jaxad.data.lesion_boxes): '' none, a box file (JSON/CSV, ids = record ids)
    # or 'candidates' (jaxad.lesions.candidates, cached); rescaled to image_size, kept with
    # side <= box_max_side, score > box_threshold, > box_margin px inside (LCL's filter; the
    # original's swapped width/height with box_swap_wh); at most max_boxes per image.
    d.boxes = ""
    d.box_threshold = 0.8
    d.box_max_side = 128.0
    d.box_margin = 5.0
    d.box_swap_wh = False
    d.max_boxes = 32
    # Folder data: the validation hold-out of train/good when there is no val/good, and the
    # field of view ('ones', 'eyeq': EyeQ's fitted circle per image, 'circle').
    d.val_fraction = 0.1
    d.fov = "ones"
    # Folder data are verified before training (decodable, a mask the image's size, a shorter
    # side at least a quarter of the model's input), NIfTI volumes when indexed (decodable,
    # 3-D); a bad file stops the run naming every bad file ('fail') or is left out and counted
    # ('skip'), as the dataset builders' --on_corrupt.
    d.on_corrupt = "fail"
    # NIfTI volumes (name='nifti_folder', demo='brain'): slices along `axis` (an int, or a
    # comma-separated list read as one dataset), area-resized to `resize` (0: own size), kept
    # with at least `min_nonzero` positive pixels (when `filter`); volumes hashed into
    # validation with `split_seed`; slices cached as `dtype`.
    d.axis = ml_collections.FieldReference(0, field_type=object)
    d.resize = 256
    d.min_nonzero = 4000
    d.filter = True
    d.split_seed = 0
    d.dtype = "float16"
    # Each volume is decoded once per machine: its prepared slices are cached next to the slice
    # index ($JAXAD_DATA_DIR/nifti_index or ~/.cache/jaxad/nifti_index), at most nifti_cache_gb
    # GB (least recently used first out); False reads the volumes for every record.
    d.nifti_cache = True
    d.nifti_cache_gb = 50.0
    # Images: resized to image_size (or random crops of crop_size at their own resolution for
    # training, redrawn while their maximum is below crop_min_max), normalised per channel.
    d.image_size = 224
    d.channels = 3
    d.crop_size = 0
    d.crop_min_max = 0.0
    d.mean = (0.5, 0.5, 0.5)
    d.std = (0.5, 0.5, 0.5)
    d.hflip = False
    d.vflip = False
    d.flip_fov = False
    # Throughput of the host (bench/pipeline.py): several crops of each decoded image (mixed
    # across batches; 1 = one crop per read, as the originals), and lesion-based CL's patch
    # pairs cut on the host, in uint8 (0: the whole image goes to the device, which cuts them).
    d.crops_per_image = 1
    d.lesion_pairs = 0
    # Decode each 8-bit training image once per machine and keep it resized on local disk
    # (jaxad.data.decoded_cache, $JAXAD_DATA_DIR/decoded: image_size^2 x (channels + 2) bytes
    # per image; not with crop_size).
    d.decoded_cache = False
    # Reading: worker processes, read threads and batches read ahead, per process.
    d.num_workers = 2
    d.num_threads = 8
    d.prefetch = 4
    return d


def use_dr_demo(data: ml_collections.ConfigDict, image_size: int = 128) -> None:
    """Points `data` at the DR demo photos (`jaxad.data.dr_demo`, generated once, cached) in
    [0, 1], read in this process on 2 threads: the settings lesion-based CL's demo and its
    grader's share, so both read the same photos the same way."""
    data.name = "demo"
    data.demo = "dr"
    data.tfds_name = ""
    data.num_workers = 0
    data.num_threads = 2
    data.image_size = image_size


# --- evaluators ------------------------------------------------------------------------------
# Each returns the config of one evaluation for `c.evals.<name>`; `type` names the module of
# jaxad/evals/ that runs it, `prefix` goes before its metric names in metrics.json, `split`
# ('' = eval.split, else data.test_split; 'a+b' reads two splits as one) is what it scores.


def anomaly_map_eval(
    *,
    full_resolution: bool = False,
    prefix: str = "",
    split: str = "",
    output: str = "map",
    smooth_sigma: float = 0.0,
    normalize: str = "none",
    image_score: str = "method",
    top_k: float = 0.01,
    drop_largest: int = 1,
) -> ml_collections.ConfigDict:
    """The method's anomaly maps (`score`, or `dense_map` at each image's own resolution).

    `output` names the map among `score`'s outputs (a method may return several, e.g. a
    variant's: `<output>` with its image scores `<output>_score`). Post-processing
    (`jaxad.evals.postprocess`): a Gaussian of `smooth_sigma` px on each map (0: off), then
    `normalize='normal'` divides each pixel's deviation from the normal validation maps' mean
    by their spread there (needs normal images in `data.val_split`; 'none': off), then the
    image score: 'method' (the method's own), 'max', 'mean', 'topk_mean' (the mean of the
    highest `top_k` fraction of pixels) or 'components' (the map summed over its above-Otsu
    blobs but the `drop_largest` largest, Lesion2Void's original post-processing), over the
    field of view.
    """
    return ml_collections.ConfigDict(
        dict(
            type="anomaly_map",
            prefix=prefix,
            split=split,
            full_resolution=full_resolution,
            output=output,
            smooth_sigma=smooth_sigma,
            normalize=normalize,
            image_score=image_score,
            top_k=top_k,
            drop_largest=drop_largest,
        )
    )


def mean_image_eval(
    *, full_resolution: bool = False, prefix: str = "baseline/", split: str = ""
) -> ml_collections.ConfigDict:
    """Baseline: per-pixel distance from the mean (normalised) training image."""
    return ml_collections.ConfigDict(
        dict(type="mean_image", prefix=prefix, split=split, full_resolution=full_resolution)
    )


def zscore_eval(
    *,
    full_resolution: bool = False,
    max_train_images: int = 64,
    prefix: str = "baseline/",
    split: str = "",
) -> ml_collections.ConfigDict:
    """Baseline: |intensity z-score| of each pixel against the training images' pixels."""
    return ml_collections.ConfigDict(
        dict(
            type="zscore",
            prefix=prefix,
            split=split,
            full_resolution=full_resolution,
            max_train_images=max_train_images,
        )
    )


def threshold_eval(
    *, normal_quantile: float = 0.99, prefix: str = "threshold/", split: str = ""
) -> ml_collections.ConfigDict:
    """Decision thresholds for `jaxad.predict`, picked on `split` ('' = data.val_split) with the
    run's own maps: F1-optimal where the split has anomalies, else the `normal_quantile` of
    normal scores (`jaxad/evals/threshold.py`)."""
    return ml_collections.ConfigDict(
        dict(type="threshold", prefix=prefix, split=split, normal_quantile=normal_quantile)
    )


def panels_eval(
    *, num: int = 0, prefix: str = "panels/", split: str = ""
) -> ml_collections.ConfigDict:
    """Report pictures from the method's `panels` hook, of `num` images (0: eval.num_overlays)."""
    return ml_collections.ConfigDict(dict(type="panels", prefix=prefix, split=split, num=num))


def grading_eval(
    *,
    prefix: str = "",
    split: str = "",
    output: str = "grade_pred",
    thresholds: tuple[float, ...] = (-0.5, 0.5, 1.5, 2.5, 3.5),
) -> ml_collections.ConfigDict:
    """Grading by regression (`jaxad/evals/grading.py`): quadratic weighted kappa, accuracy,
    confusion matrix, per-grade recall; `output` names the [B] regression output of `score`."""
    return ml_collections.ConfigDict(
        dict(type="grading", prefix=prefix, split=split, output=output, thresholds=thresholds)
    )
