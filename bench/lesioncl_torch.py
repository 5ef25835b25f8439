r"""Times PyTorch equivalents of lesion-based CL pre-training and DR grading; prints JSON.

    /work/torchvenv/bin/python bench/lesioncl_torch.py \
        [--lcl_batch=16] [--grade_batch=4] [--score_batch=4] [--steps=3] [--threads=2] \
        [--patch_size=128] [--image_size=512] [--parts=lcl_train,grade_train,...] [--serve]

Run with a Python that has torch and torchvision (not jaxad's environment). Alone it times each
part in turn and prints one JSON object; with `--serve` (how `bench/lesioncl.py` runs it, so
that its calls alternate with jaxad's) it reads part names on stdin and answers each with one
timed call as a JSON line (see `serve`). Everything here is plain torchvision, written for this
benchmark: torchvision's ResNet-50 with random weights (as fast as ImageNet ones), float32,
NCHW (torch's default memory format), CPU, random inputs; torch uses `--threads` threads
(`torch.set_num_threads`, default the CPUs this process may run on).

Parts, each the median of `--steps` timed calls after one untimed warm-up call, wall and CPU
seconds:
- `lcl_train`: one contrastive pre-training step on 2 x `--lcl_batch` ready-made views
  (`--patch_size` px, normalised; no augmentation, no patch cutting): ResNet-50 with its fc
  replaced by Linear(2048, 2048) - ReLU - Linear(2048, 128), train mode (BatchNorm statistics
  over all 2B views, one forward pass), `F.normalize`, NT-Xent at temperature 0.07 over the 2B
  views (each view's positive is the other view of its image, the other 2B - 2 its negatives),
  backward, SGD (lr 0.02, momentum 0.9, Nesterov, weight decay 5e-4) step, `loss.item()`.
- `lcl_aug`: the views of that step made on the host as a torchvision data loader would make
  them, one image at a time (`torchvision.transforms.v2` on tensors): two `--patch_size` crops of
  a `--image_size` image (fixed positions), each through horizontal and vertical flips (p 0.5),
  ColorJitter(0.4, 0.4, 0.4, 0.1), RandomResizedCrop(scale 0.8-1.2, ratio 0.8-1.2, bilinear,
  antialiased), RandomAffine(180, translate 0.2, nearest), RandomGrayscale(0.2) and Normalize
  (LCL's order), stacked into the 2B views. On one thread, as a `DataLoader` worker runs
  (torch sets one thread in each worker; with 2 threads these many small ops ran 10-40x slower
  whenever another job kept a core busy), in this process: the workers would run it beside the
  training step.
- `grade_train`: one DR grading step on `--grade_batch` images of `--image_size` px (normalised,
  no augmentation): ResNet-50 with fc -> Linear(2048, 1), train mode, MSE against random grades
  0-4, backward, SGD (lr 1e-3, momentum 0.9, Nesterov, weight decay 5e-4) step, `loss.item()`.
- `grade_score`: the grader's inference on `--score_batch` images: eval mode, `torch.no_grad()`,
  the [B] outputs as a numpy array.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import common as bench_common  # bench/common.py, next to this script (standard library only)

PARTS = ("lcl_train", "lcl_aug", "grade_train", "grade_score")
TEMPERATURE = 0.07
LCL_LR, GRADE_LR, MOMENTUM, WEIGHT_DECAY = 0.02, 1e-3, 0.9, 5e-4
EYEPACS_MEAN = (0.425753653049469, 0.29737451672554016, 0.21293757855892181)
EYEPACS_STD = (0.27670302987098694, 0.20240527391433716, 0.1686241775751114)


def _log(msg: str) -> None:
    print(f"[torch runner] {msg}", file=sys.stderr, flush=True)


def nt_xent(torch: Any, z: Any, temperature: float) -> Any:
    """NT-Xent of unit-norm embeddings z [2B, D], rows view by view; mean over the 2B anchors."""
    n = z.shape[0]
    b = n // 2
    logits = (z @ z.T) / temperature
    logits = logits.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    positive = torch.cat([torch.arange(b, n), torch.arange(0, b)])
    return torch.nn.functional.cross_entropy(logits, positive)


class Bench:
    """The networks and inputs, built per part; `prepare(part)` gives its callable."""

    def __init__(self, args: argparse.Namespace):
        import torch
        import torchvision

        torch.set_num_threads(args.threads)
        torch.manual_seed(1)
        self.torch, self.torchvision, self.args = torch, torchvision, args
        self.gen = torch.Generator().manual_seed(0)
        self.info = {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "memory_format": "NCHW (contiguous)",
            "image_size": args.image_size,
            "patch_size": args.patch_size,
            "lcl_batch": args.lcl_batch,
            "grade_batch": args.grade_batch,
            "score_batch": args.score_batch,
            "lcl_params": int(sum(p.numel() for p in self.lcl_net().parameters())),
            "grade_params": int(sum(p.numel() for p in self.grader().parameters())),
        }
        _log(f"{self.info['threads']} threads")

    def lcl_net(self) -> Any:
        """ResNet-50 with the 2048-2048-128 projection head in place of fc."""
        nn = self.torch.nn
        net = self.torchvision.models.resnet50(weights=None)
        net.fc = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(inplace=True), nn.Linear(2048, 128))
        return net

    def grader(self) -> Any:
        """ResNet-50 with one output."""
        net = self.torchvision.models.resnet50(weights=None)
        net.fc = self.torch.nn.Linear(2048, 1)
        return net

    def _sgd(self, net: Any, lr: float) -> Any:
        return self.torch.optim.SGD(
            net.parameters(), lr=lr, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY
        )

    def lcl_train(self) -> Callable[[], float]:
        torch, p = self.torch, self.args.patch_size
        net = self.lcl_net().train()
        optimizer = self._sgd(net, LCL_LR)
        views = torch.randn(2 * self.args.lcl_batch, 3, p, p, generator=self.gen)

        def step() -> float:
            z = torch.nn.functional.normalize(net(views), dim=1)
            loss = nt_xent(torch, z, TEMPERATURE)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss.item()

        return step

    def lcl_aug(self) -> Callable[[], Any]:
        torch, s, p = self.torch, self.args.image_size, self.args.patch_size
        from torchvision.transforms import v2

        transform = v2.Compose(
            [
                v2.RandomHorizontalFlip(0.5),
                v2.RandomVerticalFlip(0.5),
                v2.ColorJitter(0.4, 0.4, 0.4, 0.1),
                v2.RandomResizedCrop(p, scale=(0.8, 1.2), ratio=(0.8, 1.2), antialias=True),
                v2.RandomAffine(180, translate=(0.2, 0.2)),
                v2.RandomGrayscale(0.2),
                v2.Normalize(EYEPACS_MEAN, EYEPACS_STD),
            ]
        )
        images = torch.rand(self.args.lcl_batch, 3, s, s, generator=self.gen)
        a, b = s // 4, s // 2  # two fixed patch positions: the cut itself is a view

        def call() -> Any:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as in a DataLoader worker
            try:
                first = [transform(x[:, a : a + p, a : a + p]) for x in images]
                second = [transform(x[:, b : b + p, b : b + p]) for x in images]
                return torch.stack(first + second)
            finally:
                torch.set_num_threads(threads)

        return call

    def grade_train(self) -> Callable[[], float]:
        torch, s = self.torch, self.args.image_size
        net = self.grader().train()
        optimizer = self._sgd(net, GRADE_LR)
        x = torch.randn(self.args.grade_batch, 3, s, s, generator=self.gen)
        grade = torch.randint(0, 5, (self.args.grade_batch,), generator=self.gen).float()

        def step() -> float:
            loss = torch.nn.functional.mse_loss(net(x)[:, 0], grade)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss.item()

        return step

    def grade_score(self) -> Callable[[], Any]:
        torch, s = self.torch, self.args.image_size
        net = self.grader().eval()
        x = torch.randn(self.args.score_batch, 3, s, s, generator=self.gen)

        @torch.no_grad()
        def call() -> Any:
            return net(x)[:, 0].numpy()

        return call

    def prepare(self, part: str) -> Callable[[], Any]:
        """The part's callable after one untimed warm-up call."""
        fn = getattr(self, part)()
        fn()
        return fn

    def images(self, part: str) -> int:
        """Images per call (training parts: photos, i.e. views / 2 for lcl)."""
        if part.startswith("lcl"):
            return self.args.lcl_batch
        return self.args.grade_batch if part == "grade_train" else self.args.score_batch


def run(args: argparse.Namespace) -> dict:
    """Times every part in turn: `--steps` calls after a warm-up call."""
    load = bench_common.OtherLoad()
    bench = Bench(args)
    out: dict[str, Any] = {**bench.info, "parts": {}}
    for part in args.parts:
        t0 = time.perf_counter()
        fn = bench.prepare(part)
        runs = [bench_common.timed_call(fn) for _ in range(args.steps)]
        result = {
            "sec": statistics.median(t for t, _ in runs),
            "cpu_sec": statistics.median(c for _, c in runs),
            "sec_all": [t for t, _ in runs],
            "calls_timed": args.steps,
            "batch_size": bench.images(part),
        }
        result["images_per_sec"] = result["batch_size"] / result["sec"]
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
    `other_cpus_busy` of the whole run.
    """
    load = bench_common.OtherLoad()
    bench = Bench(args)
    bench_common.serve_parts(load, bench.info, PARTS, bench.prepare)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/lesioncl_torch.py", description=__doc__.strip().split("\n\n")[1]
    )
    p.add_argument("--lcl_batch", type=int, default=16, help="pre-training images (16: 32 views)")
    p.add_argument("--grade_batch", type=int, default=4, help="grading training batch (4)")
    p.add_argument("--score_batch", type=int, default=4, help="grading inference batch (4)")
    p.add_argument("--steps", type=int, default=3, help="timed calls per part (3)")
    p.add_argument("--patch_size", type=int, default=128, help="view side (128)")
    p.add_argument("--image_size", type=int, default=512, help="photo side (512)")
    p.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1,
        help="torch.set_num_threads (default: the CPUs this process may use)",
    )
    p.add_argument("--serve", action="store_true", help="time one call per part read on stdin")
    p.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    args = p.parse_args(argv)
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        p.error(f"--parts: unknown {unknown}; use a subset of {','.join(PARTS)}")
    for name in ("lcl_batch", "grade_batch", "score_batch", "steps", "patch_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.patch_size > args.image_size // 2:
        p.error("--patch_size must be at most half of --image_size")
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
