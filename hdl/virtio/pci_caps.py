"""virtio vendor-specific PCI capabilities (virtio 1.2 section 4.1.4).

struct virtio_pci_cap:

    +0x00 | cfg_type | cap_len | cap_next | cap_vndr 0x09 |
    +0x04 | padding[2]         | id       | bar           |
    +0x08 | offset (le32)                                 |
    +0x0C | length (le32)                                 |

The notify capability appends notify_off_multiplier (le32, +0x10); the PCI
configuration access capability appends pci_cfg_data[4] (+0x10), a window
into the BAR selected by its own bar/offset/length fields (section 4.1.4.9).
"""
from .. import spec
from ..pcie.config_space import Capability, Dword

__all__ = ["VirtioPciCapability", "VirtioNotifyCapability", "VirtioPciCfgCapability"]


class VirtioPciCapability(Capability):
    cap_id = spec.PciCapId.VENDOR_SPECIFIC
    size = spec.VIRTIO_PCI_CAP_SIZE

    def __init__(self, cfg_type, bar, offset, length):
        self.cfg_type = spec.VirtioPciCapType(cfg_type)
        self.bar = bar
        self.region_offset = offset
        self.length = length

    def dwords(self, next_ptr):
        return [
            Dword(self.header(self.cap_id, next_ptr, self.size | self.cfg_type << 8)),
            Dword(self.bar),
            Dword(self.region_offset),
            Dword(self.length),
        ]


class VirtioNotifyCapability(VirtioPciCapability):
    size = spec.VIRTIO_PCI_NOTIFY_CAP_SIZE

    def __init__(self, bar, offset, length, notify_off_multiplier):
        super().__init__(spec.VirtioPciCapType.NOTIFY_CFG, bar, offset, length)
        self.notify_off_multiplier = notify_off_multiplier

    def dwords(self, next_ptr):
        return super().dwords(next_ptr) + [Dword(self.notify_off_multiplier)]


class VirtioPciCfgCapability(VirtioPciCapability):
    """The driver writes bar/offset/length, then reads or writes pci_cfg_data."""
    size = spec.VIRTIO_PCI_CFG_CAP_SIZE

    def __init__(self):
        super().__init__(spec.VirtioPciCapType.PCI_CFG, bar=0, offset=0, length=0)

    def dwords(self, next_ptr):
        head, bar, offset, length = super().dwords(next_ptr)
        return [
            head,
            Dword(rw=0xFF),          # bar
            Dword(rw=0xFFFFFFFF),    # offset
            Dword(rw=0xFFFFFFFF),    # length
            Dword(),                 # pci_cfg_data: served from the BAR by the completer
        ]
