"""Gateware of the virtio-net PCIe endpoint (Amaranth 0.5)."""
