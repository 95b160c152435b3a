#!/usr/bin/env python3
"""Evaluate generated samples: FID, KID and Inception Score by torch-fidelity.

    python evaluate_ddpm.py --samples runs/x/samples --ref-config configs/ddpm_fashion_mnist.yaml --fid
    python evaluate_ddpm.py --samples samples.npz --ref-stats ref.npz --fid --feature-extractor-weights W.pth
    accelerate launch evaluate_ddpm.py ...   # the main process does the work, on its device

The reference is one of: --ref-config (the config's dataset as training sees it; its statistics are
cached, see --cache-dir), --ref (a folder of images or an .npz) or --ref-stats (a statistics .npz:
pytorch-fid style mu/sigma, or mu/sigma_triu). See docs/evaluation.md.
"""
import argparse
import json
import os
import sys

from utils.config import ArgumentParser
from utils.errors import run_main
from utils.fid import DIMS, default_cache_dir, evaluate, format_table


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
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from accelerate import PartialState
    state = PartialState()
    if not state.is_main_process:  # under `accelerate launch` one process is enough
        return None
    fid = args.fid or not (args.kid or args.isc)
    res = evaluate(args.samples, ref_config=args.ref_config, ref_split=args.ref_split, ref=args.ref,
                   ref_stats=args.ref_stats, fid=fid, kid=args.kid, isc=args.isc,
                   weights_path=args.feature_extractor_weights, device=state.device, batch_size=args.batch_size,
                   dims=args.dims, kid_subset_size=args.kid_subset_size, kid_subsets=args.kid_subsets,
                   isc_splits=args.isc_splits, cache_dir=args.cache_dir, save_ref_stats=args.save_ref_stats,
                   verbose=not args.quiet)
    print(format_table(res), flush=True)
    if args.out == "-":
        print(json.dumps(res, indent=2))
    elif args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
    return res


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
