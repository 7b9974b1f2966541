"""virtio over PCI, modern (non-transitional) interface: virtio 1.2 section 4.1.

`VirtioPciModernDevice` finds the virtio structures through the vendor-specific
PCI capabilities (section 4.1.4), maps them as bounds-checked Regions, and
offers the operations of the common configuration structure (section
4.1.4.3): features, device status, reset, queue setup and notification
addresses, plus device-specific configuration reads that honour
config_generation (section 2.5.1 / 4.1.4.3.1).
"""
from __future__ import annotations

import dataclasses
import logging

from hdl import spec
from hdl.spec import VirtioCommonCfg as Common
from hdl.spec import VirtioPciCap as CapField
from hdl.spec import VirtioPciCapType, VirtioStatus

from .transport import PCI_STD_NUM_BARS, Region, Transport

log = logging.getLogger("virtio_net.pci")

# Capability list walk (PCI 3.0 section 6.7): capabilities live after the
# type-0 header, at dword-aligned offsets; Linux gives up after 48 entries.
PCI_CAP_LIST_START = 0x40
PCI_CAP_MAX_COUNT = 48

# Modern virtio device IDs: 0x1040 + device type (section 4.1.2.1); the range
# stops at 0x107F.
VIRTIO_PCI_DEVICE_ID_LAST = 0x107F

# Minimum lengths accepted for each structure. The common configuration must
# reach at least the end of queue_device (the layout of virtio 1.0); the
# queue_notify_data / queue_reset fields after it are optional. ISR status is
# one byte, a notification is a 16-bit write (section 4.1.4.4).
COMMON_CFG_MIN_LENGTH = Common.QUEUE_NOTIFY_DATA
ISR_CFG_MIN_LENGTH = 1
NOTIFY_CFG_MIN_LENGTH = 2
DEVICE_CFG_MIN_LENGTH = 0

# Required alignment of each structure's offset inside its BAR (the natural
# alignment of its widest naturally-accessed field).
COMMON_CFG_ALIGN = 4
ISR_CFG_ALIGN = 1
NOTIFY_CFG_ALIGN = 2
DEVICE_CFG_ALIGN = 4

QUEUE_NOTIFY_SIZE = 2               # bytes of a notification write (16-bit queue index)

# Bounded polls: a device that never finishes its reset, or a configuration
# that keeps changing, must not hang the driver (or the simulation).
RESET_POLL_LIMIT = 1000
CONFIG_GENERATION_RETRIES = 100

U32_MASK = 0xFFFF_FFFF


class VirtioPciError(Exception):
    """The PCI function is not a usable modern virtio device, or misbehaves."""


class VirtioPciVectorError(VirtioPciError):
    """The device could not map an MSI-X vector (it reads back NO_VECTOR,
    section 4.1.5.1.2.1): the driver may try again with fewer vectors."""


@dataclasses.dataclass(frozen=True)
class VirtioCapability:
    """One struct virtio_pci_cap found in configuration space (section 4.1.4)."""
    pos: int                         # offset of the capability in config space
    cfg_type: VirtioPciCapType
    bar: int
    id: int
    offset: int                      # of the structure inside the BAR
    length: int

    def describe(self) -> str:
        return (f"{self.cfg_type.name} capability at config offset {self.pos:#04x} "
                f"(BAR{self.bar}, offset {self.offset:#x}, length {self.length:#x})")


class VirtioPciModernDevice:
    """A modern virtio PCI function, reached through a Transport."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.vendor_id: int | None = None
        self.device_id: int | None = None
        self.revision: int | None = None
        self.capabilities: list[tuple[int, int]] = []     # (pos, cap id)
        self.virtio_caps: dict[VirtioPciCapType, VirtioCapability] = {}
        self.common: Region | None = None
        self.isr: Region | None = None
        self.notify: Region | None = None
        self.device: Region | None = None
        self.notify_off_multiplier = 0
        self._notify_offsets: dict[int, int] = {}          # queue index -> offset in notify

    # --- discovery (section 4.1.4) --------------------------------------------

    @property
    def virtio_device_type(self) -> int:
        """Device type (section 5): the PCI device ID minus 0x1040."""
        return self.device_id - spec.VIRTIO_PCI_DEVICE_ID_BASE

    async def probe(self) -> None:
        """Identify the function, find and map the virtio structures, enable it."""
        t = self.transport
        self.vendor_id = await t.config_read(spec.PciCfg.VENDOR_ID, 2)
        self.device_id = await t.config_read(spec.PciCfg.DEVICE_ID, 2)
        self.revision = await t.config_read(spec.PciCfg.REVISION_ID, 1)
        if self.vendor_id != spec.VIRTIO_PCI_VENDOR_ID:
            raise VirtioPciError(
                f"vendor ID {self.vendor_id:#06x} is not virtio's "
                f"{spec.VIRTIO_PCI_VENDOR_ID:#06x}")
        if not spec.VIRTIO_PCI_DEVICE_ID_BASE <= self.device_id <= VIRTIO_PCI_DEVICE_ID_LAST:
            raise VirtioPciError(
                f"device ID {self.device_id:#06x} is not a modern virtio device "
                f"({spec.VIRTIO_PCI_DEVICE_ID_BASE:#06x}..{VIRTIO_PCI_DEVICE_ID_LAST:#06x}); "
                f"transitional and legacy devices are not supported")
        log.info("virtio PCI device %04x:%04x rev %d", self.vendor_id,
                 self.device_id, self.revision)

        self.capabilities = await self._walk_capabilities()
        self.virtio_caps = await self._find_virtio_capabilities()

        missing = [ct.name for ct in (VirtioPciCapType.COMMON_CFG, VirtioPciCapType.ISR_CFG,
                                      VirtioPciCapType.NOTIFY_CFG, VirtioPciCapType.DEVICE_CFG)
                   if ct not in self.virtio_caps]
        if missing:
            raise VirtioPciError(
                "missing virtio capabilities (with a present BAR): " + ", ".join(missing))

        self.common = self._map(VirtioPciCapType.COMMON_CFG, COMMON_CFG_MIN_LENGTH,
                                COMMON_CFG_ALIGN)
        self.isr = self._map(VirtioPciCapType.ISR_CFG, ISR_CFG_MIN_LENGTH, ISR_CFG_ALIGN)
        self.notify = self._map(VirtioPciCapType.NOTIFY_CFG, NOTIFY_CFG_MIN_LENGTH,
                                NOTIFY_CFG_ALIGN)
        self.device = self._map(VirtioPciCapType.DEVICE_CFG, DEVICE_CFG_MIN_LENGTH,
                                DEVICE_CFG_ALIGN)
        self.notify_off_multiplier = await self._read_notify_off_multiplier()
        await self._enable_device()

    async def _walk_capabilities(self) -> list[tuple[int, int]]:
        """Follow the capability list from the Capabilities Pointer (PCI 3.0 section 6.7)."""
        t = self.transport
        status = spec.PciStatus(await t.config_read(spec.PciCfg.STATUS, 2))
        if not status & spec.PciStatus.CAP_LIST:
            raise VirtioPciError("PCI status has no capability list (CAP_LIST clear)")
        caps: list[tuple[int, int]] = []
        pos = await t.config_read(spec.PciCfg.CAPABILITIES_PTR, 1)
        where = "Capabilities Pointer"
        while pos:
            if pos < PCI_CAP_LIST_START or pos % 4 or pos + 2 > spec.PCI_CFG_SPACE_SIZE:
                raise VirtioPciError(
                    f"{where} {pos:#04x} is invalid: a capability must start at a "
                    f"dword-aligned offset in {PCI_CAP_LIST_START:#04x}.."
                    f"{spec.PCI_CFG_SPACE_SIZE - 4:#04x}")
            if len(caps) == PCI_CAP_MAX_COUNT:
                raise VirtioPciError(
                    f"capability list has more than {PCI_CAP_MAX_COUNT} entries, "
                    f"probably a loop (the {where} is {pos:#04x})")
            cap_id = await t.config_read(pos, 1)
            caps.append((pos, cap_id))
            where = f"next pointer of the capability at {pos:#04x}"
            pos = await t.config_read(pos + CapField.CAP_NEXT, 1)
        log.debug("capabilities: %s", ", ".join(f"{p:#04x}:{i:#04x}" for p, i in caps))
        return caps

    async def _find_virtio_capabilities(self) -> dict[VirtioPciCapType, VirtioCapability]:
        """First vendor capability of each cfg_type whose BAR exists (section 4.1.4).

        A driver must skip capabilities naming a BAR it does not know and use
        the first usable one of each type.
        """
        t = self.transport
        found: dict[VirtioPciCapType, VirtioCapability] = {}
        for pos, cap_id in self.capabilities:
            if cap_id != spec.PciCapId.VENDOR_SPECIFIC:
                continue
            cap_len = await t.config_read(pos + CapField.CAP_LEN, 1)
            if cap_len < spec.VIRTIO_PCI_CAP_SIZE or pos + cap_len > spec.PCI_CFG_SPACE_SIZE:
                raise VirtioPciError(
                    f"vendor capability at {pos:#04x} has cap_len {cap_len}, "
                    f"below {spec.VIRTIO_PCI_CAP_SIZE} or past the end of config space")
            raw_type = await t.config_read(pos + CapField.CFG_TYPE, 1)
            try:
                cfg_type = VirtioPciCapType(raw_type)
            except ValueError:
                log.debug("skipping vendor capability at %#04x with cfg_type %d",
                          pos, raw_type)
                continue
            if cfg_type in found:
                continue
            bar = await t.config_read(pos + CapField.BAR, 1)
            if bar >= PCI_STD_NUM_BARS or t.bar_size(bar) == 0:
                log.debug("skipping %s capability at %#04x: BAR%d absent",
                          cfg_type.name, pos, bar)
                continue
            if cfg_type == VirtioPciCapType.NOTIFY_CFG and cap_len < spec.VIRTIO_PCI_NOTIFY_CAP_SIZE:
                raise VirtioPciError(
                    f"NOTIFY_CFG capability at {pos:#04x} has cap_len {cap_len}, "
                    f"below {spec.VIRTIO_PCI_NOTIFY_CAP_SIZE}")
            found[cfg_type] = VirtioCapability(
                pos=pos, cfg_type=cfg_type, bar=bar,
                id=await t.config_read(pos + CapField.ID, 1),
                offset=await t.config_read(pos + CapField.OFFSET, 4),
                length=await t.config_read(pos + CapField.LENGTH, 4))
            log.debug("found %s", found[cfg_type].describe())
        return found

    def _map(self, cfg_type: VirtioPciCapType, min_length: int, align: int) -> Region:
        """Check a structure lies inside its BAR and return it as a Region."""
        cap = self.virtio_caps[cfg_type]
        bar_size = self.transport.bar_size(cap.bar)
        if cap.length < min_length:
            raise VirtioPciError(
                f"{cap.describe()}: length below the minimum {min_length:#x}")
        if cap.offset % align:
            raise VirtioPciError(
                f"{cap.describe()}: offset not aligned to {align} bytes")
        if cap.offset + cap.length > bar_size:
            raise VirtioPciError(
                f"{cap.describe()}: offset + length = {cap.offset + cap.length:#x} "
                f"exceeds BAR{cap.bar} size {bar_size:#x}")
        return Region(self.transport, self.transport.bar_address(cap.bar),
                      cap.offset, cap.length, name=cfg_type.name.lower())

    async def _read_notify_off_multiplier(self) -> int:
        """notify_off_multiplier of struct virtio_pci_notify_cap (section 4.1.4.4)."""
        cap = self.virtio_caps[VirtioPciCapType.NOTIFY_CFG]
        mult = await self.transport.config_read(cap.pos + CapField.NOTIFY_OFF_MULTIPLIER, 4)
        if mult and (mult & (mult - 1) or mult % 2):
            raise VirtioPciError(
                f"notify_off_multiplier {mult} is neither 0 nor an even power of 2")
        return mult

    async def _enable_device(self) -> None:
        """Turn on memory decoding and bus mastering (pci_enable_device + pci_set_master)."""
        t = self.transport
        command = spec.PciCommand(await t.config_read(spec.PciCfg.COMMAND, 2))
        wanted = command | spec.PciCommand.MEMORY_SPACE | spec.PciCommand.BUS_MASTER
        if wanted != command:
            await t.config_write(spec.PciCfg.COMMAND, 2, int(wanted))

    # --- features (section 2.2, 4.1.4.3) ------------------------------------------

    async def get_features(self) -> int:
        """The 64 feature bits offered by the device."""
        await self.common.write32(Common.DEVICE_FEATURE_SELECT, 0)
        low = await self.common.read32(Common.DEVICE_FEATURE)
        await self.common.write32(Common.DEVICE_FEATURE_SELECT, 1)
        high = await self.common.read32(Common.DEVICE_FEATURE)
        return high << 32 | low

    async def set_features(self, features: int) -> None:
        """Write the 64 feature bits accepted by the driver."""
        await self.common.write32(Common.DRIVER_FEATURE_SELECT, 0)
        await self.common.write32(Common.DRIVER_FEATURE, features & U32_MASK)
        await self.common.write32(Common.DRIVER_FEATURE_SELECT, 1)
        await self.common.write32(Common.DRIVER_FEATURE, features >> 32 & U32_MASK)

    # --- device status (section 2.1, 3.1) -------------------------------------------

    async def get_status(self) -> VirtioStatus:
        return VirtioStatus(await self.common.read8(Common.DEVICE_STATUS))

    async def set_status(self, status: VirtioStatus) -> None:
        """Write device_status; writing 0 is a reset, use reset() for that."""
        if not status:
            raise ValueError("set_status(0) would reset the device: call reset()")
        await self.common.write8(Common.DEVICE_STATUS, int(status))

    async def add_status(self, bits: VirtioStatus) -> VirtioStatus:
        """Set more status bits, keeping those already set; return the new status."""
        status = await self.get_status() | bits
        await self.set_status(status)
        return status

    async def reset(self) -> None:
        """Write 0 to device_status and wait until it reads 0 (section 4.1.4.3.2)."""
        await self.common.write8(Common.DEVICE_STATUS, 0)
        for _ in range(RESET_POLL_LIMIT):
            if await self.common.read8(Common.DEVICE_STATUS) == 0:
                self._notify_offsets.clear()
                return
        raise VirtioPciError(
            f"device_status still not 0 after reset ({RESET_POLL_LIMIT} reads)")

    async def config_generation(self) -> int:
        return await self.common.read8(Common.CONFIG_GENERATION)

    # --- virtqueues (section 4.1.4.3, 4.1.5.1.3) ----------------------------------

    async def get_num_queues(self) -> int:
        """num_queues: the most virtqueues the device supports."""
        return await self.common.read16(Common.NUM_QUEUES)

    async def _select_queue(self, index: int) -> None:
        num_queues = await self.get_num_queues()
        if not 0 <= index < num_queues:
            raise VirtioPciError(
                f"queue {index} does not exist: the device has num_queues {num_queues}")
        await self.common.write16(Common.QUEUE_SELECT, index)

    async def get_queue_max_size(self, index: int) -> int:
        """queue_size as read after reset: the device's maximum, 0 if the queue is absent."""
        await self._select_queue(index)
        return await self.common.read16(Common.QUEUE_SIZE)

    async def setup_queue(self, index: int, size: int, desc: int, driver: int,
                          device: int, msix_vector: int = spec.VIRTIO_MSI_NO_VECTOR) -> None:
        """Program one virtqueue's size, ring addresses and MSI-X vector (section 4.1.5.1.3).

        `desc`, `driver` and `device` are the bus addresses of the Descriptor
        Area, Driver Area and Device Area. The queue is not enabled here.
        """
        await self._select_queue(index)
        max_size = await self.common.read16(Common.QUEUE_SIZE)
        if max_size == 0:
            raise VirtioPciError(f"queue {index} is not available (queue_size reads 0)")
        if await self.common.read16(Common.QUEUE_ENABLE):
            raise VirtioPciError(f"queue {index} is already enabled")
        if not 0 < size <= max_size:
            raise VirtioPciError(
                f"queue {index}: size {size} outside 1..{max_size} (the device maximum)")

        notify_off = await self.common.read16(Common.QUEUE_NOTIFY_OFF)
        notify_offset = notify_off * self.notify_off_multiplier
        if notify_offset + QUEUE_NOTIFY_SIZE > self.notify.length:
            raise VirtioPciError(
                f"queue {index}: queue_notify_off {notify_off} * multiplier "
                f"{self.notify_off_multiplier} = {notify_offset:#x} is outside the "
                f"notification structure (length {self.notify.length:#x})")

        await self.common.write16(Common.QUEUE_SIZE, size)
        await self._write64_twopart(Common.QUEUE_DESC, desc)
        await self._write64_twopart(Common.QUEUE_DRIVER, driver)
        await self._write64_twopart(Common.QUEUE_DEVICE, device)
        await self.common.write16(Common.QUEUE_MSIX_VECTOR, msix_vector)
        readback = await self.common.read16(Common.QUEUE_MSIX_VECTOR)
        if readback != msix_vector:
            if msix_vector != spec.VIRTIO_MSI_NO_VECTOR and readback == spec.VIRTIO_MSI_NO_VECTOR:
                raise VirtioPciVectorError(
                    f"queue {index}: the device could not map MSI-X vector {msix_vector} "
                    f"(queue_msix_vector reads back NO_VECTOR)")
            raise VirtioPciError(
                f"queue {index}: queue_msix_vector reads back {readback:#06x}, "
                f"{msix_vector:#06x} was written")
        self._notify_offsets[index] = notify_offset
        log.debug("queue %d: size %d desc %#x driver %#x device %#x vector %#x notify +%#x",
                  index, size, desc, driver, device, msix_vector, notify_offset)

    async def _write64_twopart(self, offset: int, value: int) -> None:
        """64-bit common configuration field as two 32-bit writes, low half first."""
        await self.common.write32(offset, value & U32_MASK)
        await self.common.write32(offset + 4, value >> 32 & U32_MASK)

    async def enable_queue(self, index: int) -> None:
        """Set queue_enable of a queue set up by setup_queue()."""
        if index not in self._notify_offsets:
            raise VirtioPciError(f"queue {index} was not set up before being enabled")
        await self._select_queue(index)
        await self.common.write16(Common.QUEUE_ENABLE, 1)
        if await self.common.read16(Common.QUEUE_ENABLE) != 1:
            raise VirtioPciError(f"queue {index}: queue_enable does not read back 1")

    def notify_address(self, index: int) -> int:
        """Bus address the driver writes the queue index to (section 4.1.4.4)."""
        try:
            return self.notify.address + self._notify_offsets[index]
        except KeyError:
            raise VirtioPciError(f"queue {index} is not set up: no notification address")

    async def set_config_vector(self, vector: int) -> None:
        """Program config_msix_vector and check the device accepted it (section 4.1.5.1.2)."""
        await self.common.write16(Common.CONFIG_MSIX_VECTOR, vector)
        readback = await self.common.read16(Common.CONFIG_MSIX_VECTOR)
        if readback != vector:
            if vector != spec.VIRTIO_MSI_NO_VECTOR and readback == spec.VIRTIO_MSI_NO_VECTOR:
                raise VirtioPciVectorError(
                    f"the device could not map MSI-X vector {vector} for configuration "
                    f"changes (config_msix_vector reads back NO_VECTOR)")
            raise VirtioPciError(
                f"config_msix_vector reads back {readback:#06x}, {vector:#06x} was written")

    async def read_isr(self) -> spec.VirtioIsr:
        """Read (and so clear) the ISR status (section 4.1.4.5)."""
        return spec.VirtioIsr(await self.isr.read8(0))

    # --- device-specific configuration (section 4.1.4.6, 2.5) ------------------------

    async def config_read8(self, offset: int) -> int:
        return await self.device.read8(offset)

    async def config_read16(self, offset: int) -> int:
        return await self.device.read16(offset)

    async def config_read32(self, offset: int) -> int:
        return await self.device.read32(offset)

    async def read_config_bytes(self, offset: int, n: int) -> bytes:
        """Read `n` bytes of device configuration as one consistent snapshot.

        The bytes are read one by one between two reads of config_generation,
        and read again while the generation changed in between (section 2.5.1).
        """
        for _ in range(CONFIG_GENERATION_RETRIES):
            before = await self.config_generation()
            data = bytes([await self.device.read8(offset + i) for i in range(n)])
            if await self.config_generation() == before:
                return data
        raise VirtioPciError(
            f"device configuration kept changing: config_generation differed in "
            f"{CONFIG_GENERATION_RETRIES} consecutive reads of {n} bytes at {offset:#x}")
