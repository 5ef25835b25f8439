"""PyTorch weights <-> jaxad (`jaxad.convert`): forward parity with the originals, round trips,
one-line errors, and run directories that the rest of jaxad reads.

The fixtures in tests/parity are written by tests/parity/make_fixtures.py from the original
repositories (random weights at reduced widths, batch norms with non-trivial running
statistics): `<name>.safetensors` is the state dict as the original saves it and
`<name>.io.safetensors` its inputs and outputs (NCHW), with the widths in its metadata.
"""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors
import safetensors.numpy

from configs import dpa as dpa_config
from configs import lesion2void as l2v_config
from configs import lesioncl as lesioncl_config
from configs import morphaeus as morphaeus_config
from configs import picard as picard_config
from configs import simclr_vgg19 as simclr_config
from jaxad import checkpoint, methods
from jaxad.convert import core, files, runs
from jaxad.convert import dpa as dpa_convert
from jaxad.convert import lesion2void as l2v_convert
from jaxad.convert import lesioncl as lesioncl_convert
from jaxad.convert import morphaeus as morphaeus_convert
from jaxad.convert import picard as picard_convert
from jaxad.convert import simclr as simclr_convert
from jaxad.methods.lesioncl import ContrastiveNet
from jaxad.models.dpa import Autoencoder
from jaxad.models.morphaeus import MorphAEus
from jaxad.models.patchgan import PatchGAN
from jaxad.models.picard import Critic, Generator, GlobalCritic, LocalCritic
from jaxad.models.resnet import ResNet
from jaxad.models.unet import UNet
from jaxad.models.vgg import SimCLRModel, VGG19Features

PARITY = os.path.join(os.path.dirname(__file__), "parity")
TOLERANCE = 1e-4  # max |jaxad - original| / max |original|


def weights_path(name: str) -> str:
    return os.path.join(PARITY, f"{name}.safetensors")


def io_of(name: str) -> tuple[dict[str, np.ndarray], dict]:
    """(inputs and outputs in NHWC, the constructor arguments: ints or tuples) of a fixture."""
    with safetensors.safe_open(os.path.join(PARITY, f"{name}.io.safetensors"), "numpy") as f:
        meta = {
            k: tuple(int(x) for x in v.split(",")) if "," in v else int(v)
            for k, v in f.metadata().items()
        }
        io = {k: f.get_tensor(k) for k in f.keys()}
    return {k: v.transpose(0, 2, 3, 1) if v.ndim == 4 else v for k, v in io.items()}, meta


def network(module, name: str, config=None) -> core.Network:
    return {n.name: n for n in module.networks(config)}[name]


def read(net: core.Network, abstract: dict, path: str | None = None) -> dict:
    reader = files.open_reader(path or weights_path(net.name), "hint")
    try:
        return core.from_torch(net, reader, abstract, path or net.name)
    finally:
        reader.close()


def shapes(model, *args, **kwargs) -> dict:
    return jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))


def assert_close(actual, expected, what: str) -> float:
    diff = runs.max_relative_difference(actual, expected)
    assert np.shape(actual) == np.shape(expected), what
    assert diff < TOLERANCE, f"{what}: max relative difference {diff:.2e}"
    return diff


# --- forward parity ----------------------------------------------------------------------------


def test_unet_matches_the_original_at_odd_sizes_and_in_both_modes():
    io, meta = io_of("unet")
    model = UNet(out_channels=meta["channels"], width=meta["width"])
    variables = read(network(l2v_convert, "unet"), shapes(model, io["x"][:1], train=False))
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    assert io["x"].shape[1:3] == (37, 45)  # floored pooling, padded upsampling
    assert_close(apply(variables, io["x"], train=False), io["y"], "unet eval")
    out, _ = apply(variables, io["x_train"], train=True, mutable=("batch_stats",))
    assert_close(out, io["y_train"], "unet train")
    # The running statistics are not the initial (0, 1): eval and train differ.
    assert np.abs(variables["batch_stats"]["inc"]["norm1"]["mean"]).max() > 0.01


def test_patchgan_matches_the_original_in_both_modes():
    io, meta = io_of("patchgan")
    model = PatchGAN(width=meta["width"])
    variables = read(network(l2v_convert, "patchgan"), shapes(model, io["x"][:1], train=False))
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    assert_close(apply(variables, io["x"], train=False), io["y"], "patchgan eval")
    out, _ = apply(variables, io["x_train"], train=True, mutable=("batch_stats",))
    assert_close(out, io["y_train"], "patchgan train")


def dpa_cfg(meta):
    config = dpa_config.get_config("demo")
    config.model.nf = meta["nf"]
    config.model.latent_dim = meta["latent_dim"]
    config.data.image_size = meta["image_size"]
    return config


def test_dpa_encoder_and_decoder_match_the_original():
    io, meta = io_of("dpa")
    config = dpa_cfg(meta)
    model = Autoencoder(nf=meta["nf"], latent_dim=meta["latent_dim"], image_size=meta["image_size"])
    abstract = shapes(model, io["x"][:1])["params"]
    # One file holds both, as the solution's {'enc': ..., 'dec': ...} flattened.
    path = weights_path("dpa")
    enc = read(network(dpa_convert, "enc", config), {"params": abstract["encoder"]}, path)
    dec = read(network(dpa_convert, "dec", config), {"params": abstract["decoder"]}, path)
    params = {"encoder": enc["params"], "decoder": dec["params"]}
    z = jax.jit(lambda p, x: model.apply({"params": p}, x, method=Autoencoder.encode))
    assert_close(z(params, io["x"]), io["z"], "dpa enc")
    assert_close(jax.jit(model.apply)({"params": params}, io["x"]), io["y"], "dpa dec")


@pytest.mark.parametrize("source", ["vgg19", "simclr"])
def test_vgg19_matches_the_solutions_feature_extractor(source):
    """The DPA's VGG19 from the solution's extractor names or straight from a SimCLR model."""
    io, meta = io_of("vgg19")
    model = VGG19Features(width=meta["vgg_width"])
    net = network(dpa_convert, "vgg19", dpa_config.get_config("demo"))
    variables = read(net, shapes(model, io["x"][:1]), weights_path(source))
    out = jax.jit(lambda v, x: model.apply(v, x, ("r32", "r42")))(variables, io["x"])
    for layer in ("r32", "r42"):
        assert_close(out[layer], io[layer], f"vgg19 {layer} from {source}")


def test_simclr_model_matches_the_fork():
    io, meta = io_of("simclr")
    model = SimCLRModel(
        out_dim=meta["out_dim"], hidden=meta["hidden"], pool_size=meta["pool_size"],
        width=meta["vgg_width"],
    )  # fmt: skip
    variables = read(network(simclr_convert, "simclr"), shapes(model, io["x"][:1]))
    h, z = jax.jit(model.apply)(variables, io["x"])
    assert_close(h, io["h"], "simclr features")
    assert_close(z, io["z"], "simclr projection")


def picard_cfg(meta=None):
    meta = meta or io_of("picard_gen")[1]
    config = picard_config.get_config("demo")
    config.model.width = meta["width"]
    config.model.critic_width = meta["width"]
    config.picard.window_size = meta["window_size"]
    config.picard.box_size = meta["box_size"]
    config.data.image_size = meta["window_size"]
    config.picard.metrics = ("MCD_image", "MCD_feature")
    return config


def test_picard_generator_matches_the_original_with_a_hole_per_sample():
    io, meta = io_of("picard_gen")
    # Each sample has its own hole; the contextual attention reads the first sample's, as the
    # original (per_sample_mask=False). Channel dropout is off (sample=False).
    holes = io["mask"].reshape(len(io["mask"]), -1)
    assert all((holes[0] != h).any() for h in holes[1:])
    model = Generator(channels=meta["channels"], width=meta["width"])
    net = network(picard_convert, "gen", picard_cfg(meta))
    variables = read(
        net, shapes(model, io["x"][:1], io["mask"][:1], sample=False), weights_path("picard_gen")
    )
    apply = jax.jit(functools.partial(model.apply, sample=False))
    x1, x2 = apply(variables, io["x"], io["mask"])
    assert_close(x1, io["x_stage1"], "picard coarse")
    assert_close(x2, io["x_stage2"], "picard fine")


def test_picard_critics_and_the_local_feature_space_match_the_original():
    io, meta = io_of("picard_dis")
    config = picard_cfg(meta)
    path = weights_path("picard_dis")  # {'localD': ..., 'globalD': ...} flattened
    cases = (
        ("localD", LocalCritic(input_size=meta["box_size"], width=meta["width"]), "local"),
        ("globalD", GlobalCritic(input_size=meta["window_size"], width=meta["width"]), "global"),
    )
    for name, critic, inputs in cases:
        variables = read(
            network(picard_convert, name, config), shapes(critic, io[inputs][:1]), path
        )
        assert_close(jax.jit(critic.apply)(variables, io[inputs]), io[f"y_{inputs}"], name)
        if name == "localD":  # the feature space of PICARD's MCD_feature
            features = critic.apply(variables, io["local"], method=Critic.features)
            assert_close(features, io["local_features"], "localD features")


def morphaeus_cfg(meta=None):
    meta = meta or io_of("morphaeus")[1]
    config = morphaeus_config.get_config("demo")
    config.model.widths = meta["widths"]
    config.data.image_size = meta["image_size"]
    return config


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_morphaeus_prior_flow_and_warps_match_the_original(train):
    io, meta = io_of("morphaeus")
    suffix = "_train" if train else ""
    # Eval: running statistics, as the original trains and scores (bn_mode 'frozen'); train:
    # batch statistics, the original's model.train() ('train').
    model = MorphAEus(widths=meta["widths"], bn_mode="train" if train else "frozen")
    net = network(morphaeus_convert, "morphaeus", morphaeus_cfg(meta))
    variables = read(net, shapes(model, io["x"][:1], train=False), weights_path("morphaeus"))
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    x = io[f"x{suffix}"]
    out = (
        apply(variables, x, train=True, mutable=("batch_stats",))[0]
        if train
        else apply(variables, x, train=False)
    )
    for ours, theirs in (("prior", "prior"), ("velocity", "velocity"), ("warped", "warped"),
                         ("reversed", "reversed")):  # fmt: skip
        assert_close(out[ours], io[theirs + suffix], f"morphaeus {ours}{suffix}")
    # The running statistics are not the initial (0, 1), and the warp moves the prior.
    assert np.abs(variables["batch_stats"]["encoder"]["bn1"]["mean"]).max() > 0.01
    assert np.abs(io[f"warped{suffix}"] - io[f"prior{suffix}"]).max() > 1e-3


def lesioncl_cfg(meta=None):
    meta = meta or io_of("lesioncl")[1]
    config = lesioncl_config.get_config("demo")
    config.model.head_norm = "none"  # the original's head
    config.model.depth = meta["depth"]
    config.model.width = meta["width"]
    config.model.head_hidden = meta["hidden"]
    config.model.head_features = meta["features"]
    return config


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_lesioncl_resnet50_and_head_match_the_original(train):
    """LCL's ResNet-50 (a torchvision ResNet) and projection head, from its model's state dict."""
    io, meta = io_of("lesioncl")
    suffix = "_train" if train else ""
    config = lesioncl_cfg(meta)
    model = ContrastiveNet(
        depth=meta["depth"], width=meta["width"], hidden=meta["hidden"], features=meta["features"]
    )
    abstract = shapes(model, io["x"][:1], train=False)
    nets = {n.name: n for n in lesioncl_convert.networks(config)}
    backbone = read(
        nets["backbone"],
        {c: abstract[c]["backbone"] for c in ("params", "batch_stats")},
        weights_path("lesioncl"),
    )
    head = read(nets["head"], {"params": abstract["params"]["head"]}, weights_path("lesioncl"))
    variables = {
        "params": {"backbone": backbone["params"], "head": head["params"]},
        "batch_stats": {"backbone": backbone["batch_stats"]},
    }
    x = io[f"x{suffix}"]
    if train:
        z, _ = model.apply(variables, x, train=True, mutable=("batch_stats",))
    else:
        z = jax.jit(model.apply, static_argnames="train")(variables, x, train=False)
    resnet = {c: variables[c]["backbone"] for c in variables}
    h = ResNet(depth=meta["depth"], width=meta["width"]).apply(
        resnet, x, train=train, mutable=("batch_stats",) if train else False
    )
    h = h[0] if train else h
    assert_close(h, io[f"h{suffix}"], f"lesioncl resnet50{suffix}")
    assert_close(z, io[f"z{suffix}"], f"lesioncl head{suffix}")
    assert np.abs(resnet["batch_stats"]["bn1"]["mean"]).max() > 0.01


# --- round trips and errors ------------------------------------------------------------------


ROUND_TRIPS = [
    (l2v_convert, "unet", "unet", lambda: UNet(width=4), {"train": False}),
    (l2v_convert, "patchgan", "patchgan", lambda: PatchGAN(width=4), {"train": False}),
    (simclr_convert, "simclr", "simclr", lambda: SimCLRModel(16, 32, 7, width=4), {}),
    (dpa_convert, "vgg19", "vgg19", lambda: VGG19Features(width=4), {}),
]


@pytest.mark.parametrize("module, name, fixture, make, kwargs", ROUND_TRIPS)
def test_torch_names_to_jaxad_and_back_are_the_same(module, name, fixture, make, kwargs):
    torch_state = safetensors.numpy.load_file(weights_path(fixture))
    net = network(module, name, dpa_config.get_config("demo"))
    size = 64 if name == "simclr" else 32
    abstract = shapes(make(), np.zeros((1, size, size, 3), np.float32), **kwargs)
    variables = core.from_state_dict(net, torch_state, abstract)
    back = core.to_torch(net, variables)
    expected = {k: v for k, v in torch_state.items() if not k.endswith("num_batches_tracked")}
    assert set(back) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_dpa_round_trip_and_the_original_order():
    torch_state = safetensors.numpy.load_file(weights_path("dpa"))
    _, meta = io_of("dpa")
    config = dpa_cfg(meta)
    model = Autoencoder(nf=meta["nf"], latent_dim=meta["latent_dim"], image_size=meta["image_size"])
    abstract = shapes(model, np.zeros((1, 32, 32, 1), np.float32))["params"]
    for name, tree in (("enc", abstract["encoder"]), ("dec", abstract["decoder"])):
        net = network(dpa_convert, name, config)
        back = core.to_torch(net, core.from_state_dict(net, torch_state, {"params": tree}))
        expected = {k[4:]: v for k, v in torch_state.items() if k.startswith(name + ".")}
        assert set(back) == set(expected)
        for key, value in expected.items():
            np.testing.assert_array_equal(back[key], value, err_msg=key)
    # In the original's state-dict order (safetensors files sort their keys, the table does not).
    assert list(back)[:2] == ["model.res_4.1.model.0.weight", "model.res_4.1.model.0.bias"]
    assert list(back)[-1] == "model.postprocess_res_32.1.model.0.bias"
    # jax.tree sorts keys: the jaxad trees read in the original's order too.
    assert list(jax.tree.map(lambda x: 0, abstract["encoder"])) == [
        "from_image", "res0", "res1", "res2", "res3", "to_latent"
    ]  # fmt: skip
    assert list(jax.tree.map(lambda x: 0, abstract["decoder"])) == [
        "from_latent", "res1", "res2", "res3", "to_image"
    ]  # fmt: skip


def assert_same_state(back: dict, expected: dict) -> None:
    expected = {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")}
    assert set(back) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def unprefixed(state: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}


def test_picard_round_trips_and_reads_the_originals_files():
    """gen_<iter>.pt's state dict and dis_<iter>.pt's {'localD', 'globalD'} (flattened)."""
    config = picard_cfg()
    _, meta = io_of("picard_gen")
    nets = runs.networks(config)
    gen, dis = weights_path("picard_gen"), weights_path("picard_dis")
    weights = runs.parse_weights([gen, dis], nets)
    assert weights == {"gen": gen, "localD": dis, "globalD": dis}
    method = methods.create(config)
    converted, fresh = runs.convert_networks(config, weights, method)
    assert fresh == []
    exported = {n.name: core.to_torch(n, converted[n.name]) for n in nets}
    assert_same_state(exported["gen"], safetensors.numpy.load_file(gen))
    dis_state = safetensors.numpy.load_file(dis)
    for name in ("localD", "globalD"):
        assert_same_state(exported[name], unprefixed(dis_state, name))
    # In the original's order: the coarse network, then the fine one.
    assert list(exported["gen"])[:2] == [
        "coarse_generator.conv1.conv.weight", "coarse_generator.conv1.conv.bias"
    ]  # fmt: skip
    assert list(exported["gen"])[-1] == "fine_generator.allconv17.conv.bias"
    # A DataParallel generator and the critics saved alone (torch.save(localD.state_dict())).
    wrapped = {f"module.{k}": v for k, v in safetensors.numpy.load_file(gen).items()}
    local = unprefixed(dis_state, "localD")
    again, fresh = runs.convert_networks(config, {"gen": wrapped, "localD": local}, method)
    assert fresh == ["globalD"]
    for name in ("gen", "localD"):
        jax.tree.map(np.testing.assert_array_equal, again[name], converted[name])
    # MCD_feature scores with the local critic: it is required then, and not otherwise.
    with pytest.raises(ValueError, match="no weights for localD"):
        runs.convert_networks(config, {"gen": gen}, method)
    config.picard.metrics = ("MCD_image",)
    assert runs.convert_networks(config, {"gen": gen}, method)[1] == ["localD", "globalD"]


def test_picard_run_directory_inpaints_as_the_original(tmp_path):
    config = picard_cfg()
    io, meta = io_of("picard_gen")
    weights = {"gen": weights_path("picard_gen"), "localD": weights_path("picard_dis")}
    workdir = runs.import_run(config, tmp_path / "run", weights, data_state=False)
    run = checkpoint.load_run(workdir)
    model = Generator(channels=meta["channels"], width=meta["width"])
    _, x2 = model.apply(run.state["g"], io["x"], io["mask"], sample=False)
    assert_close(x2, io["x_stage2"], "picard fine from the run")
    paths = runs.export_run(workdir, tmp_path / "out")
    assert sorted(os.path.basename(p) for p in paths) == [
        "gen.safetensors", "globalD.safetensors", "localD.safetensors"
    ]  # fmt: skip


def test_morphaeus_round_trip_writes_the_deformers_grids():
    """best_model.pt's {'model_weights': state dict} (flattened): strict, grids included."""
    config = morphaeus_cfg()
    torch_state = unprefixed(
        safetensors.numpy.load_file(weights_path("morphaeus")), "model_weights"
    )
    net = network(morphaeus_convert, "morphaeus", config)
    abstract = core.variables_of(net, runs.fresh_state(config))
    variables = core.from_state_dict(net, torch_state, abstract)
    back = core.to_torch(net, variables)
    assert_same_state(back, torch_state)  # grids included: load_state_dict(strict=True) works
    assert list(back)[:2] == ["encoder.conv__encode_0.weight", "encoder.conv__encode_0.bias"]
    assert list(back)[-3:] == ["deformer.flow.bias", *morphaeus_convert.GRIDS]
    # The grids are not needed, but ones of another image size are an error.
    config.data.image_size = 64
    wide = network(morphaeus_convert, "morphaeus", config)
    grid, shapes_ = morphaeus_convert.GRIDS[0], ("(1, 2, 32, 32)", "(1, 2, 64, 64)")
    one_line_error(wide, torch_state, abstract, grid, *shapes_, "data.image_size")
    no_grids = {k: v for k, v in torch_state.items() if not k.endswith(".grid")}
    core.from_state_dict(wide, no_grids, abstract)
    # The plain autoencoder ("MorphAEus-woPLM", the original's ConvAutoEncoder) has no deformer.
    config.morphaeus.deform = False
    plain = network(morphaeus_convert, "morphaeus", config)
    ae = {k: v for k, v in torch_state.items() if not k.startswith("deformer.")}
    abstract = core.variables_of(plain, runs.fresh_state(config))
    assert_same_state(core.to_torch(plain, core.from_state_dict(plain, ae, abstract)), ae)
    one_line_error(plain, torch_state, abstract, "unexpected key deformer.")


def test_morphaeus_run_directory_scores_as_the_original(tmp_path):
    config = morphaeus_cfg()
    io, meta = io_of("morphaeus")
    weights = runs.parse_weights([weights_path("morphaeus")], runs.networks(config))
    workdir = runs.import_run(config, tmp_path / "run", weights, data_state=False)
    run = checkpoint.load_run(workdir)
    model = MorphAEus(widths=meta["widths"], bn_mode=config.morphaeus.bn_mode)
    out = model.apply(run.state["net"], io["x"], train=False)
    assert_close(out["warped"], io["warped"], "morphaeus warped prior from the run")
    (path,) = runs.export_run(workdir, tmp_path / "out")
    original = unprefixed(safetensors.numpy.load_file(weights_path("morphaeus")), "model_weights")
    assert_same_state(safetensors.numpy.load_file(path), original)


def test_lesioncl_model_state_dict_round_trips_through_a_run(tmp_path):
    """The state dict of LCL's ContrastiveModel (`net.*`, `head.*`) feeds both networks."""
    config = lesioncl_cfg()
    path = weights_path("lesioncl")
    weights = runs.parse_weights([path], runs.networks(config))
    assert weights == {"backbone": path, "head": path}
    workdir = runs.import_run(config, tmp_path / "run", weights, data_state=False)
    paths = runs.export_run(workdir, tmp_path / "out")
    assert sorted(os.path.basename(p) for p in paths) == [
        "backbone.safetensors",
        "head.safetensors",
    ]
    original = safetensors.numpy.load_file(path)
    for name, prefix in (("backbone", "net"), ("head", "head")):
        exported = safetensors.numpy.load_file(str(tmp_path / "out" / f"{name}.safetensors"))
        assert_same_state(exported, unprefixed(original, prefix))


@pytest.fixture(scope="module")
def patchgan_case():
    torch_state = safetensors.numpy.load_file(weights_path("patchgan"))
    abstract = shapes(PatchGAN(width=4), np.zeros((1, 32, 32, 3), np.float32), train=False)
    return network(l2v_convert, "patchgan"), torch_state, abstract


def test_patchgan_tree_reads_in_the_original_order(patchgan_case):
    _, _, abstract = patchgan_case
    flat = jax.tree_util.tree_flatten_with_path(abstract["params"])[0]
    modules = ["/".join(k.key for k in path[:-1]) for path, _ in flat]
    assert list(dict.fromkeys(modules)) == list(l2v_convert.patchgan_table())


def one_line_error(net, state, abstract, *needles):
    with pytest.raises(core.ConversionError) as info:
        core.from_state_dict(net, state, abstract, "w.safetensors")
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_mismatches_are_one_line_errors_naming_the_key(patchgan_case):
    net, state, abstract = patchgan_case
    missing = {k: v for k, v in state.items() if k != "model.3.running_var"}
    one_line_error(net, missing, abstract, "model.3.running_var", "(8,)", "missing", "w.safe")
    extra = {**state, "model.12.weight": np.zeros((2, 2), np.float32)}
    one_line_error(net, extra, abstract, "unexpected key model.12.weight", "(2, 2)")
    # A width the config does not give: the first mis-shaped key and both shapes.
    wide = shapes(PatchGAN(width=8), np.zeros((1, 32, 32, 3), np.float32), train=False)
    one_line_error(net, state, wide, "model.0.weight", "(4, 3, 4, 4)", "(8, 3, 4, 4)", "width")
    ints = {**state, "model.0.bias": state["model.0.bias"].astype(np.int32)}
    one_line_error(net, ints, abstract, "model.0.bias", "int32")


def test_data_parallel_prefix_and_npz(patchgan_case, tmp_path):
    net, state, abstract = patchgan_case
    expected = core.from_state_dict(net, state, abstract)
    path = files.write_arrays(tmp_path / "d.npz", {f"module.{k}": v for k, v in state.items()})
    got = read(net, abstract, path)
    jax.tree.map(np.testing.assert_array_equal, got, expected)


# --- run directories -------------------------------------------------------------------------


def l2v_cfg():
    config = l2v_config.get_config("demo")
    config.model.width = 4
    config.model.disc_width = 4
    return config


def test_lesion2void_run_directory_loads_and_exports(tmp_path):
    config = l2v_cfg()
    workdir = runs.import_run(
        config, tmp_path / "run", {"unet": weights_path("unet")}, data_state=False
    )
    run = checkpoint.load_run(workdir)
    assert run.config.method == "lesion2void" and run.step == 0
    io, _ = io_of("unet")
    variables = {k: run.state["g"][k] for k in ("params", "batch_stats")}
    y = UNet(width=4).apply(variables, jnp.asarray(io["x"]), train=False)
    assert_close(y, io["y"], "unet from the run")
    # The run's networks back to the original's names and values (the PatchGAN is fresh).
    paths = runs.export_run(workdir, tmp_path / "out")
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["patchgan.safetensors", "unet.safetensors"]
    original = safetensors.numpy.load_file(weights_path("unet"))
    exported = safetensors.numpy.load_file(str(tmp_path / "out" / "unet.safetensors"))
    assert set(exported) == {k for k in original if not k.endswith("num_batches_tracked")}
    for key, value in exported.items():
        np.testing.assert_array_equal(value, original[key], err_msg=key)
    with pytest.raises(ValueError, match="already holds a run"):
        runs.import_run(config, workdir, {"unet": weights_path("unet")}, data_state=False)


def test_dpa_run_directory_holds_both_networks_and_the_vgg(tmp_path):
    _, meta = io_of("dpa")
    config = dpa_cfg(meta)
    config.model.vgg_width = 4
    nets = runs.networks(config)
    weights = runs.parse_weights([weights_path("dpa"), f"vgg19={weights_path('simclr')}"], nets)
    both, vgg = weights_path("dpa"), weights_path("simclr")
    assert weights == {"enc": both, "dec": both, "vgg19": vgg}
    workdir = runs.import_run(config, tmp_path / "run", weights, data_state=False)
    run = checkpoint.load_run(workdir)
    io, _ = io_of("dpa")
    y = Autoencoder(nf=8, latent_dim=6, image_size=32).apply(run.state["ae"], io["x"])
    assert_close(y, io["y"], "dpa from the run")
    # The MOOD inference takes it as an axis model, as `python -m jaxad.mood predict` does.
    from jaxad.mood import inference

    model = inference.axis_model(run)
    volume = np.random.default_rng(0).random((6, 20, 24), np.float32)
    options = inference.Options(cube_size=8, batch_size=4, min_intensity_sum=None)
    prediction = np.asarray(inference.predict_volume(volume, [model], options))
    assert prediction.shape == (8, 8, 8) and np.isfinite(prediction).all() and prediction.max() > 0
    paths = runs.export_run(workdir, tmp_path / "out", fmt="npz")
    assert sorted(os.path.basename(p) for p in paths) == ["dec.npz", "enc.npz", "vgg19.npz"]
    vgg = dict(np.load(tmp_path / "out" / "vgg19.npz"))
    original = safetensors.numpy.load_file(weights_path("vgg19"))
    assert set(vgg) == set(original)  # the extractor's own names, in its order:
    assert list(vgg)[:3] == ["conv1_1.weight", "conv1_1.bias", "conv1_2.weight"]
    for key, value in vgg.items():
        np.testing.assert_array_equal(value, original[key], err_msg=key)


def test_missing_required_network_and_wrong_width_are_clear(tmp_path):
    config = l2v_cfg()
    with pytest.raises(ValueError, match="no weights for unet"):
        runs.import_run(config, tmp_path / "a", {}, data_state=False)
    config.model.width = 8
    with pytest.raises(ValueError, match=r"unet: inc.double_conv.0.weight .* \(4, 3, 3, 3\), "):
        runs.import_run(config, tmp_path / "b", {"unet": weights_path("unet")}, data_state=False)
    assert not os.path.exists(tmp_path / "b" / "checkpoints")


def test_simclr_run_gives_the_dpa_its_vgg(tmp_path):
    _, meta = io_of("simclr")
    config = simclr_config.get_config("demo")
    config.model.vgg_width = meta["vgg_width"]
    config.model.hidden = meta["hidden"]
    config.model.out_dim = meta["out_dim"]
    workdir = runs.import_run(
        config, tmp_path / "run", {"simclr": weights_path("simclr")}, data_state=False
    )
    from jaxad.methods import simclr

    vgg = simclr.vgg_params_from_run(checkpoint.load_run(workdir))
    io, _ = io_of("vgg19")
    out = VGG19Features(width=4).apply({"params": vgg}, io["x"], ("r42",))["r42"]
    assert_close(out, io["r42"], "vgg19 from a converted SimCLR run")


def test_cli_converts_and_reports_errors_in_one_line(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = [sys.executable, "-m", "jaxad.convert", "--config=configs/lesion2void.py:demo"]
    base += ["--config.model.width=4", "--config.model.disc_width=4", "--nodata_state"]
    ok = subprocess.run(
        [*base, f"--workdir={tmp_path / 'run'}", f"--weights={weights_path('unet')}",
         f"--weights=patchgan={weights_path('patchgan')}"],
        capture_output=True, text=True, cwd=root, env=env,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(tmp_path / "run")
    bad = subprocess.run(
        [*base, f"--workdir={tmp_path / 'bad'}", f"--weights=unet={weights_path('patchgan')}"],
        capture_output=True, text=True, cwd=root, env=env,
    )  # fmt: skip
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert lines[-1].startswith("jaxad.convert: error: unet: inc.double_conv.0.weight")
    back = subprocess.run(
        [sys.executable, "-m", "jaxad.convert", "--to=torch", f"--workdir={tmp_path / 'run'}",
         f"--out={tmp_path / 'out'}"],
        capture_output=True, text=True, cwd=root, env=env,
    )  # fmt: skip
    assert back.returncode == 0, back.stderr
    exported = safetensors.numpy.load_file(str(tmp_path / "out" / "patchgan.safetensors"))
    original = safetensors.numpy.load_file(weights_path("patchgan"))
    for key, value in exported.items():
        np.testing.assert_array_equal(value, original[key], err_msg=key)


# --- ResNets (lesion-based CL, DR grading): torchvision's names -------------------------------


def test_lesioncl_backbone_and_dr_grading_resnet_convert_both_ways(tmp_path):
    from configs import dr_grading as grading_config
    from jaxad.models import resnet_weights

    config = lesioncl_config.get_config("demo")
    config.model.head_norm = "none"  # the original's head
    depth, width = int(config.model.depth), int(config.model.width)
    resnet = ResNet(depth=depth, width=width, num_classes=1)
    variables = resnet.init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)))
    variables = jax.tree.map(lambda x: x + 0.01 * jnp.arange(x.size).reshape(x.shape), variables)
    torch_state = resnet_weights.to_torch_state_dict(variables["params"], variables["batch_stats"])
    path = files.write_arrays(tmp_path / "lcl.safetensors", torch_state)
    workdir = runs.import_run(config, tmp_path / "lcl", {"backbone": path}, data_state=False)
    run = checkpoint.load_run(workdir)
    for collection in ("params", "batch_stats"):
        got = run.state["net"][collection]["backbone"]
        want = {k: v for k, v in variables[collection].items() if k != "fc"}
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), want)
    out, head = runs.export_run(workdir, tmp_path / "lcl_out")
    assert os.path.basename(head) == "head.safetensors"  # fresh: the released file has none
    exported = safetensors.numpy.load_file(out)
    assert set(exported) == {k for k in torch_state if not k.startswith("fc.")}  # fc ignored
    for key, value in exported.items():
        np.testing.assert_array_equal(value, torch_state[key], err_msg=key)

    grading = grading_config.get_config("demo")
    assert (int(grading.model.depth), int(grading.model.width)) == (depth, width)
    workdir = runs.import_run(grading, tmp_path / "dr", {"resnet": path}, data_state=False)
    (out,) = runs.export_run(workdir, tmp_path / "dr_out")
    exported = safetensors.numpy.load_file(out)
    assert set(exported) == set(torch_state)  # the one-output fc included
    for key, value in exported.items():
        np.testing.assert_array_equal(value, torch_state[key], err_msg=key)


@pytest.mark.slow  # a few training steps and an evaluation
def test_converted_run_resumes_training_and_evaluates(fundus_root, tmp_path):
    from conftest import tiny_config

    from jaxad import train

    config = tiny_config(fundus_root)
    weights = {"unet": weights_path("unet"), "patchgan": weights_path("patchgan")}
    workdir = runs.import_run(config, tmp_path / "run", weights)  # with the data position
    results = train.run(config, workdir)  # resumes from the converted step 0
    assert checkpoint.saved_step(workdir, "latest") == config.total_steps
    assert results
    config.mode = "eval"
    assert train.run(config, workdir)
