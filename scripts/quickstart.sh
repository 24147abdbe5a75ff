#!/usr/bin/env bash
# Quick start on a fresh Debian/Ubuntu machine: install the packages, build deepstack-caption,
# fetch Qwen3-VL-2B-Instruct from the Hugging Face Hub (about 4.3 GB, once, into
# models/Qwen3-VL-2B-Instruct) and caption the bundled sample image.
#   MODEL_DIR=DIR    use a model folder you already have (nothing is downloaded)
#   HF_ENDPOINT=URL  download through a mirror of the Hub
# The download takes `hf download` where that is installed, else git with git-lfs. Without access
# to the Hub the script stops before building and says what to do instead.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=Qwen/Qwen3-VL-2B-Instruct
endpoint=${HF_ENDPOINT:-https://huggingface.co}
endpoint=${endpoint%/}

say() { echo "quickstart: $*" >&2; }

# Where the model comes from, decided before anything slow runs.
if [ -n "${MODEL_DIR:-}" ]; then
  if [ ! -f "$MODEL_DIR/config.json" ]; then
    say "MODEL_DIR=$MODEL_DIR has no config.json; give the folder of a downloaded $repo"
    say "(config.json, tokenizer.json, model*.safetensors), or unset MODEL_DIR to download it."
    exit 1
  fi
  download=no
else
  MODEL_DIR=models/Qwen3-VL-2B-Instruct
  download=yes
  [ -f "$MODEL_DIR/config.json" ] && download=no
fi

if [ "$download" = yes ]; then
  probe_url="$endpoint/$repo/resolve/main/config.json"
  if command -v curl >/dev/null 2>&1; then
    reason=$(curl -sS -o /dev/null --max-time 20 --head --fail "$probe_url" 2>&1) && reachable=yes || reachable=no
  elif command -v wget >/dev/null 2>&1; then
    reason=$(wget -nv --spider --timeout=20 --tries=1 "$probe_url" 2>&1) && reachable=yes || reachable=no
    reason=$(printf '%s\n' "$reason" | tail -n 1)
  else
    reason=$(GIT_TERMINAL_PROMPT=0 timeout 30 git ls-remote "$endpoint/$repo" HEAD 2>&1 >/dev/null) && reachable=yes || reachable=no
  fi
  if [ "$reachable" = no ]; then
    say "cannot reach the Hugging Face Hub at $endpoint to download $repo:"
    say "  ${reason:-no answer}"
    say "Nothing was built or downloaded. Any of these gets the model:"
    say "  - a copy you already have (config.json, tokenizer.json, model*.safetensors):"
    say "      MODEL_DIR=/path/to/Qwen3-VL-2B-Instruct scripts/quickstart.sh"
    say "  - a mirror of the Hub:"
    say "      HF_ENDPOINT=https://your-mirror.example scripts/quickstart.sh"
    say "  - a download on a machine with access, then copy the folder here as $MODEL_DIR:"
    say "      hf download $repo --local-dir $MODEL_DIR   (pip install -U huggingface_hub)"
    say "      or: git lfs install && git clone https://huggingface.co/$repo"
    exit 1
  fi
fi

bash .ci/install-deps
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DDEEPSTACK_BUILD_TESTS=OFF
cmake --build build -j"$(nproc)" --target deepstack-caption

if [ "$download" = yes ]; then
  say "downloading $repo (about 4.3 GB) from $endpoint into $MODEL_DIR"
  mkdir -p "$(dirname "$MODEL_DIR")"
  # Into $MODEL_DIR.part, renamed when complete: an interrupted download never looks like a model.
  if command -v hf >/dev/null 2>&1; then
    hf download "$repo" --local-dir "$MODEL_DIR.part"  # resumes what an earlier run left there
  else
    if ! command -v git-lfs >/dev/null 2>&1; then
      SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
      $SUDO apt-get install -y -qq git-lfs
    fi
    git lfs install --skip-repo >/dev/null
    rm -rf "$MODEL_DIR.part"
    git clone "$endpoint/$repo" "$MODEL_DIR.part"
  fi
  mv "$MODEL_DIR.part" "$MODEL_DIR"
fi
build/bin/deepstack-caption --model "$MODEL_DIR" examples/sample.png
