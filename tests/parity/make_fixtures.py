r"""Writes the forward-parity fixtures of tests/test_convert.py from the original repositories.

Runs in an environment with PyTorch, torchvision and safetensors (none of which jaxad needs),
importing each original's model classes from a checkout given on the command line:

  git clone https://github.com/YijinHuang/Lesion2Void /tmp/orig_l2v
  git clone https://github.com/ninatu/mood_challenge /tmp/orig_mood
  git clone https://github.com/ninatu/SimCLR /tmp/orig_simclr
  git clone https://github.com/mazurowski-lab/picard-anomalydetection /tmp/orig_picard
  git clone https://github.com/ci-ber/MorphAEus /tmp/orig_morphaeus
  git clone https://github.com/YijinHuang/Lesion-based-Contrastive-Learning /tmp/orig_lcl
  python tests/parity/make_fixtures.py --lesion2void=/tmp/orig_l2v --mood=/tmp/orig_mood \
      --simclr=/tmp/orig_simclr --picard=/tmp/orig_picard --morphaeus=/tmp/orig_morphaeus \
      --lesioncl=/tmp/orig_lcl --out=tests/parity

Each checkout is optional: only the fixtures of the originals given are written. The Lesion2Void,
MOOD and SimCLR fixtures draw from one random stream in that order; PICARD, MorphAEus and
lesion-based CL each from their own.

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
import contextlib
import importlib.util
import os
import sys
import types

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


def _module_from(path: str, name: str):
    """The module of the file `path`, imported under `name` (checkouts share module names such
    as `modules` and `utils`, so they are not all put on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _stub_missing(*names: str) -> None:
    """Empty stand-ins for modules an original imports but its networks never use."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            module = types.ModuleType(name)
            module.LPIPS = None  # `from lpips import LPIPS`
            sys.modules[name] = module
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, module)


_ROOTS: dict[str, str] = {}  # original -> its checkout, set by main()


def picard_networks():
    """The original's inpainter/model/networks.py (its training-only imports stubbed if absent)."""
    if "picard_networks" not in sys.modules:
        sys.path.insert(0, os.path.join(_ROOTS["picard"], "inpainter"))  # for inpainterutils
        _stub_missing("yaml", "matplotlib", "matplotlib.pyplot", "lpips")
        path = os.path.join(_ROOTS["picard"], "inpainter", "model", "networks.py")
        _module_from(path, "picard_networks")
    return sys.modules["picard_networks"]


def build_picard_generator(width: int, channels: int) -> nn.Module:
    """The generator as trained (no dropout modules: `droprate` None), on the CPU."""
    config = {"input_dim": channels, "ngf": width, "droprate": None, "dropout_type": "2D",
              "dropout_which": "CUSTOM"}  # fmt: skip
    return picard_networks().Generator(config, use_cuda=False, device_ids=None)


def build_picard_critic(kind: str, width: int, channels: int, size: int) -> nn.Module:
    """LocalDis or GlobalDis; their linear layer is rebuilt for `size` x `size` inputs."""
    networks = picard_networks()
    config = {"input_dim": channels, "ndf": width}
    critic = (networks.LocalDis if kind == "localD" else networks.GlobalDis)(config, use_cuda=False)
    critic.linear = nn.Linear(4 * width * (size // 16) ** 2, 1)
    return critic


@contextlib.contextmanager
def _no_debug_image():
    """The original's CoarseGenerator writes its mask to debug.png on each forward: not here."""
    import torchvision.utils

    save_image = torchvision.utils.save_image
    torchvision.utils.save_image = lambda *args, **kwargs: None
    try:
        yield
    finally:
        torchvision.utils.save_image = save_image


def build_morphaeus(widths: list[int], image_size: int) -> nn.Module:
    """MorphAEus as its CXR config builds it (projects/23_morphaeus/configs/cxr/morphaeus.yaml)."""
    if _ROOTS["morphaeus"] not in sys.path:
        sys.path.insert(0, _ROOTS["morphaeus"])
    from model_zoo.morphaeus import MorphAEus

    return MorphAEus(
        inshape=(image_size, image_size), in_channels=1, channels=list(widths), out_ch=1,
        strides=[2] * len(widths), kernel_size=3, norm="batch", act="swish",
        deconv_mode="stride", nr_ref_channels=3, bidir=True,
    )  # fmt: skip


def build_lcl_resnet50(width: int) -> nn.Module:
    """LCL's ResNet-50 (its copy of torchvision's) with its stages rebuilt at `width`, the
    unused 1000-way fc removed as in LCL's released backbone."""
    path = os.path.join(_ROOTS["lesioncl"], "resnet.py")
    resnet = sys.modules.get("lcl_resnet") or _module_from(path, "lcl_resnet")
    model = resnet.resnet50(pretrained=False)
    model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    model.inplanes = width
    block = resnet.Bottleneck
    model.layer1 = model._make_layer(block, width, 3)
    model.layer2 = model._make_layer(block, 2 * width, 4, stride=2)
    model.layer3 = model._make_layer(block, 4 * width, 6, stride=2)
    model.layer4 = model._make_layer(block, 8 * width, 3, stride=2)
    model.fc = nn.Identity()
    return model


def build_lcl_model(width: int, depth: int, hidden: int, features: int) -> nn.Module:
    """LCL's `ContrastiveModel` around `build_lcl_resnet50(width)`, an MLP head at `hidden`."""
    assert depth == 50 and hidden == 32 * width, "LCL's head reads the ResNet-50 feature"
    path = os.path.join(_ROOTS["lesioncl"], "modules.py")
    modules = sys.modules.get("lcl_modules") or _module_from(path, "lcl_modules")
    return modules.ContrastiveModel(
        lambda pretrained: build_lcl_resnet50(width), pretrained=False, head="mlp",
        dim_in=hidden, feat_dim=features,
    )  # fmt: skip


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


def _reseed() -> torch.Generator:
    torch.manual_seed(SEED)
    return torch.Generator().manual_seed(SEED)


def picard(out: str) -> None:
    """The generator on a batch with a different hole per sample (no dropout); the critics."""
    gen = _reseed()
    meta = {"width": 4, "channels": 1, "window_size": 64, "box_size": 32}
    generator = build_picard_generator(meta["width"], meta["channels"]).eval()
    with torch.no_grad():  # Biases away from PyTorch's small uniform init.
        for m in generator.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    n, size = 3, meta["window_size"]
    gt = torch.rand((n, meta["channels"], size, size), generator=gen) * 2 - 1
    mask = torch.zeros((n, 1, size, size))
    for i, (top, left, h, w) in enumerate([(16, 16, 32, 32), (8, 24, 24, 32), (30, 4, 28, 20)]):
        mask[i, :, top : top + h, left : left + w] = 1.0
    x = gt * (1.0 - mask)  # the hole zeroed, as the trainer and the inpainter do
    with torch.no_grad(), _no_debug_image():
        x1, x2, _ = generator(x, mask)
    io = {"x": x, "mask": mask, "x_stage1": x1, "x_stage2": x2}
    _save(out, "picard_gen", _state(generator), io, meta)

    critics = {}
    for kind, size in (("localD", meta["box_size"]), ("globalD", meta["window_size"])):
        critics[kind] = build_picard_critic(kind, meta["width"], meta["channels"], size).eval()
    local = torch.rand((n, meta["channels"], meta["box_size"], meta["box_size"]), generator=gen)
    whole = torch.rand((n, meta["channels"], size, size), generator=gen)
    critics["localD"].save_featuremap = True
    with torch.no_grad():
        y_local, y_global = critics["localD"](local * 2 - 1), critics["globalD"](whole * 2 - 1)
    # As the original saves them: one dict {'localD': ..., 'globalD': ...}, flattened.
    state = {f"{kind}.{k}": v for kind, c in critics.items() for k, v in _state(c).items()}
    io = {"local": local * 2 - 1, "global": whole * 2 - 1, "y_local": y_local,
          "y_global": y_global, "local_features": critics["localD"].saved_featuremap}  # fmt: skip
    _save(out, "picard_dis", state, io, meta)


def morphaeus(out: str) -> None:
    """The autoencoder and deformer in eval mode (as the original trains and scores) and in
    train mode, with non-trivial batch-norm statistics."""
    gen = _reseed()
    widths, image_size = [4, 8, 8, 16, 16], 32
    model = build_morphaeus(widths, image_size)
    with torch.no_grad():  # A flow head far from its N(0, 1e-5) init: visible warps.
        model.deformer.flow.weight.normal_(0.0, 0.05, generator=gen)
        model.deformer.flow.bias.normal_(0.0, 0.2, generator=gen)
    _randomise_norms(model, gen)
    _warm_up(model, (4, 1, image_size, image_size), gen)
    # As the trainer saves best_model.pt, {'model_weights': ...}, flattened (no optimiser).
    state = {f"model_weights.{k}": v for k, v in _state(model).items()}
    x = torch.rand((2, 1, image_size, image_size), generator=gen)
    x_train = torch.rand((3, 1, image_size, image_size), generator=gen)
    io = {"x": x, "x_train": x_train}
    with torch.no_grad():
        for suffix, inputs, train in (("", x, False), ("_train", x_train, True)):
            model.train(train)
            warped, result = model(inputs)
            io[f"prior{suffix}"] = result["x_prior"]
            io[f"warped{suffix}"] = warped
            io[f"reversed{suffix}"] = result["x_reversed"]
            io[f"velocity{suffix}"] = result["deformation"]
    meta = {"widths": ",".join(map(str, widths)), "image_size": image_size}
    _save(out, "morphaeus", state, io, meta)


def lesioncl(out: str) -> None:
    """LCL's contrastive model, its ResNet-50 (`net`, the pooled feature) and projection head
    (`head`, the unit-norm embedding), in eval and train mode."""
    gen = _reseed()
    meta = {"width": 4, "depth": 50, "hidden": 128, "features": 16}
    model = build_lcl_model(**meta)
    x = torch.randn((2, 3, 64, 64), generator=gen)
    # Train mode at 96 px: the last stage's batch statistics pool 2 x 3 x 3 values. With fewer,
    # float32 rounding alone moves the original's own output by more than 5e-5.
    x_train = torch.randn((2, 3, 96, 96), generator=gen)
    _randomise_norms(model, gen)
    _warm_up(model, (4, 3, 64, 64), gen)
    state = _state(model)  # as `model.state_dict()` of LCL's pickled model: net.*, head.*
    io = {"x": x, "x_train": x_train}
    with torch.no_grad():
        for suffix, inputs, train in (("", x, False), ("_train", x_train, True)):
            model.train(train)
            io[f"h{suffix}"] = model.net(inputs)  # train mode: batch statistics, not the
            io[f"z{suffix}"] = model(inputs)  # running ones, so the two passes agree
    _save(out, "lesioncl", state, io, meta)


# --- exported files back in the originals ----------------------------------------------------


def _load(folder: str, name: str) -> dict[str, torch.Tensor] | None:
    path = os.path.join(folder, f"{name}.safetensors")
    return safetensors.torch.load_file(path) if os.path.exists(path) else None


def _io(fixtures: str, name: str) -> tuple[dict, dict]:
    path = os.path.join(fixtures, f"{name}.io.safetensors")
    with safetensors.safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, _meta(f.metadata())


def _meta(metadata: dict[str, str]) -> dict:
    """Constructor arguments from a fixture's metadata: ints, or lists of ints ("4,8,16")."""
    return {k: [int(x) for x in v.split(",")] if "," in v else int(v) for k, v in metadata.items()}


def _report(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    diff = float((actual - expected).abs().max() / expected.abs().max())
    print(f"{name}: loaded with strict=True, max relative difference {diff:.2e}")


def check_exported(folder: str, fixtures: str) -> None:
    """Loads `python -m jaxad.convert --to=torch` files of runs converted from the fixtures into
    the originals with `load_state_dict(strict=True)` and compares their outputs (the files of
    the originals whose checkouts are given)."""
    with torch.no_grad():
        for name, build in (("unet", build_unet), ("patchgan", build_patchgan)):
            state = _load(folder, name) if "lesion2void" in _ROOTS else None
            if state is not None:
                io, meta = _io(fixtures, name)
                model = build(**meta)
                model.load_state_dict(state, strict=True)
                _report(name, model.eval()(io["x"]), io["y"])
        if "mood" in _ROOTS and _load(folder, "enc") is not None:
            io, meta = _io(fixtures, "dpa")
            enc, dec = build_dpa(**meta)
            enc.load_state_dict(_load(folder, "enc"), strict=True)
            dec.load_state_dict(_load(folder, "dec"), strict=True)
            _report("enc", enc.eval()(io["x"]), io["z"])
            _report("dec", dec.eval()(io["z"]), io["y"])
        if "mood" in _ROOTS and _load(folder, "vgg19") is not None:
            io, meta = _io(fixtures, "vgg19")
            extractor = build_vgg19(**meta)
            extractor.load_state_dict(_load(folder, "vgg19"), strict=True)
            outputs = extractor.eval()(io["x"], VGG_LAYERS)
            for layer, value in zip(VGG_LAYERS, outputs, strict=True):
                _report(f"vgg19 {layer}", value, io[layer])
        if "simclr" in _ROOTS and _load(folder, "simclr") is not None:
            io, meta = _io(fixtures, "simclr")
            model = build_simclr(**meta)
            model.load_state_dict(_load(folder, "simclr"), strict=True)
            h, z = model.eval()(io["x"])
            _report("simclr h", h, io["h"])
            _report("simclr z", z, io["z"])
        if "picard" in _ROOTS and _load(folder, "gen") is not None:
            io, meta = _io(fixtures, "picard_gen")
            generator = build_picard_generator(meta["width"], meta["channels"])
            generator.load_state_dict(_load(folder, "gen"), strict=True)
            with _no_debug_image():
                x1, x2, _ = generator.eval()(io["x"], io["mask"])
            _report("picard gen x_stage1", x1, io["x_stage1"])
            _report("picard gen x_stage2", x2, io["x_stage2"])
            io, meta = _io(fixtures, "picard_dis")
            for kind, size, inputs in (("localD", "box_size", "local"),
                                       ("globalD", "window_size", "global")):  # fmt: skip
                state = _load(folder, kind)
                if state is not None:
                    critic = build_picard_critic(kind, meta["width"], meta["channels"], meta[size])
                    critic.load_state_dict(state, strict=True)
                    _report(f"picard {kind}", critic.eval()(io[inputs]), io[f"y_{inputs}"])
        if "morphaeus" in _ROOTS and _load(folder, "morphaeus") is not None:
            io, meta = _io(fixtures, "morphaeus")
            model = build_morphaeus(meta["widths"], meta["image_size"])
            model.load_state_dict(_load(folder, "morphaeus"), strict=True)
            warped, result = model.eval()(io["x"])
            _report("morphaeus prior", result["x_prior"], io["prior"])
            _report("morphaeus warped", warped, io["warped"])
        if "lesioncl" in _ROOTS and _load(folder, "backbone") is not None:
            io, meta = _io(fixtures, "lesioncl")
            model = build_lcl_model(**meta).eval()
            model.net.load_state_dict(_load(folder, "backbone"), strict=True)
            _report("lesioncl backbone", model.net(io["x"]), io["h"])
            if _load(folder, "head") is not None:
                model.head.load_state_dict(_load(folder, "head"), strict=True)
                _report("lesioncl head", model(io["x"]), io["z"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    originals = {
        "lesion2void": "YijinHuang/Lesion2Void",
        "mood": "ninatu/mood_challenge",
        "simclr": "ninatu/SimCLR",
        "picard": "mazurowski-lab/picard-anomalydetection",
        "morphaeus": "ci-ber/MorphAEus",
        "lesioncl": "YijinHuang/Lesion-based-Contrastive-Learning",
    }
    for name, repo in originals.items():
        parser.add_argument(f"--{name}", metavar="DIR", help=f"checkout of {repo}")
    parser.add_argument("--out", default="tests/parity", help="folder of the fixtures")
    parser.add_argument(
        "--check_exported",
        metavar="FOLDER",
        help="instead, load the files that jaxad exported there into the originals",
    )
    args = parser.parse_args()
    given = {
        name: os.path.abspath(getattr(args, name)) for name in originals if getattr(args, name)
    }
    if not given:
        parser.error("give at least one checkout, e.g. --picard=DIR")
    _ROOTS.update(given)
    # Lesion2Void, MOOD and SimCLR import their modules by top-level names that do not clash.
    for name in ("lesion2void", "mood", "simclr"):
        if name in given:
            sys.path.insert(0, given[name])
    if args.check_exported:
        check_exported(args.check_exported, args.out)
        return
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(SEED)  # The originals draw their initial weights from the global seed.
    gen = torch.Generator().manual_seed(SEED)
    if "lesion2void" in given:
        lesion2void(args.out, gen)
    if "mood" in given:
        mood_dpa(args.out, gen)
    if "simclr" in given:
        simclr_and_vgg19(args.out, gen)
    for name, write in (("picard", picard), ("morphaeus", morphaeus), ("lesioncl", lesioncl)):
        if name in given:
            write(args.out)
    for name in os.listdir(args.out):
        if name.endswith(".safetensors"):
            os.chmod(os.path.join(args.out, name), 0o644)


if __name__ == "__main__":
    main()
