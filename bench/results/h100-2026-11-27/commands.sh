#!/usr/bin/env bash
# Start the full bench (plain + fast, CIFAR-10 and MNIST on Fashion-MNIST, sampling) in the background.
R=/root/g; mkdir -p $R
export PYTHONUNBUFFERED=1
setsid bash -c "nvidia-smi --query-gpu=name,clocks.max.sm --format=csv; python3 bench/bench.py --out $R/bench.json --mnist-root .data/fashion-mnist; touch $R/done" > $R/pipeline.log 2>&1 < /dev/null &
