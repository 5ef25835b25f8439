"""launch/tpu_vm.sh --dry-run: the exact gcloud commands for every subcommand and method."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest
from conftest import ROOT

SCRIPT = ROOT / "launch" / "tpu_vm.sh"
BASE = {"TPU_NAME": "node-1", "ZONE": "us-central2-b"}
FLAGS = ["--zone=us-central2-b"]
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "node-1", *FLAGS]

# METHOD -> (its inputs, the config, the datasets build prepares, the method's flags).
METHODS = {
    "lesion2void": ({}, "configs/lesion2void.py", ["eyeq/good"], []),
    "picard": ({}, "configs/picard.py", ["duke_dbt/slices"], []),
    "simclr_vgg19": (
        {},
        "configs/simclr_vgg19.py",
        [f"mood/{r}_axis{a}" for r in ("brain", "abdom") for a in range(3)],
        [],
    ),
    "dpa": (
        {"VGG_WEIGHTS": "gs://bucket/runs/simclr", "VARIANT": "abdom_sample_axis2"},
        "configs/dpa.py:abdom_sample_axis2",
        ["mood/abdom_axis2"],
        ["--config.dpa.vgg_weights=gs://bucket/runs/simclr"],
    ),
    "morphaeus": ({}, "configs/morphaeus.py", ["covid19_radiography/morphaeus"], []),
    "lesioncl": (
        {"BOXES": "gs://bucket/boxes.json", "IMAGENET_WEIGHTS": "/w/r50.safetensors"},
        "configs/lesioncl.py",
        ["eyepacs"],
        [
            "--config.data.boxes=gs://bucket/boxes.json",
            "--config.lcl.imagenet_weights=/w/r50.safetensors",
        ],
    ),
    "dr_grading": (
        {"INIT_FROM": "gs://bucket/runs/lcl"},
        "configs/dr_grading.py",
        ["eyepacs"],
        ["--config.init_from.workdir=gs://bucket/runs/lcl"],
    ),
}


@pytest.fixture
def fake_gcloud(tmp_path) -> str:
    """A PATH whose `gcloud` fails: a dry run must not call it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text("#!/bin/sh\necho 'gcloud was called' >&2\nexit 99\n")
    gcloud.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def launch(path: str, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Runs the script with only `env` (and PATH, HOME) set."""
    full_env = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), **env}
    result = subprocess.run(
        ["bash", str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=30
    )
    if check:
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
    return result


def commands(path: str, *args: str, **env: str) -> list[list[str]]:
    """The dry run's commands, each split as the shell would."""
    out = launch(path, "--dry-run", *args, **{**BASE, **env}).stdout
    return [shlex.split(line) for line in out.splitlines()]


def remote(command: list[str], worker: str = "all") -> list[str]:
    """The words of the shell command an ssh command runs on the workers."""
    assert command[: len(SSH)] == SSH
    assert command[len(SSH)] == f"--worker={worker}"
    (script,) = command[len(SSH) + 1 :]
    assert script.startswith("--command=")
    return shlex.split(script.removeprefix("--command="))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_run_every_method(fake_gcloud, method):
    env, config, _, method_flags = METHODS[method]
    (command,) = commands(fake_gcloud, "run", METHOD=method, WORKDIR="gs://bucket/runs/x", **env)
    words = remote(command)
    start = words.index("nohup")
    assert words[start + 1 : start + 8 + len(method_flags)] == [
        "$HOME/jaxad-venv/bin/python",
        "-m",
        "jaxad.main",
        f"--config={config}",
        "--workdir=gs://bucket/runs/x",
        "--config.distributed.enabled=True",
        *method_flags,
        ">",
    ]
    assert words[:5] == ["set", "-euo", "pipefail;", "cd", "~/jaxad;"]


def test_run_data_dir_extra_args_and_single_host(fake_gcloud):
    (command,) = commands(
        fake_gcloud,
        "run",
        WORKDIR="/mnt/shared/runs/l2v",
        DATA_DIR="gs://bucket/tfds",
        DISTRIBUTED="False",
        EXTRA_ARGS="--config.batch_size=64 --config.eval.batch_size=64",
        LOG="l2v.log",
    )
    words = remote(command)
    start = words.index("jaxad.main") + 1
    assert words[start : words.index(">")] == [
        "--config=configs/lesion2void.py",
        "--workdir=/mnt/shared/runs/l2v",
        "--config.distributed.enabled=False",
        "--config.data.data_dir=gs://bucket/tfds",
        "--config.batch_size=64",
        "--config.eval.batch_size=64",
    ]
    assert words[words.index(">") + 1] == "$HOME/l2v.log"


def test_config_and_variant_override_the_method(fake_gcloud):
    (command,) = commands(
        fake_gcloud, "run", METHOD="morphaeus", VARIANT="rsna", WORKDIR="/w", VGG_WEIGHTS="/v.npz"
    )
    assert "--config=configs/morphaeus.py:rsna" in remote(command)
    assert "--config.morphaeus.vgg_weights=/v.npz" in remote(command)
    (command,) = commands(fake_gcloud, "run", CONFIG="my/config.py:x", WORKDIR="/w")
    assert "--config=my/config.py:x" in remote(command)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_build_every_method(fake_gcloud, method):
    env, _, datasets, _ = METHODS[method]
    (command,) = commands(
        fake_gcloud, "build", METHOD=method, MANUAL_DIR="/mnt/raw", DATA_DIR="gs://b/tfds", **env
    )
    words = remote(command, worker="0")
    steps = [step.split() for step in " ".join(words).split("; ")]
    assert steps[:2] == [["set", "-euo", "pipefail"], ["cd", "~/jaxad"]]
    assert steps[2:] == [
        ["$HOME/jaxad-venv/bin/python", "-m", "jaxad.data.build", name]
        + ["--manual_dir=/mnt/raw", "--data_dir=gs://b/tfds"]
        for name in datasets
    ]


def test_build_of_a_demo_variant_is_an_error(fake_gcloud):
    result = launch(
        fake_gcloud, "--dry-run", "build", check=False, VARIANT="demo", MANUAL_DIR="/m", **BASE
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "tpu_vm.sh: nothing to build for CONFIG=configs/lesion2void.py:demo: set DATASETS"
    ]


CREATE = ["gcloud", "compute", "tpus", "tpu-vm", "create", "node-1", *FLAGS]
QUEUED = ["gcloud", "compute", "tpus", "queued-resources"]


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, CREATE + ["--version=v2-alpha-tpuv5-lite", "--accelerator-type=v5litepod-8"]),
        (
            {"SPOT": "1", "ACCELERATOR_TYPE": "v4-32", "RUNTIME_VERSION": "tpu-ubuntu2204-base"},
            CREATE + ["--version=tpu-ubuntu2204-base", "--accelerator-type=v4-32", "--spot"],
        ),
        (
            {"DATA_DISK": "projects/p/zones/z/disks/d", "PROJECT": "p"},
            CREATE[:-1]
            + ["--zone=us-central2-b", "--project=p", "--version=v2-alpha-tpuv5-lite"]
            + [
                "--accelerator-type=v5litepod-8",
                "--data-disk=source=projects/p/zones/z/disks/d,mode=read-only",
            ],
        ),
        (
            {"QUEUED": "1"},
            QUEUED
            + ["create", "node-1-qr", *FLAGS, "--node-id=node-1"]
            + ["--runtime-version=v2-alpha-tpuv5-lite", "--accelerator-type=v5litepod-8"],
        ),
        (
            {
                "QUEUED": "1",
                "SPOT": "1",
                "QUEUED_NAME": "q",
                "VALID_UNTIL": "6h",
                "ACCELERATOR_TYPE": "v5litepod-32",
                "DATA_DISK": "projects/p/zones/z/disks/d",
            },
            QUEUED
            + ["create", "q", *FLAGS, "--node-id=node-1", "--runtime-version=v2-alpha-tpuv5-lite"]
            + [
                "--accelerator-type=v5litepod-32",
                "--data-disk=source=projects/p/zones/z/disks/d,mode=read-only",
            ]
            + ["--spot", "--valid-until-duration=6h"],
        ),
    ],
)
def test_create(fake_gcloud, env, expected):
    assert commands(fake_gcloud, "create", **env) == [expected]


@pytest.mark.parametrize(
    "command, queued, expected",
    [
        ("status", False, ["tpu-vm", "describe", "node-1", *FLAGS]),
        ("status", True, ["queued-resources", "describe", "node-1-qr", *FLAGS]),
        ("list", False, ["tpu-vm", "list", *FLAGS]),
        ("list", True, ["queued-resources", "list", *FLAGS]),
        ("delete", False, ["tpu-vm", "delete", "node-1", *FLAGS, "--quiet"]),
        ("delete", True, ["queued-resources", "delete", "node-1-qr", *FLAGS, "--force", "--quiet"]),
    ],
)
def test_status_list_delete(fake_gcloud, command, queued, expected):
    env = {"QUEUED": "1"} if queued else {}
    assert commands(fake_gcloud, command, **env) == [["gcloud", "compute", "tpus", *expected]]


def test_dry_run_from_the_environment(fake_gcloud):
    out = launch(fake_gcloud, "delete", DRY_RUN="1", **BASE).stdout
    assert out == "gcloud compute tpus tpu-vm delete node-1 --zone=us-central2-b --quiet\n"


def test_logs(fake_gcloud):
    (command,) = commands(fake_gcloud, "logs", LOG="x.log")
    assert remote(command, worker="0") == ["tail", "-n", "50", "-f", "$HOME/x.log"]


def test_setup_copies_installs_and_mounts_on_every_worker(fake_gcloud):
    lines = commands(
        fake_gcloud, "setup", DATA_DISK="projects/p/zones/z/disks/d", DATA_DISK_MODE="read-write"
    )
    assert len(lines) == 5
    assert lines[0][0] == "(cd" and lines[0][-1].endswith("jaxad-src.tar.gz)")
    archive = lines[0][-1].rstrip(")")
    assert lines[1] == [
        *["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, "node-1:jaxad.tar.gz"],
        *FLAGS,
        "--worker=all",
    ]
    assert "tar -xzf jaxad.tar.gz -C jaxad;" in " ".join(remote(lines[2]))
    install = remote(lines[3])
    assert install[install.index("-e") + 1 : install.index("-e") + 3] == [
        "./jaxad[gcs]",
        "jax[tpu];",
    ]
    mount = " ".join(remote(lines[4]))
    assert "sudo mount -o rw,discard,defaults /dev/sdb /mnt/disks/data;" in mount


def test_setup_from_a_repository_without_extras(fake_gcloud):
    lines = commands(fake_gcloud, "setup", REPO_URL="https://example.com/j.git", EXTRAS="")
    assert len(lines) == 2
    clone = " ".join(remote(lines[0]))
    assert "git clone --quiet https://example.com/j.git jaxad;" in clone
    assert "checkout --quiet --detach origin/HEAD" in clone
    install = remote(lines[1])
    assert install[install.index("-e") + 1] == "./jaxad"


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["create"], {"ZONE": "z"}, "set TPU_NAME (see launch/tpu_vm.sh --help)"),
        (["create"], {"TPU_NAME": "t"}, "set ZONE (see launch/tpu_vm.sh --help)"),
        (["run"], BASE, "set WORKDIR (see launch/tpu_vm.sh --help)"),
        (["build"], BASE, "set MANUAL_DIR (see launch/tpu_vm.sh --help)"),
        (
            ["run"],
            {**BASE, "METHOD": "dpa", "WORKDIR": "/w"},
            "set VGG_WEIGHTS to the SimCLR run's workdir (METHOD=dpa: train simclr_vgg19 first)",
        ),
        (
            ["run"],
            {**BASE, "METHOD": "lesioncl", "WORKDIR": "/w"},
            "set BOXES to the lesion box file (METHOD=lesioncl)",
        ),
        (
            ["run"],
            {**BASE, "METHOD": "l2v", "WORKDIR": "/w"},
            "unknown METHOD 'l2v': use lesion2void, picard, simclr_vgg19, dpa, morphaeus,"
            " lesioncl or dr_grading (or set CONFIG and DATASETS)",
        ),
        (
            ["start"],
            BASE,
            "unknown command 'start': use create, setup, build, run, logs, status, list or delete",
        ),
        (["--dryrun", "run"], BASE, "unknown option '--dryrun': use --dry-run or --help"),
    ],
)
def test_missing_or_bad_setting_is_a_one_line_error(fake_gcloud, args, env, message):
    for dry in ([], ["--dry-run"]):
        result = launch(fake_gcloud, *dry, *args, check=False, **env)
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr.splitlines() == [f"tpu_vm.sh: {message}"]


def test_help_lists_the_settings(fake_gcloud):
    out = launch(fake_gcloud, "--help").stdout
    for name in ("METHOD", "QUEUED", "SPOT", "DATA_DIR", "WORKDIR", "--dry-run"):
        assert name in out


def test_printed_commands_read_back_as_the_same_words_in_bash(fake_gcloud):
    """Pasting a printed line runs gcloud with the words the script would have passed."""
    out = launch(
        fake_gcloud, "--dry-run", "setup", **BASE, DATA_DISK="projects/p/zones/z/disks/d"
    ).stdout
    out += launch(fake_gcloud, "--dry-run", "run", **BASE, WORKDIR="gs://b/it's here").stdout
    for line in out.splitlines()[1:]:
        words = subprocess.run(
            ["bash", "-c", "gcloud() { printf '%s\\0' gcloud \"$@\"; }; " + line],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\0")[:-1]
        assert words == shlex.split(line)


def test_build_reads_a_relative_manual_dir_from_home_without_data_dir(fake_gcloud):
    (command,) = commands(fake_gcloud, "build", METHOD="picard", MANUAL_DIR="raw dbt")
    assert remote(command, worker="0")[-5:] == [
        "$HOME/jaxad-venv/bin/python",
        "-m",
        "jaxad.data.build",
        "duke_dbt/slices",
        "--manual_dir=$HOME/raw dbt",
    ]


@pytest.mark.parametrize("command", ["create", "run", "delete"])
def test_without_dry_run_gcloud_gets_the_printed_words(tmp_path, command):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "args"
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f"#!/bin/sh\nprintf '%s\\0' gcloud \"$@\" > {record}\n")
    gcloud.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    env = {**BASE, "QUEUED": "1", "SPOT": "1", "WORKDIR": "gs://b/runs/x"}
    (printed,) = commands(path, command, **env)
    assert not record.exists()
    launch(path, command, **env)
    assert record.read_text().split("\0")[:-1] == printed
