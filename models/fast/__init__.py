"""The opt-in speed layer: how the UNet trains and samples fast on a GPU, with the same numbers.

Nothing in models/unet.py, models/ema.py or diffusions/ depends on it; train_ddpm.py and sample_ddpm.py use it
when the config (`train.fast` or the single switches) or `sample_ddpm.py --fast` ask for it.

- FastWeights (weights.py): the model run on a bf16 copy of its conv/linear weights, the fp32 weights as master
  copy; the parameters as views of one flat buffer, so clipping, Adam, the EMA, the bf16 refresh and the gradient
  all-reduce each run over one tensor.
- compile_for_training / compile_for_sampling (compile.py): torch.compile with inductor's options set per model
  (CUDA graphs, channels_last convolutions and their backward layouts, frozen weights, kernel tuning), and the
  per-channel GroupNorm statistics of the compiled sampling forward.
"""
from .compile import COMPILE_MODES, ChannelStatsGroupNorm, compile_for_sampling, compile_for_training, inductor_options
from .weights import FastWeights

__all__ = ['COMPILE_MODES', 'ChannelStatsGroupNorm', 'FastWeights', 'compile_for_sampling', 'compile_for_training',
           'inductor_options']
