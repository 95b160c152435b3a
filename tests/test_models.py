"""Tests for models/: the DDPM UNet, build_model's config checks, the EMA, and the speed layer (models/fast)."""
import copy
import glob
import math
import os

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from models import EMA, UNet, build_model
from models.fast import ChannelStatsGroupNorm, FastWeights, compile_for_sampling, compile_for_training, inductor_options
from models.fast.weights import conv_weights_channels_last_, flatten_, view_of
from models.unet import AttnBlock, timestep_embedding, upsample_nearest2x
from utils.config import load_config
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
CIFAR10 = os.path.join(ROOT, "configs", "ddpm_cifar10.yaml")


pytestmark = pytest.mark.usefixtures('one_thread')


def load_yaml(path):
    return load_config(path)


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


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_channel_stats_group_norm(fmt):
    # The GroupNorm of compiled sampling (per-channel statistics combined by the law of total variance) against the
    # textbook formula in float64, its gradients against F.group_norm's, and float32 with a large offset (mean 1e3 x
    # std): the group variance combines partial variances, no E[x^2] - E[x]^2 cancellation. Same state_dict.
    torch.manual_seed(0)
    gn = ChannelStatsGroupNorm(4, 12, eps=1e-6).double()
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.uniform_(-0.5, 0.5)
    assert gn.state_dict().keys() == nn.GroupNorm(4, 12).state_dict().keys()
    x = (torch.randn(3, 12, 5, 8, dtype=torch.float64) * 3 + torch.randn(1, 12, 5, 1)).contiguous(memory_format=fmt)
    x.requires_grad_(True)
    out = gn(x)
    g = x.detach().reshape(3, 4, 3 * 5 * 8)
    mean, var = g.mean(-1, keepdim=True), g.var(-1, unbiased=False, keepdim=True)
    ref = ((g - mean) / torch.sqrt(var + 1e-6)).reshape(3, 12, 5, 8) * gn.weight[:, None, None] + gn.bias[:, None, None]
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    xc = x.detach().contiguous().requires_grad_(True)
    gout = torch.randn(3, 12, 5, 8, dtype=torch.float64)
    (out * gout).sum().backward()
    (nn.functional.group_norm(xc, 4, gn.weight, gn.bias, 1e-6) * gout).sum().backward()
    torch.testing.assert_close(x.grad, xc.grad, atol=1e-10, rtol=1e-10)
    plain = ChannelStatsGroupNorm(4, 12, eps=1e-6, affine=False)
    x32 = (x.detach() + 1e3 * 3).float()
    assert (plain(x32).double() - nn.functional.group_norm(x32.double(), 4, eps=1e-6)).abs().max() < 1e-3
    assert plain(x32.to(torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_upsample_nearest2x_is_interpolate(fmt):
    # broadcast + reshape form: the values and gradients of F.interpolate(nearest, x2), the input's layout kept
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_(True)
    xr = x.detach().clone().requires_grad_(True)
    y, ref = upsample_nearest2x(x), nn.functional.interpolate(xr, scale_factor=2.0, mode="nearest")
    assert torch.equal(y, ref)
    g = torch.randn_like(ref)
    (y * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-12, rtol=0)


def test_attention_block_formula_and_4d_sdpa(monkeypatch):
    # x + proj_out(softmax(q k^T / sqrt(C)) v) over the H*W tokens of GroupNorm(x), checked in float64; and SDPA
    # gets 4-D (B, heads, tokens, C) inputs, the only shape its fused GPU kernels take (3-D falls back to the
    # float32 math path)
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


def traced_ops(model, *inputs, grad):
    """The call_function targets of the one graph Dynamo traces of model(*inputs) (fullgraph: no graph breaks),
    run through aot_eager; and the output."""
    ops = []

    def backend(gm, example_inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)
    with torch.set_grad_enabled(grad):
        out = torch.compile(model, backend=backend, fullgraph=True)(*inputs)
    return ops, out


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
def test_training_graph_keeps_group_norm_and_sampling_graph_takes_channel_stats(fmt):
    # Dynamo traces the whole UNet forward without graph breaks; the training model's graph holds group_norm, the
    # sampling model's (after compile_for_sampling's swap) var_mean per channel instead, with the same outputs.
    model = tiny_unet().eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    if fmt == "channels_last":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x, t)
    n_norms = sum(isinstance(m, nn.GroupNorm) for m in model.modules())
    ops, out = traced_ops(model, x, t, grad=True)
    assert sum("group_norm" in op for op in ops) == n_norms and not any("var_mean" in op for op in ops)
    torch.testing.assert_close(out.detach(), ref, atol=1e-5, rtol=1e-4)
    sampling = copy.deepcopy(model)
    compiled = compile_for_sampling(sampling, "default")
    assert all(type(m) is ChannelStatsGroupNorm for m in sampling.modules() if isinstance(m, nn.GroupNorm))
    assert isinstance(compiled.compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.compiled._orig_mod is sampling
    assert sampling.state_dict().keys() == model.state_dict().keys()
    ops, out = traced_ops(sampling, x, t, grad=False)
    assert sum("var_mean" in op for op in ops) == n_norms and not any("group_norm" in op for op in ops)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_compiled_sampler_freezes_the_weights():
    # compile_for_sampling makes the weights constants of the graph (inductor's freezing): the compiled model keeps
    # computing with the weights of its first call. (Given to torch.compile(options=...) alone, freezing reached
    # inductor but not dynamo, which kept the weights as graph inputs that a later change reached.)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.Conv2d(8, 3, 3, padding=1))
    model = model.eval().requires_grad_(False)
    x = torch.randn(2, 3, 8, 8)
    compiled = compile_for_sampling(model, "default")
    with torch.no_grad():
        first = compiled(x)
        torch.testing.assert_close(first, model(x), atol=1e-5, rtol=1e-4)
        model[0].weight.add_(1.0)
        changed, again = model(x), compiled(x)
    assert (changed - first).abs().max() > 0.1
    torch.testing.assert_close(again, first, atol=0, rtol=0)


def test_inductor_options_are_per_model_and_leave_the_process_alone():
    # The switches go into torch.compile(options=...): the mode's own options plus this repo's, and no process-wide
    # inductor setting changes (a compiled sampler beside a compiled training model gets only its own).
    import torch._inductor.config as inductor_config
    from models.fast import conv_backward_layout
    assert inductor_options("default") == {}
    assert inductor_options("reduce-overhead", tune=True) == {"triton.cudagraphs": True,
                                                              "coordinate_descent_tuning": True}
    opts = inductor_options("default", force_layout_opt=True, freeze=True)
    assert opts["force_layout_optimization"] is True and opts["freezing"] is True
    assert opts["post_grad_custom_post_pass"].uuid() == conv_backward_layout.VERSION   # marks the cache key
    before = {k: getattr(inductor_config, k) for k in ("force_layout_optimization", "freezing",
                                                        "coordinate_descent_tuning", "post_grad_custom_post_pass")}
    compile_for_training(nn.Linear(2, 2), "default", force_layout_opt=True, tune=True)
    sampler = compile_for_sampling(nn.Linear(2, 2), "default", tune=True)
    with torch.no_grad():
        sampler(torch.randn(1, 2))                       # freezing is switched on for the call only
    assert {k: getattr(inductor_config, k) for k in before} == before


def test_conv_backward_layout_warns_and_skips_on_a_torch_without_its_internals(monkeypatch):
    # an older inductor without one of the internals: a warning, the lowering untouched, training still compiles
    from torch._inductor import ir, lowering
    from models.fast import conv_backward_layout
    monkeypatch.setattr(conv_backward_layout, "_key", False)
    monkeypatch.delattr(ir.ExternKernel, "require_channels_last")
    before = lowering.lowerings[torch.ops.aten.convolution_backward.default]
    with pytest.warns(UserWarning, match="lacks an inductor internal.*same values"):
        assert conv_backward_layout.install() is None
    assert lowering.lowerings[torch.ops.aten.convolution_backward.default] is before
    assert inductor_options("default", force_layout_opt=True)["post_grad_custom_post_pass"] is None


class SkipNet(nn.Module):
    """The UNet's pattern in small: a convolution whose input is the concatenation of a skip and a conv output."""

    def __init__(self):
        super().__init__()
        self.conv_in, self.conv_mid = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.norm, self.conv_out = nn.GroupNorm(4, 16), nn.Conv2d(32, 8, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        return self.conv_out(torch.cat([h, self.conv_mid(nn.functional.silu(self.norm(h)))], dim=1))


def layout(t) -> str:
    """'cl' (channels_last, not also contiguous), 'nchw', 'both' (size-1 dimensions) or 'strided' (neither)."""
    cl, c = t.is_contiguous(memory_format=torch.channels_last), t.is_contiguous()
    return 'both' if cl and c else 'cl' if cl else 'nchw' if c else 'strided'


class ConvBackwardLog(TorchDispatchMode):
    """Records the layouts of (grad_output, input) of every convolution_backward call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default:
            self.calls.append([layout(a) for a in args[:2]])
        return func(*args, **(kwargs or {}))


def test_compiled_conv_backward_gets_dense_channels_last_operands():
    # models/fast/conv_backward_layout.py, part of compile_for_training's force_layout_opt: every
    # convolution_backward of the compiled backward gets grad_output and input dense channels_last (without it,
    # inductor hands cuDNN the strided channel slices of the concatenation's gradient, which cuDNN copies), and the
    # gradients are eager's.
    torch.manual_seed(0)
    net, x = SkipNet(), torch.randn(4, 3, 8, 8)
    net(x).square().mean().backward()
    eager_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    loss = compile_for_training(net, "default", force_layout_opt=True)(x).square().mean()
    log = ConvBackwardLog()
    with log:                   # around the backward only: the compiled forward does not run under a dispatch mode
        loss.backward()
    assert [[lay in ("cl", "both") for lay in call] for call in log.calls] == [[True, True]] * 3
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


def change_weights(model):
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
        change_weights(live)
        w = w + (1 - d) * (live[0].weight.detach().double() - w)
        rm = rm + (1 - d) * (live[1].running_mean.double() - rm)
        ema.update()
    assert ema.num_updates == 3
    torch.testing.assert_close(ema.model[0].weight.double(), w)
    torch.testing.assert_close(ema.model[1].running_mean.double(), rm)
    assert ema.model[1].num_batches_tracked.item() == live[1].num_batches_tracked.item() == 3


def test_ema_fixed_decay_and_wrapped_model():
    live = toy()
    ema = EMA(torch.compile(live), decay=0.9, warmup=False)  # a compiled wrapper is unwrapped (nothing compiles)
    assert ema.live is live
    w0 = live[0].weight.detach().clone()
    change_weights(live)
    ema.update()
    torch.testing.assert_close(ema.model[0].weight, 0.9 * w0 + 0.1 * live[0].weight.detach())
    assert ema.current_decay() == 0.9


def test_ema_state_dict_round_trip():
    live = toy()
    ema = EMA(live, decay=0.99)
    for _ in range(2):
        change_weights(live)
        ema.update()
    sd = ema.state_dict()
    assert sd["num_updates"] == 2 and sd["decay"] == 0.99
    other = EMA(live, decay=0.5)
    other.load_state_dict(sd)
    assert other.num_updates == 2 and other.decay == 0.99
    for k, v in ema.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[k], v)
    change_weights(live)  # both keep averaging the same way after the load
    ema.update()
    other.update()
    for k, v in ema.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[k], v)


def test_bf16_weights_give_autocast_numbers_bit_for_bit():
    """FastWeights' bf16 copy: its loss and (copied back) gradients equal bf16 autocast on the fp32 model, bit for
    bit, when the fp32 model's conv weights have the same (channels_last) layout; GroupNorm parameters are shared."""
    master = tiny_unet(in_channels=1, out_channels=1)
    ref = conv_weights_channels_last_(copy.deepcopy(master))
    w = FastWeights(master, bf16_copy=True)
    assert master.state_dict().keys() == ref.state_dict().keys() and w.params == list(master.parameters())
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
    w.grads_to_params()
    assert torch.equal(losses[0], losses[1])
    assert all(m.grad is None for m in w.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
               for m in [m.weight])                                                 # the copy's are cleared
    for (name, p), q in zip(ref.named_parameters(), master.parameters()):
        assert q.grad.dtype == torch.float32 and q.grad.stride() == q.stride(), name    # as fused Adam needs
        assert torch.equal(p.grad, q.grad), name
    assert any(p.grad.abs().max() > 0 for p in master.parameters())


def test_bf16_weights_refresh_and_optimizer_state_layout():
    master = tiny_unet(in_channels=1, out_channels=1)
    w = FastWeights(master, bf16_copy=True)
    with torch.no_grad():
        master.conv_in.weight.add_(1.0)
        master.mid[1].qkv.bias.add_(0.5)
    assert not torch.equal(w.model.conv_in.weight, master.conv_in.weight.bfloat16())
    w.refresh()
    assert torch.equal(w.model.conv_in.weight, master.conv_in.weight.bfloat16())
    assert torch.equal(w.model.mid[1].qkv.bias, master.mid[1].qkv.bias.bfloat16())
    # optimizer state from a run without the copy (NCHW conv states) takes the parameters' strides, as fused Adam
    # needs; a state that does not fit the model is a ValueError
    params = list(master.parameters())
    i = next(k for k, p in enumerate(params) if p is master.conv_in.weight)
    saved = torch.arange(params[i].numel(), dtype=torch.float32).reshape(params[i].shape)     # NCHW
    sd = {'state': {i: {'step': torch.tensor(3.0), 'exp_avg': saved.clone(), 'exp_avg_sq': saved.clone()}},
          'param_groups': [{'lr': 1e-3, 'params': list(range(len(params)))}]}
    out = w.optimizer_state_from_params(sd)['state'][i]
    for k in ('exp_avg', 'exp_avg_sq'):
        assert out[k].stride() == params[i].stride() and torch.equal(out[k], saved)
    assert out['step'].item() == 3.0
    sd['state'][i]['exp_avg'] = saved[:1]
    with pytest.raises(ValueError, match="a state of shape"):
        w.optimizer_state_from_params(sd)


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


def test_flatten_keeps_values_shapes_strides_and_aligns():
    """flatten_ moves tensors into one buffer keeping values, shapes and strides, each at a multiple of 16 elements
    (a CUDA graph's static inputs must be 16-byte aligned), zeros between; view_of finds a tensor's place in any
    tensor laid out like the buffer."""
    conv = torch.nn.Conv2d(3, 4, 3)
    conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
    lin = torch.nn.Linear(5, 2)
    params = [conv.weight, lin.weight, conv.bias, lin.bias]
    before = [(p.detach().clone(), p.stride()) for p in params]
    buf = flatten_(params)
    assert [p.storage_offset() for p in params] == [0, 112, 128, 144] and buf.shape == (146,)
    assert buf[108:112].eq(0).all() and buf[122:128].eq(0).all()
    for p, (value, stride) in zip(params, before):
        assert torch.equal(p, value) and p.stride() == stride
        assert p.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr()
    other = torch.arange(146.0)
    assert torch.equal(view_of(lin.weight, other), other[112:122].view(2, 5))
    assert torch.equal(view_of(conv.weight, other), other[:108].as_strided((4, 3, 3, 3), conv.weight.stride()))
    with pytest.raises(ValueError, match="not dense"):
        flatten_([torch.zeros(4, 4)[:, :2]])


@pytest.mark.parametrize('bf16', [False, True])
def test_flat_gradients_gathered_each_step_and_zero_where_none(bf16):
    """grads_to_params (flat) puts each step's gradients into the buffer's .grad at each parameter's place (cast to
    fp32), clears the sources, and writes zeros where a parameter got no gradient: a step later, the same again."""
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.norm = nn.Linear(3, 4), nn.Linear(3, 2), nn.GroupNorm(2, 4)

        def forward(self, x, use_b):
            y = self.norm(self.a(x).unsqueeze(-1)).sum()
            return y + self.b(x).sum() if use_b else y

    net = TwoHeads()
    w = FastWeights(net, bf16_copy=bf16, flat=True)
    for use_b in (True, False, True):
        x = torch.randn(5, 3)
        w.model(x.to(torch.bfloat16) if bf16 else x, use_b).backward()
        expected = {name: torch.zeros(src.shape) if src.grad is None else src.grad.float()
                    for name, src in w.model.named_parameters()}
        w.grads_to_params()
        assert all(p.grad is None for p in w.model.parameters())                   # the sources are cleared
        for name, p in net.named_parameters():
            got = view_of(p, w.param.grad)
            assert got.dtype == torch.float32 and torch.equal(got, expected[name]), (name, use_b)
        assert use_b or view_of(net.b.weight, w.param.grad).eq(0).all()


@pytest.mark.parametrize('bf16', [False, True])
def test_flat_params_train_as_per_parameter_bit_for_bit(bf16):
    """A few Adam steps with the flat buffer (one optimizer tensor, one-lerp EMA, one-cast bf16 refresh) give the
    per-parameter optimizer's weights, EMA and (converted) Adam state bit for bit on the CPU (no clipping here:
    its norm sums in another order); the converted state loads back into the flat optimizer unchanged."""

    def run(flat):
        net = tiny_unet(in_channels=1, out_channels=1)
        weights = FastWeights(net, bf16_copy=bf16, flat=flat)
        ema = EMA(net, 0.9)
        weights.attach_ema(ema)
        opt = torch.optim.Adam(weights.params, lr=1e-3)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            x, t = torch.randn(4, 1, 16, 16, generator=gen), torch.randint(0, 100, (4,), generator=gen)
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
                weights.model(x, t).float().pow(2).mean().backward()
            weights.grads_to_params()
            opt.step()
            opt.zero_grad(set_to_none=True)
            weights.refresh()
            ema.update()
        return net, ema, opt, weights

    net_a, ema_a, opt_a, _ = run(False)
    net_b, ema_b, opt_b, flat = run(True)
    # the one-tensor paths: one optimizer tensor, and the EMA's parameters in one buffer of their own
    assert len(opt_b.state) == 1 and len(flat.params) == 1
    storages = {p.untyped_storage().data_ptr() for p in ema_b.model.parameters()}
    assert len(storages) == 1 and storages != {flat.param.untyped_storage().data_ptr()}
    for (name, a), b in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(ema_a.model.state_dict().items(), ema_b.model.state_dict().values()):
        assert torch.equal(a, b), name
    per_param = flat.optimizer_state_to_params(opt_b.state_dict())
    ref = opt_a.state_dict()
    assert per_param['param_groups'] == ref['param_groups'] and per_param['state'].keys() == ref['state'].keys()
    for i, state in ref['state'].items():
        for k, v in state.items():
            assert torch.equal(per_param['state'][i][k], v) and per_param['state'][i][k].shape == v.shape, (i, k)
    back = flat.optimizer_state_from_params(ref)
    for k, v in opt_b.state_dict()['state'][0].items():
        assert torch.equal(back['state'][0][k], v), k
