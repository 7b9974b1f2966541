"""PCI Express capability of an endpoint (PCIe Base 4.0 section 7.5.3).

    +0x00  | PCIe Capabilities (v2, endpoint) | next ptr | ID 0x10 |
    +0x04  | Device Capabilities: MPS supported                    |
    +0x08  | Device Status (RW1C)       | Device Control (RW)      |
    +0x0C  | Link Capabilities: 2.5 GT/s, x1                       |
    +0x10  | Link Status                | Link Control             |
    +0x14  | Slot / Root registers: not implemented (zero)         |
    +0x24  | Device Capabilities 2 / Control 2                     |
    +0x2C  | Link Capabilities 2: 2.5 GT/s supported               |
    +0x30  | Link Status 2              | Link Control 2           |
    +0x38  | Slot 2 registers (zero)                               |
"""
from .. import spec
from .config_space import Capability, Dword

__all__ = ["PciExpressCapability"]

_LINK_SPEED_2G5 = 1
_LINK_WIDTH_X1 = 1
_DEVCAP_ROLE_BASED_ERROR_REPORTING = 1 << 15
_LNKCTL_RW = 0b11 | 1 << 3 | 1 << 6 | 1 << 7   # ASPM control, RCB, common clock, extended synch
_LNKSTA_SLOT_CLOCK = 1 << 12
_DEFAULT_MRRS_BYTES = 512


class PciExpressCapability(Capability):
    cap_id = spec.PciCapId.PCI_EXPRESS
    size = spec.PCIE_CAP_SIZE

    def __init__(self, max_payload_supported=256):
        self.mps_code = spec.pcie_size_code(max_payload_supported)

    def dwords(self, next_ptr):
        flags = spec.PCIE_CAP_VERSION | spec.PCIE_TYPE_ENDPOINT << 4
        devctl_rw = (spec.PcieDevCtl.CORR_ERR_REPORTING | spec.PcieDevCtl.NONFATAL_ERR_REPORTING
                     | spec.PcieDevCtl.FATAL_ERR_REPORTING | spec.PcieDevCtl.UR_REPORTING
                     | spec.PcieDevCtl.RELAXED_ORDERING | spec.PcieDevCtl.MPS_MASK
                     | spec.PcieDevCtl.NO_SNOOP | spec.PcieDevCtl.MRRS_MASK)
        devctl_init = (spec.PcieDevCtl.RELAXED_ORDERING | spec.PcieDevCtl.NO_SNOOP
                       | spec.pcie_size_code(_DEFAULT_MRRS_BYTES) << spec.PCIE_DEVCTL_MRRS_SHIFT)
        devsta_rw1c = (spec.PcieDevSta.CORR_ERR_DETECTED | spec.PcieDevSta.NONFATAL_ERR_DETECTED
                       | spec.PcieDevSta.FATAL_ERR_DETECTED | spec.PcieDevSta.UR_DETECTED)
        dws = [Dword() for _ in range(self.size // 4)]
        dws[0] = Dword(self.header(self.cap_id, next_ptr, flags))
        dws[spec.PcieCap.DEVCAP // 4] = Dword(self.mps_code | _DEVCAP_ROLE_BASED_ERROR_REPORTING)
        dws[spec.PcieCap.DEVCTL // 4] = Dword(init=devctl_init, rw=devctl_rw, rw1c=devsta_rw1c << 16)
        dws[spec.PcieCap.LNKCAP // 4] = Dword(_LINK_SPEED_2G5 | _LINK_WIDTH_X1 << 4)
        dws[spec.PcieCap.LNKCTL // 4] = Dword(
            init=(_LINK_SPEED_2G5 | _LINK_WIDTH_X1 << 4 | _LNKSTA_SLOT_CLOCK) << 16, rw=_LNKCTL_RW)
        dws[spec.PcieCap.LNKCAP2 // 4] = Dword(1 << _LINK_SPEED_2G5)       # supported speeds vector
        dws[spec.PcieCap.LNKCTL2 // 4] = Dword(init=_LINK_SPEED_2G5, rw=0xF)  # target link speed
        return dws
