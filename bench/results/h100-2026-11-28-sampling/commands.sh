#!/usr/bin/env bash
# What ran on the nvidia-h100-x1 machine of 2026-11-28 00:33-00:56 (repo at de046ed, the repo root as cwd);
# hostspeed.py is ../h100-2026-11-27-targets/hostspeed.py. The sampler's tuned compile ran alone on the GPU
# (the day before it ran beside two MNIST compiles). pipeline.log has the stamps; sample-b repeats sample
# from the warm compile cache.
set -u
R=/root/g; cd /root/repo; export PYTHONUNBUFFERED=1
stamp() { echo "== $1 $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"; }
Q=timestamp,clocks.sm,clocks.mem,utilization.gpu,power.draw,temperature.gpu,clocks_event_reasons.active
nvidia-smi --query-gpu=$Q --format=csv >/dev/null 2>&1 || Q=timestamp,clocks.sm,clocks.mem,utilization.gpu,power.draw,temperature.gpu,clocks_throttle_reasons.active
setsid nvidia-smi --query-gpu=$Q --format=csv -l 2 > $R/smi.csv 2>&1 < /dev/null &
(nvidia-smi; nvidia-smi -q -d PERFORMANCE,CLOCK,TEMPERATURE,POWER; lscpu) > $R/gpu-info.log 2>&1
stamp host; python bench/results/h100-2026-11-27-targets/hostspeed.py 2>&1 | tee -a $R/host.log
stamp sample                       # compiles the tuned sampler alone (fast mode), then times plain and fast
python bench/bench.py --only sample --sample-modes plain,fast --out $R/sample.json > $R/sample.log 2>&1
stamp sample-b; touch $R/s1        # the same again from the warm cache
python bench/bench.py --only sample --sample-modes plain,fast --out $R/sample-b.json > $R/sample-b.log 2>&1
stamp cifar; touch $R/targets
python bench/bench.py --configs cifar10 --only train --modes plain,fast --out $R/cifar.json > $R/cifar.log 2>&1
stamp end; touch $R/done
