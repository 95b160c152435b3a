"""How fast this machine's host drives the GPU: microseconds per tiny CUDA op, and a pure-Python loop."""
import time, torch
x = torch.zeros(1, device='cuda'); torch.cuda.synchronize()
for _ in range(2000): x.add_(1)
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(20000): x.add_(1)
torch.cuda.synchronize(); launch = (time.perf_counter() - t) / 20000 * 1e6
t = time.perf_counter(); s = 0
for i in range(3_000_000): s += i
print(f'host: {launch:.2f} us per tiny CUDA op launch; pure-Python loop of 3M adds {time.perf_counter() - t:.3f} s', flush=True)
