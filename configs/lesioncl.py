r"""Lesion-based contrastive learning (MICCAI 2021): pre-training on patches around lesions.

Paper settings (default): EyePACS photos (`eyepacs`, border-cropped) resized to 512 px, lesion
boxes from a box file (the authors' released predictions converted once with
`python -m jaxad.lesions import-pickle`, or any detector's output), kept with confidence > 0.8
(the released models' threshold; their script says 0.5), side <= 128 px and a 5 px margin;
two 128 px patches around one lesion per image, LCL's augmentations, ResNet-50 (ImageNet
weights from a local file) + 2048-2048-128 head, NT-Xent τ 0.07 over the 2B views, SGD 0.02
Nesterov, weight decay 5e-4, per-epoch cosine over 1000 epochs, batch 768, seed 1; the
validation loss every 10 epochs, best state kept.

  python -m jaxad.lesions import-pickle --pickle=EyePACS_predictions_128_08.pkl --out=boxes.json
  python -m jaxad.main --config=configs/lesioncl.py --workdir=/tmp/lcl \
      --config.data.boxes=boxes.json --config.lcl.imagenet_weights=resnet50_imagenet.safetensors

Variants: `:simclr` is the whole-image SimCLR baseline at 128 px (same network, loss and
budget); `:demo` and `:demo_simclr` run on the DR demo photos (no download, a few minutes on 2
CPU cores, boxes from the built-in lesion candidates). Then `configs/dr_grading.py` grades with
`--config.init_from.workdir=<this run>`.
"""

import ml_collections

from configs import common

VARIANTS = ("paper", "simclr", "demo", "demo_simclr")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "paper"
    if variant not in VARIANTS:
        raise ValueError(
            f"unknown variant {arg!r} of configs/lesioncl.py: use none or one of "
            f"{', '.join(':' + v for v in VARIANTS[1:])}."
        )
    c = common.get_config()
    c.method = "lesioncl"
    c.seed = 1

    # Data: EyePACS at 512 px in [0, 1] (the augmentations normalise with EyePACS's statistics
    # last), with lesion boxes filtered as the original (jaxad.data.lesion_boxes).
    c.data.name = "eyepacs"
    c.data.tfds_name = "eyepacs"
    c.data.image_size = 512
    c.data.mean = (0.0, 0.0, 0.0)
    c.data.std = (1.0, 1.0, 1.0)
    c.data.boxes = ""  # a box file (required), or 'candidates'
    c.data.box_threshold = 0.8
    c.data.box_max_side = 128.0
    c.data.box_margin = 5.0
    # The host cuts the two 128 px patches (the original's law, `pipeline.lesion_pair_example`)
    # and sends them in uint8, not the whole 512 px photo: 16x fewer bytes, and a TPU host
    # keeps up (bench/README.md, pipeline). 0: the device cuts them (the demo variants do).
    c.data.lesion_pairs = 128
    # Each photo decoded once per machine, kept at 512 px in uint8 on local disk (786 kB per
    # photo, 27.6 GB for EyePACS's 35,126; $JAXAD_DATA_DIR/decoded): decoding dominates the
    # host's cost per image otherwise. False decodes every photo at every epoch.
    c.data.decoded_cache = True

    c.model.depth = 50
    c.model.width = 64
    c.model.head_hidden = 0  # 0: the backbone's feature size (2048)
    c.model.head_features = 128
    c.model.head_norm = "none"  # LCL's head; 'batch' normalises its hidden layer (SimCLR's)
    # XLA's own CPU dots and convolutions, not YNNPACK's: faster on 2 cores (common.py).
    c.model.cpu_ynnpack = False

    c.lcl = ml_collections.ConfigDict()
    c.lcl.views = "lesion"  # 'whole': SimCLR on whole images resized to patch_size
    c.lcl.patch_size = 128
    c.lcl.crop_scale = (0.8, 1.2)
    c.lcl.crop_ratio = (0.8, 1.2)
    c.lcl.color_jitter = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    c.lcl.degrees = 180.0
    c.lcl.translate = (0.2, 0.2)
    c.lcl.grayscale_p = 0.2
    c.lcl.temperature = 0.07
    c.lcl.imagenet_weights = ""  # torchvision ResNet-50 state dict (.safetensors/.npz)
    c.lcl.t_max = 1000  # epochs of the cosine
    c.lcl.steps_per_epoch = 0  # 0: training images with boxes // batch size

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 0.02
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.weight_decay = 5e-4
    c.batch_size = 768  # the maintainer's number (the original config: 786)
    c.num_epochs = 1000

    # The validation loss every 10 epochs (about 45 steps each at 35,126 images), best kept.
    c.validation.every = 450
    c.checkpoint_every = 450
    c.eval.batch_size = 768
    c.evals = ml_collections.ConfigDict()  # pre-training: nothing to evaluate

    if variant in ("simclr", "demo_simclr"):
        c.lcl.views = "whole"
        c.data.boxes = ""
    if variant != "paper":
        c.data.lesion_pairs = 0
        c.data.decoded_cache = False
    if variant in ("demo", "demo_simclr"):
        # The DR demo photos (jaxad.data.dr_demo: 200 training photos with grades 0-4), at
        # 128 px, with boxes from the built-in candidate generator; what differs, and why:
        common.use_dr_demo(c.data)
        if variant == "demo":
            # The built-in candidates, kept at LCL's threshold 0.8 like a detector's boxes:
            # they skip the optic disc and the fovea, so most normal photos have none and are
            # dropped, as LCL drops them (at 0.55 with the fovea boxed, near half the pairs
            # were not lesions).
            c.data.boxes = "candidates"
        # - 32 px patches and boxes (LCL's 128 of 512, scaled), margin 1 px;
        c.lcl.patch_size = 32
        c.data.box_max_side = 32.0
        c.data.box_margin = 1.0
        # - ResNet-18 at width 8 and a 64-64-32 head, random init: 2 CPU cores, no download;
        c.model.depth = 18
        c.model.width = 8
        c.model.head_features = 32
        # - the head's hidden layer batch-normalised (SimCLR's head; LCL's has no norm): with
        #   LCL's head the loss stayed near chance through all 1200 steps at seeds 2 and 3 (13.2
        #   of 13.84) and the grader's probe from it was below the one from random weights;
        #   with it every seed learns and its probe beats random weights (README);
        c.model.head_norm = "batch"
        # - softer views: B5's colour jitter, hue, translation and random grayscale make this
        #   small network from random weights collapse (every embedding the same, the loss at
        #   log(2B - 1) = 4.84 from step 10 on, also at lr 0.02 or 0.005, with a BatchNorm head,
        #   or with translation alone): its random features are mostly the patch's colour. So
        #   always grayscale (the views must agree on shape: dark and bright spots), brightness
        #   and contrast 0.2, no saturation or hue (nothing left to change), no translation (the
        #   two patch placements already move the lesion by up to 32 px minus its side); flips,
        #   the crop and the rotation stay as B5;
        c.lcl.color_jitter = (0.2, 0.2, 0.0, 0.0)
        c.lcl.grayscale_p = 1.0
        c.lcl.translate = (0.0, 0.0)
        # - temperature 0.2 (B6: 0.07): with these views, after 300 steps the loss was 4.63 at
        #   0.07 and 4.10 at 0.2 (logged times 0.2 / 0.07: 11.7, chance 13.84);
        c.lcl.temperature = 0.2
        # - batch 64, 1200 steps (400 epochs of 3 steps) with the cosine over them, lr 0.1:
        #   after 400 steps the loss is still near chance at some seeds, and the grader's
        #   probe from them no better than from random weights (README, "Lesion-based
        #   contrastive learning"). An epoch is fixed at 3 steps (200 photos // 64) in both
        #   variants: lesion-based pre-training drops the photos without a box, and its cosine
        #   must still span the whole-image run's 1200 steps, not end early and leave lr 0.
        c.batch_size = 64
        c.eval.batch_size = 64
        c.num_epochs = 0
        c.total_steps = 1200
        c.lcl.t_max = 400
        c.lcl.steps_per_epoch = 3
        c.optim.learning_rate = 0.1
        c.validation.every = 0
        c.checkpoint_every = 200
        c.log_every = 10
    return c
