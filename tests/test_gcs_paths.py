"""Cloud Storage (`gs://`) workdirs and data, against a fake GCS server on 127.0.0.1.

The three GCS clients jaxad's dependencies use are pointed at one in-memory server
(`gcp-storage-emulator`, the `test` extra): gcsfs for every file read or written through
`jaxad.paths` and tfds (`STORAGE_EMULATOR_HOST`), TensorStore for Orbax's arrays
(`TENSORSTORE_GCS_HTTP_URL`) and the C++ client inside array_record for tfds records
(`CLOUD_STORAGE_EMULATOR_ENDPOINT`). Nothing leaves the machine.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, tiny_config

# gcsfs would ask Google's servers whether the fake bucket is zonal (and log a warning each time).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
pytest.importorskip("gcsfs")
pytest.importorskip("gcp_storage_emulator")

BUCKET = "bucket"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _emulator_env(url: str) -> dict[str, str]:
    return {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs (and google-cloud-storage)
        "TENSORSTORE_GCS_HTTP_URL": url,  # Orbax's array data
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,  # array_record's C++ reader
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake",  # TensorStore asks no credentials server
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        # gcsfs asks for no credentials either (it would probe the GCE metadata server, which is
        # not on loopback); any stray probe goes to a closed port on 127.0.0.1.
        "FSSPEC_GS_TOKEN": "anon",
        "NO_GCE_CHECK": "True",
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
    }


def _with_generation(download):
    """The emulator's download, plus the `x-goog-generation` header real GCS sends, which
    TensorStore needs (it reads Orbax's OCDBT manifests generation by generation)."""

    def handler(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        if response.status.value < 300:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj["metageneration"])

    return handler


@pytest.fixture(scope="module")
def gcs():
    """A fake GCS server with one empty bucket; yields the environment that points at it."""
    import fsspec
    import gcsfs
    from etils.epath import backend
    from gcp_storage_emulator.handlers import objects
    from gcp_storage_emulator.server import create_server

    server = create_server("127.0.0.1", _free_port(), in_memory=True, default_bucket=BUCKET)
    server.start()
    # Clients that close a download early make the server print a BrokenPipe traceback.
    server._api._httpd.handle_error = lambda *args: None
    env = _emulator_env(f"http://127.0.0.1:{server._api._port}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(objects, "download", _with_generation(objects.download))
        for k, v in env.items():
            mp.setenv(k, v)
        mp.setitem(fsspec.config.conf, "gs", {**fsspec.config.conf.get("gs", {}), "token": "anon"})
        backend.fsspec_backend._get_filesystem.cache_clear()
        gcsfs.GCSFileSystem.clear_instance_cache()
        yield env
        backend.fsspec_backend._get_filesystem.cache_clear()
        gcsfs.GCSFileSystem.clear_instance_cache()
    server.stop()


def _upload(local: os.PathLike, remote: str) -> None:
    from etils import epath

    for root, _, files in os.walk(local):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), local)
            epath.Path(f"{remote}/{rel}").write_bytes(open(os.path.join(root, f), "rb").read())


@pytest.fixture(scope="module")
def gs_fundus(gcs, fundus_root) -> str:
    """The tiny fundus folder (conftest) copied into the bucket."""
    _upload(fundus_root, f"gs://{BUCKET}/fundus")
    return f"gs://{BUCKET}/fundus"


def _names(url: str) -> list[str]:
    from etils import epath

    p = epath.Path(url)
    return sorted(c.name for c in p.iterdir()) if p.exists() else []


# --- the path helpers and each writer --------------------------------------------------------


def test_missing_gcsfs_is_a_one_line_error_naming_the_extra(monkeypatch):
    from jaxad import paths

    monkeypatch.setattr(paths, "_has_module", lambda name: False)
    with pytest.raises(paths.MissingBackendError, match=r"jaxad\[gcs\]") as e:
        paths.path("gs://bucket/run")
    assert "\n" not in str(e.value) and "gs://bucket/run" in str(e.value)
    paths.path("/tmp/local")  # local paths never need it


def test_missing_gcsfs_stops_the_command_line_in_one_line(tmp_path):
    code = (
        "import sys; from jaxad import paths; paths._has_module = lambda name: False; "
        "from jaxad import main; from absl import app; "
        "sys.argv = ['jaxad.main', '--config=configs/lesion2void.py:demo', "
        "'--workdir=gs://bucket/run']; app.run(main.main, flags_parser=main.parse_flags)"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert "gs://bucket/run" in last and "jaxad[gcs]" in last, out.stderr[-2000:]


def test_metric_writer_appends_across_restarts_and_uploads_tensorboard(gcs):
    from jaxad import writers

    workdir = f"gs://{BUCKET}/writer"
    w = writers.MetricWriter(workdir, enabled=True)
    w.write_scalars(1, {"loss": 1.0})
    w.close()
    w = writers.MetricWriter(workdir, enabled=True)  # A resumed run continues the file.
    w.write_scalars(2, {"loss": 0.5})
    w.flush()
    from etils import epath

    lines = epath.Path(f"{workdir}/metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    w.close()
    events = _names(f"{workdir}/tensorboard")
    assert events and all(n.startswith("events.out.tfevents") for n in events)
    assert all(epath.Path(f"{workdir}/tensorboard/{n}").stat().length > 0 for n in events)


def test_config_history_and_reports_on_gcs(gcs):
    from etils import epath

    from configs import common
    from jaxad import run_config, viz
    from jaxad.evals import core

    workdir = f"gs://{BUCKET}/cfg"
    config = common.get_config()
    run_config.save(config, workdir)
    config.total_steps = 7
    assert run_config.save(config, workdir)  # a change: the previous config is kept
    assert run_config.load_saved(workdir)["total_steps"] == 7
    assert _names(f"{workdir}/config_history") == ["config.1.json"]
    assert not run_config.has_saved_state(workdir)

    png = viz.save_png(f"{workdir}/a/b.png", np.zeros((4, 5, 3), np.uint8))
    assert str(png) == f"{workdir}/a/b.png"
    from PIL import Image

    assert Image.open(io.BytesIO(png.read_bytes())).size == (5, 4)
    result = core.Result(metrics={}, rows=[{"id": "x.png", "label": 1, "grade": 0}])
    result.rows[0].update(has_mask=False, score=0.5)
    core.write_reports(f"{workdir}/eval", {"image_auroc": 0.5}, [("", result)])
    assert json.loads(epath.Path(f"{workdir}/eval/metrics.json").read_text()) == {
        "image_auroc": 0.5
    }
    rows = list(csv.DictReader(io.StringIO(epath.Path(f"{workdir}/eval/scores.csv").read_text())))
    assert rows == [
        {"id": "x.png", "label": "1", "grade": "0", "has_mask": "False", "score": "0.5"}
    ]


def test_checkpointer_saves_and_restores_on_gcs(gcs):
    from etils import epath

    from jaxad import checkpoint

    workdir = f"gs://{BUCKET}/ckpt"
    state = {"w": np.arange(6.0, dtype=np.float32), "b": np.ones(2, np.int32)}
    ckpt = checkpoint.Checkpointer(workdir, every_steps=1, keep=3)
    for step in (1, 2):
        ckpt.save(step, {"w": state["w"] * step, "b": state["b"]}, None, {"step": step})
    ckpt.close()
    assert ckpt.directory == f"{workdir}/checkpoints"
    # Step 2 damaged: restoring warns and takes step 1.
    epath.Path(f"{workdir}/checkpoints/2/meta/metadata").write_text("not json")
    ckpt = checkpoint.Checkpointer(workdir, every_steps=1, keep=3)
    restored, meta = ckpt.restore(state)
    ckpt.close()
    assert meta["step"] == 1
    np.testing.assert_array_equal(np.asarray(restored["w"]), state["w"])


def test_folder_source_reads_images_from_gcs(gs_fundus, fundus_root):
    from jaxad.data import folder

    remote = folder.FolderSource(gs_fundus, "test", channels=3, on_corrupt="fail")
    local = folder.FolderSource(fundus_root, "test", channels=3)
    assert len(remote) == len(local) > 0
    a, b = remote[len(remote) - 1], local[len(local) - 1]
    assert a["id"] == b["id"]
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])


def test_nifti_source_reads_volumes_from_gcs(gcs, tmp_path):
    """Compressed and plain volumes under gs:// give the records the local folder gives; the
    slice cache stays local (a gs:// cache_dir is refused in one line)."""
    import nibabel as nib

    from jaxad.data import nifti

    rng = np.random.default_rng(0)
    root = tmp_path / "vols"
    (root / "sub").mkdir(parents=True)
    for name, shape in (("a.nii.gz", (8, 12, 10)), ("sub/b.nii", (8, 10, 12))):
        data = np.zeros(shape, np.float32)
        data[2:6, 2:8, 2:8] = rng.uniform(0.1, 1.0, size=(4, 6, 6))
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(root / name))
    _upload(root, f"gs://{BUCKET}/vols")
    kw = {"axis": 0, "resize": 16, "min_nonzero": 4}
    remote = nifti.NiftiFolderSource(f"gs://{BUCKET}/vols", "all", cache_dir=tmp_path / "c", **kw)
    local = nifti.NiftiFolderSource(root, "all", cache_dir=False, **kw)
    assert remote.volumes == local.volumes == ["a.nii.gz", "sub/b.nii"]
    assert len(remote) == len(local) > 0
    for i in (0, len(local) - 1):
        np.testing.assert_array_equal(remote[i]["image"], local[i]["image"])
    with pytest.raises(ValueError, match="must be a local folder"):
        nifti.NiftiFolderSource(f"gs://{BUCKET}/vols", "all", cache_dir=f"gs://{BUCKET}/c", **kw)


# --- a run on gs:// end to end -----------------------------------------------------------------


@pytest.mark.slow
def test_run_trains_resumes_evaluates_and_predicts_on_gcs(gs_fundus, fundus_root, tmp_path):
    """In process: a run stopped at step 2 resumes from its gs:// checkpoint to step 4, writes
    every output into the bucket and nothing locally; `jaxad.predict` reads and writes gs://."""
    from etils import epath

    from jaxad import predict, train

    workdir = f"gs://{BUCKET}/inproc"
    os.chdir(tmp_path)  # A gs:// path taken for a local one would show up here.
    train.run(tiny_config(gs_fundus, total_steps=2, **{"eval.enabled": False}), workdir)
    assert _names(f"{workdir}/checkpoints") == ["2"]
    results = train.run(tiny_config(gs_fundus, total_steps=4, profile_steps="3,4"), workdir)
    assert _names(f"{workdir}/checkpoints") == ["2", "4"]
    traces = list(epath.Path(f"{workdir}/profile").glob("plugins/profile/*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().length > 0  # traced locally, uploaded
    assert np.isfinite(results["image_auroc"])
    steps = [json.loads(x)["step"] for x in epath.Path(f"{workdir}/metrics.jsonl").open()]
    assert steps[:2] == [2, 2] or steps[0] == 2  # step 2 logged by the first start
    assert max(steps) == 4
    assert {"metrics.json", "scores.csv", "overlays"} <= set(_names(f"{workdir}/eval"))
    assert "config.json" in _names(workdir) and _names(f"{workdir}/tensorboard")
    out = f"gs://{BUCKET}/predicted"
    scores = predict.predict(workdir, f"{gs_fundus}/test/good", out)
    assert scores == f"{out}/scores.csv"
    assert "000.npy" in _names(out) and "000.png" in _names(out)
    amap = np.load(io.BytesIO(epath.Path(f"{out}/000.npy").read_bytes()))
    assert amap.shape == (64, 64)
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_killed_run_resumes_from_its_gcs_checkpoint(gcs, gs_fundus):
    """`python -m jaxad.main --workdir=gs://...` killed after a checkpoint resumes from it."""
    from test_train import _main_cmd

    from jaxad import checkpoint

    workdir = f"gs://{BUCKET}/killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **gcs)
    proc = subprocess.Popen(
        _main_cmd(gs_fundus, workdir, "--config.total_steps=100000"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while checkpoint.saved_step(workdir, "latest") is None:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no checkpoint appeared in the bucket"
        time.sleep(0.5)
    proc.kill()
    proc.communicate()
    last = checkpoint.saved_step(workdir, "latest")
    out = subprocess.run(
        _main_cmd(gs_fundus, workdir, f"--config.total_steps={last + 2}"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from step {last}" in out.stderr
    assert f"step {last + 2}/{last + 2}" in out.stderr
    assert {"metrics.json", "scores.csv", "overlays"} <= set(_names(f"{workdir}/eval"))
