r"""Writes the forward-parity fixtures of tests/test_convert.py from the original repositories.

Runs in an environment with PyTorch, torchvision and safetensors (none of which jaxad needs),
importing each original's model classes from a checkout given on the command line:

  git clone https://github.com/YijinHuang/Lesion2Void /tmp/orig_l2v
  git clone https://github.com/ninatu/mood_challenge /tmp/orig_mood
  git clone https://github.com/ninatu/SimCLR /tmp/orig_simclr
  python tests/parity/make_fixtures.py --lesion2void=/tmp/orig_l2v --mood=/tmp/orig_mood \
      --simclr=/tmp/orig_simclr --out=tests/parity

With `--check_exported=FOLDER` it instead loads the files `python -m jaxad.convert --to=torch`
wrote there, from runs converted from these fixtures, into the originals with
`load_state_dict(strict=True)` and prints how far their outputs are from the fixtures'.

For each network it builds the original at reduced widths with random weights, gives its batch
norms non-trivial running statistics (a few forward passes in training mode), and writes
`<name>.safetensors`, the state dict as the original saves it (what `python -m jaxad.convert`
reads), and `<name>.io.safetensors`, inputs and the original's outputs in NCHW, with the
constructor arguments in the file's metadata. The fixtures are small (a few MB in all).
"""

from __future__ import annotations

import argparse
import os
import sys

import safetensors.torch
import torch
from torch import nn

SEED = 20240611


def _randomise_norms(model: nn.Module, gen: torch.Generator) -> None:
    """Batch-norm scales and shifts away from their (1, 0) initialisation."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))


def _warm_up(model: nn.Module, shape: tuple[int, ...], gen: torch.Generator, steps: int = 3):
    """Running statistics that are neither (0, 1) nor one batch's: a few training passes."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(0.3 + 1.5 * torch.randn(shape, generator=gen))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _save(out: str, name: str, state: dict, io: dict, meta: dict) -> None:
    safetensors.torch.save_file(state, os.path.join(out, f"{name}.safetensors"))
    io = {k: v.detach().contiguous() for k, v in io.items()}
    meta = {k: str(v) for k, v in meta.items()}
    safetensors.torch.save_file(io, os.path.join(out, f"{name}.io.safetensors"), metadata=meta)
    print(f"{name}: {sum(v.numel() for v in state.values()):,} values, io {sorted(io)}")


def _train_and_eval_outputs(model, x_eval, x_train, gen, warm_shape):
    """(state dict, eval output on x_eval, train-mode output on x_train)."""
    _randomise_norms(model, gen)
    _warm_up(model, warm_shape, gen)
    state = _state(model)
    model.eval()
    with torch.no_grad():
        y_eval = model(x_eval)
        model.train()
        y_train = model(x_train)
    return state, y_eval, y_train


# --- the originals at reduced widths ----------------------------------------------------------


def build_unet(width: int, channels: int) -> nn.Module:
    from unet.unet_model import UNet
    from unet.unet_parts import DoubleConv, Down, OutConv, Up

    # The original's UNet has fixed widths; its parts are rebuilt at `width`.
    w = width
    unet = UNet(n_channels=channels, n_classes=channels, bilinear=False)
    unet.inc = DoubleConv(channels, w)
    unet.down1, unet.down2 = Down(w, 2 * w), Down(2 * w, 4 * w)
    unet.down3, unet.down4 = Down(4 * w, 8 * w), Down(8 * w, 16 * w)
    unet.up1, unet.up2 = Up(16 * w, 8 * w, False), Up(8 * w, 4 * w, False)
    unet.up3, unet.up4 = Up(4 * w, 2 * w, False), Up(2 * w, w, False)
    unet.outc = OutConv(w, channels)
    return unet


def build_patchgan(width: int, channels: int) -> nn.Module:
    from modules import NLayerDiscriminator

    return NLayerDiscriminator(channels, ndf=width, n_layers=3)


def build_dpa(nf: int, latent_dim: int, image_size: int) -> tuple[nn.Module, nn.Module]:
    from mood.dpa.pg_decoders import DECODER_NETWORKS
    from mood.dpa.pg_encoders import ENCODER_NETWORKS
    from mood.dpa.pg_networks import NetworkType, ProgGrowStageType

    enc_nets = ENCODER_NETWORKS[NetworkType.residual9](
        max_input_res=image_size, output_res=1, input_dim=1, output_dim=latent_dim,
        inner_dims=[nf] * 7,
    )  # fmt: skip
    dec_nets = DECODER_NETWORKS[NetworkType.residual9](
        input_res=1, max_output_res=image_size, input_dim=latent_dim, output_dim=1,
        inner_dims=[nf] * 7,
    )  # fmt: skip
    stab = ProgGrowStageType.stab
    return enc_nets.get_net(stab, image_size), dec_nets.get_net(stab, image_size)


def build_simclr(vgg_width: int, hidden: int, out_dim: int, pool_size: int) -> nn.Module:
    from models.simclr import ResNetSimCLR
    from torchvision.models.vgg import cfgs, make_layers

    model = ResNetSimCLR("vgg19", out_dim)
    # The fork keeps torchvision's VGG19 children but the classifier: (features, avgpool).
    convs = make_layers([c if c == "M" else c * vgg_width // 64 for c in cfgs["E"]])
    model.features = nn.Sequential(convs, nn.AdaptiveAvgPool2d(pool_size))
    model.l1 = nn.Linear(8 * vgg_width * pool_size * pool_size, hidden)
    model.l2 = nn.Linear(hidden, out_dim)
    return model


def build_vgg19(vgg_width: int) -> nn.Module:
    """The solution's perceptual network, its convs rebuilt at `vgg_width`."""
    from mood.dpa.feature_extractor import PretrainedVGG19FeatureExtractor

    extractor = PretrainedVGG19FeatureExtractor(pad_type="zero")
    for name, conv in list(extractor.named_children()):
        if isinstance(conv, nn.Conv2d):
            cin = 3 if name == "conv1_1" else conv.in_channels * vgg_width // 64
            setattr(extractor, name, nn.Conv2d(cin, conv.out_channels * vgg_width // 64, 3, 1, 1))
    return extractor


VGG_LAYERS = ["r32", "r42"]


# --- fixtures --------------------------------------------------------------------------------


def lesion2void(out: str, gen: torch.Generator) -> None:
    width, channels = 4, 3
    unet = build_unet(width, channels)
    # Odd sizes: floored pooling and the padding of the upsampled maps.
    x = torch.randn((2, channels, 37, 45), generator=gen)
    x_train = torch.randn((2, channels, 32, 32), generator=gen)
    state, y, y_train = _train_and_eval_outputs(unet, x, x_train, gen, (4, channels, 33, 35))
    io = {"x": x, "y": y, "x_train": x_train, "y_train": y_train}
    _save(out, "unet", state, io, {"width": width, "channels": channels})

    disc = build_patchgan(width, channels)
    x = torch.randn((2, channels, 40, 40), generator=gen)
    x_train = torch.randn((3, channels, 36, 36), generator=gen)
    state, y, y_train = _train_and_eval_outputs(disc, x, x_train, gen, (4, channels, 40, 40))
    io = {"x": x, "y": y, "x_train": x_train, "y_train": y_train}
    _save(out, "patchgan", state, io, {"width": width, "channels": channels})


def mood_dpa(out: str, gen: torch.Generator) -> None:
    meta = {"nf": 8, "latent_dim": 6, "image_size": 32}
    enc, dec = (net.eval() for net in build_dpa(**meta))
    x = torch.rand((2, 1, meta["image_size"], meta["image_size"]), generator=gen) * 2 - 1
    with torch.no_grad():
        z = enc(x)
        y = dec(z)
    # As the solution saves them: one dict with the two state dicts, flattened for safetensors.
    nets = (("enc", enc), ("dec", dec))
    state = {f"{name}.{k}": v for name, net in nets for k, v in _state(net).items()}
    _save(out, "dpa", state, {"x": x, "z": z, "y": y}, meta)


def simclr_and_vgg19(out: str, gen: torch.Generator) -> None:
    meta = {"vgg_width": 4, "hidden": 32, "out_dim": 16, "pool_size": 7}
    model = build_simclr(**meta)
    with torch.no_grad():  # Biases away from torchvision's zeros.
        for m in model.features.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    model.eval()
    x = torch.rand((2, 3, 64, 64), generator=gen)  # p5 is 2x2: the adaptive pool overlaps.
    with torch.no_grad():
        h, z = model(x)
    state = _state(model)
    _save(out, "simclr", state, {"x": x, "h": h, "z": z}, meta)

    # The DPA's perceptual network given the SimCLR conv weights in order, as the solution
    # loads its checkpoint.
    extractor = build_vgg19(meta["vgg_width"])
    values = [v for k, v in state.items() if k.startswith("features.0.")]
    extractor.load_state_dict(dict(zip(extractor.state_dict(), values, strict=True)))
    extractor.eval()
    x = torch.rand((2, 3, 32, 32), generator=gen)
    with torch.no_grad():
        outputs = extractor(x, VGG_LAYERS)
    io = {"x": x, **dict(zip(VGG_LAYERS, outputs, strict=True))}
    _save(out, "vgg19", _state(extractor), io, {"vgg_width": meta["vgg_width"]})


# --- exported files back in the originals ----------------------------------------------------


def _load(folder: str, name: str) -> dict[str, torch.Tensor] | None:
    path = os.path.join(folder, f"{name}.safetensors")
    return safetensors.torch.load_file(path) if os.path.exists(path) else None


def _io(fixtures: str, name: str) -> tuple[dict, dict]:
    path = os.path.join(fixtures, f"{name}.io.safetensors")
    with safetensors.safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, {k: int(v) for k, v in f.metadata().items()}


def _report(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    diff = float((actual - expected).abs().max() / expected.abs().max())
    print(f"{name}: loaded with strict=True, max relative difference {diff:.2e}")


def check_exported(folder: str, fixtures: str) -> None:
    """Loads `python -m jaxad.convert --to=torch` files of runs converted from the fixtures into
    the originals with `load_state_dict(strict=True)` and compares their outputs."""
    with torch.no_grad():
        for name, build in (("unet", build_unet), ("patchgan", build_patchgan)):
            state = _load(folder, name)
            if state is not None:
                io, meta = _io(fixtures, name)
                model = build(**meta)
                model.load_state_dict(state, strict=True)
                _report(name, model.eval()(io["x"]), io["y"])
        if _load(folder, "enc") is not None:
            io, meta = _io(fixtures, "dpa")
            enc, dec = build_dpa(**meta)
            enc.load_state_dict(_load(folder, "enc"), strict=True)
            dec.load_state_dict(_load(folder, "dec"), strict=True)
            _report("enc", enc.eval()(io["x"]), io["z"])
            _report("dec", dec.eval()(io["z"]), io["y"])
        if _load(folder, "vgg19") is not None:
            io, meta = _io(fixtures, "vgg19")
            extractor = build_vgg19(**meta)
            extractor.load_state_dict(_load(folder, "vgg19"), strict=True)
            outputs = extractor.eval()(io["x"], VGG_LAYERS)
            for layer, value in zip(VGG_LAYERS, outputs, strict=True):
                _report(f"vgg19 {layer}", value, io[layer])
        if _load(folder, "simclr") is not None:
            io, meta = _io(fixtures, "simclr")
            model = build_simclr(**meta)
            model.load_state_dict(_load(folder, "simclr"), strict=True)
            h, z = model.eval()(io["x"])
            _report("simclr h", h, io["h"])
            _report("simclr z", z, io["z"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lesion2void", required=True, help="checkout of YijinHuang/Lesion2Void")
    parser.add_argument("--mood", required=True, help="checkout of ninatu/mood_challenge")
    parser.add_argument("--simclr", required=True, help="checkout of ninatu/SimCLR")
    parser.add_argument("--out", default="tests/parity", help="folder of the fixtures")
    parser.add_argument(
        "--check_exported",
        metavar="FOLDER",
        help="instead, load the files that jaxad exported there into the originals",
    )
    args = parser.parse_args()
    for root in (args.lesion2void, args.mood, args.simclr):
        sys.path.insert(0, os.path.abspath(root))
    if args.check_exported:
        check_exported(args.check_exported, args.out)
        return
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(SEED)  # The originals draw their initial weights from the global seed.
    gen = torch.Generator().manual_seed(SEED)
    lesion2void(args.out, gen)
    mood_dpa(args.out, gen)
    simclr_and_vgg19(args.out, gen)
    for name in os.listdir(args.out):
        if name.endswith(".safetensors"):
            os.chmod(os.path.join(args.out, name), 0o644)


if __name__ == "__main__":
    main()
