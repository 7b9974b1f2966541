"""Type-0 configuration space with a capability chain (PCI 3.0 chapter 6).

Every DW of the 256-byte space is described by three masks, chosen in Python
at build time:

    init   its value after reset
    rw     bits the host may write          (everything else reads as init)
    rw1c   bits the host clears by writing 1 (set by the device's hardware)

Read-only DWs become constants; the rest are registers. BARs are sized the
standard way with no special case: the address bits below the BAR's size are
read-only zero, so writing all ones reads back ``~(size - 1)``.

    0x00 +----------------------------------------------------------+
         | type-0 header (vendor, device, command, status, BAR0/1)  |
    0x40 +----------------------------------------------------------+
         | capability chain: each capability is laid out here in the |
         | order given, each pointing at the next                    |
         +----------------------------------------------------------+
"""
import dataclasses

from amaranth.hdl import Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .. import spec
from .register_bus import RegisterBusSignature, byte_mask

__all__ = ["Dword", "Capability", "ConfigHeader", "ConfigSpace"]

CAP_CHAIN_START = 0x40
_CFG_ADDR_WIDTH = 6                   # 64 DWs


@dataclasses.dataclass
class Dword:
    init: int = 0
    rw: int = 0
    rw1c: int = 0

    def __post_init__(self):
        # plain ints: an IntFlag would become a constant of its enum's width,
        # which drops the bits of multi-bit fields such as MRRS (14:12)
        self.init, self.rw, self.rw1c = int(self.init), int(self.rw), int(self.rw1c)


class Capability:
    """A capability structure: ``size`` bytes, DW aligned.

    Subclasses fill ``dwords(next_ptr)`` with their DWs, the first of which
    starts with the capability ID and the next pointer. ``offset`` is set when
    the chain is laid out.
    """
    cap_id: int
    size: int
    offset: int = None

    def dwords(self, next_ptr):
        raise NotImplementedError

    @staticmethod
    def header(cap_id, next_ptr, upper16=0):
        return cap_id | next_ptr << 8 | upper16 << 16


@dataclasses.dataclass
class ConfigHeader:
    """The identification part of the header and BAR0's size."""
    vendor_id: int
    device_id: int
    revision: int
    class_code: int
    subsystem_vendor_id: int
    subsystem_id: int
    bar0_size: int            # bytes; BAR0/1 form one 64-bit memory BAR

    def dwords(self, cap_ptr):
        if self.bar0_size & (self.bar0_size - 1) or self.bar0_size < 4096:
            raise ValueError(f"BAR0 size {self.bar0_size:#x} must be a power of two >= 4 KiB")
        command_rw = (spec.PciCommand.MEMORY_SPACE | spec.PciCommand.BUS_MASTER
                      | spec.PciCommand.PARITY_ERROR_RESPONSE | spec.PciCommand.SERR_ENABLE
                      | spec.PciCommand.INTX_DISABLE)
        status_rw1c = (spec.PciStatus.SIGNALED_TARGET_ABORT | spec.PciStatus.RECEIVED_TARGET_ABORT
                       | spec.PciStatus.RECEIVED_MASTER_ABORT | spec.PciStatus.SIGNALED_SYSTEM_ERROR
                       | spec.PciStatus.DETECTED_PARITY_ERROR)
        dws = [Dword() for _ in range(CAP_CHAIN_START // 4)]
        dws[0] = Dword(self.vendor_id | self.device_id << 16)
        dws[1] = Dword(init=spec.PciStatus.CAP_LIST << 16, rw=command_rw, rw1c=status_rw1c << 16)
        dws[2] = Dword(self.revision | self.class_code << 8)
        dws[3] = Dword(rw=0xFF)                                  # cache line size: RW, unused
        dws[4] = Dword(init=spec.PciBar.MEM_TYPE_64, rw=~(self.bar0_size - 1) & 0xFFFFFFF0)
        dws[5] = Dword(rw=0xFFFFFFFF)                            # BAR0's upper half
        dws[11] = Dword(self.subsystem_vendor_id | self.subsystem_id << 16)
        dws[13] = Dword(cap_ptr)
        dws[15] = Dword(rw=0xFF)                                 # interrupt line; pin 0: no INTx
        return dws


def layout(header, capabilities):
    """Place the capabilities from 0x40 on; return the 64 DW descriptions."""
    offset = CAP_CHAIN_START
    for cap in capabilities:
        if cap.size % 4:
            raise ValueError(f"{type(cap).__name__} size {cap.size} is not DW aligned")
        cap.offset = offset
        offset += cap.size
    if offset > spec.PCI_CFG_SPACE_SIZE:
        raise ValueError(f"capabilities end at {offset:#x}, past the config space")
    dws = header.dwords(capabilities[0].offset if capabilities else 0)
    dws += [Dword() for _ in range(spec.PCI_CFG_DWORDS - len(dws))]
    for index, cap in enumerate(capabilities):
        next_ptr = capabilities[index + 1].offset if index + 1 < len(capabilities) else 0
        for n, dw in enumerate(cap.dwords(next_ptr)):
            dws[cap.offset // 4 + n] = dw
    return dws


class ConfigSpace(wiring.Component):
    """The 256-byte type-0 configuration space.

    Ports:
        bus:         In(RegisterBusSignature(6)), config requests from the completer.
        ur_detected: In(1), pulse: sets Device Status.UR_DETECTED (PCIe cap).
        correctable_error: In(1), pulse: the link found a correctable error
                     (PCIe Base 4.0 section 6.2); sets Device Status.Correctable
                     Error Detected (PCIe cap).
        poisoned:    In(1), pulse: a poisoned TLP was received; sets Status.
        received_ur: In(1), pulse: a completion to our request came back UR;
                     sets Status.Received Master Abort (PCIe Base 4.0 7.5.1.1.4).
        received_ca: In(1), pulse: ... came back CA; sets Status.Received Target Abort.
                     DETECTED_PARITY_ERROR and Device Status.NONFATAL_ERR_DETECTED
                     (its default severity, PCIe 4.0 section 6.2.7).
        command:     Out(16), the Command register.
        bar0:        Out(64), BAR0/1's base address (the size bits read zero).
        devctl:      Out(16), PCIe Device Control (MPS, MRRS).
        msix_control: Out(16), MSI-X Message Control (enable, function mask).
        window_bar/window_offset/window_length: Out, the virtio PCI cfg access
                     capability's fields (virtio 1.2 section 4.1.4.9).

    ``window_data_dw`` (an int) is the DW index of that capability's
    pci_cfg_data, which the completer serves from the BAR instead of here.
    """
    bus: In(RegisterBusSignature(_CFG_ADDR_WIDTH))
    ur_detected: In(1)
    correctable_error: In(1)
    poisoned: In(1)
    received_ur: In(1)
    received_ca: In(1)
    command: Out(16)
    bar0: Out(64)
    devctl: Out(16)
    msix_control: Out(16)
    window_bar: Out(8)
    window_offset: Out(32)
    window_length: Out(32)

    def __init__(self, header, capabilities, *, pcie_cap, msix_cap, cfg_access_cap):
        self.dws = layout(header, capabilities)
        self._pcie_dw = pcie_cap.offset // 4
        self._msix_dw = msix_cap.offset // 4
        self._window_dw = cfg_access_cap.offset // 4
        self.window_data_dw = self._window_dw + spec.VirtioPciCap.PCI_CFG_DATA // 4
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        regs = []
        for index, dw in enumerate(self.dws):
            if dw.rw or dw.rw1c:
                reg = Signal(32, init=dw.init, name=f"cfg_{index * 4:02x}")
                regs.append(reg)
            else:
                regs.append(Const(dw.init, 32))

        # Bits the device's hardware sets (RW1C status bits); a set wins over
        # the host's clear in the same cycle, and the host's write still lands.
        devctl_dw = self._pcie_dw + spec.PcieCap.DEVCTL // 4
        # Device Status logs errors whether or not Device Control enables their
        # reporting (PCIe Base 4.0 section 7.5.3.5); no error message (ERR_COR
        # etc., section 6.2.5) is sent, so the enables only read back.
        devsta_set = (self.ur_detected.replicate(32) & (spec.PcieDevSta.UR_DETECTED << 16)
                      | self.correctable_error.replicate(32)
                      & (spec.PcieDevSta.CORR_ERR_DETECTED << 16)
                      | self.poisoned.replicate(32) & (spec.PcieDevSta.NONFATAL_ERR_DETECTED << 16))
        status_set = (self.poisoned.replicate(32) & (spec.PciStatus.DETECTED_PARITY_ERROR << 16)
                      | self.received_ur.replicate(32) & (spec.PciStatus.RECEIVED_MASTER_ABORT << 16)
                      | self.received_ca.replicate(32) & (spec.PciStatus.RECEIVED_TARGET_ABORT << 16))
        hw_set = {devctl_dw: devsta_set, spec.PciCfg.COMMAND // 4: status_set}

        # Host writes.
        write_mask = byte_mask(self.bus.be)
        for index, dw in enumerate(self.dws):
            if not (dw.rw or dw.rw1c):
                continue
            reg = regs[index]
            written = self.bus.w_stb & (self.bus.addr == index)
            rw = write_mask & dw.rw & written.replicate(32)
            clear = write_mask & self.bus.w_data & dw.rw1c & written.replicate(32)
            m.d.sync += reg.eq((reg & ~rw & ~clear) | (self.bus.w_data & rw) | hw_set.get(index, 0))

        # Host reads: one cycle after the strobe.
        with m.If(self.bus.r_stb):
            with m.Switch(self.bus.addr):
                for index, reg in enumerate(regs):
                    with m.Case(index):
                        m.d.sync += self.bus.r_data.eq(reg)
                with m.Default():
                    m.d.sync += self.bus.r_data.eq(0)

        bar_lo, bar_hi = regs[spec.PciCfg.BAR0 // 4], regs[spec.PciCfg.BAR0 // 4 + 1]
        window = self._window_dw
        m.d.comb += [
            self.command.eq(regs[spec.PciCfg.COMMAND // 4][:16]),
            self.bar0.eq(bar_hi.as_unsigned() << 32 | (bar_lo & 0xFFFFFFF0)),
            self.devctl.eq(regs[devctl_dw][:16]),
            self.msix_control.eq(regs[self._msix_dw][16:32]),
            self.window_bar.eq(regs[window + spec.VirtioPciCap.BAR // 4][:8]),
            self.window_offset.eq(regs[window + spec.VirtioPciCap.OFFSET // 4]),
            self.window_length.eq(regs[window + spec.VirtioPciCap.LENGTH // 4]),
        ]
        return m
