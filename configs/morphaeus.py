r"""MorphAEus (MICCAI 2023) on chest X-rays: a deformable autoencoder against false positives.

Paper settings (default): the COVID-19 Radiography Database split as MorphAEus did
(`covid19_radiography/morphaeus`: normal images for training, validation and test), 128 px
grey images in [0, 1], the 7-level autoencoder (BatchNorm, Swish, sigmoid output) and the
deformer (3,854,755 parameters), MSE + 0.05 x VGG19 perceptual loss on the prior, after epoch
10 + the symmetric local NCC and the velocity's gradient-L2 smoothness with β ramping to 3 at
epoch 200; Adam 5e-4, batch 64, at most 500 epochs with early stopping (patience 25) on the
validation loss, seed 2109. Scores: |x − warped prior|, image score its mean; AUROC, AUPRC and
FPR at 95 %/99 % TPR of the normal test images against each anomalous set (Pneumonia = Lung
Opacity, COVID), and against the mean-image baseline.

  python -m jaxad.data.build covid19_radiography --manual_dir=~/covid19_radiography
  python -m jaxad.main --config=configs/morphaeus.py --workdir=/tmp/morphaeus \
      --config.morphaeus.vgg_weights=~/vgg19_imagenet.safetensors

Variants: `:plain` is the autoencoder without the deformer ("MorphAEus-woPLM", α = 0); `:rsna`
reads the RSNA Pneumonia challenge (`rsna_pneumonia/256`), whose opacity boxes give pixel
metrics; any MVTec-layout folder of chest X-rays: --config.data.name=folder
--config.data.root=DIR (images are read as grey and resized to 128 px).

Demo on a laptop CPU (no download: procedural chest X-rays whose anatomy varies between
subjects, with synthetic opacities and masks, made on first use; MorphAEus and the plain
autoencoder trained side by side and evaluated in the same run against the mean-image
baseline):

  python -m jaxad.main --config=configs/morphaeus.py:demo --workdir=/tmp/morphaeus_demo

Faithful defaults and the flags that change them (jaxad/methods/morphaeus.py explains each):
- morphaeus.bn_mode='frozen': the original trains with BatchNorm in eval mode (its statistics
  never move from 0/1, so BN is a learned affine); 'train' is ordinary BatchNorm.
- morphaeus.vgg_weights='': without a file of torchvision's ImageNet VGG19 weights, a
  fixed-seed random VGG19 (with a warning); give the converted file for the paper's loss
  (README, "VGG19 weights").
- Resizing: the original resizes training images without antialiasing (a tensor resize) and
  test images with PIL's antialiased bilinear; jaxad resizes both the same way (the data
  pipeline's area-correct resize), one preprocessing for training and scoring.
"""

import ml_collections

from configs import common

VARIANTS = ("paper", "plain", "rsna", "demo")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "paper"
    if variant not in VARIANTS:
        raise ValueError(
            f"unknown variant {arg!r} of configs/morphaeus.py: use none or one of "
            f"{', '.join(':' + v for v in VARIANTS[1:])}."
        )
    c = common.get_config()
    c.method = "morphaeus"
    c.seed = 2109

    # Data: MorphAEus's splits of the COVID-19 Radiography Database, grey, [0, 1], 128 px.
    c.data.name = "covid19_radiography"
    c.data.tfds_name = "covid19_radiography/morphaeus"
    c.data.image_size = 128
    c.data.channels = 1
    c.data.mean = (0.0,)  # no normalisation: the original divides by 255 only
    c.data.std = (1.0,)
    c.data.hflip = False  # no augmentation
    c.data.vflip = False
    # Each X-ray decoded once per machine, kept at 128 px on local disk (49 kB per image with its
    # mask and FOV; the same values): the step is so cheap that decoding every image each epoch
    # is more than a TPU host's cores can do (bench/README.md, pipeline).
    c.data.decoded_cache = True
    c.data.train_split = "train"
    c.data.val_split = "validation"
    c.data.test_split = "test"

    # Networks: the autoencoder's level widths (7 stride-2 levels: 128 px -> 1 x 1), and the
    # VGG19 of the perceptual loss (frozen).
    c.model.widths = (16, 32, 64, 128, 256, 256, 256)
    c.model.vgg_width = 64

    c.morphaeus = ml_collections.ConfigDict()
    c.morphaeus.deform = True  # False: the plain autoencoder (MorphAEus-woPLM)
    c.morphaeus.bn_mode = "frozen"  # as the original (see above); 'train': ordinary BN
    c.morphaeus.alpha = 0.05  # perceptual loss weight
    c.morphaeus.delta = 1.0  # morph loss weight
    c.morphaeus.beta = 3.0  # smoothness weight at the end of its ramp
    c.morphaeus.max_iter = 200  # epochs of the ramp
    c.morphaeus.warmup_epochs = 10  # the morph terms start after this epoch
    c.morphaeus.morph_trains_autoencoder = True  # False: the morph terms train the deformer only
    c.morphaeus.steps_per_epoch = 0  # 0: training images // batch size
    c.morphaeus.vgg_weights = ""  # .safetensors or .npz of torchvision VGG19; '' = random
    c.morphaeus.train_plain = False  # also train the plain autoencoder in the same run
    c.morphaeus.plain_alpha = 0.0

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 5e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.batch_size = 64
    c.num_epochs = 500

    # Validation every epoch (8,154 training images // 64 = 127 steps), best state kept, early
    # stopping after 25 epochs without a gain.
    c.validation.every = 127
    c.validation.patience = 25
    c.validation.min_delta = 1e-8
    c.checkpoint_every = 127
    c.keep_checkpoints = 2

    # Evaluation: each anomalous set against the normal test images.
    c.eval.batch_size = 64
    c.eval.pixel_metrics = False  # the database's masks are lung masks, not lesions
    c.evals.model = common.anomaly_map_eval(split="test+test_opacity")
    c.evals.covid = common.anomaly_map_eval(split="test+test_covid", prefix="covid/")
    c.evals.baseline = common.mean_image_eval(split="test+test_opacity")
    c.evals.panels = common.panels_eval(split="test+test_opacity")  # input, prior, warp, residual

    if variant == "plain":
        c.morphaeus.deform = False
        c.morphaeus.alpha = 0.0
    if variant == "rsna":
        c.data.name = "rsna_pneumonia"
        c.data.tfds_name = "rsna_pneumonia/256"
        c.eval.pixel_metrics = True  # opacity boxes
        c.evals.model.split = ""
        c.evals.baseline.split = ""
        c.evals.panels.split = ""
        del c.evals["covid"]
    if variant == "demo":
        # Procedural chest X-rays (jaxad.data.cxr_phantom, 128 px, made on first use) and the
        # plain autoencoder evaluated alongside. What differs from the paper, and why:
        c.data.name = "demo"
        c.data.demo = "cxr"
        c.data.tfds_name = ""
        c.data.decoded_cache = False
        c.data.num_workers = 0
        c.data.num_threads = 2
        c.eval.pixel_metrics = True  # the demo has opacity masks
        c.evals.model.split = ""
        c.evals.baseline.split = ""
        c.evals.panels.split = ""
        del c.evals["covid"]
        # The plain autoencoder is MorphAEus's own: with the morph terms on the deformer only
        # (below), its parameters get exactly the plain loss's gradient, so |x − x̂| is the
        # plain autoencoder's map and the comparison isolates the deformation.
        c.evals.plain = common.anomaly_map_eval(prefix="plain/", output="prior_map")
        # - image scores for both: the mean of the highest 5 % of the map after a Gaussian of
        #   1 px (the paper's whole-map mean stays in the other variants). The mean dilutes the
        #   demo's small opacities and nodules into the rib residual of the whole image; with
        #   this score MorphAEus beat the plain autoencoder in image AUROC (by 0.05-0.09) and in
        #   FPR at 95 % TPR (by 0.02-0.07) at seeds 2109, 1 and 2, and on 800 further images
        #   of the generator (README, "MorphAEus"), where with the mean the FPR did not separate;
        for e in (c.evals.model, c.evals.plain):
            e.smooth_sigma, e.image_score, e.top_k = 1.0, "topk_mean", 0.05
        # - 64 px images and one level fewer (6 stride-2 levels to the 1 x 1 bottleneck: the
        #   paper's widths without its last 256), batch 8 and 1,200 steps (26 epochs of 360
        #   images): the compute budget of 2 CPU cores (about 3.5 steps/s);
        c.data.image_size = 64
        c.model.widths = (16, 32, 64, 128, 256, 256)
        c.batch_size = 8
        c.eval.batch_size = 8
        c.num_epochs = 0
        c.total_steps = 1200
        # - Adam 1e-3 (5e-4 leaves the autoencoder blurrier within the budget; 2e-3 diverged
        #   once); the morph terms from epoch 4 (paper: 11) so that the deformer trains for
        #   most of the budget; β on the paper's ramp (3 at epoch 200: at most 0.39 here);
        c.optim.learning_rate = 1e-3
        c.morphaeus.warmup_epochs = 3
        # - ordinary BatchNorm ('train'): with the original's frozen BN the autoencoder
        #   collapsed to a constant image within 20 steps on dark-background images (the
        #   Shepp-Logan population of the tests), and on the demo the warp gained less image
        #   AUROC over the plain autoencoder (README, "MorphAEus");
        c.morphaeus.bn_mode = "train"
        # - no perceptual loss (α = 0, so MorphAEus and the plain autoencoder differ by the
        #   deformation alone): no ImageNet VGG19 on a fresh machine, and a random VGG19's
        #   loss slowed the autoencoder (prior MSE 0.025 against 0.016 at step 120);
        c.morphaeus.alpha = 0.0
        # - the morph terms train the deformer only: with the original's gradient path, the
        #   local NCC (blind to intensity and to the sign of the correlation, 20x the MSE)
        #   wiped the lung fields out of the prior within 200 steps of a short training.
        c.morphaeus.morph_trains_autoencoder = False
        c.validation.every = 0  # no early stopping within the demo's budget
        c.checkpoint_every = 100
        c.log_every = 20
    return c
