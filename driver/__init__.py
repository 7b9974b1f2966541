"""Guest driver for the virtio-net PCIe endpoint, written in Python.

A rendering of Linux's virtio PCI modern transport, split virtqueue
allocation and virtio-net probe, in async form so that the same code runs
against a behavioural model (driver.testing) and against the cocotb
simulation (a Transport implemented in sim/).

Layers, bottom up:

- transport:          the only way to reach the device (config space, BARs,
                      DMA memory, interrupts), plus the bounds-checked Region.
- virtio_pci_modern:  virtio over PCI (virtio 1.2 section 4.1).
- virtio_ring:        split virtqueue memory (virtio 1.2 section 2.7).
- virtio_net:         the network device's probe (virtio 1.2 section 5.1).
"""
from .transport import Region, RegionAccessError, Transport, TransportError
from .virtio_pci_modern import VirtioPciError, VirtioPciModernDevice
from .virtio_ring import SplitVirtqueue, VirtqueueError
from .virtio_net import (DRIVER_FEATURES, VirtioNet, VirtioNetProbeError,
                         validate_features)

__all__ = [
    "Transport", "TransportError", "Region", "RegionAccessError",
    "VirtioPciModernDevice", "VirtioPciError",
    "SplitVirtqueue", "VirtqueueError",
    "VirtioNet", "VirtioNetProbeError", "DRIVER_FEATURES", "validate_features",
]
