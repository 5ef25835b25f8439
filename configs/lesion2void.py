r"""Lesion2Void (ISBI 2022) on EyeQ: masked-lattice reconstruction of normal fundus images.

Paper settings (default): EyeQ "Good" quality, DR grade 0 for training, 224 px, U-Net (width 64,
31.0 M parameters) + PatchGAN (LSGAN weight 0.1), 48/16 lattice with U(-1, 1) fill, L1 on erased
FOV pixels, Adam 1e-3 with coupled weight decay 5e-4, batch 32, 50 epochs, constant LR.

  python -m jaxad.data.build eyeq --manual_dir=~/eyeq_raw     # once; see data_builders/eyeq
  python -m jaxad.main --config=configs/lesion2void.py --workdir=/tmp/l2v

Demo on a laptop CPU (no download: fundus images with synthetic lesions made locally; a few
minutes on 2 cores; writes DIR/eval/metrics.json with the model's and the baseline's AUROCs):

  python -m jaxad.main --config=configs/lesion2void.py:demo --workdir=/tmp/l2v_demo

Faithful defaults and the flags that change them:
- data.flip_fov=False: the original does not flip the FOV mask with the image (a bug; set True).
- l2v.loss_norm='all': L1 averaged over all pixels, not just the erased ones ('mask').
- score.image_score='postprocess': the original's green-channel/Otsu/component score; 'mean' is
  the mean residual.
- The original duplicates the last test image when the test set size is 1 mod the batch size;
  jaxad pads instead and scores every image once (not a flag: it is a bug with no use).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "paper"
    if variant not in ("paper", "demo"):
        raise ValueError(f"unknown variant {arg!r} of configs/lesion2void.py: use ':demo' or none.")
    c = common.get_config()
    c.method = "lesion2void"

    # Data: EyeQ via its tfds builder (python -m jaxad.data.build eyeq --manual_dir=...);
    # data.name='folder' with data.root reads an MVTec-layout folder instead.
    c.data.name = "eyeq"
    c.data.tfds_name = "eyeq/good"
    c.data.image_size = 224
    c.data.channels = 3
    # Statistics of Graham-enhanced EyeQ images, as in the original.
    c.data.mean = (0.5237435698509216, 0.5158771276473999, 0.5120670199394226)
    c.data.std = (0.10673565417528152, 0.1030181273818016, 0.07659775018692017)
    c.data.hflip = True
    c.data.vflip = True
    c.data.flip_fov = False
    # Field of view of folder data (EyeQ stores its own): 'ones', 'eyeq' (EyeQ's fitted circle,
    # computed per image) or 'circle'. It masks the loss and the pixel metrics.
    c.data.fov = "ones"

    # Networks.
    c.model.width = 64  # U-Net base channels (64 -> 31,043,651 parameters).
    c.model.disc_width = 64  # PatchGAN base channels (64 -> 2,765,633 parameters).
    # model.fast_conv_grad (configs/common.py): the convs' kernel gradients by matrix products
    # on CPU, up to 4.6x faster per layer than XLA's lowering, the training step 1.4x (batch 8)
    # to 1.6x (batch 32); see bench/README.md.

    # Method.
    c.l2v = ml_collections.ConfigDict()
    c.l2v.grid = 48
    c.l2v.patch = 16
    c.l2v.test_step = 8  # 36 test lattices at offsets {0, 8, ..., 40}^2.
    c.l2v.adv_weight = 0.1
    c.l2v.loss_norm = "all"
    c.l2v.score_chunk = 4  # test lattices run per compiled forward (memory vs speed).

    # Image score.
    c.score = ml_collections.ConfigDict()
    c.score.image_score = "postprocess"
    c.score.channel = 1  # green
    c.score.radius = 100  # circle radius in pixels; 0 scales the original's 100 px at 224.
    # Components kept: size ranks rank_lo..rank_hi-1. The original drops the 30 largest of its
    # 224 px photographs (disc, vessels, rim); at 64 px, where vessels are not resolved and the
    # disc is one blob, dropping 1 ranked an independent fundus set best (bench/README.md).
    c.score.rank_lo = 30
    c.score.rank_hi = 100

    # Optimisation (both networks).
    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-3
    c.optim.weight_decay = 5e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.batch_size = 32
    c.num_epochs = 50

    # Evaluation: the maps, and the mean-image baseline (baseline/...) in the same report.
    c.evals.model = common.anomaly_map_eval()
    c.evals.baseline = common.mean_image_eval()
    c.eval.pixel_metrics = False  # EyeQ has no lesion masks.

    if variant == "demo":
        # Fundus photographs with synthetic microaneurysms, haemorrhages and exudates, made on
        # first use (jaxad.data.demo), so that 2 CPU cores finish in minutes. What differs from
        # the paper, and why:
        # - 128 px, networks of width 16, batch 16, 400 steps: the compute budget.
        c.data.name = "demo"
        c.data.demo = "fundus"
        c.data.tfds_name = ""
        c.data.image_size = 128
        c.model.width = 16
        c.model.disc_width = 16
        c.batch_size = 16
        c.num_epochs = 0
        c.total_steps = 400
        # - The lattice scaled with the image: 8 px squares with period 24 (the paper's 3:1
        #   ratio), 36 test lattices at offsets {0, 4, ..., 20}^2.
        c.l2v.grid = 24
        c.l2v.patch = 8
        c.l2v.test_step = 4
        # - The demo images' own statistics, and EyeQ's field-of-view algorithm run on each
        #   image (the demo has no stored FOV).
        c.data.mean = (0.522, 0.212, 0.153)
        c.data.std = (0.377, 0.167, 0.125)
        c.data.fov = "eyeq"
        # - Image score: the maximum of the map inside the FOV. The original post-processing
        #   drops the 30 largest residual components as vessels and optic disc, a rule tuned on
        #   real EyeQ photographs; here the drawn lesions are among the largest components, so
        #   it discards them (image AUROC below 0.5 on this data, at 128 and 224 px alike).
        c.score.image_score = "max"
        c.score.radius = 0
        # - Pixel metrics: the demo has lesion masks.
        c.eval.pixel_metrics = True
        c.eval.batch_size = 16
        c.data.num_workers = 0
        c.data.num_threads = 2
        c.log_every = 20
        c.checkpoint_every = 100
    return c
