"""Dense channels_last operands for the compiled convolution backward (part of `force_layout_opt` in compile.py).

With `force_layout_opt` inductor runs the training graph's convolutions channels_last, but it still hands many
`convolution_backward` calls a grad_output in NCHW (the kernel producing it writes NCHW) or as a strided channel
slice of a concatenation's gradient, and cuDNN copies every such operand to channels_last before it starts (about
29 copies per step of the MNIST config on an H100). `install()` wraps inductor's lowering of
`aten.convolution_backward` so that, in graphs compiled with `force_layout_optimization`, grad_output and input are
required dense channels_last: the kernels producing them write that layout directly, and a strided view is copied
once by inductor. Values are unchanged, only memory layouts move (tests/test_models.py checks the gradients).

Inductor caches compiled graphs on disk under a key of its own options; the lowering is not one of them. So the
compile options also carry a do-nothing post-grad pass whose `uuid` enters the key (inductor's documented way to
make a customisation cache-safe): graphs compiled with and without the wrapper never share a cache entry.
"""
import warnings

import torch

VERSION = "ddpm-conv-backward-channels-last-1"   # change it when the wrapper changes: old cache entries then miss
_key = False            # install()'s result, once it has run


def install():
    """Wrap inductor's convolution_backward lowering (once per process; it acts only while inductor's
    `force_layout_optimization` option is on) and return the cache-key pass for the compile options.

    On a torch whose inductor lacks an internal this uses, warns once, leaves the lowering alone and returns None.
    """
    global _key
    if _key is not False:
        return _key
    import torch._inductor.config as inductor_config
    try:                                               # inductor internals: present in torch 2.11 and 2.14
        from torch._inductor import ir, lowering
        from torch._inductor.custom_graph_pass import CustomGraphPass
        from torch._prims_common import make_channels_last_strides_for
        require_channels_last, copy_input = ir.ExternKernel.require_channels_last, ir.ExternKernel.copy_input
        lowerings = lowering.lowerings
    except (ImportError, AttributeError) as e:
        warnings.warn(f"models.fast.conv_backward_layout: torch {torch.__version__} lacks an inductor internal this "
                      f"needs ({e}); the compiled convolution backward keeps cuDNN's layout copies (slower, same values)")
        _key = None
        return _key

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
        if inductor_config.force_layout_optimization and len(grad_out.get_size()) == 4:   # 2-d convolutions
            grad_out, input = dense_channels_last(grad_out), dense_channels_last(input)
        return inner(grad_out, input, weight, *args, **kwargs)

    lowerings[op] = convolution_backward_channels_last
    _key = ConvBackwardLayoutKey()
    return _key
