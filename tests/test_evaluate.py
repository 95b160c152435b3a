"""Tests for evaluate_ddpm.py and utils/fid.py, offline on CPU.

A random-initialised torch-fidelity InceptionV3 weights file stands in for the real one, so the
plumbing (loading, statistics, caching, torch-fidelity calls, errors) is tested without a
download. For speed on 2 CPU cores, most tests use the 64-d feature layer (``--dims 64``): its
forward stops early and its FID needs a 64x64 eigen-decomposition instead of 2048x2048 (~20 s
here); and in-process tests let Inception resize its input to 75x75 instead of 299x299 (the
subprocess test and the real-weights test keep 299).
With ``DDPM_FID_WEIGHTS`` set to real weights, one more test checks FID(set, set) = 0 at 2048-d.
The ``--ref-config`` tests come last (they need ``datasets``).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import evaluate_ddpm  # noqa: E402
from utils import fid as F  # noqa: E402
from utils.errors import run_main  # noqa: E402

N = 24  # images per set: the feature extractor runs on CPU


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(autouse=True)
def small_inception(monkeypatch):
    """Inception's input resize 299 -> 75 (its smallest valid size): same code path, ~16x less compute."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    monkeypatch.setattr(FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)


def make_images(n=N, size=16, seed=0, shift=0):
    """uint8 N x 3 x H x W: smooth random colour fields in 40..180, brightened by ``shift``."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (40 + 140 * x + shift).clamp(0, 255).round().to(torch.uint8)


def write_pngs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(images):
        arr = x.permute(1, 2, 0).numpy()
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(folder / f"{i:06d}.png")
    return folder


def write_npz(path, images, layout="nhwc", key="arr_0"):
    arr = images.numpy()
    arr = {"nhwc": arr.transpose(0, 2, 3, 1), "nchw": arr, "nhw": arr[:, 0]}[layout]
    np.savez(path, **{key: arr})
    return path


def cli(*args):
    """evaluate_ddpm.main in-process (the monkeypatches of a test apply), quiet, returning its result."""
    return evaluate_ddpm.main([str(a) for a in args] + ["--quiet"])


@pytest.fixture(scope="session")
def sets(tmp_path_factory):
    """Samples as a PNG folder; references as .npz, the same images and brighter by 30 and 60."""
    d = tmp_path_factory.mktemp("sets")
    base = make_images()
    return {
        "dir": write_pngs(d / "samples", base),
        "same": write_npz(d / "same.npz", base),
        "shift30": write_npz(d / "shift30.npz", make_images(shift=30), layout="nchw", key="samples"),
        "shift60": write_npz(d / "shift60.npz", make_images(shift=60), layout="nchw"),
    }


# ----------------------------------------------------------------------------- loading

def test_weights_file_has_torch_fidelity_layout(weights):
    import torch_fidelity.feature_extractor_inceptionv3 as tfi
    sd = torch.load(weights["random"], weights_only=False)
    with mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: sd):
        fe = tfi.FeatureExtractorInceptionV3(F.FEATURE_EXTRACTOR, ["2048"])  # strict load_state_dict
    assert fe.state_dict().keys() == sd.keys()


def test_sample_layouts_and_grayscale_replicated(tmp_path):
    rgb = make_images(n=4)
    gray = rgb[:, :1]
    want_gray = gray.expand(-1, 3, -1, -1)
    for path, want in [
        (write_pngs(tmp_path / "rgb", rgb), rgb),
        (write_pngs(tmp_path / "gray", gray), want_gray),
        (write_npz(tmp_path / "nhwc.npz", rgb, "nhwc"), rgb),
        (write_npz(tmp_path / "nchw.npz", rgb, "nchw", key="samples"), rgb),
        (write_npz(tmp_path / "nhw.npz", gray, "nhw"), want_gray),
        (write_npz(tmp_path / "nhw1.npz", gray, "nhwc"), want_gray),
    ]:
        ds = evaluate_ddpm.load_images(path)
        got = torch.stack([ds[i] for i in range(len(ds))])
        assert got.dtype == torch.uint8 and ds.size == (16, 16), path
        assert torch.equal(got, want), path


# ----------------------------------------------------------------------------- metrics

def test_fid_zero_on_itself_and_grows_with_shift(weights, sets):
    common = ["--feature-extractor-weights", weights["random"], "--dims", 64,
              "--fid", "--kid", "--kid-subset-size", 12, "--kid-subsets", 20]
    same = cli("--samples", sets["dir"], "--ref", sets["same"], *common)  # a PNG folder against an .npz
    s30 = cli("--samples", sets["same"], "--ref", sets["shift30"], *common)
    s60 = cli("--samples", sets["same"], "--ref", sets["shift60"], *common)
    fid0, fid30, fid60 = (r["metrics"]["fid"] for r in (same, s30, s60))
    assert abs(fid0) < 1e-6 * fid30, (fid0, fid30)  # FID of the PNG folder against the same images in an .npz
    assert fid30 > 0.01 and fid60 > 1.5 * fid30, (fid30, fid60)
    kid0, kid30, kid60 = (r["metrics"]["kid_mean"] for r in (same, s30, s60))
    assert abs(kid0) < 0.05 * kid30 and kid60 > kid30 > 0, (kid0, kid30, kid60)
    assert same["n_samples"] == same["n_reference"] == N
    assert same["extractor"]["weights"] == weights["random"] and same["extractor"]["dims"] == 64


def test_ref_stats_npz_round_trip(weights, sets, tmp_path):
    w = ["--feature-extractor-weights", weights["random"], "--dims", 64]
    saved = tmp_path / "ref.npz"
    direct = cli("--samples", sets["dir"], "--ref", sets["shift30"], "--save-ref-stats", saved, *w)
    with np.load(saved) as z:  # pytorch-fid style
        assert set(z.files) >= {"mu", "sigma"} and z["mu"].shape == (64,) and z["sigma"].shape == (64, 64)
    via_file = cli("--samples", sets["dir"], "--ref-stats", saved, *w)
    assert via_file["metrics"]["fid"] == direct["metrics"]["fid"]
    assert via_file["n_reference"] == N

    st = F.load_stats(saved, 64)
    F.save_stats(tmp_path / "compact.npz", st, compact=True)  # mu + float32 sigma_triu (compact)
    with np.load(tmp_path / "compact.npz") as z:
        assert "sigma" not in z.files and z["sigma_triu"].shape == (64 * 65 // 2,)
    ct = F.load_stats(tmp_path / "compact.npz", 64)
    assert np.array_equal(ct["mu"], st["mu"]) and np.allclose(ct["sigma"], st["sigma"], rtol=1e-6, atol=1e-9)
    assert np.array_equal(ct["sigma"], ct["sigma"].T) and ct["n"] == N
    F.save_stats(tmp_path / "full.npz", ct)
    assert np.array_equal(F.load_stats(tmp_path / "full.npz")["sigma"], ct["sigma"])


def test_compute_fid_for_training(weights, sets, tmp_path):
    path = write_stats(weights, sets["shift30"], tmp_path)  # compact format
    want = cli("--samples", sets["dir"], "--ref-stats", path, "--feature-extractor-weights", weights["random"],
               "--dims", 64)["metrics"]["fid"]
    samples = make_images()  # the images of sets["dir"], as the tensor a sampler returns
    got = F.compute_fid(samples, F.load_stats(path, 64), weights["random"], "cpu", batch_size=7, dims=64)
    assert got == pytest.approx(want, rel=1e-6)
    gray = F.compute_fid(samples[:, :1], str(path), weights["random"], dims=64)  # path + 1-channel samples
    assert math.isfinite(gray) and gray != got


def test_isc_unavailable_with_nan_logits(weights, sets, tmp_path):
    out = tmp_path / "res.json"
    few = write_npz(tmp_path / "few.npz", make_images(n=6))  # IS runs the whole network
    res = cli("--samples", few, "--isc", "--isc-splits", 2, "--out", out,
              "--feature-extractor-weights", weights["nan"])
    assert res["metrics"] == {"isc": F.NO_LOGITS}
    text = out.read_text()
    assert json.loads(text)["metrics"]["isc"] == "unavailable: the feature extractor has no logits"
    assert "NaN" not in text
    ok = cli("--samples", few, "--isc", "--isc-splits", 2, "--feature-extractor-weights", weights["random"])
    assert math.isfinite(ok["metrics"]["isc_mean"]) and ok["metrics"]["isc_mean"] >= 1.0


# ----------------------------------------------------------------------------- bad input

def one_line_error(capsys, *args):
    """Run the CLI the way its __main__ does; return the single stderr line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(evaluate_ddpm.main, [str(a) for a in args] + ["--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_one_line_each(weights, sets, tmp_path, capsys):
    w = ["--feature-extractor-weights", weights["random"]]
    (tmp_path / "empty").mkdir()
    assert "no images found" in one_line_error(capsys, "--samples", tmp_path / "empty", "--ref", sets["same"], *w)
    np.savez(tmp_path / "empty.npz")
    assert "no images found" in one_line_error(capsys, "--samples", tmp_path / "empty.npz", "--ref", sets["same"], *w)

    mixed = write_pngs(tmp_path / "mixed", make_images(n=2))
    Image.new("RGB", (8, 8)).save(mixed / "000002.png")
    assert "mixed image sizes" in one_line_error(capsys, "--samples", mixed, "--ref", sets["same"], *w)

    msg = one_line_error(capsys, "--samples", sets["dir"], "--ref", sets["same"], "--kid", *w)
    assert "fewer samples (24) than the KID subset size (1000)" in msg

    np.savez(tmp_path / "bad.npz", mu=np.zeros(10), sigma=np.eye(10))
    msg = one_line_error(capsys, "--samples", sets["dir"], "--ref-stats", tmp_path / "bad.npz", *w)
    assert "wrong shape" in msg and "(2048,)" in msg
    np.savez(tmp_path / "bad2.npz", mu=np.zeros(64), sigma=np.eye(63))
    assert "wrong shape" in one_line_error(capsys, "--samples", sets["dir"], "--ref-stats", tmp_path / "bad2.npz",
                                           "--dims", 64, *w)

    msg = one_line_error(capsys, "--samples", sets["dir"], "--ref", sets["same"],
                         "--feature-extractor-weights", tmp_path / "missing.pth")
    assert "missing.pth' not found" in msg
    torch.save({"not": torch.zeros(1)}, tmp_path / "wrong.pth")
    msg = one_line_error(capsys, "--samples", sets["dir"], "--ref", sets["same"], "--dims", 64,
                         "--feature-extractor-weights", tmp_path / "wrong.pth")
    assert "cannot load" in msg

    np.savez(tmp_path / "float.npz", np.zeros((2, 8, 8, 3), np.float32))
    assert "uint8" in one_line_error(capsys, "--samples", tmp_path / "float.npz", "--ref", sets["same"], *w)
    assert "exactly one reference" in one_line_error(capsys, "--samples", sets["dir"], *w)
    assert "KID needs reference images" in one_line_error(capsys, "--samples", sets["dir"], "--kid",
                                                          "--ref-stats", tmp_path / "bad.npz", *w)


@pytest.mark.slow
def test_script_runs_and_errors_in_one_line(weights, sets, tmp_path):
    """`python evaluate_ddpm.py` end to end in a fresh process: a result, then a one-line error."""
    stats = write_stats(weights, sets["shift30"], tmp_path)
    out = tmp_path / "res.json"
    few = write_npz(tmp_path / "few.npz", make_images(n=6))
    cmd = [sys.executable, str(REPO / "evaluate_ddpm.py"), "--samples", str(few), "--ref-stats", str(stats),
           "--dims", "64", "--feature-extractor-weights", weights["random"], "--out", str(out), "--quiet"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())
    assert res["metrics"]["fid"] > 0 and res["n_samples"] == 6 and res["seconds"] > 0
    assert "FID" in p.stdout and "inception-v3-compat" in p.stdout
    p = subprocess.run(cmd[:2] + ["--samples", str(tmp_path / "nothing"), "--ref-stats", str(stats)],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and p.stderr.startswith("error: "), p.stderr


def write_stats(weights, images_path, tmp_path):
    feats = F.extract_features(evaluate_ddpm.load_images(images_path), ("64",), weights["random"])["64"]
    path = tmp_path / "stats64.npz"
    F.save_stats(path, F.features_to_stats(feats), compact=True)
    return path


@pytest.mark.skipif(not os.environ.get("DDPM_FID_WEIGHTS"), reason="DDPM_FID_WEIGHTS (real Inception weights) unset")
def test_real_weights_fid_of_set_with_itself_is_zero(tmp_path, monkeypatch):
    """Real weights at 299x299, 2048-d: FID(set, set) = 0; IS unavailable with fid_inception_weights.py's file."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    monkeypatch.setattr(FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 299)
    images = make_images(n=8)
    res = cli("--samples", write_pngs(tmp_path / "s", images), "--ref", write_npz(tmp_path / "r.npz", images),
              "--fid", "--isc", "--isc-splits", 2, "--feature-extractor-weights", os.environ["DDPM_FID_WEIGHTS"])
    print(res["metrics"])
    assert abs(res["metrics"]["fid"]) < 1e-3, res["metrics"]
    isc = res["metrics"].get("isc_mean", res["metrics"].get("isc"))
    assert isc == F.NO_LOGITS or math.isfinite(isc)


# ----------------------------------------------------------------------------- --ref-config (needs datasets/)

def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    assert F.default_cache_dir() == str(tmp_path / "fid_stats")
    monkeypatch.delenv("DDPM_CACHE")
    assert F.default_cache_dir() == os.path.expanduser("~/.cache/ddpm/fid_stats")


def test_ref_config_stats_cached_and_reused(weights, sets, tmp_path, monkeypatch):
    root = write_pngs(tmp_path / "train_images", make_images(shift=30))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data:\n  name: image_folder\n  root: {root}\n  img_size: 16\n  img_channels: 3\n"
                   f"  random_flip: false\n  download: false\n")
    calls = []
    real = F.extract_features
    counting = lambda ds, *a, **k: calls.append(len(ds)) or real(ds, *a, **k)     # noqa: E731
    monkeypatch.setattr(F, "extract_features", counting)                 # the reference's (utils.fid)
    monkeypatch.setattr(evaluate_ddpm, "extract_features", counting)     # the samples' (evaluate_ddpm.py)
    cache = tmp_path / "cache"
    args = ["--samples", sets["dir"], "--ref-config", cfg, "--cache-dir", cache, "--dims", 64,
            "--feature-extractor-weights", weights["random"]]

    first = cli(*args)
    assert calls == [N, N]  # reference, then samples
    files = list(cache.glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith("image_folder-train-16px-")
    assert first["reference_cache"] == str(files[0]) and first["n_reference"] == N
    mtime = files[0].stat().st_mtime_ns

    calls.clear()
    second = cli(*args)
    assert calls == [N]  # samples only: the reference statistics came from the cache
    assert files[0].stat().st_mtime_ns == mtime and "(cached)" in second["reference"]
    assert second["metrics"]["fid"] == first["metrics"]["fid"]
    # the config path sees the images as --ref does
    direct = cli("--samples", sets["dir"], "--ref", sets["shift30"], "--dims", 64,
                 "--feature-extractor-weights", weights["random"])
    assert first["metrics"]["fid"] == pytest.approx(direct["metrics"]["fid"], rel=1e-6)

    other = cli(*args[:-1], weights["nan"])  # other weights: another cache entry
    assert len(list(cache.glob("*.npz"))) == 2 and other["reference_cache"] != first["reference_cache"]


def test_ref_config_size_mismatch_is_one_line(weights, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data:\n  name: image_folder\n  root: {tmp_path}\n  img_size: 32\n  img_channels: 3\n")
    samples = write_npz(tmp_path / "s.npz", make_images(n=4))
    msg = one_line_error(capsys, "--samples", samples, "--ref-config", cfg,
                         "--feature-extractor-weights", weights["random"])
    assert "trains at 32x32" in msg
