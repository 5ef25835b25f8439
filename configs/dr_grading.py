r"""Diabetic-retinopathy grading (the downstream task of lesion-based CL), scored by kappa.

Paper settings (`:finetune`, the default): PYCLS's `eyepacs.yaml`, which the LCL authors
evaluate with: whole EyePACS photos at 512 px, ResNet-50 + one output, MSE regression, grades
at the half-integer thresholds, SGD 1e-3 Nesterov, weight decay 5e-4, cosine over 25 epochs
per epoch, batch 16, flips, brightness/contrast 0.2, RandomResizedCrop, rotation and
translation; the state with the best validation kappa is kept and evaluated on the test split
(kappa, accuracy, confusion matrix, per-grade recall in eval/metrics.json, predictions per
image in eval/scores.csv). Start from a pre-training run:

  python -m jaxad.main --config=configs/dr_grading.py --workdir=/tmp/grader \
      --config.init_from.workdir=/tmp/lcl

or from ImageNet (`--config.grading.imagenet_weights=resnet50_imagenet.safetensors`), or from
scratch (neither). `:linear` is the linear probe (frozen backbone and statistics; the features
standardised, then a new fc).
`--config.data.label_fraction=0.1` trains on 10 % of the labels (per grade, seeded).

`:demo` and `:demo_linear` grade the DR demo photos (no download, a few minutes on 2 CPU
cores) with the demo pre-training's network (configs/lesioncl.py:demo). The demo's comparison
of starts (`python -m jaxad.lesions.compare_demo`) uses `:demo_linear`: fine-tuned from random
weights, this small grader reached validation kappas of 0.74 and 0.92 (seeds 1 and 2, dr_v1)
in its 300 steps, up and down by 0.3-0.5 between validations of 50 photos, so what a start
brings drowns in that noise; the probe reads the pre-trained features as they are.
"""

import ml_collections

from configs import common

VARIANTS = ("finetune", "linear", "demo", "demo_linear")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "finetune"
    if variant not in VARIANTS:
        raise ValueError(
            f"unknown variant {arg!r} of configs/dr_grading.py: use none or one of "
            f"{', '.join(':' + v for v in VARIANTS[1:])}."
        )
    c = common.get_config()
    c.method = "dr_grading"
    c.seed = 1

    c.data.name = "eyepacs"
    c.data.tfds_name = "eyepacs"
    c.data.image_size = 512
    c.data.mean = (0.0, 0.0, 0.0)  # normalised with EyePACS's statistics on device
    c.data.std = (1.0, 1.0, 1.0)

    c.model.depth = 50
    c.model.width = 64
    # XLA's own CPU dots and convolutions, not YNNPACK's: faster on 2 cores (common.py).
    c.model.cpu_ynnpack = False

    c.grading = ml_collections.ConfigDict()
    c.grading.mode = "linear" if variant in ("linear", "demo_linear") else "finetune"
    c.grading.imagenet_weights = ""
    c.grading.t_max = 25
    c.grading.steps_per_epoch = 0  # 0: training images // batch size

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-3
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.weight_decay = 5e-4
    c.batch_size = 16
    c.num_epochs = 25

    # Validation kappa every epoch (35,126 // 16 = 2,195 steps), the best state kept.
    c.validation.every = 2195
    c.checkpoint_every = 2195
    c.eval.batch_size = 16
    c.evals.grading = common.grading_eval()

    if variant in ("demo", "demo_linear"):
        common.use_dr_demo(c.data)
        c.model.depth = 18  # the demo pre-training's network (configs/lesioncl.py:demo)
        c.model.width = 8
        # 200 training photos, batch 16: 12 steps an epoch; 25 epochs, validated each epoch.
        # lr 0.01: 1e-3 barely moves a small network in 300 steps.
        c.optim.learning_rate = 0.01
        c.eval.batch_size = 50
        c.validation.every = 12
        c.checkpoint_every = 60
        c.log_every = 12
    return c
