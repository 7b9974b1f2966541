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
- virtio_net:         the network device: probe, datapath, control queue and
                      multiqueue (virtio 1.2 section 5.1).
- flow:               flow keys and the Toeplitz hash (select_queue, steering).

Test support: testing (a behavioural virtio-net PCI function) and
testing_ctrl (its control-queue model, the reference for the gateware).
"""
from .transport import Region, RegionAccessError, Transport, TransportError
from .virtio_pci_modern import VirtioPciError, VirtioPciModernDevice, VirtioPciVectorError
from .virtio_ring import SplitVirtqueue, VirtqueueError
from .virtio_net import (DRIVER_FEATURES, VectorPolicy, VirtioNet, VirtioNetCtrlError,
                         VirtioNetCtrlTimeout, VirtioNetError, VirtioNetProbeError,
                         accept_features, validate_features)

__all__ = [
    "Transport", "TransportError", "Region", "RegionAccessError",
    "VirtioPciModernDevice", "VirtioPciError", "VirtioPciVectorError",
    "SplitVirtqueue", "VirtqueueError",
    "VirtioNet", "VirtioNetError", "VirtioNetProbeError", "VirtioNetCtrlError",
    "VirtioNetCtrlTimeout", "VectorPolicy", "DRIVER_FEATURES", "validate_features",
    "accept_features",
]
