"""A behavioural virtio-net PCI function, as a Transport, for testing the driver.

`FakeVirtioNetDevice` models what the driver can observe of the endpoint,
without gateware or simulator:

- a type-0 configuration header with a capability list at 0x40: the common,
  notify, ISR and device configuration capabilities and a PCI configuration
  access capability (virtio 1.2 section 4.1.4), all pointing into BAR0;
- BAR0 holding the common configuration (with per-queue state), the ISR
  status, the virtio-net device configuration and the notification area;
- the device status state machine (section 2.1): reset on writing 0, and
  FEATURES_OK refused when the driver accepted a feature not offered;
- DMA memory made of allocations filled with garbage, so that a driver
  forgetting to zero its rings is noticed.

Driver mistakes the real device could not report (a field accessed with the
wrong width, a status bit cleared without reset, a queue reprogrammed while
enabled...) raise FakeDeviceProtocolError and are kept in `protocol_errors`.
The PCI configuration access capability's window is present but not
functional. Interrupts are not modelled: wait_interrupt always times out.
"""
from __future__ import annotations

import dataclasses

from hdl import spec
from hdl.spec import VirtioCommonCfg as Common
from hdl.spec import VirtioF, VirtioNetCfg, VirtioNetF, VirtioPciCap, VirtioPciCapType
from hdl.spec import VirtioStatus

from .transport import CONFIG_ACCESS_SIZES, MMIO_ACCESS_SIZES, Transport, TransportError

# Where things are in the model. Arbitrary but realistic.
BAR0_ADDRESS = 0xFE00_0000
BAR0_SIZE = 0x4000
COMMON_CFG_OFFSET = 0x0000
ISR_CFG_OFFSET = 0x1000
ISR_CFG_LENGTH = 4
DEVICE_CFG_OFFSET = 0x2000
NOTIFY_CFG_OFFSET = 0x3000
NOTIFY_OFF_MULTIPLIER = 4
DMA_BASE = 0x1000_0000
DMA_GARBAGE = 0xA5

CAP_LIST = (                        # (config offset, cfg_type), in list order
    (0x40, VirtioPciCapType.COMMON_CFG),
    (0x50, VirtioPciCapType.NOTIFY_CFG),
    (0x64, VirtioPciCapType.ISR_CFG),
    (0x74, VirtioPciCapType.DEVICE_CFG),
    (0x84, VirtioPciCapType.PCI_CFG),
)

DEFAULT_DEVICE_FEATURES = int(
    VirtioF.VERSION_1 | VirtioNetF.MAC | VirtioNetF.MTU | VirtioNetF.STATUS
    | VirtioNetF.CTRL_VQ | VirtioNetF.CTRL_RX | VirtioNetF.MQ | VirtioNetF.CSUM
    | VirtioNetF.GUEST_CSUM)
DEFAULT_MAC = bytes.fromhex("525400123456")
SPEED_UNKNOWN = 0xFFFF_FFFF
DUPLEX_UNKNOWN = 0xFF

# Width of each common configuration field (section 4.1.4.3).
COMMON_FIELD_SIZES = {
    Common.DEVICE_FEATURE_SELECT: 4, Common.DEVICE_FEATURE: 4,
    Common.DRIVER_FEATURE_SELECT: 4, Common.DRIVER_FEATURE: 4,
    Common.CONFIG_MSIX_VECTOR: 2, Common.NUM_QUEUES: 2,
    Common.DEVICE_STATUS: 1, Common.CONFIG_GENERATION: 1,
    Common.QUEUE_SELECT: 2, Common.QUEUE_SIZE: 2, Common.QUEUE_MSIX_VECTOR: 2,
    Common.QUEUE_ENABLE: 2, Common.QUEUE_NOTIFY_OFF: 2,
    Common.QUEUE_DESC: 8, Common.QUEUE_DRIVER: 8, Common.QUEUE_DEVICE: 8,
    Common.QUEUE_NOTIFY_DATA: 2, Common.QUEUE_RESET: 2,
}
QUEUE_ADDRESS_FIELDS = {Common.QUEUE_DESC: "desc", Common.QUEUE_DRIVER: "driver",
                        Common.QUEUE_DEVICE: "device"}


class FakeDeviceProtocolError(AssertionError):
    """The driver did something the virtio specification forbids."""


@dataclasses.dataclass
class FakeQueue:
    max_size: int
    size: int = 0
    msix_vector: int = spec.VIRTIO_MSI_NO_VECTOR
    enable: int = 0
    desc: int = 0
    driver: int = 0
    device: int = 0

    def reset(self) -> None:
        self.size = self.max_size
        self.msix_vector = spec.VIRTIO_MSI_NO_VECTOR
        self.enable = self.desc = self.driver = self.device = 0


class FakeVirtioNetDevice(Transport):
    """In-memory virtio-net PCI function (see the module docstring)."""

    def __init__(self, *, features: int = DEFAULT_DEVICE_FEATURES, mac: bytes = DEFAULT_MAC,
                 mtu: int = spec.ETH_DATA_LEN, max_pairs: int = 1, link_up: bool = True,
                 queue_max_size: int = 256, num_queues: int | None = None,
                 msix_vectors: int = 0, refuse_features_ok: bool = False,
                 device_id: int = spec.VIRTIO_NET_PCI_DEVICE_ID) -> None:
        self.features = features
        self.mac = mac
        self.mtu = mtu
        self.max_pairs = max_pairs
        self.link_up = link_up
        self.msix_vectors = msix_vectors
        self.refuse_features_ok = refuse_features_ok
        if num_queues is None:
            num_queues = spec.virtqueue_pairs_to_queues(max_pairs)
        self.queues = [FakeQueue(queue_max_size) for _ in range(num_queues)]
        self.notify_length = NOTIFY_OFF_MULTIPLIER * num_queues

        # Observable history, for tests.
        self.protocol_errors: list[str] = []
        self.status_writes: list[int] = []
        self.reset_count = 0
        self.notifications: list[int] = []
        self.reset_delay_reads = 0          # status reads still non-zero after each reset
        self._reset_reads_left = 0
        self.unstable_generation_reads = 0  # generation reads that bump it first

        self.config = bytearray(spec.PCI_CFG_SPACE_SIZE)
        self._build_config_space(device_id)
        self._allocations: list[tuple[int, bytearray]] = []
        self._dma_next = DMA_BASE
        self.config_generation = 0
        self._reset_state()

    # --- configuration space -------------------------------------------------------

    def poke_config(self, offset: int, size: int, value: int) -> None:
        """Change configuration space behind the driver's back (test set-up)."""
        self.config[offset:offset + size] = value.to_bytes(size, "little")

    def cap_pos(self, cfg_type: VirtioPciCapType) -> int:
        """Config offset of the model's capability of `cfg_type`."""
        return next(pos for pos, ct in CAP_LIST if ct == cfg_type)

    def _build_config_space(self, device_id: int) -> None:
        put = self.poke_config
        put(spec.PciCfg.VENDOR_ID, 2, spec.VIRTIO_PCI_VENDOR_ID)
        put(spec.PciCfg.DEVICE_ID, 2, device_id)
        put(spec.PciCfg.STATUS, 2, spec.PciStatus.CAP_LIST)
        put(spec.PciCfg.REVISION_ID, 1, spec.VIRTIO_PCI_REVISION)
        put(spec.PciCfg.CLASS_PROG, 3, spec.PCI_CLASS_NETWORK_ETHERNET)
        put(spec.PciCfg.BAR0, 4, BAR0_ADDRESS | spec.PciBar.MEM_TYPE_64)
        put(spec.PciCfg.BAR0 + 4, 4, 0)
        put(spec.PciCfg.SUBSYSTEM_VENDOR_ID, 2, spec.VIRTIO_PCI_VENDOR_ID)
        put(spec.PciCfg.SUBSYSTEM_ID, 2, spec.VIRTIO_PCI_SUBSYSTEM_ID)
        put(spec.PciCfg.CAPABILITIES_PTR, 1, CAP_LIST[0][0])
        regions = {
            VirtioPciCapType.COMMON_CFG: (COMMON_CFG_OFFSET, spec.VIRTIO_COMMON_CFG_SIZE),
            VirtioPciCapType.NOTIFY_CFG: (NOTIFY_CFG_OFFSET, self.notify_length),
            VirtioPciCapType.ISR_CFG: (ISR_CFG_OFFSET, ISR_CFG_LENGTH),
            VirtioPciCapType.DEVICE_CFG: (DEVICE_CFG_OFFSET, spec.VIRTIO_NET_CFG_SIZE),
            VirtioPciCapType.PCI_CFG: (0, 0),
        }
        for i, (pos, cfg_type) in enumerate(CAP_LIST):
            next_pos = CAP_LIST[i + 1][0] if i + 1 < len(CAP_LIST) else 0
            cap_len = {VirtioPciCapType.NOTIFY_CFG: spec.VIRTIO_PCI_NOTIFY_CAP_SIZE,
                       VirtioPciCapType.PCI_CFG: spec.VIRTIO_PCI_CFG_CAP_SIZE
                       }.get(cfg_type, spec.VIRTIO_PCI_CAP_SIZE)
            offset, length = regions[cfg_type]
            put(pos + VirtioPciCap.CAP_VNDR, 1, spec.PciCapId.VENDOR_SPECIFIC)
            put(pos + VirtioPciCap.CAP_NEXT, 1, next_pos)
            put(pos + VirtioPciCap.CAP_LEN, 1, cap_len)
            put(pos + VirtioPciCap.CFG_TYPE, 1, cfg_type)
            put(pos + VirtioPciCap.BAR, 1, 0)
            put(pos + VirtioPciCap.OFFSET, 4, offset)
            put(pos + VirtioPciCap.LENGTH, 4, length)
            if cfg_type == VirtioPciCapType.NOTIFY_CFG:
                put(pos + VirtioPciCap.NOTIFY_OFF_MULTIPLIER, 4, NOTIFY_OFF_MULTIPLIER)

    async def config_read(self, offset: int, size: int) -> int:
        self._check_config_access(offset, size)
        return int.from_bytes(self.config[offset:offset + size], "little")

    async def config_write(self, offset: int, size: int, value: int) -> None:
        self._check_config_access(offset, size)
        if offset == spec.PciCfg.COMMAND and size == 2:
            self.poke_config(offset, size, value)
        # Everything else is read-only in this model.

    def _check_config_access(self, offset: int, size: int) -> None:
        if size not in CONFIG_ACCESS_SIZES or offset % size or not (
                0 <= offset <= spec.PCI_CFG_SPACE_SIZE - size):
            raise TransportError(f"bad config access: {size} bytes at {offset:#x}")

    @property
    def command(self) -> spec.PciCommand:
        return spec.PciCommand(int.from_bytes(self.config[spec.PciCfg.COMMAND:][:2], "little"))

    # --- BARs ---------------------------------------------------------------------------

    def bar_address(self, bar: int) -> int:
        return BAR0_ADDRESS if bar == 0 else 0

    def bar_size(self, bar: int) -> int:
        return BAR0_SIZE if bar == 0 else 0

    # --- device state -------------------------------------------------------------------

    def _reset_state(self) -> None:
        self.status = VirtioStatus(0)
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.driver_features = 0
        self.config_msix_vector = spec.VIRTIO_MSI_NO_VECTOR
        self.queue_select = 0
        self.isr = 0
        for q in self.queues:
            q.reset()

    def _violation(self, message: str) -> None:
        self.protocol_errors.append(message)
        raise FakeDeviceProtocolError(message)

    def _map_vector(self, vector: int) -> int:
        return vector if vector < self.msix_vectors else spec.VIRTIO_MSI_NO_VECTOR

    @property
    def selected_queue(self) -> FakeQueue | None:
        if self.queue_select < len(self.queues):
            return self.queues[self.queue_select]
        return None

    # --- MMIO ----------------------------------------------------------------------------

    async def mmio_read(self, addr: int, size: int) -> int:
        region, offset = self._decode(addr, size)
        if region == "common":
            return self._common_read(offset, size)
        if region == "isr":
            value, self.isr = self.isr, 0
            return value if offset == 0 else 0
        if region == "device":
            return int.from_bytes(self._device_config()[offset:offset + size], "little")
        self._violation(f"read of the notification area at +{offset:#x}")

    async def mmio_write(self, addr: int, size: int, value: int) -> None:
        region, offset = self._decode(addr, size)
        if region == "common":
            self._common_write(offset, size, value)
        elif region == "notify":
            if size != 2 or offset != value * NOTIFY_OFF_MULTIPLIER:
                self._violation(f"notification of queue {value} with {size} bytes at "
                                f"+{offset:#x}")
            self.notifications.append(value)
        else:
            self._violation(f"write to read-only {region} structure at +{offset:#x}")

    def _decode(self, addr: int, size: int) -> tuple[str, int]:
        if size not in MMIO_ACCESS_SIZES or addr % size:
            raise TransportError(f"bad MMIO access: {size} bytes at {addr:#x}")
        if not self.command & spec.PciCommand.MEMORY_SPACE:
            self._violation(f"MMIO access at {addr:#x} with memory decoding disabled")
        offset = addr - BAR0_ADDRESS
        for name, base, length in (("common", COMMON_CFG_OFFSET, spec.VIRTIO_COMMON_CFG_SIZE),
                                   ("isr", ISR_CFG_OFFSET, ISR_CFG_LENGTH),
                                   ("device", DEVICE_CFG_OFFSET, spec.VIRTIO_NET_CFG_SIZE),
                                   ("notify", NOTIFY_CFG_OFFSET, self.notify_length)):
            if base <= offset and offset + size <= base + length:
                return name, offset - base
        raise TransportError(f"MMIO access at {addr:#x} hits no structure of BAR0")

    def _field(self, offset: int, size: int) -> tuple[Common, int]:
        """The common field an access targets, and which 32-bit half for 64-bit fields."""
        for field, width in COMMON_FIELD_SIZES.items():
            if field <= offset < field + width:
                if offset == field and size == width:
                    return field, 0
                if width == 8 and size == 4:
                    return field, (offset - field) // 4
                break
        self._violation(f"{size}-byte access at common configuration +{offset:#x} does "
                        f"not match a field")

    def _common_read(self, offset: int, size: int) -> int:
        field, half = self._field(offset, size)
        q = self.selected_queue
        match field:
            case Common.DEVICE_FEATURE:
                sel = self.device_feature_select
                return self.features >> 32 * sel & 0xFFFF_FFFF if sel < 2 else 0
            case Common.DEVICE_FEATURE_SELECT:
                return self.device_feature_select
            case Common.DRIVER_FEATURE_SELECT:
                return self.driver_feature_select
            case Common.DRIVER_FEATURE:
                sel = self.driver_feature_select
                return self.driver_features >> 32 * sel & 0xFFFF_FFFF if sel < 2 else 0
            case Common.CONFIG_MSIX_VECTOR:
                return self.config_msix_vector
            case Common.NUM_QUEUES:
                return len(self.queues)
            case Common.DEVICE_STATUS:
                if self._reset_reads_left:
                    self._reset_reads_left -= 1
                    return int(VirtioStatus.ACKNOWLEDGE)
                return int(self.status)
            case Common.CONFIG_GENERATION:
                if self.unstable_generation_reads:
                    self.unstable_generation_reads -= 1
                    self.config_generation = (self.config_generation + 1) & 0xFF
                return self.config_generation
            case Common.QUEUE_SELECT:
                return self.queue_select
            case Common.QUEUE_NOTIFY_OFF:
                return self.queue_select if q else 0
        if q is None:
            return 0
        match field:
            case Common.QUEUE_SIZE:
                return q.size
            case Common.QUEUE_MSIX_VECTOR:
                return q.msix_vector
            case Common.QUEUE_ENABLE:
                return q.enable
            case Common.QUEUE_DESC | Common.QUEUE_DRIVER | Common.QUEUE_DEVICE:
                value = getattr(q, QUEUE_ADDRESS_FIELDS[field])
                return value if size == 8 else value >> 32 * half & 0xFFFF_FFFF
        return 0

    def _common_write(self, offset: int, size: int, value: int) -> None:
        field, half = self._field(offset, size)
        q = self.selected_queue
        match field:
            case Common.DEVICE_FEATURE_SELECT:
                self.device_feature_select = value
            case Common.DRIVER_FEATURE_SELECT:
                self.driver_feature_select = value
            case Common.DRIVER_FEATURE:
                if self.status & VirtioStatus.FEATURES_OK:
                    self._violation("driver_feature written after FEATURES_OK")
                sel = self.driver_feature_select
                if sel < 2:
                    mask = 0xFFFF_FFFF << 32 * sel
                    self.driver_features = self.driver_features & ~mask | value << 32 * sel
            case Common.CONFIG_MSIX_VECTOR:
                self.config_msix_vector = self._map_vector(value)
            case Common.DEVICE_STATUS:
                self._write_status(VirtioStatus(value))
            case Common.QUEUE_SELECT:
                self.queue_select = value
            case Common.QUEUE_SIZE | Common.QUEUE_MSIX_VECTOR | Common.QUEUE_ENABLE | \
                    Common.QUEUE_DESC | Common.QUEUE_DRIVER | Common.QUEUE_DEVICE:
                if q is None:
                    self._violation(f"queue field +{offset:#x} written with queue_select "
                                    f"{self.queue_select} beyond num_queues")
                self._write_queue_field(q, field, half, size, value)
            case _:
                self._violation(f"write to read-only or unsupported common field {field.name}")

    def _write_queue_field(self, q: FakeQueue, field: Common, half: int, size: int,
                           value: int) -> None:
        if field == Common.QUEUE_MSIX_VECTOR:
            q.msix_vector = self._map_vector(value)
            return
        if q.enable or self.status & VirtioStatus.DRIVER_OK:
            self._violation(f"{field.name} of queue {self.queue_select} written after "
                            f"the queue was enabled or DRIVER_OK")
        if field == Common.QUEUE_SIZE:
            if not 0 < value <= q.max_size or value & (value - 1):
                self._violation(f"queue {self.queue_select}: size {value} is not a power "
                                f"of 2 up to {q.max_size}")
            q.size = value
        elif field == Common.QUEUE_ENABLE:
            if value != 1:
                self._violation(f"queue_enable written with {value}")
            if not (q.desc and q.driver and q.device):
                self._violation(f"queue {self.queue_select} enabled without ring addresses")
            q.enable = 1
        else:
            name = QUEUE_ADDRESS_FIELDS[field]
            if size == 8:
                setattr(q, name, value)
            else:
                mask = 0xFFFF_FFFF << 32 * half
                setattr(q, name, getattr(q, name) & ~mask | value << 32 * half)

    def _write_status(self, new: VirtioStatus) -> None:
        self.status_writes.append(int(new))
        if not new:
            self.reset_count += 1
            self._reset_state()
            self._reset_reads_left = self.reset_delay_reads
            return
        old = self.status
        if old & ~new:
            self._violation(f"device_status bits {old & ~new!r} cleared without a reset")
        if new & VirtioStatus.FEATURES_OK and not old & VirtioStatus.FEATURES_OK:
            if self.refuse_features_ok or self.driver_features & ~self.features:
                new &= ~VirtioStatus.FEATURES_OK
        if new & VirtioStatus.DRIVER_OK and not new & VirtioStatus.FEATURES_OK:
            self._violation("DRIVER_OK set without FEATURES_OK")
        self.status = new

    def _device_config(self) -> bytes:
        """struct virtio_net_config (section 5.1.4)."""
        image = bytearray(spec.VIRTIO_NET_CFG_SIZE)

        def put(offset: int, size: int, value: int) -> None:
            image[offset:offset + size] = value.to_bytes(size, "little")

        image[VirtioNetCfg.MAC:VirtioNetCfg.MAC + spec.ETH_ALEN] = self.mac
        put(VirtioNetCfg.STATUS, 2, int(spec.VirtioNetS.LINK_UP) if self.link_up else 0)
        put(VirtioNetCfg.MAX_VIRTQUEUE_PAIRS, 2, self.max_pairs)
        put(VirtioNetCfg.MTU, 2, self.mtu)
        put(VirtioNetCfg.SPEED, 4, SPEED_UNKNOWN)
        put(VirtioNetCfg.DUPLEX, 1, DUPLEX_UNKNOWN)
        return bytes(image)

    # --- DMA memory ------------------------------------------------------------------------

    def dma_alloc(self, size: int, align: int) -> int:
        addr = -(-self._dma_next // align) * align
        self._allocations.append((addr, bytearray([DMA_GARBAGE]) * size))
        self._dma_next = addr + size
        return addr

    def _dma_find(self, addr: int, length: int) -> tuple[bytearray, int]:
        for base, data in self._allocations:
            if base <= addr and addr + length <= base + len(data):
                return data, addr - base
        raise TransportError(f"DMA access of {length} bytes at {addr:#x} outside any allocation")

    def dma_peek(self, addr: int, length: int) -> bytes:
        """Read DMA memory without awaiting (test checks)."""
        data, offset = self._dma_find(addr, length)
        return bytes(data[offset:offset + length])

    async def dma_read(self, addr: int, length: int) -> bytes:
        return self.dma_peek(addr, length)

    async def dma_write(self, addr: int, data: bytes) -> None:
        buf, offset = self._dma_find(addr, len(data))
        buf[offset:offset + len(data)] = data

    # --- interrupts ---------------------------------------------------------------------------

    def msix_vectors_available(self) -> int:
        return self.msix_vectors

    async def wait_interrupt(self, vector: int, timeout_ns: int) -> None:
        raise TimeoutError(f"no interrupt on vector {vector}: the model raises none")
