#!/usr/bin/env python3
"""Evaluate generated samples: FID, KID and Inception Score by torch-fidelity; or (--nll) a trained model's
variational bound on the negative log-likelihood of real images, in bits/dim.

    python evaluate_ddpm.py --samples runs/x/samples --ref-config configs/ddpm_fashion_mnist.yaml --fid
    python evaluate_ddpm.py --samples samples.npz --ref-stats ref.npz --fid --feature-extractor-weights W.pth
    accelerate launch evaluate_ddpm.py ...   # the main process does the work, on its device

    accelerate launch evaluate_ddpm.py --nll -c CONFIG --weights CKPT [--split test] [--n_images N] ...
                                             # the images are shared by all processes (see --nll --help)

The reference is one of: --ref-config (the config's dataset as training sees it; its statistics are
cached, see --cache-dir), --ref (a folder of images or an .npz) or --ref-stats (a statistics .npz:
pytorch-fid style mu/sigma, or mu/sigma_triu). See docs/evaluation.md. Features and statistics are
utils/fid.py's; this file reads the sample sets and puts the metrics together.
"""
import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from utils.config import ArgumentParser
from utils.errors import UserError, run_main
from utils.files import IMAGE_EXTS, atomic_write, check_writable
from utils.fid import (DIMS, FEATURE_EXTRACTOR, LOGITS, NO_LOGITS, cached_reference, check_weights, default_cache_dir,
                       default_device, extract_features, extractor_tag, features_to_stats, fid_from_stats,
                       inception_score, kid_from_features, load_stats, save_stats)
from utils.images import Uint8Images


# ----------------------------------------------------------------------------- sample sets

def _image_files_dataset(files, size):
    """torch-fidelity's lazy file dataset (PIL ``convert('RGB')``: grayscale replicated), with ``.size``; a file
    that cannot be decoded (truncated after a valid header, say) is a one-line UserError naming it."""
    from torch_fidelity.datasets import ImagesPathDataset

    class ImageFiles(ImagesPathDataset):
        def __getitem__(self, i):
            try:
                return super().__getitem__(i)
            except (OSError, ValueError, SyntaxError) as e:     # PIL: OSError, UnidentifiedImageError, SyntaxError
                raise UserError(f"cannot read image '{self.files[i]}' ({' '.join(str(e).split())}); remove or "
                                f"replace it") from None
    ds = ImageFiles([str(f) for f in files])
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


def load_images(path, what="samples") -> torch.utils.data.Dataset:
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
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{what} '{path}' is neither a folder of images nor a readable .npz/.npy of uint8 "
                        f"images ({type(e).__name__}: {' '.join(str(e).split())})") from None
    x = to_nchw(arr, f"{what} '{path}'")
    if len(x) == 0:
        raise UserError(f"no images found in {what} '{path}': its array is empty")
    return Uint8Images(x, rgb=True)


def _load_folder(folder: Path, what: str) -> torch.utils.data.Dataset:
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


# ----------------------------------------------------------------------------- metrics

def evaluate(samples=None, *, ref_config=None, ref_split="train", ref=None, ref_stats=None, fid=True, kid=False,
             isc=False, weights_path=None, device=None, batch_size=64, dims=2048, kid_subset_size=1000,
             kid_subsets=100, isc_splits=10, cache_dir=None, save_ref_stats=None, verbose=False) -> dict:
    """Evaluate a sample set (folder or ``.npz``) against one reference; the logic of ``evaluate_ddpm.py``.

    The reference is one of ``ref_config`` (a YAML config: its dataset as training sees it, with
    statistics cached, see utils.fid.cached_reference), ``ref`` (images, like ``samples``) or
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
    for name, value in (("--batch-size", batch_size), ("--kid-subset-size", kid_subset_size),
                        ("--kid-subsets", kid_subsets), ("--isc-splits", isc_splits)):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if save_ref_stats is not None:
        check_writable(save_ref_stats, "--save-ref-stats")           # before any feature is computed
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
        import datasets
        from utils.config import load_config
        data_cfg = load_config(ref_config)["data"]
        size = data_cfg.get("img_size")
        if sample_set is not None and isinstance(size, int) and sample_set.size != (size, size):
            h, w = sample_set.size
            raise UserError(f"samples are {w}x{h} but '{ref_config}' trains at {size}x{size} (data.img_size); "
                            f"evaluate samples of the config's size")
        ref_info = cached_reference(data_cfg, ref_split, lambda: datasets.load_uint8(data_cfg, ref_split), weights_path,
                                    device, batch_size, dims, cache_dir, need_features=kid, verbose=verbose)
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


# ----------------------------------------------------------------------------- command line

def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", metavar="DIR_OR_NPZ", help="folder of PNG/JPEG samples, or .npz of uint8 images (NHW, NHWC or NCHW)")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--ref-config", metavar="CONFIG", help="training config: reference = its dataset, resized as in training")
    ref.add_argument("--ref", metavar="DIR_OR_NPZ", help="reference images: a folder or an .npz, like --samples")
    ref.add_argument("--ref-stats", metavar="FILE.npz", help="reference statistics .npz (mu + sigma, or mu + sigma_triu)")
    p.add_argument("--ref-split", metavar="SPLIT", default="train", help="dataset split for --ref-config (default: train)")
    p.add_argument("--fid", action="store_true", help="Frechet Inception Distance (the default metric)")
    p.add_argument("--kid", action="store_true", help="Kernel Inception Distance (needs reference images)")
    p.add_argument("--isc", action="store_true", help="Inception Score (needs weights with a classifier)")
    p.add_argument("--feature-extractor-weights", metavar="PATH",
                   help="torch-fidelity InceptionV3 weights file, to run offline (default: torch-fidelity downloads)")
    p.add_argument("--batch-size", metavar="N", type=int, default=64, help="images per Inception forward (default: 64)")
    p.add_argument("--dims", type=int, default=2048, choices=DIMS,
                   help="Inception feature layer for FID/KID (default: 2048, the standard FID)")
    p.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (default: 1000)")
    p.add_argument("--kid-subsets", type=int, default=100, help="number of KID subsets (default: 100)")
    p.add_argument("--isc-splits", type=int, default=10, help="number of IS splits (default: 10)")
    p.add_argument("--cache-dir", metavar="DIR", help="where reference statistics of --ref-config are cached "
                                       f"(default: $DDPM_CACHE/fid_stats or {default_cache_dir()})")
    p.add_argument("--save-ref-stats", metavar="FILE.npz", help="also write the reference statistics (mu, sigma)")
    p.add_argument("--out", metavar="FILE.json", help="write the results as JSON to this file ('-': stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress output from torch-fidelity")
    p.add_argument("--nll", action="store_true", help="another mode: the variational bound of a trained model in "
                                                      "bits/dim (see python evaluate_ddpm.py --nll --help)")
    return p


def write_json(res: dict, out):
    """The results as JSON to `out` (written atomically), to stdout for '-', nowhere for None."""
    if out == "-":
        print(json.dumps(res, indent=2))
    elif out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        atomic_write(out, lambda f: f.write(json.dumps(res, indent=2) + "\n"), mode="w")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--nll" in argv:
        return nll_main(argv)
    args = build_parser().parse_args(argv)
    from accelerate import PartialState
    state = PartialState()
    if not state.is_main_process:  # under `accelerate launch` one process is enough
        return None
    if args.out not in (None, "-"):
        check_writable(args.out, "--out")
    fid = args.fid or not (args.kid or args.isc)
    res = evaluate(args.samples, ref_config=args.ref_config, ref_split=args.ref_split, ref=args.ref,
                   ref_stats=args.ref_stats, fid=fid, kid=args.kid, isc=args.isc,
                   weights_path=args.feature_extractor_weights, device=state.device, batch_size=args.batch_size,
                   dims=args.dims, kid_subset_size=args.kid_subset_size, kid_subsets=args.kid_subsets,
                   isc_splits=args.isc_splits, cache_dir=args.cache_dir, save_ref_stats=args.save_ref_stats,
                   verbose=not args.quiet)
    print(format_table(res), flush=True)
    write_json(res, args.out)
    return res


# ----------------------------------------------------------------------------- the variational bound (--nll)

NLL_DOC = """The variational bound on the negative log-likelihood of a trained DDPM in bits/dim (Ho et al. 2020, eq. 5;
the NLL of their CIFAR-10 results), on real images of the config's dataset.

    accelerate launch evaluate_ddpm.py --nll -c CONFIG --weights CKPT [--load_ema true]
        [--var_type fixed_large|fixed_small|both] [--split test] [--n_images N] [--batch_size B] [--seed S]
        [--out FILE.json] [--key.sub value ...]

It costs S network calls per image (S = diffusion.total_steps: 1000 for the paper's models); --var_type both
scores both variances from the same calls. Image k (the first N of the split, as training sees them) has its
own noise, from a generator seeded by (seed, k): the result does not depend on --batch_size or on the number
of processes. Batches of B images go to the processes round-robin; the main process gathers the per-image
bounds, prints one line per variance and writes the JSON. See docs/evaluation.md.
"""
NLL_TERMS = ("prior", "vb", "decoder", "total")


def build_nll_parser():
    from diffusions import VAR_TYPES
    p = ArgumentParser(prog="evaluate_ddpm.py --nll", description=NLL_DOC,
                       formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--nll", action="store_true", help="this mode")
    p.add_argument("-c", "--config", required=True, help="the YAML config the weights were trained with")
    p.add_argument("--weights", required=True, help="checkpoint folder EXP_DIR/ckpt/stepNNNNNNN, a model/ema .pt "
                                                    "file, or a diffusers UNet2DModel folder (as sample_ddpm.py)")
    p.add_argument("--load_ema", default="true",
                   help="true: the EMA weights of a checkpoint folder (default); false: the raw ones")
    p.add_argument("--var_type", default=None,
                   help=f"variance of the reverse steps: {' | '.join(VAR_TYPES + ('both',))} (default: the config's)")
    p.add_argument("--split", default="test", help="dataset split to score (default: test)")
    p.add_argument("--n_images", type=int, default=None, help="score the first N images of the split (default: all)")
    p.add_argument("--batch_size", "--batch-size", type=int, default=64,
                   help="images per forward pass, per process (default 64)")
    p.add_argument("--seed", type=int, default=None,
                   help="base seed of every image's noise (default: the config's seed)")
    p.add_argument("--allow_config_change", action="store_true",
                   help="score although the checkpoint was made with another network shape, chain or image size")
    p.add_argument("--out", metavar="FILE.json", help="write the results as JSON to this file ('-': stdout)")
    return p


def image_seed(seed: int, k: int) -> int:
    """The 63-bit seed of image k's noise: a hash of (seed, k), so nearby seeds and images give unrelated streams."""
    digest = hashlib.sha256(f"ddpm-nll:{seed}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def nll_main(argv):
    """``evaluate_ddpm.py --nll``: the bound of the first N images of a split, on every process of the launch."""
    import datasets
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from tqdm import tqdm

    from diffusions import VAR_TYPES, from_config, variational_bounds
    from sample_ddpm import load_model, str2bool
    from utils.config import parse_args

    t0 = time.perf_counter()
    args, cfg = parse_args(build_nll_parser(), argv)
    args.load_ema = str2bool(args.load_ema)
    var_types = VAR_TYPES if args.var_type == "both" else (args.var_type or cfg["diffusion"]["var_type"],)
    if var_types[0] not in VAR_TYPES:
        raise UserError(f"unknown --var_type {args.var_type!r}; choose one of {', '.join(VAR_TYPES + ('both',))}")
    if args.split not in datasets.SPLITS:
        raise UserError(f"unknown --split {args.split!r}; choose one of {', '.join(datasets.SPLITS)}")
    for name, value in (("--n_images", args.n_images), ("--batch_size", args.batch_size)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if args.out not in (None, "-"):
        check_writable(args.out, "--out")
    seed = cfg["seed"] if args.seed is None else args.seed
    ddpms = [from_config(cfg["diffusion"], var_type=v) for v in var_types]
    data = datasets.load_uint8(cfg["data"], args.split)          # uint8 N×C×H×W, resized as training sees it
    n = len(data) if args.n_images is None else args.n_images
    if n > len(data):
        raise UserError(f"--n_images {n} is more than the {len(data)} images of the {args.split} split")
    model, _, notes = load_model(args, cfg)

    # N gloo processes on a CPU-only machine; float32 throughout (no autocast: the small terms need the precision)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    for line in notes:
        accelerator.print(line)
    model = model.to(device)
    S, bs = ddpms[0].num_steps, args.batch_size
    batches = [range(b, min(b + bs, n)) for b in range(0, n, bs)]
    accelerator.print(f"nll: {n} {args.split} images, {S} steps ({S} network calls per image), "
                      f"{' and '.join(var_types)}, on {world} process(es), batch {bs}")

    # ---------------------------------------------------------------- this process's batches (round-robin)
    per_image = {}              # image k -> {var_type: (prior, vb, decoder, total)}
    step_sums = {}              # batch b -> {var_type: (S,) sum of its images' step terms}
    bar = tqdm(total=S * len(batches), unit="step", desc="nll", dynamic_ncols=True,
               disable=not accelerator.is_main_process)
    for r, b in enumerate(range(rank, len(batches), world)):
        ks = batches[b]
        in_round = len(batches[r * world:(r + 1) * world])     # batches running in parallel with this one
        x0 = datasets.to_unit_range(data[ks.start:ks.stop]).to(device)
        generators = [torch.Generator().manual_seed(image_seed(seed, k)) for k in ks]
        results = variational_bounds(ddpms, model, x0, generators, progress=lambda c: bar.update(c * in_round))
        rows = {v: torch.stack([res[t] for t in NLL_TERMS], 1).cpu().tolist() for v, res in zip(var_types, results)}
        for j, k in enumerate(ks):
            per_image[k] = {v: rows[v][j] for v in var_types}
        step_sums[b] = {v: res["terms"].sum(0).cpu() for v, res in zip(var_types, results)}
    bar.close()

    # ---------------------------------------------------------------- gather, summarise (main process)
    gathered = gather_object([(per_image, step_sums)])
    if not accelerator.is_main_process:
        return None
    per_image = {k: row for part, _ in gathered for k, row in part.items()}
    step_sums = {b: sums for _, part in gathered for b, sums in part.items()}
    res = {"bits_per_dim": {}, "n_images": n, "split": args.split, "var_type": args.var_type or var_types[0],
           "num_steps": S, "config": args.config, "weights": args.weights, "load_ema": args.load_ema, "seed": seed,
           "processes": world, "command": shlex.join(["evaluate_ddpm.py", *argv])}
    for v in var_types:
        values = torch.tensor([per_image[k][v] for k in range(n)], dtype=torch.float64)      # n × 4, image order
        means = dict(zip(NLL_TERMS, values.mean(0).tolist()))
        std_error = values[:, 3].std().item() / math.sqrt(n) if n > 1 else None
        per_step = sum((step_sums[b][v] for b in range(len(batches))), torch.zeros(S, dtype=torch.float64)) / n
        res["bits_per_dim"][v] = dict(means, total_std_error=std_error, per_step=per_step.tolist())
        se = "" if std_error is None else f" ± {std_error:.4f}"
        print(f"NLL bound {v}: {means['total']:.4f}{se} bits/dim (prior {means['prior']:.4f} + vb {means['vb']:.4f} "
              f"+ decoder {means['decoder']:.4f}) on {n} {args.split} images, {S} steps", flush=True)
    res["seconds"] = round(time.perf_counter() - t0, 3)
    write_json(res, args.out)
    return res


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
