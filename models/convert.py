"""Weights in and out: diffusers' `UNet2DModel` folders <-> this repo's UNet, and EMA weights as safetensors.

The paper's UNet is the layout of diffusers' DDPM models (google/ddpm-cifar10-32, google/ddpm-celebahq-256: the
authors' released weights, converted): the same layers in the same order, so a state_dict maps name by name; only
attention differs, where diffusers keeps q, k, v as three linear layers and this UNet one stacked (qkv).

    python -m models.convert to-diffusers -c CONFIG --weights EXP_DIR/ckpt/stepNNNNNNN --out OUT_DIR
    python -m models.convert safetensors -c CONFIG --weights EXP_DIR/ckpt/stepNNNNNNN --out ema.safetensors

A diffusers folder is one with `config.json` and `diffusion_pytorch_model.safetensors` (or `.bin`), or a pipeline
folder with them in `unet/`; `sample_ddpm.py --weights FOLDER` reads it through `from_diffusers`.
"""
import argparse
import json
import os

import torch

from utils.errors import UserError, run_main

# diffusers' UNet2DModel settings that make it the DDPM UNet (values other than these are another network)
DDPM_SETTINGS = {'act_fn': 'silu', 'center_input_sample': False, 'time_embedding_type': 'positional',
                 'flip_sin_to_cos': False, 'freq_shift': 1, 'downsample_padding': 0, 'mid_block_scale_factor': 1,
                 'norm_eps': 1e-6, 'resnet_time_scale_shift': 'default', 'attention_head_dim': None}


def diffusers_config(params: dict, img_size: int) -> dict:
    """The UNet2DModel config.json of a UNet with `params` (a config's model.params)."""
    mults, attn = params['dim_mults'], params['use_attn']
    return {'_class_name': 'UNet2DModel', 'sample_size': img_size, 'in_channels': params['in_channels'],
            'out_channels': params['out_channels'], 'block_out_channels': [params['dim'] * m for m in mults],
            'down_block_types': ['AttnDownBlock2D' if a else 'DownBlock2D' for a in attn],
            'up_block_types': ['AttnUpBlock2D' if a else 'UpBlock2D' for a in reversed(attn)],
            'layers_per_block': params['num_res_blocks'], 'norm_num_groups': params['groups'],
            'dropout': params['dropout'], **DDPM_SETTINGS}


def params_of(config: dict, source: str) -> dict:
    """The model.params of a UNet2DModel config.json; a one-line UserError if it is not the DDPM UNet."""
    for key, want in DDPM_SETTINGS.items():
        if config.get(key, want) != want:
            raise UserError(f"{source}: {key} = {config.get(key)!r}; only DDPM UNets ({key} = {want!r}, as "
                            f"google/ddpm-cifar10-32) convert to this repo's UNet")
    down, up = config['down_block_types'], config['up_block_types']
    attn = [t == 'AttnDownBlock2D' for t in down]
    if any(t not in ('DownBlock2D', 'AttnDownBlock2D') for t in down) or \
            up != ['AttnUpBlock2D' if a else 'UpBlock2D' for a in reversed(attn)]:
        raise UserError(f"{source}: blocks {down} / {up} are not the DDPM UNet's (plain or attention blocks, the "
                        f"up path mirroring the down path)")
    chans = config['block_out_channels']
    dim = chans[0]
    if any(c % dim for c in chans):
        raise UserError(f"{source}: block_out_channels {chans} are not multiples of the first")
    return {'in_channels': config['in_channels'], 'out_channels': config['out_channels'], 'dim': dim,
            'dim_mults': [c // dim for c in chans], 'use_attn': attn, 'num_res_blocks': config['layers_per_block'],
            'groups': config['norm_num_groups'], 'dropout': float(config.get('dropout', 0.0))}


def _block_names(params: dict):
    """(this UNet's prefix, diffusers' prefix, kind) of every block, in the order both run them."""
    levels, n = len(params['dim_mults']), params['num_res_blocks']
    k = 0
    for i in range(levels):
        for j in range(n):
            yield f'down.{k}.0', f'down_blocks.{i}.resnets.{j}', 'res'
            if params['use_attn'][i]:
                yield f'down.{k}.1', f'down_blocks.{i}.attentions.{j}', 'attn'
            k += 1
        if i != levels - 1:
            yield f'down.{k}.0.conv', f'down_blocks.{i}.downsamplers.0.conv', 'conv'
            k += 1
    yield 'mid.0', 'mid_block.resnets.0', 'res'
    yield 'mid.1', 'mid_block.attentions.0', 'attn'
    yield 'mid.2', 'mid_block.resnets.1', 'res'
    k = 0
    for u, i in enumerate(reversed(range(levels))):
        for j in range(n + 1):
            yield f'up.{k}.0', f'up_blocks.{u}.resnets.{j}', 'res'
            if params['use_attn'][i]:
                yield f'up.{k}.1', f'up_blocks.{u}.attentions.{j}', 'attn'
            if i != 0 and j == n:
                yield f'up.{k}.{2 if params["use_attn"][i] else 1}.conv', f'up_blocks.{u}.upsamplers.0.conv', 'conv'
            k += 1


RES = {'norm1': 'norm1', 'conv1': 'conv1', 'emb_proj': 'time_emb_proj', 'norm2': 'norm2', 'conv2': 'conv2',
       'skip': 'conv_shortcut'}
TOP = {'conv_in': 'conv_in', 'time_embed.0': 'time_embedding.linear_1', 'time_embed.2': 'time_embedding.linear_2',
       'norm_out': 'conv_norm_out', 'conv_out': 'conv_out'}


def _pairs(params: dict):
    """(this UNet's layer name, diffusers' layer name) for every layer but attention's q/k/v."""
    pairs = list(TOP.items())
    for ours, theirs, kind in _block_names(params):
        if kind == 'res':
            pairs += [(f'{ours}.{a}', f'{theirs}.{b}') for a, b in RES.items()]
        elif kind == 'attn':
            pairs += [(f'{ours}.norm', f'{theirs}.group_norm'), (f'{ours}.proj_out', f'{theirs}.to_out.0')]
        else:
            pairs.append((ours, theirs))
    return pairs


def _attn_prefixes(params: dict):
    return [(ours, theirs) for ours, theirs, kind in _block_names(params) if kind == 'attn']


def from_diffusers_state(sd: dict, params: dict) -> dict:
    """A UNet2DModel state_dict as this UNet's (q, k, v stacked into qkv)."""
    out = {}
    for ours, theirs in _pairs(params):
        for p in ('weight', 'bias'):
            if f'{theirs}.{p}' in sd:
                out[f'{ours}.{p}'] = sd[f'{theirs}.{p}']
    for ours, theirs in _attn_prefixes(params):
        for p in ('weight', 'bias'):
            out[f'{ours}.qkv.{p}'] = torch.cat([sd[f'{theirs}.to_{x}.{p}'] for x in 'qkv'])
    return out


def to_diffusers_state(sd: dict, params: dict) -> dict:
    """This UNet's state_dict as a UNet2DModel's (qkv split into q, k, v)."""
    out = {}
    for ours, theirs in _pairs(params):
        for p in ('weight', 'bias'):
            if f'{ours}.{p}' in sd:
                out[f'{theirs}.{p}'] = sd[f'{ours}.{p}'].contiguous()
    for ours, theirs in _attn_prefixes(params):
        for p in ('weight', 'bias'):
            for x, part in zip('qkv', sd[f'{ours}.qkv.{p}'].chunk(3)):
                out[f'{theirs}.to_{x}.{p}'] = part.contiguous()
    return out


def find_diffusers_folder(path: str):
    """The folder holding a UNet2DModel (path itself or its unet/), or None if `path` is not a diffusers folder."""
    for folder in (path, os.path.join(path, 'unet')):
        if os.path.isfile(os.path.join(folder, 'config.json')):
            return folder
    return None


def from_diffusers(path: str):
    """(model.params, state_dict) of the UNet2DModel in a diffusers folder, in this repo's layout."""
    folder = find_diffusers_folder(path)
    if folder is None:
        raise UserError(f"{path} is not a diffusers folder (no config.json in it or in its unet/)")
    try:
        with open(os.path.join(folder, 'config.json')) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {folder}/config.json ({e})") from None
    if config.get('_class_name', 'UNet2DModel') != 'UNet2DModel':
        raise UserError(f"{folder}/config.json describes a {config.get('_class_name')}, not a UNet2DModel")
    params = params_of(config, f'{folder}/config.json')
    st, bin_ = os.path.join(folder, 'diffusion_pytorch_model.safetensors'), \
        os.path.join(folder, 'diffusion_pytorch_model.bin')
    if not (os.path.isfile(st) or os.path.isfile(bin_)):
        raise UserError(f"{folder} holds no diffusion_pytorch_model.safetensors or .bin")
    from utils.checkpoint import load_file
    sd = load_file(st if os.path.isfile(st) else bin_)      # safetensors, or a .bin pickle read weights_only
    try:
        return params, from_diffusers_state(sd, params)
    except KeyError as e:
        raise UserError(f"{folder}: its weights lack {e.args[0]}, which its config.json implies") from None


def to_diffusers(state_dict: dict, params: dict, img_size: int, out: str):
    """Write this UNet's weights as a diffusers UNet2DModel folder: config.json + diffusion_pytorch_model.safetensors."""
    from utils.files import atomic_write
    os.makedirs(out, exist_ok=True)
    atomic_write(os.path.join(out, 'config.json'),
                 lambda f: f.write(json.dumps(diffusers_config(params, img_size), indent=2) + '\n'), mode='w')
    tensors = to_diffusers_state(state_dict, params)
    atomic_write(os.path.join(out, 'diffusion_pytorch_model.safetensors'),
                 lambda f: f.write(safetensors_bytes(tensors)))


def safetensors_bytes(tensors: dict) -> bytes:
    """A state_dict in the safetensors format (tensors only: reading it runs no code)."""
    from safetensors.torch import save
    return save({k: v.detach().contiguous() for k, v in tensors.items()})


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m models.convert', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('what', choices=('to-diffusers', 'safetensors'),
                   help='to-diffusers: a UNet2DModel folder; safetensors: the state_dict as one .safetensors file')
    p.add_argument('-c', '--config', required=True, help='the config the weights were trained with')
    p.add_argument('--weights', required=True, help='checkpoint folder (its EMA weights) or a weights file')
    p.add_argument('--raw', action='store_true', help='the raw weights of a checkpoint folder instead of the EMA')
    p.add_argument('--out', required=True, help='output folder (to-diffusers) or .safetensors file')
    args, rest = p.parse_known_args(argv)
    from models import build_model
    from utils import checkpoint as ckpt
    from utils.config import apply_overrides, load_config
    from utils.files import atomic_write
    cfg = apply_overrides(load_config(args.config), rest)
    model = build_model(cfg['model'])
    sd = ckpt.load_model_weights(args.weights, use_ema=not args.raw)
    ckpt.load_state_dict_checked(model, sd, f'weights {args.weights}')
    if args.what == 'to-diffusers':
        to_diffusers(model.state_dict(), cfg['model']['params'], cfg['data']['img_size'], args.out)
    else:
        atomic_write(args.out, lambda f: f.write(safetensors_bytes(model.state_dict())))
    print(f'wrote {args.out}')


if __name__ == '__main__':
    run_main(main)
