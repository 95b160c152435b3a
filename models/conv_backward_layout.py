"""Dense channels_last operands for the compiled convolution backward (part of `compile_model(force_layout_opt=True)`).

With `train.compile_force_layout_opt` inductor runs the training graph's convolutions channels_last, but it still
hands many `convolution_backward` calls a grad_output in NCHW (the kernel producing it writes NCHW) or as a strided
channel slice of a concatenation's gradient, and cuDNN copies every such operand to channels_last before it starts
(bench/conv_layouts.py on an H100, attempt 13: 23 + 4 of the MNIST config's 65 calls, about 29 copies a step).
`install()` wraps inductor's lowering of `aten.convolution_backward` so that grad_output and input are required
dense channels_last: the kernels producing them write that layout directly, and a strided view is copied once by
inductor. Values are unchanged, only memory layouts move (tests/test_models.py checks the gradients against eager).
Measured on an H100 (attempt 14): 29 copies per MNIST step before, 1 after; the MNIST step +6.7% in the same call.

Inductor caches compiled graphs on disk under a key of its own options; the lowering is not one of them. So
`install()` also sets a do-nothing post-grad pass whose `uuid` enters the key (inductor's documented way to make a
customisation cache-safe): graphs compiled with and without the wrapper never share a cache entry.
"""
import warnings

import torch

VERSION = "ddpm-conv-backward-channels-last-1"   # change it when the wrapper changes: old cache entries then miss
_installed = False


def install():
    """Wrap inductor's convolution_backward lowering, for everything compiled in this process afterwards (idempotent).

    Raises RuntimeError if another post-grad custom pass is already set (the cache key would not mark the wrapper).
    On a torch whose inductor lacks an internal this uses, warns once and leaves the lowering alone.
    """
    global _installed
    if _installed:
        return
    import torch._inductor.config as inductor_config
    try:                                               # inductor internals: present in torch 2.11 and 2.14
        from torch._inductor import ir, lowering
        from torch._inductor.custom_graph_pass import CustomGraphPass
        from torch._prims_common import make_channels_last_strides_for
        require_channels_last, copy_input = ir.ExternKernel.require_channels_last, ir.ExternKernel.copy_input
        lowerings = lowering.lowerings
    except (ImportError, AttributeError) as e:
        warnings.warn(f"models.conv_backward_layout: torch {torch.__version__} lacks an inductor internal this needs "
                      f"({e}); the compiled convolution backward keeps cuDNN's layout copies (slower, same values)")
        _installed = True
        return
    if inductor_config.post_grad_custom_post_pass is not None:
        raise RuntimeError("models.conv_backward_layout: inductor's post_grad_custom_post_pass is already set; "
                           "set train.compile_force_layout_opt false or remove that pass")

    class ConvBackwardLayoutKey(CustomGraphPass):
        """Does nothing to the graph; its uuid marks graphs lowered with the wrapper in inductor's cache key."""

        def __call__(self, graph):
            return None

        def uuid(self):
            return VERSION

    op = torch.ops.aten.convolution_backward.default
    inner = lowerings[op]

    def dense_channels_last(x):
        x = require_channels_last(x)
        if list(x.get_stride()) != list(make_channels_last_strides_for(x.get_size())):   # e.g. a channel slice
            x = require_channels_last(copy_input(x))
        return x

    def convolution_backward_channels_last(grad_out, input, weight, *args, **kwargs):
        if len(grad_out.get_size()) == 4:                  # 2-d convolutions only
            grad_out, input = dense_channels_last(grad_out), dense_channels_last(input)
        return inner(grad_out, input, weight, *args, **kwargs)

    lowerings[op] = convolution_backward_channels_last
    inductor_config.post_grad_custom_post_pass = ConvBackwardLayoutKey()
    _installed = True
