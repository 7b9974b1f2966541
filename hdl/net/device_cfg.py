"""virtio-net device configuration, struct virtio_net_config (virtio 1.2 section 5.1.4).

    +0x00 | mac[3] mac[2] mac[1] mac[0]                    |
    +0x04 | status (le16)           | mac[5] mac[4]        |
    +0x08 | mtu (le16)              | max_virtqueue_pairs  |
    +0x0C | speed (le32): 0 here, SPEED_DUPLEX not offered |
    +0x10 | duplex, rss_*: 0 here                          |

``status`` reports LINK_UP from the ``link_up`` input. A change of it is a
configuration change: ``changed`` pulses so that config_generation moves and
the driver is told (ISR bit 1, config MSI-X vector).
"""
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .. import spec
from ..pcie.register_bus import RegisterBusSignature

__all__ = ["NetDeviceConfig", "DEVICE_CFG_ADDR_WIDTH"]

DEVICE_CFG_ADDR_WIDTH = 3          # 8 DWs cover the 24-byte structure


class NetDeviceConfig(wiring.Component):
    """Ports:
        bus:     In(RegisterBusSignature), the device cfg window (read only).
        link_up: In(1), the wire side's link state.
        changed: Out(1), pulse when a field the driver reads changed.
    """
    bus: In(RegisterBusSignature(DEVICE_CFG_ADDR_WIDTH))
    link_up: In(1)
    changed: Out(1)

    def __init__(self, mac, max_pairs, mtu):
        if len(mac) != spec.ETH_ALEN:
            raise ValueError(f"MAC must be {spec.ETH_ALEN} bytes, got {len(mac)}")
        if not 1 <= max_pairs <= 0x8000:
            raise ValueError(f"max_virtqueue_pairs {max_pairs} out of range 1..0x8000")
        if not spec.ETH_MIN_MTU <= mtu <= spec.VIRTIO_NET_MAX_MTU:
            raise ValueError(f"MTU {mtu} out of range {spec.ETH_MIN_MTU}..{spec.VIRTIO_NET_MAX_MTU}")
        self.mac = bytes(mac)
        self.max_pairs = max_pairs
        self.mtu = mtu
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        link = Signal()
        m.d.sync += link.eq(self.link_up)
        m.d.comb += self.changed.eq(link != self.link_up)
        status = link * spec.VirtioNetS.LINK_UP
        mac = int.from_bytes(self.mac, "little")
        dwords = {
            0: mac & 0xFFFFFFFF,
            1: (mac >> 32) | status << 16,
            2: self.max_pairs | self.mtu << 16,
        }
        with m.If(self.bus.r_stb):
            m.d.sync += self.bus.r_data.eq(0)
            for index, value in dwords.items():
                with m.If(self.bus.addr == index):
                    m.d.sync += self.bus.r_data.eq(value)
        return m
