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


def group_norm_from_channel_stats(x, groups, weight, bias, eps):
    """GroupNorm of x (B, C, H, W) computed from per-channel statistics (for compiled graphs).

    Each channel's mean m_c and variance v_c over H*W come from one reduction with a (B, C) output; the
    groups' statistics follow exactly by the law of total variance (equal group sizes):
        mean_g = avg_c m_c,    var_g = avg_c v_c + avg_c (m_c - mean_g)^2      (c over the group's channels)
    and y = x * scale + shift with per-(sample, channel) scale = w_c / sqrt(var_g + eps), shift = b_c -
    mean_g * scale. Same result as nn.GroupNorm up to float rounding; statistics in float32 at least, y in
    x's dtype and layout. Why: in a channels_last layout a group's elements are C/groups-wide runs strided by
    C, and a reduction per group reads them poorly; a reduction per channel reads contiguous rows of C.
    """
    B, C, H, W = x.shape
    acc = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(acc)
    var_c, mean_c = torch.var_mean(xf, dim=(2, 3), correction=0)               # (B, C) each
    mean_c, var_c = mean_c.view(B, groups, C // groups), var_c.view(B, groups, C // groups)
    mean_g = mean_c.mean(-1, keepdim=True)                                      # (B, groups, 1)
    var_g = var_c.mean(-1, keepdim=True) + (mean_c - mean_g).square().mean(-1, keepdim=True)
    scale = torch.rsqrt(var_g + eps).expand(B, groups, C // groups)
    if weight is not None:
        scale = scale * weight.to(acc).view(groups, C // groups)
    shift = -mean_g * scale
    if bias is not None:
        shift = shift + bias.to(acc).view(groups, C // groups)
    return (xf * scale.reshape(B, C, 1, 1) + shift.reshape(B, C, 1, 1)).to(x.dtype)


def group_norm_from_chunk_stats(x, groups, weight, bias, eps, chunk_rows=64):
    """GroupNorm of x (B, C, H, W) from statistics of row chunks (for compiled graphs on channels_last data).

    The H*W positions are cut into n = H*W / R chunks of R = chunk_rows consecutive positions (R = H*W if that
    does not divide). One reduction gives each (sample, chunk, channel) its mean and variance over R positions: on
    channels_last memory, position-major rows of C channels, that reduction reads R contiguous rows of C and its
    (B, n, C) output is contiguous too, with B*n*C independent outputs to spread over the GPU (per_channel has only
    B*C, each reducing H*W strided elements one after another). The groups' statistics follow exactly by the law of
    total variance over the group's chunks and channels (all of equal size):
        mean_g = avg m_{k,c},    var_g = avg v_{k,c} + avg (m_{k,c} - mean_g)^2     (k over chunks, c over the group)
    Then y = x * scale + shift, as in group_norm_from_channel_stats. Statistics in float32 at least; y in x's dtype.
    Kept as an option, not used by default: on an H100 the compiled sampling chain ran 20% slower with it than with
    per-channel statistics, whose reductions already ran near the memory bandwidth (bench/NOTES.md, attempt 8).
    """
    B, C, H, W = x.shape
    R = chunk_rows if (H * W) % chunk_rows == 0 else H * W
    n = H * W // R
    acc = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(acc)
    rows = xf.permute(0, 2, 3, 1).reshape(B, n, R, C)             # (B, n, R, C): a view of channels_last memory
    var_p, mean_p = torch.var_mean(rows, dim=2, correction=0)       # (B, n, C) each
    mean_p = mean_p.view(B, n, groups, C // groups)
    var_p = var_p.view(B, n, groups, C // groups)
    mean_g = mean_p.mean(dim=(1, 3))                                  # (B, groups)
    var_g = var_p.mean(dim=(1, 3)) + (mean_p - mean_g[:, None, :, None]).square().mean(dim=(1, 3))
    scale = torch.rsqrt(var_g + eps)[:, :, None].expand(B, groups, C // groups)
    if weight is not None:
        scale = scale * weight.to(acc).view(groups, C // groups)
    shift = -mean_g[:, :, None] * scale
    if bias is not None:
        shift = shift + bias.to(acc).view(groups, C // groups)
    return (xf * scale.reshape(B, C, 1, 1) + shift.reshape(B, C, 1, 1)).to(x.dtype)


_COMPILED_STATS = {'per_channel': group_norm_from_channel_stats, 'per_chunk': group_norm_from_chunk_stats}


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm with two other ways to compute it; same parameters, state_dict and values (to float rounding).

    - Eager, a channels_last x (memory laid out as NHWC; model and data in channels_last): normalised on a free
      NHWC view, (B, H*W, groups, C/groups), with float32 statistics; the result keeps x's dtype and layout, so no
      norm needs an NCHW copy. An NCHW x: plain nn.GroupNorm. (Attempt 3 measured this path under torch.compile
      too; attempt 11 found that its compiled backward is one slow reduction, 0.28 ms per call in the MNIST step,
      once the traced activations were channels_last, so the compiled path below never takes it.)
    - Inside torch.compile, whatever x's layout, per `compiled_stats`: 'per_group' traces nn.GroupNorm;
      'per_channel' traces group_norm_from_channel_stats; 'per_chunk' group_norm_from_chunk_stats; 'auto' (default)
      takes per_channel when no gradient is taken (sampling) and per_group when one is (training). Measured
      (bench/NOTES.md): on an H200 (attempt 6) per_channel made the compiled sampling forward 14% faster and the channels_last training
      step (train.compile_force_layout_opt) 10% slower; on an H100 (attempt 8) per_chunk made sampling 20% slower.
    """

    compiled_stats = 'auto'

    def forward(self, x):
        if x.dim() == 4 and torch.compiler.is_compiling():
            stats = self.compiled_stats
            if stats == 'auto':
                stats = 'per_group' if torch.is_grad_enabled() else 'per_channel'
            if stats != 'per_group':
                return _COMPILED_STATS[stats](x, self.num_groups, self.weight, self.bias, self.eps)
            return super().forward(x)     # whatever x's traced layout: inductor lays out group_norm itself
        if x.dim() != 4 or x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        B, C, H, W = x.shape
        acc = torch.promote_types(x.dtype, torch.float32)          # statistics in float32 at least
        xg = x.permute(0, 2, 3, 1).reshape(B, H * W, self.num_groups, C // self.num_groups).to(acc)
        var, mean = torch.var_mean(xg, dim=(1, 3), keepdim=True, correction=0)
        y = ((xg - mean) * torch.rsqrt(var + self.eps)).reshape(B, H, W, C)
        if self.affine:
            y = y * self.weight.to(acc) + self.bias.to(acc)
        return y.to(x.dtype).permute(0, 3, 1, 2)      # (B, C, H, W) view of NHWC memory: channels_last


def norm(channels, groups):
    """GroupNorm with the reference's epsilon."""
    return GroupNorm(groups, channels, eps=1e-6)


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
        # (B, C, H, W) -> (B, H*W, C) tokens, made contiguous: a linear layer on a non-contiguous 3-D input becomes a
        # matmul plus a separate bias add, and under torch.compile that add turned into three extra passes over the
        # q/k/v activations (bench/NOTES.md, attempt 8). Contiguous tokens keep the bias inside the GEMM; in eager
        # mode the matmul copied the transposed input anyway; in a compiled channels_last graph the copy is free.
        h = self.norm(x).reshape(B, C, H * W).transpose(1, 2).contiguous()
        q, k, v = self.qkv(h)[:, None].chunk(3, dim=-1)              # each (B, 1 head, H*W, C)
        # softmax(q k^T / sqrt(C)) v. The head axis matters: SDPA's fused kernels (flash, memory-efficient) take
        # 4-D inputs only, and with 3-D ones it falls back to its math path, which runs bf16 inputs as float32
        # matmuls without tensor cores (bench/NOTES.md, attempt 4: 16% of a bf16 sampling forward on an H100).
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

    Written as a broadcast + reshape: its backward is then a sum over each 2x2 block, which torch.compile fuses,
    where F.interpolate's backward is an index_put with accumulation into zeros (bench/NOTES.md, attempt 8).
    """
    B, C, H, W = x.shape
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):   # keep channels_last
        xt = x.permute(0, 2, 3, 1)                                                        # (B, H, W, C) memory
        return xt[:, :, None, :, None, :].expand(B, H, 2, W, 2, C).reshape(B, 2 * H, 2 * W, C).permute(0, 3, 1, 2)
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

        One matrix product with the blocks' weights stacked, instead of one linear layer per block: the same
        numbers, and on the GPU 1 GEMM in the forward and 2 in the backward instead of 22 and 44 for the MNIST
        config (bench/NOTES.md, attempt 11). The parameters stay in each block's emb_proj.
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
