#!/usr/bin/env bash
# Set this repo up on a fresh machine, then train the quick-start model (the README's first command).
#
#   bash setup.sh            # set up, then train configs/ddpm_tiny.yaml into runs/quickstart
#   bash setup.sh --no-train # set up only
#
# - Debian/Ubuntu as root: apt installs what is missing of python3-venv, g++ (torch.compile's CPU backend) and
#   Debian's offline Fashion-MNIST files (dataset-fashion-mnist). Elsewhere (a laptop with Python 3.10-3.12) the
#   quick start downloads Fashion-MNIST through torchvision into data/fashion-mnist instead.
# - A virtual environment in .venv (made once, then reused): the system Python stays untouched (Debian's python3
#   refuses pip installs outside one).
# - PyTorch, if the environment has none: on a machine without an NVIDIA GPU, the CPU build from PyTorch's CPU index
#   when that index answers (a few hundred MB instead of the CUDA build's GBs); else the default build of pip's index.
#   To choose a build, set TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu126) before running this.
# - requirements.txt and the test tools (pytest, pytest-xdist to run the suite on 2 cores, diffusers); a default accelerate config (`accelerate config default`) if there is none,
#   so `accelerate launch` starts without its defaults warning.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

if command -v apt-get > /dev/null && [ "$(id -u)" = 0 ]; then
  need=()
  "$PYTHON" -c 'import ensurepip, venv' 2> /dev/null || need+=(python3-venv)
  command -v g++ > /dev/null || need+=(g++)
  [ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: apt-get install ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" > /dev/null
  fi
fi

[ -x .venv/bin/python ] || { echo "setup: making the virtual environment .venv"; "$PYTHON" -m venv .venv; }
PY=.venv/bin/python

if ! "$PY" -c 'import torch, torchvision' 2> /dev/null; then
  index=${TORCH_INDEX_URL:-}
  if [ -z "$index" ] && ! command -v nvidia-smi > /dev/null && [ "$(uname -s)" = Linux ] \
      && "$PY" -c 'import urllib.request; urllib.request.urlopen("https://download.pytorch.org/whl/cpu/", timeout=5)' \
         2> /dev/null; then
    index=https://download.pytorch.org/whl/cpu
  fi
  echo "setup: installing torch and torchvision${index:+ from $index}"
  "$PY" -m pip install -q torch torchvision ${index:+--index-url "$index"}
fi
echo "setup: installing requirements.txt and the test tools (pytest, pytest-xdist; diffusers, whose UNet the tests convert)"
"$PY" -m pip install -q -r requirements.txt pytest pytest-xdist diffusers

config=$("$PY" -c 'from accelerate.commands.config.config_args import default_config_file as f; print(f)')
if [ ! -f "$config" ]; then                 # no saved accelerate config yet: the defaults for this machine
  .venv/bin/accelerate config default > /dev/null
  echo "setup: wrote accelerate's default config $config"
fi

if [ "${1:-}" = "--no-train" ]; then
  :
elif [ -f runs/quickstart/ckpt/latest ]; then
  echo "setup: runs/quickstart is trained already (delete it to train again)"
else
  data=()                                   # without Debian's files: torchvision downloads Fashion-MNIST (network)
  [ -d /usr/share/datasets/fashion-mnist ] || data=(--data.root data/fashion-mnist --data.download true)
  echo "setup: training the quick-start model (configs/ddpm_tiny.yaml) into runs/quickstart"
  "$PY" train_ddpm.py -c configs/ddpm_tiny.yaml -e runs/quickstart "${data[@]}"
fi
echo "setup: done; activate the environment with: . .venv/bin/activate"
