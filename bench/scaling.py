"""Multi-GPU scaling of training and sampling on one host, against 1 GPU in the same run.

    python bench/scaling.py --gpus 1,2 --out bench/results/scaling.json

Training (CIFAR-10 config, fast mode) runs through `accelerate launch --multi_gpu --num_processes N
train_ddpm.py`, at a fixed global batch of 128 and at a fixed per-GPU batch of 128 (global 128·N); steps/s are
the median of the log windows after warm-up (as in bench.py). Efficiency = images/s on N GPUs / (N × images/s
on 1 GPU). Sampling runs `sample_ddpm.py` on N processes (DDIM, `--sample-steps` steps) and is timed as the
whole command minus the same command's time when every image already exists (start-up, model load, compile
are subtracted); the PNGs of every N are compared byte for byte with those of 1 GPU.
NCCL's NVLink multicast stays off (NCCL_NVLS_ENABLE=0 and friends), as the lending machines require.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ROOT, run_training, summarize_training, write_fake_cifar  # noqa: E402

os.environ.update(NCCL_NVLS_ENABLE='0', TORCH_SYMM_MEM_DISABLE_MULTICAST='1', NVSHMEM_DISABLE_NVLS='1')
CONFIG = os.path.join(ROOT, 'configs/ddpm_cifar10.yaml')


def launcher(n):
    return ('accelerate', 'launch', '--multi_gpu', '--num_processes', str(n), '--main_process_port', str(29500 + n)) \
        if n > 1 else (sys.executable,)


def train_point(n, global_batch, root, steps, tmp):
    windows, wall = run_training(CONFIG, root, 'fast', steps, 50, os.path.join(tmp, f'train-{n}-{global_batch}'),
                                 extra=['--train.batch_size', str(global_batch)], launcher=launcher(n))
    return dict(summarize_training(windows), gpus=n, global_batch=global_batch, wall_s=wall)


def sample_point(n, weights, n_images, steps, micro_batch, tmp):
    out = os.path.join(tmp, f'samples-{n}')
    cmd = [*launcher(n), os.path.join(ROOT, 'sample_ddpm.py'), '-c', CONFIG, '--weights', weights,
           '--n_samples', str(n_images), '--micro_batch', str(micro_batch), '--save_dir', out, '--sampler', 'ddim',
           '--skip_steps', str(steps)]
    times = []
    for _ in range(2):              # second run: everything exists, so it measures start-up alone
        t0 = time.time()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        times.append(time.time() - t0)
    pngs = sorted(f for f in os.listdir(out) if f.endswith('.png'))
    digest = hashlib.sha256(b''.join(open(os.path.join(out, f), 'rb').read() for f in pngs)).hexdigest()
    sec = times[0] - times[1]
    return {'gpus': n, 'images': n_images, 'steps': steps, 'micro_batch': micro_batch, 'seconds': sec,
            'img_per_s': n_images / sec, 'startup_s': times[1], 'png_sha256': digest}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--gpus', default='1,2')
    p.add_argument('--steps', type=int, default=400)
    p.add_argument('--sample-images', type=int, default=4000)
    p.add_argument('--sample-steps', type=int, default=100)
    p.add_argument('--micro-batch', type=int, default=500)
    p.add_argument('--out', default='bench/results/scaling.json')
    args = p.parse_args()
    gpus = [int(g) for g in args.gpus.split(',')]
    tmp = tempfile.mkdtemp(prefix='ddpm-scaling-')
    root = os.path.join(tmp, 'cifar10')
    write_fake_cifar(root)
    res = {'train_fixed_global': [], 'train_fixed_per_gpu': [], 'sample': []}
    for n in gpus:
        res['train_fixed_global'].append(train_point(n, 128, root, args.steps, tmp))
        if n > 1:
            res['train_fixed_per_gpu'].append(train_point(n, 128 * n, root, args.steps, tmp))
        print(n, res['train_fixed_global'][-1], flush=True)
    # weights for sampling: a short 1-GPU run's checkpoint (content does not matter for speed or equality)
    exp = os.path.join(tmp, 'weights')
    run_training(CONFIG, root, 'plain', 2, 1, exp)
    ck = os.path.join(exp, 'ckpt', open(os.path.join(exp, 'ckpt', 'latest')).read().strip())
    for n in gpus:
        res['sample'].append(sample_point(n, ck, args.sample_images, args.sample_steps, args.micro_batch, tmp))
        print(res['sample'][-1], flush=True)
    one = res['train_fixed_global'][0]
    for r in res['train_fixed_global'] + res['train_fixed_per_gpu']:
        r['efficiency'] = r['images_per_s'] / (r['gpus'] * one['images_per_s'])
    s1 = res['sample'][0]
    for r in res['sample']:
        r['efficiency'] = r['img_per_s'] / (r['gpus'] * s1['img_per_s'])
        r['same_pngs_as_1_gpu'] = r['png_sha256'] == s1['png_sha256']
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    json.dump(res, open(args.out, 'w'), indent=1)
    print(f"{'run':36s} {'steps/s':>8s} {'img/s':>8s} {'eff':>6s}")
    for key in ('train_fixed_global', 'train_fixed_per_gpu'):
        for r in res[key]:
            print(f"train {r['gpus']} GPU, global batch {r['global_batch']:<5d}{'':9s} {r['steps_per_s']:8.2f} "
                  f"{r['images_per_s']:8.0f} {r['efficiency']:6.1%}")
    for r in res['sample']:
        print(f"sample {r['gpus']} GPU, DDIM {r['steps']} steps{'':11s} {'':8s} {r['img_per_s']:8.1f} "
              f"{r['efficiency']:6.1%}  same PNGs: {r['same_pngs_as_1_gpu']}")


if __name__ == '__main__':
    main()
