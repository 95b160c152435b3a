"""The DDPM UNet (Ho et al. 2020), as in the reference ``diffusion_tf/models/unet.py``.

A PixelCNN++-style UNet of wide ResNet blocks with a sinusoidal timestep embedding added in
every block and single-head self-attention at chosen resolutions. With the CIFAR-10 settings
(dim 128, dim_mults (1, 2, 2, 2), attention at 16x16, 2 blocks per level) it has exactly
35,746,307 parameters, like the reference and google/ddpm-cifar10-32.

The model knows nothing about diffusion: it maps (x, t) to a tensor shaped like x.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t, dim):
    """Sinusoidal embedding of timesteps, as in the reference (and Transformers).

    t: (B,) long or float timesteps. Returns (B, dim) float32: the first half is
    sin(t * f_k), the second half cos(t * f_k), with f_k = exp(-k * log(10000) / (half - 1)),
    k = 0 .. half - 1. An odd dim gets one zero column at the end.
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device)
                      * (-math.log(10000) / (half - 1)))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def norm(channels, groups):
    """GroupNorm with the reference's epsilon."""
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """Wide ResNet block with the timestep embedding added after the first conv.

    x: (B, in_ch, H, W), emb: (B, out_ch), this block's projection of the activated timestep embedding,
    emb_proj(silu(embedding)), which UNet.project_embedding computes for all blocks at once -> (B, out_ch, H, W).
    """

    def __init__(self, in_ch, out_ch, emb_dim, dropout, groups):
        super().__init__()
        self.norm1 = norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + emb[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions. x: (B, C, H, W) -> (B, C, H, W).

    q, k and v come from one fused (C -> 3C) projection of the tokens (B, H*W, C): one matrix product
    instead of three (the same parameters as the reference's three 1x1 convs, stacked).
    """

    def __init__(self, channels, groups):
        super().__init__()
        self.norm = norm(channels, groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x):
        B, C, H, W = x.shape
        # contiguous tokens: a linear layer on a transposed view is a matmul plus a separate bias pass
        h = self.norm(x).reshape(B, C, H * W).transpose(1, 2).contiguous()     # (B, H*W, C)
        q, k, v = self.qkv(h)[:, None].chunk(3, dim=-1)              # each (B, 1 head, H*W, C)
        # softmax(q k^T / sqrt(C)) v; SDPA's fused GPU kernels need the 4-D (batch, heads, tokens, C) form
        h = self.proj_out(F.scaled_dot_product_attention(q, k, v)[:, 0])
        return x + h.transpose(1, 2).reshape(B, C, H, W)


class Downsample(nn.Module):
    """Stride-2 3x3 conv with TF 'SAME' padding (pad right/bottom by one). (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def upsample_nearest2x(x):
    """Nearest-neighbour x2 upsampling of (B, C, H, W), the values of F.interpolate(x, scale_factor=2, mode='nearest').

    Written as a broadcast + reshape: its backward is a sum over each 2x2 block, which torch.compile fuses
    (F.interpolate's backward is a scatter-add).
    """
    B, C, H, W = x.shape
    return x[:, :, :, None, :, None].expand(B, C, H, 2, W, 2).reshape(B, C, 2 * H, 2 * W)


class Upsample(nn.Module):
    """Nearest x2 upsampling, then a 3x3 conv. (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(upsample_nearest2x(x))


class EmbedSequential(nn.Sequential):
    """A sequence of layers; each ResBlock among them also takes the next of `embs`, its embedding projection."""

    def forward(self, x, embs):
        for layer in self:
            x = layer(x, next(embs)) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """The DDPM UNet.

    in_channels/out_channels: image channels in and out. dim: base channel count (also the size of
    the sinusoidal timestep embedding; the embedding MLP is 4*dim wide). dim_mults: channel
    multiplier per resolution level (each level but the last halves the resolution, so H and W must
    be divisible by 2**(len(dim_mults) - 1)). use_attn: per level, whether its ResBlocks are followed
    by self-attention. num_res_blocks: ResBlocks per level on the way down (one more on the way up).
    groups: GroupNorm groups. dropout: in every ResBlock.

    forward(x, t): x (B, in_channels, H, W) float, t (B,) long or float -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels=3, out_channels=3, dim=128, dim_mults=(1, 2, 2, 2),
                 use_attn=(False, True, False, False), num_res_blocks=2, groups=32, dropout=0.1):
        super().__init__()
        assert len(use_attn) == len(dim_mults), "use_attn needs one entry per level of dim_mults"
        self.dim = dim
        emb_dim = 4 * dim
        n_levels = len(dim_mults)

        self.time_embed = nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_channels, dim, 3, padding=1)

        # Down path. skip_chs records the channels of every output that feeds a skip connection.
        self.down = nn.ModuleList()
        ch, skip_chs = dim, [dim]
        for i, mult in enumerate(dim_mults):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, dim * mult, emb_dim, dropout, groups)]
                ch = dim * mult
                if use_attn[i]:
                    layers.append(AttnBlock(ch, groups))
                self.down.append(EmbedSequential(*layers))
                skip_chs.append(ch)
            if i != n_levels - 1:
                self.down.append(EmbedSequential(Downsample(ch)))
                skip_chs.append(ch)

        self.mid = EmbedSequential(
            ResBlock(ch, ch, emb_dim, dropout, groups),
            AttnBlock(ch, groups),
            ResBlock(ch, ch, emb_dim, dropout, groups),
        )

        # Up path: every block takes the concat of the running features and one skip.
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(dim_mults))):
            for j in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_chs.pop(), dim * mult, emb_dim, dropout, groups)]
                ch = dim * mult
                if use_attn[i]:
                    layers.append(AttnBlock(ch, groups))
                if i != 0 and j == num_res_blocks:
                    layers.append(Upsample(ch))
                self.up.append(EmbedSequential(*layers))

        self.norm_out = norm(ch, groups)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)
        self.res_blocks = tuple(m for m in self.modules() if isinstance(m, ResBlock))   # in the order they run
        self.reset_parameters()

    def reset_parameters(self):
        """The reference's init: Xavier-uniform weights, zero biases, and zero for the last conv of
        every residual branch and of the output (so each block starts as the identity)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ResBlock):
                nn.init.zeros_(m.conv2.weight)
            elif isinstance(m, AttnBlock):
                for w in m.qkv.weight.chunk(3):          # each of q, k, v as its own C x C projection
                    nn.init.xavier_uniform_(w)
                nn.init.zeros_(m.proj_out.weight)
        nn.init.zeros_(self.conv_out.weight)

    def project_embedding(self, emb):
        """Every ResBlock's emb_proj applied to emb (B, 4*dim): a list of (B, out_ch), in the order the blocks run.

        One matrix product with the blocks' weights stacked instead of one small one per block: the same numbers,
        1 GEMM instead of one per ResBlock. The parameters stay in each block's emb_proj.
        """
        projs = [block.emb_proj for block in self.res_blocks]
        weight = torch.cat([p.weight for p in projs])
        bias = torch.cat([p.bias for p in projs])
        return F.linear(emb, weight, bias).split([p.out_features for p in projs], dim=1)

    def forward(self, x, t):
        emb = F.silu(self.time_embed(timestep_embedding(t, self.dim)))  # (B, 4*dim)
        embs = iter(self.project_embedding(emb))
        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            h = block(h, embs)
            hs.append(h)
        h = self.mid(h, embs)
        for block in self.up:
            h = block(torch.cat([h, hs.pop()], dim=1), embs)
        return self.conv_out(F.silu(self.norm_out(h)))
