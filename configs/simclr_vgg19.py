r"""SimCLR pre-training of VGG19 on MOOD slices: the perceptual-loss network of the MOOD DPA.

Paper settings (the solution's SimCLR fork, exp_1_mood.yaml): the 256 x 256 training slices
(folds 1-9) along axes 0, 1 and 2 of both regions read as one dataset, two views per slice
(random resized crop to 96, flip, brightness/contrast jitter, Gaussian blur; drawn on device),
VGG19 + projection head (71.9 M parameters), NT-Xent at temperature 0.5, Adam 3e-4 with coupled
weight decay 1e-5, batch 256, 80 epochs, the per-epoch cosine schedule, validation on fold 0
after every epoch keeping the best state. No anomaly evaluation (pre-training). (An earlier
version of the fork's config resumed from its own checkpoint, so the solution's VGG19 may have
trained for more than 80 epochs; 80 is the published setting.)

  python -m jaxad.data.build mood/brain_axis0 --manual_dir=~/mood   # and the other five:
  #   mood/brain_axis{1,2}, mood/abdom_axis{0,1,2}; see data_builders/mood/README.md
  python -m jaxad.main --config=configs/simclr_vgg19.py --workdir=/tmp/simclr

Then train the DPA axis models with its weights (configs/dpa.py):

  python -m jaxad.main --config=configs/dpa.py:brain_pixel_axis0 --workdir=/tmp/dpa_bp0 \
      --config.dpa.vgg_weights=/tmp/simclr

Your own NIfTI volumes (intensities in [0, 1]) instead of the tfds datasets: slices along
every axis listed in data.axis, prepared as the solution's (resize 256, >= 4000 non-zero):

  python -m jaxad.main --config=configs/simclr_vgg19.py --workdir=/tmp/simclr \
      --config.data.name=nifti_folder --config.data.root=DIR

Demo on a laptop CPU (no download: procedural brain volumes; about two minutes on 2 cores);
`python -m jaxad.mood demo --workdir=DIR` runs it with every later stage:

  python -m jaxad.main --config=configs/simclr_vgg19.py:demo --workdir=/tmp/simclr_demo

Faithful defaults and the flags that change them (jaxad/methods/simclr.py explains each):
- simclr.lr_schedule='cosine_epochs': the original's CosineAnnealingLR, T_max = int(steps per
  epoch / 10) epochs, stepped per epoch after the first; 'constant' keeps 3e-4.
- validation.every: the loop validates every N steps; 2700 is an estimate of one epoch (about
  690,000 training slices / 256, not counted on the data). The exact steps per epoch
  (training slices // batch_size) are logged when training starts: set validation.every (and
  checkpoint_every) to them to validate once per epoch exactly.
"""

import ml_collections

from configs import common

REGIONS = ("brain", "abdom")
AXES = (0, 1, 2)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "paper"
    if variant not in ("paper", "demo"):
        raise ValueError(
            f"unknown variant {arg!r} of configs/simclr_vgg19.py: use ':demo' or none."
        )
    c = common.get_config()
    c.method = "simclr"

    # Data: the six slice datasets of the mood tfds builder, read as one source. For
    # name='nifti_folder': a folder of NIfTI volumes, sliced along every axis in `axis` (the
    # solution's preparation: resize 256, >= 4000 non-zero pixels).
    c.data.name = "mood"
    c.data.tfds_name = ",".join(f"mood/{r}_axis{a}" for r in REGIONS for a in AXES)
    c.data.axis = "0,1,2"
    c.data.val_fraction = 0.1  # validation volumes (the solution's fold 0 of 10)
    c.data.train_split = "train"  # folds 1-9
    c.data.val_split = "validation"  # fold 0
    c.data.image_size = 256  # the builder's slices; crops are taken from these
    c.data.channels = 1
    c.data.mean = (0.0,)  # the views are unnormalised [0, 1] images, as in the original
    c.data.std = (1.0,)
    c.data.hflip = False  # flips happen in the on-device augmentation
    c.data.vflip = False

    # Network: SimCLRModel (VGG19 conv stack, adaptive pool, projection head).
    c.model.out_dim = 256
    c.model.hidden = 2048
    c.model.pool_size = 7  # AdaptiveAvgPool2d((7, 7)): 25088 features into the head
    c.model.vgg_width = 64  # VGG19's first-block channels; smaller only for CPU demos
    # The fork's head has no normalisation ('none'). 'batch' normalises its hidden layer by the
    # batch's statistics, as the SimCLR paper's head: the remedy when the collapse warning
    # below appears (the README's DPA section has what was measured). The DPA loads only the
    # VGG19 convs, whichever head trained them.
    c.model.head_norm = "none"

    # Method: views, loss, schedule.
    c.simclr = ml_collections.ConfigDict()
    c.simclr.crop_size = 96
    c.simclr.crop_scale = (0.08, 1.0)
    c.simclr.crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
    c.simclr.flip_p = 0.5
    c.simclr.jitter_p = 0.8
    c.simclr.brightness = 0.8
    c.simclr.contrast = 0.8
    c.simclr.blur_p = 0.5
    c.simclr.blur_kernel = 9  # int(0.1 * crop_size); odd, as OpenCV requires
    c.simclr.blur_sigma = (0.1, 2.0)
    c.simclr.temperature = 0.5
    c.simclr.lr_schedule = "cosine_epochs"
    c.simclr.t_max_decrease = 10
    c.simclr.epoch_warmup = 1
    c.simclr.steps_per_epoch = 0  # 0: training slices // batch_size

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 3e-4
    c.optim.weight_decay = 1e-5  # coupled (added to the gradient), as torch.optim.Adam
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.batch_size = 256
    c.num_epochs = 80

    # Validation after every epoch (an estimate in steps, see above); the best state is what
    # the DPA loads. No early stopping: the original ran all 80 epochs.
    c.validation.every = 2700
    c.eval.batch_size = 256  # validation batches: NT-Xent depends on the batch size

    c.checkpoint_every = 2700
    c.keep_checkpoints = 2

    # Collapse warning (jaxad.collapse): one log line when `patience` logged steps in a row have
    # the loss within `rel_tol` of log(2B - 1), the loss of identical embeddings, or the
    # embedding spread below `min_spread`. patience 0: off.
    c.collapse = ml_collections.ConfigDict()
    c.collapse.patience = 5
    c.collapse.rel_tol = 0.01
    c.collapse.min_spread = 0.01
    # Pre-training: no anomaly maps, so no evaluators (c.evals stays empty).

    if variant == "demo":
        # Procedural brain MRI volumes (jaxad.data.brain_phantom, 48^3, made on first use), so
        # that 2 CPU cores pre-train in about two minutes; `python -m jaxad.mood demo` runs this
        # and every later stage. What differs from the paper, and why:
        # - data: the demo's training volumes (one region, not brain and abdomen), slices along
        #   all three axes at their own 48 px (no resize to 256), the filter's 4000 positive
        #   pixels at 256^2 scaled to the slice area (141 at 48^2).
        # - views of 32 px (not 96): VGG19's five poolings need 32; blur kernel 3 by the
        #   original's rule int(0.1 * crop size).
        # - VGG width 16 (a quarter of VGG19's channels) and a 512-wide projection head (2048),
        #   batch 32 (256; 62 negatives per view instead of 510), 400 steps (80 epochs):
        #   the compute budget. About three epochs of the demo's ~4,600 training slices, so
        #   the per-epoch cosine schedule barely moves, as in the original's 80 epochs.
        # - validation every 145 steps: one epoch of the demo (training slices // 32).
        c.data.name = "demo"
        c.data.demo = "brain"
        c.data.tfds_name = ""
        c.data.resize = 0
        c.data.min_nonzero = 141
        c.data.image_size = 48
        c.data.num_workers = 0
        c.data.num_threads = 2
        c.simclr.crop_size = 32
        c.simclr.blur_kernel = 3
        c.model.vgg_width = 16
        c.model.hidden = 512
        c.batch_size = 32
        c.eval.batch_size = 32
        c.num_epochs = 0
        c.total_steps = 400
        c.validation.every = 145
        c.checkpoint_every = 145
        c.log_every = 25
    return c
