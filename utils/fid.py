"""FID, KID and Inception Score features and statistics, computed by torch-fidelity, and the statistics cache.

Everything goes through torch-fidelity's ``inception-v3-compat`` feature extractor (the TF FID Inception) and its
metric functions; this module only

- runs the extractor on a Dataset of uint8 3 x H x W images, in exact fp32, keeping the extractor loaded;
- reads and writes statistics files: pytorch-fid style (``mu``, ``sigma``) or compact (``mu``, ``sigma_triu``:
  the float32 upper triangle of ``sigma``);
- caches the reference statistics of a config's dataset on disk, keyed by the data config, the split and the
  feature extractor (the images come from the caller: this module knows nothing of datasets);
- reports IS as unavailable when the extractor has no classifier (NaN logits).

Training calls :func:`cached_reference` once and :func:`compute_fid` every ``train.fid_freq`` steps;
evaluate_ddpm.py is the command line.
"""
import contextlib
import functools
import hashlib
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError
from utils.files import atomic_write
from utils.images import Uint8Images

FEATURE_EXTRACTOR = "inception-v3-compat"  # torch-fidelity's name for the TF FID Inception
LOGITS = "logits_unbiased"                  # torch-fidelity's layer for IS
DIMS = (64, 192, 768, 2048)                 # its pooled feature layers; 2048 (pool3) is standard FID
NO_LOGITS = "unavailable: the feature extractor has no logits"
# data-config keys that do not change the reference images
_NOT_IMAGE_KEYS = {"random_flip", "download", "on_gpu", "num_workers", "pin_memory", "batch_size"}


# ----------------------------------------------------------------------------- feature extractor

def check_weights(weights_path, flag="--feature-extractor-weights"):
    """A one-line UserError when a weights file is given but missing, or holds anything but tensors.

    torch-fidelity unpickles the file it is given without restriction, so a crafted file would run code: the file
    is first read here with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers.
    """
    if weights_path is None:
        return
    if not os.path.isfile(weights_path):
        raise UserError(f"feature extractor weights '{weights_path}' not found; pass an existing file to {flag}, "
                        f"or leave it out to let torch-fidelity download its own")
    st = os.stat(weights_path)
    _check_tensors_only(os.path.abspath(weights_path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _check_tensors_only(path, size, mtime_ns):
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickled code, a truncated file, not a torch file
        msg = " ".join(str(e).split())[:200]
        raise UserError(f"feature extractor weights '{path}' are not a plain state_dict of tensors; refused, since "
                        f"torch-fidelity would unpickle the file fully ({type(e).__name__}: {msg})") from None
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise UserError(f"feature extractor weights '{path}' hold no state_dict of tensors; pass torch-fidelity's "
                        f"InceptionV3 weights file")


@functools.lru_cache(maxsize=8)
def _sha256(path, size, mtime_ns):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def extractor_tag(weights_path=None) -> str:
    """Names the features: ``inception-v3-compat-<sha256[:10] of the weights>`` (or of torch-fidelity's own)."""
    if weights_path is None:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
        return f"{FEATURE_EXTRACTOR}-{Path(URL_INCEPTION_V3).stem.rsplit('-', 1)[-1]}"
    check_weights(weights_path)
    st = os.stat(weights_path)
    return f"{FEATURE_EXTRACTOR}-{_sha256(os.path.abspath(weights_path), st.st_size, st.st_mtime_ns)[:10]}"


@functools.lru_cache(maxsize=2)
def _extractor(weights_path, tag, layers, device, verbose):
    from torch_fidelity.utils import create_feature_extractor
    try:
        fe = create_feature_extractor(FEATURE_EXTRACTOR, list(layers), cuda=False, verbose=verbose,
                                      feature_extractor_weights_path=weights_path)
    except Exception as e:  # a bad file, or no network for the download
        msg = " ".join(str(e).split())[:300]
        if weights_path is None:
            raise UserError(f"could not get torch-fidelity's Inception weights ({type(e).__name__}: {msg}); "
                            f"without network pass an offline file with --feature-extractor-weights") from None
        raise UserError(f"cannot load '{weights_path}' as torch-fidelity InceptionV3 weights "
                        f"({type(e).__name__}: {msg})") from None
    return fe.to(device)


def get_extractor(weights_path=None, layers=("2048",), device="cpu", verbose=False):
    """torch-fidelity's InceptionV3 giving ``layers``, on ``device``; the last two made are kept for reuse."""
    return _extractor(weights_path, extractor_tag(weights_path), tuple(layers), str(device), verbose)


@contextlib.contextmanager
def _exact_fp32(device):
    """TF32 off (new ``fp32_precision`` API, restored after) and autocast off, as the reference stats were made."""
    flags = [m for m in (getattr(torch.backends.cuda, "matmul", None), getattr(torch.backends.cudnn, "conv", None))
             if m is not None and hasattr(m, "fp32_precision")]
    saved = [m.fp32_precision for m in flags]
    try:
        for m in flags:
            m.fp32_precision = "ieee"
        with torch.autocast(device_type=device.type, enabled=False):
            if device.type == "cuda":
                with torch.cuda.device(device):  # torch-fidelity moves batches with .cuda()
                    yield
            else:
                yield
    finally:
        for m, v in zip(flags, saved):
            m.fp32_precision = v


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def extract_features(dataset, layers=("2048",), weights_path=None, device=None, batch_size=64,
                     verbose=False) -> dict:
    """Features ``{layer: float32 N x D CPU tensor}`` of a Dataset of uint8 3 x H x W (torch-fidelity)."""
    from torch_fidelity.utils import get_featuresdict_from_dataset
    device = torch.device(device) if device is not None else default_device()
    if device.type not in ("cpu", "cuda"):  # torch-fidelity moves batches only with .cuda()
        device = torch.device("cpu")
    fe = get_extractor(weights_path, layers, device, verbose)
    # torch-fidelity's save_cpu_ram=True means no loader workers: none are needed to index a tensor,
    # and for a few hundred files starting them costs more than decoding
    no_workers = isinstance(dataset, Uint8Images) or len(dataset) < 1000
    with _exact_fp32(device):
        return get_featuresdict_from_dataset(dataset, fe, batch_size, device.type == "cuda", no_workers, verbose)


# ----------------------------------------------------------------------------- statistics

def features_to_stats(features: torch.Tensor) -> dict:
    """``{mu, sigma, n}`` (float64) of N x D features, by torch-fidelity's ``fid_features_to_statistics``."""
    from torch_fidelity.metric_fid import fid_features_to_statistics
    if len(features) < 2:
        raise UserError(f"FID needs at least 2 images, got {len(features)}")
    st = fid_features_to_statistics(features.detach().double().cpu())
    return {"mu": st["mu"], "sigma": st["sigma"], "n": len(features)}


def fid_from_stats(stats1: dict, stats2: dict) -> float:
    """FID between two ``{mu, sigma}`` by torch-fidelity's ``fid_statistics_to_metric``."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
    a, b = ({"mu": np.asarray(s["mu"], np.float64), "sigma": np.asarray(s["sigma"], np.float64)}
            for s in (stats1, stats2))
    if a["mu"].shape != b["mu"].shape:
        raise UserError(f"statistics of {a['mu'].shape[0]} and {b['mu'].shape[0]} dimensions cannot be compared; "
                        f"use the same --dims for both")
    return float(fid_statistics_to_metric(a, b, False)[KEY_METRIC_FID])


def save_stats(path, stats: dict, compact=False):
    """Write ``mu``, ``sigma`` (float64, pytorch-fid style) and ``n``; ``compact``: ``sigma_triu`` float32 instead."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {"mu": np.asarray(stats["mu"], np.float64), "n": np.int64(stats.get("n") or -1)}
    sigma = np.asarray(stats["sigma"], np.float64)
    if compact:
        out["sigma_triu"] = sigma[np.triu_indices(len(sigma))].astype(np.float32)
    else:
        out["sigma"] = sigma
    atomic_write(str(path), lambda f: np.savez(f, **out))   # a file object: numpy adds no second '.npz'


def load_stats(path, dims=None) -> dict:
    """Read ``{mu, sigma, n}`` (float64) from a pytorch-fid style or compact ``.npz``; check the shapes.

    ``dims``: the feature size the statistics must have (2048 for standard FID); ``None`` accepts any.
    ``n`` is ``None`` when the file does not say.
    """
    if not os.path.isfile(path):
        raise UserError(f"reference statistics '{path}' not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            data = {k: z[k] for k in ("mu", "sigma", "sigma_triu", "n") if k in files}
    except (OSError, ValueError, AttributeError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"reference statistics '{path}' is not a readable .npz ({type(e).__name__}: "
                        f"{' '.join(str(e).split())})") from None
    if "mu" not in data or not {"sigma", "sigma_triu"} & files:
        raise UserError(f"reference statistics '{path}' must hold 'mu' and 'sigma' (or 'sigma_triu'); "
                        f"found {sorted(files)}")
    mu = data["mu"].astype(np.float64)
    d = mu.shape[0] if mu.ndim == 1 else -1
    if d < 2 or (dims is not None and d != dims):
        want = f"({dims},)" if dims is not None else "(D,)"
        raise UserError(f"reference statistics '{path}' have the wrong shape: mu is {mu.shape}, expected {want} "
                        f"(Inception pool features; --dims {dims or 'D'})")
    if "sigma" in data:
        sigma = data["sigma"].astype(np.float64)
        if sigma.shape != (d, d):
            raise UserError(f"reference statistics '{path}' have the wrong shape: sigma is {sigma.shape}, "
                            f"expected {(d, d)} to match mu")
    else:
        triu = data["sigma_triu"]
        if triu.shape != (d * (d + 1) // 2,):
            raise UserError(f"reference statistics '{path}' have the wrong shape: sigma_triu is {triu.shape}, "
                            f"expected ({d * (d + 1) // 2},) (upper triangle of {d}x{d})")
        sigma = np.zeros((d, d))
        sigma[np.triu_indices(d)] = triu
        sigma = sigma + np.triu(sigma, 1).T
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f"reference statistics '{path}' contain NaN or inf; recompute them")
    n = int(data["n"]) if "n" in data and int(data["n"]) > 0 else None
    return {"mu": mu, "sigma": sigma, "n": n}


# ----------------------------------------------------------------------------- reference from a config

def default_cache_dir() -> str:
    """``--cache-dir``'s default: ``$DDPM_CACHE/fid_stats``, else ``~/.cache/ddpm/fid_stats``."""
    root = os.environ.get("DDPM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ddpm")
    return os.path.join(root, "fid_stats")


def reference_key(data_cfg: dict, split="train", weights_path=None, dims=2048) -> str:
    """Cache name, e.g. ``fashion_mnist-train-32px-1a2b3c4d-inception-v3-compat-909f7c2b67-d2048``.

    The 8 hex digits hash the data config entries that shape the images (name, root, size,
    channels, ...), so two image folders never share an entry.
    """
    keep = {k: v for k, v in data_cfg.items() if k not in _NOT_IMAGE_KEYS}
    if keep.get("root"):
        keep["root"] = os.path.abspath(os.path.expanduser(str(keep["root"])))
    h = hashlib.sha1(json.dumps([split, keep], sort_keys=True, default=str).encode()).hexdigest()[:8]
    name = f"{data_cfg.get('name')}-{split}-{data_cfg.get('img_size')}px-{h}-{extractor_tag(weights_path)}-d{dims}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def cached_reference(data_cfg: dict, split, load_images, weights_path=None, device=None, batch_size=64, dims=2048,
                     cache_dir=None, need_features=False, verbose=False) -> dict:
    """Reference statistics of a config's dataset, computed once and cached on disk.

    ``load_images()`` returns the split's images as training sees them, uint8 N x C x H x W (C = 1 or 3; gray is
    replicated to 3 channels); it is called only when the cache lacks the statistics. They are saved in
    ``cache_dir`` (default :func:`default_cache_dir`) as ``<reference_key>.npz`` (pytorch-fid style); with
    ``need_features`` (KID) the features are kept next to them as ``<key>-features.npy``.

    Returns ``{stats, features (float32 N x D tensor or None), n, cache_path, cached}``; ``cached`` says whether
    the statistics were read from the cache.
    """
    cache = Path(cache_dir or default_cache_dir())
    key = reference_key(data_cfg, split, weights_path, dims)
    stats_path, feats_path = cache / f"{key}.npz", cache / f"{key}-features.npy"
    if stats_path.is_file() and (not need_features or feats_path.is_file()):
        stats = load_stats(stats_path, dims)
        feats = torch.from_numpy(np.load(feats_path)) if need_features else None
        return {"stats": stats, "features": feats, "n": stats["n"], "cache_path": str(stats_path), "cached": True}
    if verbose:
        print(f"computing reference statistics of {data_cfg.get('name')} ({split}); cached as {stats_path}",
              flush=True)
    feats = extract_features(Uint8Images(load_images(), rgb=True), (str(dims),), weights_path, device, batch_size,
                             verbose)[str(dims)]
    stats = features_to_stats(feats)
    save_stats(stats_path, stats)
    if need_features:
        atomic_write(str(feats_path), lambda f: np.save(f, feats.numpy()))
    return {"stats": stats, "features": feats if need_features else None, "n": stats["n"],
            "cache_path": str(stats_path), "cached": False}


# ----------------------------------------------------------------------------- metrics

def compute_fid(samples: torch.Tensor, ref_stats, weights_path=None, device=None, batch_size=64,
                dims=2048) -> float:
    """FID of generated images against reference statistics -- the function training calls.

    Args:
        samples: uint8 tensor N x C x H x W (C = 1 or 3; grayscale is replicated), on any device;
            N >= 2, and about 10K for numbers comparable to papers (few samples bias FID upwards).
        ref_stats: a statistics ``.npz`` path (pytorch-fid ``mu``/``sigma`` or compact ``sigma_triu``)
            or a dict with ``mu`` and ``sigma``, e.g. ``cached_reference(...)["stats"]``.
        weights_path: torch-fidelity InceptionV3 weights file (offline); ``None`` lets torch-fidelity
            download its own.
        device: where Inception runs (default: CUDA when available). Call it on one process only.
        batch_size: images per Inception forward.
        dims: feature layer (2048 = pool3, the standard FID).

    TF32 and autocast are off during feature extraction, and restored after. The extractor stays
    loaded between calls (about 100 MB on ``device``).
    """
    stats = load_stats(ref_stats, dims) if isinstance(ref_stats, (str, os.PathLike)) else ref_stats
    feats = extract_features(Uint8Images(samples, rgb=True), (str(dims),), weights_path, device, batch_size)[str(dims)]
    return fid_from_stats(features_to_stats(feats), stats)


def kid_from_features(feats1, feats2, subset_size=1000, subsets=100) -> tuple:
    """``(mean, std)`` of KID by torch-fidelity's ``kid_features_to_metric``."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
    for what, f in (("samples", feats1), ("reference images", feats2)):
        if len(f) < subset_size:
            raise UserError(f"KID needs at least --kid-subset-size={subset_size} {what}, got {len(f)}; "
                            f"pass a smaller --kid-subset-size or more {what}")
    out = kid_features_to_metric(feats1, feats2, kid_subset_size=subset_size, kid_subsets=subsets, verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def inception_score(logits: torch.Tensor, splits=10):
    """``(mean, std)`` of IS by torch-fidelity's ``isc_features_to_metric``, or ``None`` when the logits
    are not finite (weights without a classifier, e.g. those of ``fid_inception_weights.py``)."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
    if not torch.isfinite(logits).all():
        return None
    out = isc_features_to_metric(logits, splits)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]
