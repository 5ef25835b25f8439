r"""Times the original PyTorch MorphAEus (ci-ber/MorphAEus) on the CPU; prints one JSON object.

    /work/torchvenv/bin/python bench/morphaeus_torch.py --original=/tmp/morphaeus_orig \
        [--batch=64] [--steps=3] [--score_batch=64] [--score_calls=3] [--threads=2] \
        [--image_size=128] [--parts=train_morph,train_warmup,...] [--serve]

Run with a Python that has torch and torchvision (not jaxad's environment). Alone it times each
part in turn and prints one JSON object; with `--serve` (how `bench/morphaeus.py` runs it, so
that its calls alternate with jaxad's) it reads part names on stdin and answers each with one
timed call as a JSON line (see `serve`). `--original` is a checkout of the
original repository; its model and loss classes are imported from there at run time (nothing of it
is copied here). The model is built as its config `projects/23_morphaeus/configs/cxr/morphaeus.yaml`
does (128 px, one grey channel, widths 16..256 over 7 stride-2 levels, Swish, BN, transposed-conv
deformer, 3 reference levels, bidirectional), with random weights, and left in eval mode as the
original trainer leaves it (its BN layers use their initial running statistics). Inputs are random
uniform [0, 1] images, float32, CPU.

Made to run on a CPU, at run time only (the original's files are not edited):
- `NCC` builds its 9x9 window with `.to("cuda")`: `torch.Tensor.to` is wrapped so that a CUDA
  device becomes the CPU when no GPU is available;
- `VGGEncoder` asks torchvision for the ImageNet VGG19 (`pretrained=True`, a download): the runner
  wraps `torchvision.models.vgg19` to build it with random weights (as fast as trained ones);
- `optim.losses.image_losses` imports scikit-image's `color` without using it for these losses: an
  empty stand-in module is registered when scikit-image is not installed.

Parts (`--parts`, all but `train_no_deform` by default), each the median of `--steps` (train)
or `--score_calls` (score) timed calls after one untimed warm-up call, wall and CPU seconds
(torch uses `--threads` threads, default the CPUs this process may run on):
- `train_morph`: one step of the original trainer after its warm-up (epoch > 10): forward,
  L_rec = MSE(prior, x) + 0.05 VGG19 perceptual loss, the symmetric local NCC (both directions,
  after the trainer's `torch.equal` test of the two warped images) + β gradient-L2 smoothness of
  the velocity, backward, Adam (5e-4) step, and the trainer's four `.item()` reads. As in the
  original, the perceptual loss's VGG19 weights keep `requires_grad=True`, so backward also
  computes (and accumulates) their gradients, which nothing uses.
- `train_morph_vgg_frozen`: the same with the VGG19 weights frozen (`requires_grad=False`), what
  jaxad does (its VGG19 is not differentiated): the faster, fairer baseline.
- `train_warmup`: a step during the warm-up (epoch <= 10): the same forward and loss terms, but
  only L_rec is back-propagated (the deformer gets no gradient).
- `train_no_deform`: `train_morph` with the integration (`VecInt`) replaced by the identity and
  the warps (`SpatialTransformer`) by `src + 1e-3 * flow[:, :1]` (elementwise, keeping the flow
  in the graph): 1 - its time / `train_morph`'s is the deformation ops' share of the step.
- `deform_ops`: forward and backward of exactly those ops alone at the step's shapes: the
  original's `VecInt` on v and -v (7 squarings), warping a prior [B, 1, H, W] by exp(v) and the
  input by exp(-v), gradients for v and the prior (v ~ N(0, 1) pixels).
- `score`: the original evaluator's forward (`model(x)`, eval mode, autograd recording as in
  its evaluator, which has no `no_grad`) and the per-image mean of |x - x_rec|.
- `score_no_grad`: the same under `torch.no_grad()`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import common as bench_common  # bench/common.py, next to this script (standard library only)

PARTS = (
    "train_morph",
    "train_morph_vgg_frozen",
    "train_warmup",
    "train_no_deform",
    "deform_ops",
    "score",
    "score_no_grad",
)
DEFAULT_PARTS = tuple(p for p in PARTS if p != "train_no_deform")  # it costs 4 more slow steps
WIDTHS = [16, 32, 64, 128, 256, 256, 256]
ALPHA, BETA_MAX, DELTA, MAX_ITER, LR = 0.05, 3.0, 1.0, 200, 5e-4
MORPH_EPOCH = 11  # the first epoch with the morph terms (the trainer's `epoch > 10`)


def _log(msg: str) -> None:
    print(f"[torch runner] {msg}", file=sys.stderr, flush=True)


def _patch_for_cpu(torch: Any) -> None:
    """CUDA device requests of `Tensor.to` go to the CPU, the VGG19 is random, skimage optional."""
    if not torch.cuda.is_available():
        original_to = torch.Tensor.to

        def is_cuda(device: Any) -> bool:
            return (isinstance(device, str) and device.startswith("cuda")) or (
                isinstance(device, torch.device) and device.type == "cuda"
            )

        @functools.wraps(original_to)
        def to(self, *args, **kwargs):
            args = tuple("cpu" if is_cuda(a) else a for a in args)
            if is_cuda(kwargs.get("device")):
                kwargs["device"] = "cpu"
            return original_to(self, *args, **kwargs)

        torch.Tensor.to = to

    import torchvision

    vgg19 = torchvision.models.vgg19

    @functools.wraps(vgg19)
    def random_vgg19(*args, pretrained: bool = False, weights: Any = None, **kwargs):
        del args, pretrained, weights  # No download here: random weights are as fast.
        return vgg19(weights=None, **kwargs)

    torchvision.models.vgg19 = random_vgg19
    try:
        import skimage  # noqa: F401
    except ImportError:
        stub = types.ModuleType("skimage")
        stub.color = types.ModuleType("skimage.color")
        sys.modules["skimage"] = stub
        sys.modules["skimage.color"] = stub.color


def _stand_ins(torch: Any) -> tuple[Any, Any]:
    """Modules that replace `VecInt` (the identity) and `SpatialTransformer` (elementwise)."""

    class Identity(torch.nn.Module):
        def forward(self, vec):
            return vec

    class CheapWarp(torch.nn.Module):
        def forward(self, src, flow):
            return src + 1e-3 * flow[:, :1]

    return Identity(), CheapWarp()


class Original:
    """The original model and losses, built per part; `prepare(part)` gives its callable."""

    def __init__(self, args: argparse.Namespace):
        sys.path.insert(0, os.path.abspath(args.original))
        import numpy as np
        import torch

        torch.set_num_threads(args.threads)
        _patch_for_cpu(torch)
        from model_zoo.morphaeus import MorphAEus
        from optim.losses.image_losses import NCC, DisplacementRegularizer2D, PerceptualLoss
        from optim.losses.ln_losses import L2

        torch.manual_seed(2109)
        self.torch, self.args = torch, args
        self.classes = MorphAEus, PerceptualLoss
        self.ncc, self.rec_loss = NCC(), L2()
        self.smoothness = DisplacementRegularizer2D("gradient-l2")
        self.beta = float(np.clip(BETA_MAX * MORPH_EPOCH / MAX_ITER, 1e-3, BETA_MAX))
        self.gen = torch.Generator().manual_seed(0)
        s, b = args.image_size, args.batch
        self.x = torch.rand(b, 1, s, s, generator=self.gen)
        model, perceptual, _ = self.build()
        self.info = {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "original": os.path.abspath(args.original),
            "image_size": s,
            "batch_size": b,
            "params": int(sum(p.numel() for p in model.parameters())),
            "vgg_params": int(sum(p.numel() for p in perceptual.parameters())),
        }
        _log(f"model built: {self.info['params']:,} parameters, {self.info['threads']} threads")

    def build(self, vgg_frozen: bool = False) -> tuple[Any, Any, Any]:
        """The model as the original's CXR config builds it, its perceptual loss and Adam."""
        morphaeus, perceptual_loss = self.classes
        s = self.args.image_size
        model = morphaeus(
            inshape=(s, s),
            in_channels=1,
            channels=list(WIDTHS),
            out_ch=1,
            strides=[2] * len(WIDTHS),
            kernel_size=3,
            norm="batch",
            act="swish",
            deconv_mode="stride",
            nr_ref_channels=3,
            bidir=True,
        )
        model.eval()  # The original trainer trains in eval mode (fact sheet §2.6, gotcha 1).
        perceptual = perceptual_loss(device="cpu")
        if vgg_frozen:
            perceptual.requires_grad_(False)
        return model, perceptual, self.torch.optim.Adam(model.parameters(), lr=LR)

    def train_step(self, part: str) -> Callable[[], None]:
        """The original trainer's step on `x` (the body of MorphTrainer.train's batch loop)."""
        torch, x = self.torch, self.x
        model, perceptual, optimizer = self.build(vgg_frozen=part == "train_morph_vgg_frozen")
        if part == "train_no_deform":
            model.deformer.integrate, model.deformer.transformer = _stand_ins(torch)
        morph_on = part != "train_warmup"

        def step() -> None:
            warped, result = model(x, registration=False)
            prior, reversed_x = result["x_prior"], result["x_reversed"]
            loss_mse = self.rec_loss(prior, x)
            loss_pl = perceptual(prior, x)
            loss = loss_mse + ALPHA * loss_pl
            reg = self.smoothness(result["deformation"])
            if torch.equal(warped, reversed_x):
                similarity = self.ncc(x, warped)
            else:
                similarity = (self.ncc(x, warped) + self.ncc(prior, reversed_x)) / 2
            if morph_on:
                loss = loss + DELTA * (similarity + self.beta * reg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for term in (loss_mse, loss_pl, reg, similarity):
                term.item()

        return step

    def deform_ops(self) -> Callable[[], None]:
        """Forward and backward of VecInt(v), VecInt(-v) and the two warps, alone."""
        torch, gen, x = self.torch, self.gen, self.x
        b, s = self.args.batch, self.args.image_size
        model, _, _ = self.build()
        integrate, transformer = model.deformer.integrate, model.deformer.transformer
        v = torch.randn(b, 2, s, s, generator=gen).requires_grad_()
        prior = torch.rand(b, 1, s, s, generator=gen).requires_grad_()
        g1, g2 = torch.randn(b, 1, s, s, generator=gen), torch.randn(b, 1, s, s, generator=gen)

        def call() -> None:
            v.grad = prior.grad = None
            y_source = transformer(prior, integrate(v))
            y_target = transformer(x, integrate(-v))
            ((y_source * g1).sum() + (y_target * g2).sum()).backward()

        return call

    def score(self, no_grad: bool) -> Callable[[], Any]:
        """The evaluator's forward and the per-image mean residual on `--score_batch` images."""
        torch, s = self.torch, self.args.image_size
        model, _, _ = self.build()
        xs = torch.rand(self.args.score_batch, 1, s, s, generator=self.gen)

        def call() -> Any:
            warped, _ = model(xs)
            return (warped - xs).abs().mean(dim=(1, 2, 3)).detach().numpy()

        return torch.no_grad()(call) if no_grad else call

    def prepare(self, part: str) -> Callable[[], Any]:
        """The part's callable after one untimed warm-up call."""
        if part.startswith("train"):
            fn = self.train_step(part)
        elif part == "deform_ops":
            fn = self.deform_ops()
        else:
            fn = self.score(no_grad=part == "score_no_grad")
        fn()
        return fn

    def images(self, part: str) -> int | None:
        if part.startswith("train"):
            return self.args.batch
        return self.args.score_batch if part.startswith("score") else None


def run(args: argparse.Namespace) -> dict:
    """Times every part in turn: `--steps` or `--score_calls` calls after a warm-up call."""
    load = bench_common.OtherLoad()
    original = Original(args)
    out: dict[str, Any] = {**original.info, "parts": {}}
    for part in args.parts:
        t0 = time.perf_counter()
        fn = original.prepare(part)
        n = args.score_calls if part.startswith("score") else args.steps
        runs = [bench_common.timed_call(fn) for _ in range(n)]
        result = {
            "sec": statistics.median(t for t, _ in runs),
            "cpu_sec": statistics.median(c for _, c in runs),
            "sec_all": [t for t, _ in runs],
            "calls_timed": n,
        }
        images = original.images(part)
        if images:
            result["batch_size"] = images
            result["images_per_sec"] = images / result["sec"]
        result["part_wall_sec"] = time.perf_counter() - t0
        out["parts"][part] = result
        _log(f"{part}: {result['sec']:.3f} s per call")
    out["peak_rss_bytes"] = bench_common.peak_rss_bytes()
    out["other_cpus_busy"] = load.cpus()
    return out


def serve(args: argparse.Namespace) -> None:
    """One timed call per part name read from stdin, one JSON line each; "done" ends it.

    The first request of a part builds it and makes an untimed warm-up call first. The first
    line printed is {"info": ...}; the last, after "done" or end of input, has the peak RSS and
    `other_cpus_busy` of the whole session.
    """
    load = bench_common.OtherLoad()
    original = Original(args)
    bench_common.serve_parts(load, original.info, PARTS, original.prepare)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/morphaeus_torch.py", description=__doc__.strip().split("\n\n")[1]
    )
    p.add_argument("--original", required=True, help="checkout of ci-ber/MorphAEus")
    p.add_argument("--batch", type=int, default=64, help="training batch (64)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per part (3)")
    p.add_argument("--score_batch", type=int, default=64, help="scoring batch (64)")
    p.add_argument("--score_calls", type=int, default=3, help="timed scoring calls (3)")
    p.add_argument("--image_size", type=int, default=128, help="image side (128)")
    p.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1,
        help="torch.set_num_threads (default: the CPUs this process may use)",
    )
    p.add_argument("--serve", action="store_true", help="time one call per part read on stdin")
    p.add_argument(
        "--parts",
        default=",".join(DEFAULT_PARTS),
        help=f"comma-separated subset of {','.join(PARTS)} (default: all but train_no_deform)",
    )
    args = p.parse_args(argv)
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        p.error(f"--parts: unknown {unknown}; use a subset of {','.join(PARTS)}")
    for name in ("batch", "steps", "score_batch", "score_calls", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.serve:
        serve(args)
    else:
        print(json.dumps(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
