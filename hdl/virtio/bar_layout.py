"""Where each virtio structure sits in BAR0 (the capabilities point here).

    BAR0 (64-bit memory, 32 KiB)
    0x0000  common configuration   struct virtio_pci_common_cfg
    0x1000  ISR status
    0x2000  device configuration   struct virtio_net_config
    0x3000  notifications          one DW per queue
    0x4000  MSI-X table            16 bytes per vector
    0x5000  MSI-X PBA
    0x6000  statistics             device-specific counters (hdl/net/counters.py)

Each structure starts on its own 4 KiB page, as a hypervisor mapping them
separately would want.
"""
import dataclasses

from .. import spec

__all__ = ["BarLayout"]

PAGE = 0x1000


@dataclasses.dataclass(frozen=True)
class BarLayout:
    bar: int = 0
    size: int = 0x8000
    common: int = 0x0000
    isr: int = 0x1000
    device: int = 0x2000
    notify: int = 0x3000
    msix_table: int = 0x4000
    msix_pba: int = 0x5000
    stats: int = spec.STATS_BAR_OFFSET

    @property
    def addr_width(self):
        """DW address bits of the whole BAR."""
        return (self.size // 4 - 1).bit_length()
