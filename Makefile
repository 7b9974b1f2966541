# Two commands do everything on a fresh machine:
#   make demo   the co-simulation demo on the default simulated device
#   make test   the whole test suite
# and `make bitstream` builds for the ECP5-5G Versa board.
# Each first runs scripts/setup.sh (venv, pinned packages, Verilator, lspci).

VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bitstream lspci clean

setup:
	@scripts/setup.sh

demo: setup
	$(VENV)/bin/virtio-net-fpga demo

test: setup
	$(PY) -m pytest -ra -n auto

bitstream: setup
	$(VENV)/bin/virtio-net-fpga build

lspci: setup
	$(VENV)/bin/virtio-net-fpga lspci -o build/config-space.txt
	lspci -vvv -nn -F build/config-space.txt

clean:
	rm -rf build
