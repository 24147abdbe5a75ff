#!/usr/bin/env bash
# Quick start on a fresh Debian/Ubuntu machine: install the packages, build, fetch
# Qwen3-VL-2B-Instruct from Hugging Face (about 4.3 GB, once), caption the bundled sample image.
# MODEL_DIR=... to use a folder you already have.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-deps
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DDEEPSTACK_ARCH=native -DDEEPSTACK_BUILD_TESTS=OFF
cmake --build build -j"$(nproc)" --target deepstack-caption
MODEL_DIR=${MODEL_DIR:-models/Qwen3-VL-2B-Instruct}
if [ ! -f "$MODEL_DIR/config.json" ]; then
  if ! command -v git-lfs >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get install -y -qq git-lfs
  fi
  git lfs install --skip-repo >/dev/null
  git clone https://huggingface.co/Qwen/Qwen3-VL-2B-Instruct "$MODEL_DIR"
fi
build/bin/deepstack-caption --model "$MODEL_DIR" examples/sample.png
