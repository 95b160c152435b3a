"""Tests for models/: the DDPM UNet, build_model's config checks and the EMA."""
import glob
import math
import os

import pytest
import torch
import torch.nn as nn
import yaml

from models import EMA, UNet, build_model
from models.unet import (AttnBlock, GroupNorm, group_norm_from_channel_stats, group_norm_from_chunk_stats,
                         timestep_embedding, upsample_nearest2x)
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
CIFAR10 = os.path.join(ROOT, "configs", "ddpm_cifar10.yaml")


pytestmark = pytest.mark.usefixtures('one_thread')


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def tiny_unet(**kw):
    """A small UNet with random (non-zero) weights everywhere, so outputs are not trivially zero."""
    args = dict(in_channels=3, out_channels=3, dim=32, dim_mults=(1, 2), use_attn=(False, True),
                num_res_blocks=1, groups=8, dropout=0.0)
    args.update(kw)
    torch.manual_seed(0)
    model = UNet(**args)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model


# --- UNet ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_config_builds_and_keeps_shape(path):
    cfg = load_yaml(path)
    model = build_model(cfg["model"]).eval()
    size, ch = cfg["data"]["img_size"], cfg["data"]["img_channels"]
    print(f"{os.path.basename(path)}: {n_params(model):,} parameters")
    if os.path.basename(path) == "ddpm_celebahq.yaml":
        assert round(n_params(model) / 1e6) == 114  # the paper's 114M
    assert model.conv_in.in_channels == ch and model.conv_out.out_channels == ch
    # The UNet is fully convolutional: above 64 px (CelebA-HQ's 256) run at 64 px to keep it fast.
    size = min(size, 64)
    x = torch.randn(1, ch, size, size)
    with torch.no_grad():
        y = model(x, torch.tensor([999]))
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_cifar10_parameter_count():
    model = build_model(load_yaml(CIFAR10)["model"])
    assert n_params(model) == 35_746_307  # the paper's 35.7M, as in the reference and google/ddpm-cifar10-32


def test_float_and_long_timesteps_agree():
    model = tiny_unet().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = model(x, torch.tensor([3, 500]))
        b = model(x, torch.tensor([3.0, 500.0]))
    torch.testing.assert_close(a, b)


def test_timestep_embedding_matches_formula():
    dim = 128
    t = torch.tensor([0, 1, 37, 999])
    emb = timestep_embedding(t, dim)
    assert emb.shape == (4, dim) and emb.dtype == torch.float32
    half = dim // 2
    expected = torch.zeros(4, dim, dtype=torch.float64)
    for i, ti in enumerate([0, 1, 37, 999]):
        for k in range(half):
            arg = ti * math.exp(-k * math.log(10000) / (half - 1))
            expected[i, k] = math.sin(arg)
            expected[i, half + k] = math.cos(arg)
    torch.testing.assert_close(emb.double(), expected, atol=2e-4, rtol=0)


def test_channels_last_matches_contiguous():
    model = tiny_unet().eval()
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        ref = model(x, t)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.to(memory_format=torch.channels_last), t)
    assert ref.abs().max() > 1e-3  # not trivially zero
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_group_norm_reads_channels_last_natively():
    # The NHWC path against the textbook formula in float64: per (sample, group) mean and biased variance
    # over C/groups channels x H x W; same values and gradients as the NCHW path; the layout is kept.
    torch.manual_seed(0)
    gn = GroupNorm(4, 12, eps=1e-6).double()
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(3, 12, 5, 7, dtype=torch.float64) * 3 + 1).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    out = gn(x)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    g = x.detach().reshape(3, 4, 3 * 5 * 7)
    mean, var = g.mean(-1, keepdim=True), g.var(-1, unbiased=False, keepdim=True)
    ref = ((g - mean) / torch.sqrt(var + 1e-6)).reshape(3, 12, 5, 7) * gn.weight[:, None, None] + gn.bias[:, None, None]
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    xc = x.detach().contiguous().requires_grad_(True)
    w = torch.randn(3, 12, 5, 7, dtype=torch.float64)
    (out * w).sum().backward()
    (nn.functional.group_norm(xc, 4, gn.weight, gn.bias, 1e-6) * w).sum().backward()
    torch.testing.assert_close(x.grad, xc.grad, atol=1e-12, rtol=1e-12)
    # bf16 in, bf16 out (statistics in float32), close to the float32 result
    xb = x.detach().float().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    outb = GroupNorm(4, 12, eps=1e-6)(xb)
    assert outb.dtype == torch.bfloat16
    torch.testing.assert_close(outb.float(), nn.functional.group_norm(xb.float(), 4, eps=1e-6), atol=2e-2, rtol=2e-2)


GN_FORMS = {'per_channel': group_norm_from_channel_stats,
            'per_chunk': lambda *a: group_norm_from_chunk_stats(*a, chunk_rows=8),     # 40 positions: 5 chunks
            'per_chunk_whole': lambda *a: group_norm_from_chunk_stats(*a, chunk_rows=64)}  # 64 does not divide 40


@pytest.mark.parametrize("form", GN_FORMS)
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_group_norm_from_channel_and_chunk_stats(fmt, form):
    # The GroupNorms built from per-channel or per-chunk statistics (used under torch.compile, compiled_stats
    # 'per_channel' / 'per_chunk') against the textbook formula in float64, their gradients against F.group_norm's,
    # and float32 with a large offset (mean 1e3 x std): the group variance combines partial variances, no
    # E[x^2] - E[x]^2 cancellation.
    gn = GN_FORMS[form]
    torch.manual_seed(0)
    w, b = torch.rand(12, dtype=torch.float64) + 0.5, torch.rand(12, dtype=torch.float64) - 0.5
    x = (torch.randn(3, 12, 5, 8, dtype=torch.float64) * 3 + torch.randn(1, 12, 5, 1)).contiguous(memory_format=fmt)
    x.requires_grad_(True)
    out = gn(x, 4, w, b, 1e-6)
    g = x.detach().reshape(3, 4, 3 * 5 * 8)
    mean, var = g.mean(-1, keepdim=True), g.var(-1, unbiased=False, keepdim=True)
    ref = ((g - mean) / torch.sqrt(var + 1e-6)).reshape(3, 12, 5, 8) * w[:, None, None] + b[:, None, None]
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    xc = x.detach().contiguous().requires_grad_(True)
    gout = torch.randn(3, 12, 5, 8, dtype=torch.float64)
    (out * gout).sum().backward()
    (nn.functional.group_norm(xc, 4, w, b, 1e-6) * gout).sum().backward()
    torch.testing.assert_close(x.grad, xc.grad, atol=1e-10, rtol=1e-10)
    x32 = (x.detach() + 1e3 * 3).float()
    out32 = gn(x32, 4, None, None, 1e-6)
    ref32 = nn.functional.group_norm(x32.double(), 4, eps=1e-6)
    assert (out32.double() - ref32).abs().max() < 1e-3
    assert gn(x32.to(torch.bfloat16), 4, None, None, 1e-6).dtype == torch.bfloat16


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_upsample_nearest2x_is_interpolate(fmt):
    # broadcast + reshape form: the values and gradients of F.interpolate(nearest, x2), the input's layout kept
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_(True)
    xr = x.detach().clone().requires_grad_(True)
    y, ref = upsample_nearest2x(x), nn.functional.interpolate(xr, scale_factor=2.0, mode="nearest")
    assert torch.equal(y, ref) and y.is_contiguous(memory_format=fmt)
    g = torch.randn_like(ref)
    (y * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-12, rtol=0)


def test_attention_block_formula_and_4d_sdpa(monkeypatch):
    # x + proj_out(softmax(q k^T / sqrt(C)) v) over the H*W tokens of GroupNorm(x), checked in float64; and SDPA
    # gets 4-D (B, heads, tokens, C) inputs, the only shape its fused GPU kernels take (3-D falls back to the
    # float32 math path: bench/NOTES.md, attempt 4)
    torch.manual_seed(0)
    blk = AttnBlock(16, 4).double()
    for p in blk.parameters():
        nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 16, 3, 5, dtype=torch.float64)
    dims = []
    sdpa = nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(nn.functional, 'scaled_dot_product_attention', lambda q, k, v: dims.append(q.dim()) or sdpa(q, k, v))
    out = blk(x)
    assert dims == [4]
    h = nn.functional.group_norm(x, 4, blk.norm.weight, blk.norm.bias, 1e-6).reshape(2, 16, 15).transpose(1, 2)
    q, k, v = (h @ w.T + b for w, b in zip(blk.qkv.weight.chunk(3), blk.qkv.bias.chunk(3)))
    a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(16), dim=-1) @ v
    ref = x + (a @ blk.proj_out.weight.T + blk.proj_out.bias).transpose(1, 2).reshape(2, 16, 3, 5)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)


def test_eval_is_deterministic_and_train_uses_dropout():
    model = tiny_unet(dropout=0.5)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x, t), model(x, t))
        model.train()
        assert not torch.equal(model(x, t), model(x, t))


def test_reference_init_outputs_zero():
    # The reference zero-inits conv_out (and every residual branch's last conv).
    model = UNet(dim=32, dim_mults=(1, 2), use_attn=(False, True), num_res_blocks=1, groups=8)
    assert torch.count_nonzero(model(torch.randn(1, 3, 8, 8), torch.tensor([5]))) == 0


@pytest.mark.parametrize("stats,grad,expect,fmt", [
    ("per_group", False, "group_norm", "nchw"), ("per_channel", True, "var_mean", "nchw"),
    ("per_chunk", False, "var_mean", "nchw"), ("auto", False, "var_mean", "nchw"), ("auto", True, "group_norm", "nchw"),
    ("auto", True, "group_norm", "channels_last"), ("per_group", False, "group_norm", "channels_last")])
def test_compile_matches_eager(monkeypatch, stats, grad, expect, fmt):
    # Dynamo must trace the whole forward without graph breaks (fullgraph=True). The aot_eager
    # backend keeps this under a few seconds; inductor takes ~1 min cold on 2 CPU cores.
    # GroupNorm.compiled_stats picks what the traced graph holds: group_norm, or per-channel var_mean
    # ('auto': var_mean without gradients, i.e. sampling; group_norm with them, i.e. training). Channels_last
    # activations (fmt, or conv weights that are channels_last) must not send it to the eager NHWC path, whose
    # compiled backward was one slow reduction (bench/NOTES.md, attempt 11).
    monkeypatch.setattr(GroupNorm, "compiled_stats", stats)
    model = tiny_unet().eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    if fmt == "channels_last":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    traced = []

    def backend(gm, example_inputs):
        traced.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with torch.set_grad_enabled(grad):
        out = compiled(x, t)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x, t), atol=1e-5, rtol=1e-4)
    n_norms = sum(isinstance(m, GroupNorm) for m in model.modules())
    assert sum("group_norm" in op for op in traced) == (n_norms if expect == "group_norm" else 0)
    assert sum("var_mean" in op for op in traced) == (n_norms if expect == "var_mean" else 0)


def test_compile_model_sets_inductor_switches():
    # train.compile_force_layout_opt, sample_ddpm.py's freezing and train.compile_tuning / --compile_tuning are
    # inductor's process-wide options, set before torch.compile traces anything
    import torch._inductor.config as inductor_config
    from models import compile_model
    with inductor_config.patch(force_layout_optimization=False, freezing=False, coordinate_descent_tuning=False):
        assert compile_model(None, None) is None
        assert not (inductor_config.force_layout_optimization or inductor_config.freezing
                    or inductor_config.coordinate_descent_tuning)
        compile_model(None, None, tune=True)
        assert inductor_config.coordinate_descent_tuning and not inductor_config.freezing
        compiled = compile_model(nn.Linear(2, 2), "default", force_layout_opt=True, freeze=True)
        assert inductor_config.force_layout_optimization and inductor_config.freezing
        assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    # force_layout_opt also installs the convolution_backward lowering, marked in inductor's cache key
    from models import conv_backward_layout
    assert inductor_config.post_grad_custom_post_pass.uuid() == conv_backward_layout.VERSION


def test_conv_backward_layout_warns_and_skips_on_a_torch_without_its_internals(monkeypatch):
    # an older inductor without one of the internals: a warning, the lowering untouched, training still compiles
    from torch._inductor import ir, lowering
    from models import conv_backward_layout
    monkeypatch.setattr(conv_backward_layout, "_installed", False)
    monkeypatch.delattr(ir.ExternKernel, "require_channels_last")
    before = lowering.lowerings[torch.ops.aten.convolution_backward.default]
    with pytest.warns(UserWarning, match="lacks an inductor internal.*same values"):
        conv_backward_layout.install()
    assert lowering.lowerings[torch.ops.aten.convolution_backward.default] is before
    assert conv_backward_layout._installed


class SkipNet(nn.Module):
    """The UNet's pattern in small: a convolution whose input is the concatenation of a skip and a conv output."""

    def __init__(self):
        super().__init__()
        self.conv_in, self.conv_mid = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.norm, self.conv_out = nn.GroupNorm(4, 16), nn.Conv2d(32, 8, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        return self.conv_out(torch.cat([h, self.conv_mid(nn.functional.silu(self.norm(h)))], dim=1))


def test_compiled_conv_backward_gets_dense_channels_last_operands(monkeypatch):
    # models/conv_backward_layout.py, installed by compile_model(force_layout_opt=True): every convolution_backward
    # of the compiled backward gets grad_output and input dense channels_last (without it, inductor hands cuDNN the
    # strided channel slices of the concatenation's gradient, which cuDNN copies), and the gradients are eager's.
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    from conv_layouts import ConvBackwardLog            # bench/conv_layouts.py's recorder of the calls' layouts
    from models import compile_model

    torch.manual_seed(0)
    net, x = SkipNet(), torch.randn(4, 3, 8, 8)
    net(x).square().mean().backward()
    eager_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    compiled = compile_model(net, "default", force_layout_opt=True)
    loss = compiled(x).square().mean()
    log = ConvBackwardLog()
    with log:                   # around the backward only: the compiled forward does not run under a dispatch mode
        loss.backward()
    assert [[lay in ("cl", "both") for lay, _ in call[:2]] for call in log.calls] == [[True, True]] * 3
    for p, g in zip(net.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


# --- build_model's config checks ----------------------------------------------------------

def cifar_params(**changes):
    params = dict(load_yaml(CIFAR10)["model"]["params"], **changes)
    return {"params": {k: v for k, v in params.items() if v is not None}}


@pytest.mark.parametrize("cfg, words", [
    (cifar_params(channels=64), ["unknown", "model.params.channels", "dim_mults"]),
    (cifar_params(dropout=None), ["missing", "model.params.dropout", "in_channels"]),
    (cifar_params(use_attn=[False, True]), ["use_attn", "2", "4"]),
    (cifar_params(groups=48), ["groups=48", "128"]),
    (cifar_params(dim_mults=[1, 2.5, 2, 2]), ["dim_mults"]),
    ({"type": "unet"}, ["model.params"]),
])
def test_bad_params_raise_one_line_user_error(cfg, words):
    with pytest.raises(UserError) as e:
        build_model(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


# --- EMA ----------------------------------------------------------------------------------

def toy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))


def train_step(model):
    """Change the live weights and BatchNorm's buffers like a training step would."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()
    model(torch.randn(8, 2) * 3 + 1)  # updates running_mean/var and num_batches_tracked


@pytest.mark.parametrize("decay", [0.9999, 0.15])
def test_ema_warmup_by_hand(decay):
    live = toy()
    ema = EMA(live, decay=decay)
    assert ema.num_updates == 0 and not ema.model.training
    assert all(not p.requires_grad for p in ema.model.parameters())
    w = live[0].weight.detach().double().clone()
    rm = live[1].running_mean.double().clone()
    for n in range(3):
        d = min(decay, (1 + n) / (10 + n))  # 1/10, 2/11, 3/12, capped by decay
        assert ema.current_decay() == pytest.approx(d)
        train_step(live)
        w = w + (1 - d) * (live[0].weight.detach().double() - w)
        rm = rm + (1 - d) * (live[1].running_mean.double() - rm)
        ema.update(live)
    assert ema.num_updates == 3
    torch.testing.assert_close(ema.model[0].weight.double(), w)
    torch.testing.assert_close(ema.model[1].running_mean.double(), rm)
    assert ema.model[1].num_batches_tracked.item() == live[1].num_batches_tracked.item() == 3


def test_ema_fixed_decay_and_wrapped_model():
    live = toy()
    ema = EMA(live, decay=0.9, warmup=False)
    w0 = live[0].weight.detach().clone()
    train_step(live)
    ema.update(torch.compile(live))  # a compiled wrapper is unwrapped (nothing gets compiled)
    torch.testing.assert_close(ema.model[0].weight, 0.9 * w0 + 0.1 * live[0].weight.detach())
    assert ema.current_decay() == 0.9


def test_ema_state_dict_round_trip():
    live = toy()
    ema = EMA(live, decay=0.99)
    for _ in range(2):
        train_step(live)
        ema.update(live)
    sd = ema.state_dict()
    assert sd["num_updates"] == 2 and sd["decay"] == 0.99
    other = EMA(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)), decay=0.5)
    other.load_state_dict(sd)
    assert other.num_updates == 2 and other.decay == 0.99
    for k, v in ema.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[k], v)
    train_step(live)  # both keep averaging the same way after the load
    ema.update(live)
    other.update(live)
    for k, v in ema.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[k], v)


def test_bf16_weights_give_autocast_numbers_bit_for_bit():
    """The bf16 copy's loss and (copied back) gradients equal bf16 autocast on the fp32 model, bit for bit, when
    the fp32 model's conv weights have the same (channels_last) layout; GroupNorm parameters are shared."""
    import copy
    from models import BF16Weights
    from models.bf16_weights import conv_weights_channels_last_
    master = tiny_unet(in_channels=1, out_channels=1)
    ref = conv_weights_channels_last_(copy.deepcopy(master))
    w = BF16Weights(master)
    assert master.state_dict().keys() == ref.state_dict().keys()
    assert w.model.norm_out.weight is master.norm_out.weight                      # shared, not copied
    assert w.model.conv_out.weight.dtype == torch.bfloat16 and w.model.mid[1].qkv.bias.dtype == torch.bfloat16
    assert w.model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([0, 5, 50, 99])
    losses = []
    for net in (ref, w.model):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss = net(x, t).float().pow(2).mean()
        loss.backward()
        losses.append(loss)
    w.grads_to_master()
    assert torch.equal(losses[0], losses[1])
    assert all(c.grad is None for c in w.copies)
    for (name, p), q in zip(ref.named_parameters(), master.parameters()):
        assert q.grad.dtype == torch.float32 and q.grad.stride() == q.stride(), name    # as fused Adam needs
        assert torch.equal(p.grad, q.grad), name
    assert any(p.grad.abs().max() > 0 for p in master.parameters())


def test_bf16_weights_refresh_and_optimizer_state_layout():
    from models import BF16Weights
    master = tiny_unet(in_channels=1, out_channels=1)
    opt = torch.optim.Adam(master.parameters())
    w = BF16Weights(master)
    with torch.no_grad():
        master.conv_in.weight.add_(1.0)
        master.mid[1].qkv.bias.add_(0.5)
    assert not torch.equal(w.model.conv_in.weight, master.conv_in.weight.bfloat16())
    w.refresh()
    assert torch.equal(w.model.conv_in.weight, master.conv_in.weight.bfloat16())
    assert torch.equal(w.model.mid[1].qkv.bias, master.mid[1].qkv.bias.bfloat16())
    # optimizer state loaded from a run without the copy (NCHW conv states) takes the parameters' strides
    p = master.conv_in.weight
    saved = torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape)     # NCHW
    opt.state[p] = {'step': torch.tensor(3.0), 'exp_avg': saved.clone(), 'exp_avg_sq': saved.clone()}
    w.match_optimizer_state(opt)
    for k in ('exp_avg', 'exp_avg_sq'):
        assert opt.state[p][k].stride() == p.stride() and torch.equal(opt.state[p][k], saved)
    assert opt.state[p]['step'].item() == 3.0


def test_project_embedding_gives_each_block_its_own_linear_layer():
    """UNet.project_embedding (all blocks' emb_proj as one matrix product) equals each block's own linear layer,
    and in the forward each ResBlock receives its own projection."""
    from models.unet import ResBlock
    model = tiny_unet()
    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    assert list(model.res_blocks) == blocks and len(blocks) == 8
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 70])
    emb = torch.nn.functional.silu(model.time_embed(timestep_embedding(t, model.dim)))
    for block, out in zip(blocks, model.project_embedding(emb)):
        torch.testing.assert_close(out, block.emb_proj(emb))
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, args: seen.append((m, args[1]))) for b in blocks]
    model(x, t)
    for h in hooks:
        h.remove()
    assert [m for m, _ in seen] == blocks
    for block, got in seen:
        torch.testing.assert_close(got, block.emb_proj(emb))


def test_flatten_and_span():
    """flatten_ moves tensors into one buffer keeping values, shapes and strides; span finds the buffer the tensors
    tile (in any order) and refuses gaps, other storages and mixed dtypes; span_pair needs the same layout."""
    from models.flat_params import flatten_, span, span_pair
    conv = torch.nn.Conv2d(3, 4, 3)
    conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
    lin = torch.nn.Linear(5, 2)
    params = [conv.weight, lin.weight, conv.bias, lin.bias]
    before = [(p.detach().clone(), p.stride()) for p in params]
    buf = flatten_(params)
    # each at a multiple of 16 elements (a CUDA graph's static inputs must be 16-byte aligned), zeros between
    assert [p.storage_offset() for p in params] == [0, 112, 128, 144] and buf.shape == (146,)
    assert buf[108:112].eq(0).all() and buf[122:128].eq(0).all()
    for p, (value, stride) in zip(params, before):
        assert torch.equal(p, value) and p.stride() == stride
        assert p.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr()
    s = span(params[::-1])
    assert s.data_ptr() == buf.data_ptr() and s.shape == buf.shape
    assert span(params[1:]).storage_offset() == 112 and span(params[1:]).numel() == 146 - 112
    assert span([conv.weight, conv.bias]) is None                 # lin.weight lies between them
    assert span([params[0], buf[100:120]]) is None                # overlap
    assert span([conv.weight, torch.zeros(3)]) is None             # another storage
    other = [p.detach().clone() for p in params]
    copy = flatten_(other, dtype=torch.bfloat16)
    assert copy.dtype == torch.bfloat16 and span([params[0], other[1]]) is None
    a, b = span_pair(other, params)
    assert a.data_ptr() == copy.data_ptr() and b.data_ptr() == buf.data_ptr()
    assert span_pair(other[::-1], params) is None                  # pairs of different shapes
    shuffled = [p.detach().clone() for p in params]
    flatten_([shuffled[1], shuffled[0], shuffled[2], shuffled[3]])
    assert span(shuffled) is not None and span_pair(shuffled, params) is None   # tiles, in another order


@pytest.mark.parametrize('bf16', [False, True])
def test_flat_params_train_as_per_parameter_bit_for_bit(bf16):
    """A few Adam steps with FlatParams (one optimizer tensor, one-lerp EMA, one-cast bf16 refresh) give the
    per-parameter optimizer's weights, EMA and (converted) Adam state bit for bit on the CPU (no clipping here:
    its norm sums in another order); the converted state loads back into the flat optimizer unchanged."""
    from models import EMA, BF16Weights, FlatParams

    def run(flat_on):
        net = tiny_unet(in_channels=1, out_channels=1)
        weights = BF16Weights(net) if bf16 else None
        flat = FlatParams(net, weights) if flat_on else None
        ema = EMA(net, 0.9)
        opt = torch.optim.Adam([flat.param] if flat else net.parameters(), lr=1e-3)
        model = weights.model if weights else net
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            x, t = torch.randn(4, 1, 16, 16, generator=gen), torch.randint(0, 100, (4,), generator=gen)
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
                model(x, t).float().pow(2).mean().backward()
            if flat:
                flat.gather_grads()
                assert all(s.grad is None for s in flat.sources) and flat.param.grad.abs().sum() > 0
            elif weights:
                weights.grads_to_master()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if weights:
                weights.refresh()
            ema.update(net)
        if flat:        # the one-tensor paths were taken
            assert ema._spans is not None and (weights is None or weights._spans is not None)
            assert len(opt.state) == 1
        return net, ema, opt, flat

    net_a, ema_a, opt_a, _ = run(False)
    net_b, ema_b, opt_b, flat = run(True)
    for (name, a), b in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(ema_a.model.state_dict().items(), ema_b.model.state_dict().values()):
        assert torch.equal(a, b), name
    per_param = flat.state_to_params(opt_b.state_dict())
    ref = opt_a.state_dict()
    assert per_param['param_groups'] == ref['param_groups'] and per_param['state'].keys() == ref['state'].keys()
    for i, state in ref['state'].items():
        for k, v in state.items():
            assert torch.equal(per_param['state'][i][k], v) and per_param['state'][i][k].shape == v.shape, (i, k)
    back = flat.state_from_params(ref)
    for k, v in opt_b.state_dict()['state'][0].items():
        assert torch.equal(back['state'][0][k], v), k
