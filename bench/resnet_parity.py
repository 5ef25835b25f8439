"""Reference outputs of torchvision's ResNet-18 and ResNet-50, for the Flax port's parity test.

jaxad never imports torch, so the comparison has two halves. This script runs in an environment
with torch, torchvision and safetensors (not jaxad's), e.g.

    python3 -m venv /work/torchvenv
    /work/torchvenv/bin/pip install torch torchvision safetensors numpy
    /work/torchvenv/bin/python bench/resnet_parity.py            # about 10 s on 2 cores

and writes, per depth, to `--out_dir` (default: <tmp>/jaxad_resnet_parity):

- `resnet{depth}.safetensors`: the state dict of a seeded random torchvision ResNet (fc 1000)
  whose BatchNorm scales, biases and running statistics are perturbed, so that eval mode tests
  them;
- `resnet{depth}_io.npz`: the input `x` [2, 64, 64, 3] (NHWC), eval-mode `logits` and pooled
  `features`, train-mode `train_logits`, and per BatchNorm `{name}.running_mean` /
  `{name}.running_var` after that one train-mode step and `{name}.n`, the number of values
  each channel's batch statistics were taken over (PyTorch updates the running variance with
  the unbiased batch variance, Flax with the biased one; the test corrects for it).

`tests/test_resnet.py::test_parity_with_torchvision` then loads these with jaxad's loader and
compares; it is skipped when the files are absent (set JAXAD_RESNET_PARITY_DIR to read them from
elsewhere).
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import safetensors.torch
import torch
import torchvision

DEFAULT_DIR = os.path.join(tempfile.gettempdir(), "jaxad_resnet_parity")


def reference(depth: int, out_dir: str, size: int = 64, batch: int = 2) -> None:
    torch.manual_seed(depth)
    model = getattr(torchvision.models, f"resnet{depth}")()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + 0.1 * torch.randn(c))
                m.bias.copy_(0.1 * torch.randn(c))
                m.running_mean.copy_(0.1 * torch.randn(c))
                m.running_var.copy_(0.5 + torch.rand(c))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, os.path.join(out_dir, f"resnet{depth}.safetensors"))

    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    out: dict[str, np.ndarray] = {"x": x.permute(0, 2, 3, 1).numpy()}
    pooled: list[torch.Tensor] = []
    hook = model.avgpool.register_forward_hook(lambda m, i, o: pooled.append(o.flatten(1)))
    model.eval()
    with torch.no_grad():
        out["logits"] = model(x).numpy()
    out["features"] = pooled[0].numpy()
    hook.remove()

    counts: dict[str, int] = {}

    def count(name):
        def hook(module, inputs, output):
            counts[name] = inputs[0].numel() // inputs[0].shape[1]

        return hook

    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_hook(count(name))
    model.train()
    with torch.no_grad():
        out["train_logits"] = model(x).numpy()
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            out[f"{name}.running_mean"] = m.running_mean.numpy().copy()
            out[f"{name}.running_var"] = m.running_var.numpy().copy()
            out[f"{name}.n"] = np.array(counts[name])
    np.savez(os.path.join(out_dir, f"resnet{depth}_io.npz"), **out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default=DEFAULT_DIR)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    for depth in (18, 50):
        reference(depth, args.out_dir)
    print(f"wrote torchvision ResNet-18/50 references to {args.out_dir}")


if __name__ == "__main__":
    main()
