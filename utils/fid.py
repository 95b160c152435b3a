"""FID, KID and Inception Score of generated samples, computed by torch-fidelity.

Everything goes through torch-fidelity's ``inception-v3-compat`` feature extractor (the TF FID
Inception) and its metric functions; this module only

- loads sample sets (a folder of PNG/JPEG files or an ``.npz``) as uint8 3 x H x W images,
  grayscale replicated to 3 channels -- the same treatment as the reference;
- builds the reference from a config's dataset exactly as training sees it (``datasets.load_uint8``)
  and caches its statistics on disk, keyed by dataset, split, size and feature extractor;
- reads and writes statistics files: pytorch-fid style (``mu``, ``sigma``) or compact
  (``mu``, ``sigma_triu``: the float32 upper triangle of ``sigma``);
- reports IS as unavailable when the extractor has no classifier (NaN logits).

Functions for training: :func:`reference_from_config` (once) and :func:`compute_fid` (every
``train.fid_freq`` steps).
"""
import contextlib
import functools
import hashlib
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.errors import UserError

FEATURE_EXTRACTOR = "inception-v3-compat"  # torch-fidelity's name for the TF FID Inception
LOGITS = "logits_unbiased"                  # torch-fidelity's layer for IS
DIMS = (64, 192, 768, 2048)                 # its pooled feature layers; 2048 (pool3) is standard FID
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
NO_LOGITS = "unavailable: the feature extractor has no logits"
# data-config keys that do not change the reference images
_NOT_IMAGE_KEYS = {"random_flip", "download", "on_gpu", "num_workers", "pin_memory", "batch_size"}


# ----------------------------------------------------------------------------- images

class Uint8Images(Dataset):
    """Images held in memory as uint8 N x C x H x W (C = 1 or 3); items are uint8 3 x H x W."""

    def __init__(self, images: torch.Tensor):
        if not torch.is_tensor(images) or images.dtype != torch.uint8 or images.dim() != 4 \
                or images.shape[1] not in (1, 3):
            got = f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"expected a uint8 tensor N x C x H x W with C = 1 or 3, got {got}")
        self.images = images.detach().cpu()
        self.size = tuple(images.shape[2:])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        return x.expand(3, -1, -1) if x.shape[0] == 1 else x


def _image_files_dataset(files, size):
    """torch-fidelity's lazy file dataset (PIL ``convert('RGB')``: grayscale replicated), with ``.size``."""
    from torch_fidelity.datasets import ImagesPathDataset
    ds = ImagesPathDataset([str(f) for f in files])
    ds.size = size
    return ds


def to_nchw(arr, what="images") -> torch.Tensor:
    """A uint8 array N x H x W, N x H x W x C or N x C x H x W (C = 1 or 3) as a uint8 N x C x H x W tensor."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise UserError(f"{what}: expected uint8 images (0..255), got {arr.dtype}; save samples as uint8")
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[1] not in (1, 3):
        if arr.shape[-1] not in (1, 3):
            raise UserError(f"{what}: cannot tell the channel axis of an array of shape {arr.shape}; "
                            f"expected N x H x W, N x H x W x C or N x C x H x W with C = 1 or 3")
        arr = arr.transpose(0, 3, 1, 2)
    elif arr.ndim != 4:
        raise UserError(f"{what}: expected an array N x H x W, N x H x W x C or N x C x H x W, got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def load_images(path, what="samples") -> Dataset:
    """A folder of PNG/JPEG images or an ``.npz``/``.npy`` of uint8 images as a Dataset of uint8 3 x H x W.

    The ``.npz`` array is the one named ``samples`` or ``arr_0``, else the first. The Dataset has
    ``.size == (H, W)``. No images, mixed sizes or a non-uint8 array raise a :class:`UserError`.
    """
    p = Path(path)
    if p.is_dir():
        return _load_folder(p, what)
    if not p.is_file():
        raise UserError(f"{what} '{path}' not found; pass a folder of PNG/JPEG images or an .npz of uint8 images")
    try:
        z = np.load(p, allow_pickle=False)
        if isinstance(z, np.ndarray):
            arr = z
        else:
            with z:
                if not z.files:
                    raise UserError(f"no images found in {what} '{path}': the .npz holds no array")
                arr = z[next((k for k in ("samples", "arr_0") if k in z.files), z.files[0])]
    except (OSError, ValueError) as e:
        raise UserError(f"{what} '{path}' is neither a folder of images nor a readable .npz/.npy of uint8 "
                        f"images ({' '.join(str(e).split())})") from None
    x = to_nchw(arr, f"{what} '{path}'")
    if len(x) == 0:
        raise UserError(f"no images found in {what} '{path}': its array is empty")
    return Uint8Images(x)


def _load_folder(folder: Path, what: str) -> Dataset:
    from PIL import Image, UnidentifiedImageError
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
    if not files:
        raise UserError(f"no images found in {what} folder '{folder}' (looked for {', '.join(IMAGE_EXTS)}); "
                        f"pass the folder the sampler wrote or an .npz")
    first = {}
    for f in files:  # headers only: cheap even for 50K files
        try:
            with Image.open(f) as im:
                w, h = im.size
        except (OSError, UnidentifiedImageError) as e:
            raise UserError(f"cannot read image '{f}' ({' '.join(str(e).split())}); remove or replace it") from None
        first.setdefault((h, w), f.name)
        if len(first) > 1:
            (s1, f1), (s2, f2) = first.items()
            raise UserError(f"mixed image sizes in {what} folder '{folder}': {f1} is {s1[1]}x{s1[0]}, "
                            f"{f2} is {s2[1]}x{s2[0]}; all images must have the same size")
    return _image_files_dataset(files, next(iter(first)))


# ----------------------------------------------------------------------------- feature extractor

def check_weights(weights_path):
    """A :class:`UserError` when a weights file is given but missing."""
    if weights_path is not None and not os.path.isfile(weights_path):
        raise UserError(f"feature extractor weights '{weights_path}' not found; pass an existing file to "
                        f"--feature-extractor-weights, or leave it out to let torch-fidelity download its own")


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
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        with open(tmp, "wb") as f:  # a file object: numpy adds no second '.npz'
            np.savez(f, **out)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"reference statistics '{path}' is not a readable .npz ({' '.join(str(e).split())})") from None
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


def reference_from_config(data_cfg: dict, split="train", weights_path=None, device=None, batch_size=64, dims=2048,
                          cache_dir=None, need_features=False, verbose=False) -> dict:
    """Reference statistics of a config's dataset, as training sees it, cached on disk and reused.

    The images come from ``datasets.load_uint8(data_cfg, split)`` (the config's resize, uint8,
    grayscale replicated to 3 channels). The statistics are saved in ``cache_dir`` (default
    :func:`default_cache_dir`) as ``<reference_key>.npz`` (pytorch-fid style); with ``need_features``
    (KID) the features are kept next to them as ``<key>-features.npy``.

    Returns ``{stats, features (float32 N x D tensor or None), n, cache_path, cached}``; ``cached``
    says whether the statistics were read from the cache. Training: call once on the main process
    and pass ``["stats"]`` to :func:`compute_fid`.
    """
    cache = Path(cache_dir or default_cache_dir())
    key = reference_key(data_cfg, split, weights_path, dims)
    stats_path, feats_path = cache / f"{key}.npz", cache / f"{key}-features.npy"
    if stats_path.is_file() and (not need_features or feats_path.is_file()):
        stats = load_stats(stats_path, dims)
        feats = torch.from_numpy(np.load(feats_path)) if need_features else None
        return {"stats": stats, "features": feats, "n": stats["n"], "cache_path": str(stats_path), "cached": True}
    from datasets import load_uint8
    if verbose:
        print(f"computing reference statistics of {data_cfg.get('name')} ({split}); cached as {stats_path}",
              flush=True)
    images = Uint8Images(load_uint8(data_cfg, split))
    feats = extract_features(images, (str(dims),), weights_path, device, batch_size, verbose)[str(dims)]
    stats = features_to_stats(feats)
    save_stats(stats_path, stats)
    if need_features:
        tmp = feats_path.with_name(f".tmp-{os.getpid()}-{feats_path.name}")
        np.save(tmp, feats.numpy())
        os.replace(tmp, feats_path)
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
            or a dict with ``mu`` and ``sigma``, e.g. ``reference_from_config(cfg["data"])["stats"]``.
        weights_path: torch-fidelity InceptionV3 weights file (offline); ``None`` lets torch-fidelity
            download its own.
        device: where Inception runs (default: CUDA when available). Call it on one process only.
        batch_size: images per Inception forward.
        dims: feature layer (2048 = pool3, the standard FID).

    TF32 and autocast are off during feature extraction, and restored after. The extractor stays
    loaded between calls (about 100 MB on ``device``).
    """
    stats = load_stats(ref_stats, dims) if isinstance(ref_stats, (str, os.PathLike)) else ref_stats
    feats = extract_features(Uint8Images(samples), (str(dims),), weights_path, device, batch_size)[str(dims)]
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


def evaluate(samples=None, *, ref_config=None, ref_split="train", ref=None, ref_stats=None, fid=True, kid=False,
             isc=False, weights_path=None, device=None, batch_size=64, dims=2048, kid_subset_size=1000,
             kid_subsets=100, isc_splits=10, cache_dir=None, save_ref_stats=None, verbose=False) -> dict:
    """Evaluate a sample set (folder or ``.npz``) against one reference; the logic of ``evaluate_ddpm.py``.

    The reference is one of ``ref_config`` (a YAML config: its dataset as training sees it, with
    statistics cached, see :func:`reference_from_config`), ``ref`` (images, like ``samples``) or
    ``ref_stats`` (a statistics ``.npz``; not enough for KID). ``save_ref_stats`` writes the
    reference statistics pytorch-fid style; ``samples`` may then be ``None``.

    Returns a JSON-able dict: ``metrics`` (``fid``, ``kid_mean``/``kid_std``, ``isc_mean``/``isc_std``
    or ``isc: "unavailable: ..."``), ``n_samples``, ``n_reference``, ``samples``, ``reference``,
    ``extractor``, ``seconds``. Bad input raises a one-line :class:`UserError` before any
    feature is computed where that can be known in advance.
    """
    t0 = time.perf_counter()
    device = torch.device(device) if device is not None else default_device()
    if dims not in DIMS:
        raise UserError(f"--dims must be one of {', '.join(map(str, DIMS))}, got {dims}")
    check_weights(weights_path)
    need_ref = fid or kid or save_ref_stats is not None
    given = [r for r in (ref_config, ref, ref_stats) if r is not None]
    if need_ref and len(given) != 1:
        raise UserError("give exactly one reference: --ref-config CONFIG, --ref DIR_OR_NPZ or --ref-stats FILE.npz")
    if samples is None and save_ref_stats is None:
        raise UserError("no samples given; pass --samples DIR_OR_NPZ")
    if kid and ref_stats is not None:
        raise UserError("KID needs reference images, not statistics: use --ref-config or --ref instead of --ref-stats")

    sample_set = load_images(samples, "samples") if samples is not None else None
    n = len(sample_set) if sample_set is not None else None
    if sample_set is not None:
        if kid and n < kid_subset_size:
            raise UserError(f"fewer samples ({n}) than the KID subset size ({kid_subset_size}); "
                            f"pass --kid-subset-size {n} or less, or more samples")
        if isc and n < isc_splits:
            raise UserError(f"fewer samples ({n}) than IS splits ({isc_splits}); pass --isc-splits {n} or less")

    layer = str(dims)
    ref_info = {"stats": None, "features": None, "n": None}
    reference, cache_path = None, None
    if need_ref and ref_stats is not None:
        stats = load_stats(ref_stats, dims)
        ref_info = {"stats": stats, "features": None, "n": stats["n"]}
        reference = f"statistics {ref_stats}"
    elif need_ref and ref is not None:
        ref_set = load_images(ref, "reference")
        if kid and len(ref_set) < kid_subset_size:
            raise UserError(f"fewer reference images ({len(ref_set)}) than the KID subset size ({kid_subset_size}); "
                            f"pass --kid-subset-size {len(ref_set)} or less")
        feats = extract_features(ref_set, (layer,), weights_path, device, batch_size, verbose)[layer]
        ref_info = {"stats": features_to_stats(feats), "features": feats, "n": len(feats)}
        reference = f"images {ref}"
    elif need_ref:
        from utils.config import load_config
        data_cfg = load_config(ref_config).get("data")
        if not isinstance(data_cfg, dict):
            raise UserError(f"config '{ref_config}' has no 'data' section; pass a training config to --ref-config")
        size = data_cfg.get("img_size")
        if sample_set is not None and isinstance(size, int) and sample_set.size != (size, size):
            h, w = sample_set.size
            raise UserError(f"samples are {w}x{h} but '{ref_config}' trains at {size}x{size} (data.img_size); "
                            f"evaluate samples of the config's size")
        ref_info = reference_from_config(data_cfg, ref_split, weights_path, device, batch_size, dims,
                                         cache_dir, need_features=kid, verbose=verbose)
        cache_path = ref_info["cache_path"]
        reference = (f"config {ref_config}: {data_cfg.get('name')} {ref_split} {size}px"
                     f" ({'cached' if ref_info['cached'] else 'computed, cached'})")
    if save_ref_stats is not None:
        save_stats(save_ref_stats, ref_info["stats"])

    metrics = {}
    if sample_set is not None:
        layers = (layer, LOGITS) if isc else (layer,)
        feats = extract_features(sample_set, layers, weights_path, device, batch_size, verbose)
        if fid:
            metrics["fid"] = fid_from_stats(features_to_stats(feats[layer]), ref_info["stats"])
        if kid:
            metrics["kid_mean"], metrics["kid_std"] = kid_from_features(feats[layer], ref_info["features"],
                                                                        kid_subset_size, kid_subsets)
        if isc:
            score = inception_score(feats[LOGITS], isc_splits)
            if score is None:
                metrics["isc"] = NO_LOGITS
            else:
                metrics["isc_mean"], metrics["isc_std"] = score
    return {
        "metrics": metrics,
        "n_samples": n,
        "n_reference": ref_info["n"],
        "samples": None if samples is None else str(samples),
        "reference": reference,
        "reference_cache": cache_path,
        "saved_reference_stats": None if save_ref_stats is None else str(save_ref_stats),
        "extractor": {"name": FEATURE_EXTRACTOR, "dims": dims,
                      "weights": None if weights_path is None else str(weights_path),
                      "tag": extractor_tag(weights_path)},
        "seconds": round(time.perf_counter() - t0, 3),
    }


def format_table(res: dict) -> str:
    """A short human-readable table of :func:`evaluate`'s result."""
    m = res["metrics"]
    rows = []
    if "fid" in m:
        rows.append(("FID", f"{m['fid']:.4f}"))
    if "kid_mean" in m:
        rows.append(("KID", f"{m['kid_mean']:.6f} ± {m['kid_std']:.6f}"))
    if "isc" in m:
        rows.append(("IS", m["isc"]))
    elif "isc_mean" in m:
        rows.append(("IS", f"{m['isc_mean']:.4f} ± {m['isc_std']:.4f}"))
    if res["samples"] is not None:
        rows.append(("samples", f"{res['n_samples']}  {res['samples']}"))
    if res["reference"] is not None:
        n_ref = "?" if res["n_reference"] is None else res["n_reference"]
        rows.append(("reference", f"{n_ref}  {res['reference']}"))
    if res["saved_reference_stats"]:
        rows.append(("saved", res["saved_reference_stats"]))
    ex = res["extractor"]
    weights = ex["weights"] or "torch-fidelity's download"
    rows.append(("extractor", f"{ex['tag']} ({ex['dims']}-d), weights: {weights}"))
    rows.append(("seconds", f"{res['seconds']:.1f}"))
    return "\n".join(f"{k:<10} {v}" for k, v in rows)
