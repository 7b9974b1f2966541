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
  forgetting to zero its rings is noticed; and the driver's DMA mappings
  (dma_map/dma_unmap): the device reads only mapped memory and writes only
  memory mapped FROM_DEVICE; the driver must not write memory it has mapped
  FROM_DEVICE, nor unmap what it did not map;
- a split-ring engine (section 2.7) for the receive and transmit queues. It
  reads avail idx, ring entries and descriptors (chained or indirect, their
  rules checked) from DMA memory and writes used elements, then used idx.
  Used buffer notifications honour NO_INTERRUPT, or used_event under
  EVENT_IDX. The device asks for available buffer notifications when it has
  caught up (transmit queue processed, receive queue out of buffers): it
  writes avail_event under EVENT_IDX; without EVENT_IDX it sets and clears
  NO_NOTIFY only if `use_no_notify` (a simple device may never set it);
- the wire: frames the device transmits are appended to `tx_frames`, their
  virtio_net_hdr checked and removed; `inject_rx(frame, pair)` writes a frame
  into a receive queue (over as many buffers as needed with MRG_RXBUF,
  counted in num_buffers) or drops and counts it when no buffer fits;
  `wire_rx(frame)` first applies the receive filter and steering of the
  control-queue model;
- the control virtqueue (section 5.1.6.5): command buffers are read from the
  ring and handed to `ctrl`, a `ControlQueueModel` (driver/testing_ctrl.py,
  whose docstring lists the rules); the ack is written back and the buffer
  used, inside the notification unless `ctrl_autoprocess` is False (then
  `process_ctrl()`). The model keeps the filters, tables, VLANs, default MAC,
  ANNOUNCE bit and the queue pairs in use. The device refuses (as a protocol
  error) a transmit buffer on a queue pair not in use: before VQ_PAIRS_SET
  only transmitq1, and after a VQ_PAIRS_SET that removed a pair, nothing
  made available there after the command (section 5.1.6.5.5.1);
- configuration changes: `set_link(up)` and `request_announce()` change
  `status`, bump config_generation and send a configuration change
  notification (the config MSI-X vector, or the ISR CONFIG bit);
- interrupts: one MSI-X message per used buffer notification, counted per
  vector in `msix_counts`, and left pending (one bit per vector, like a CPU's
  interrupt request register) until `wait_interrupt` takes it; without a
  vector the ISR QUEUE bit is set instead. `wait_interrupt`'s timeout is
  wall-clock time here;
- timing: the device is infinitely fast. A notification of a transmit queue
  processes it at once, unless `tx_autoprocess` is False: the test then calls
  `process_tx()`, modelling a device that lags behind the driver.

Kicks are counted per queue (`queues[i].kicks`, and listed in
`notifications`), used buffer notifications too (`queues[i].interrupts`).
Test-only: `ring_start_index` starts the device's ring indexes at a value
other than 0 and expects the driver's to start there too (virtio_ring's
start_index), to reach 16-bit wrap-around within a few packets.

Driver mistakes the real device could not report (a field accessed with the
wrong width, a status bit cleared without reset, a queue reprogrammed while
enabled, a malformed descriptor chain, a device access outside the
mappings...) raise FakeDeviceProtocolError and are kept in `protocol_errors`.
The ring engine runs inside the driver's notification or the test's
inject_rx/process_tx/process_ctrl call, so its errors surface there. Not
modelled: the PCI configuration access window, MSI-X masking.
"""
from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import struct
from collections.abc import Iterator

from hdl import spec
from hdl.spec import VirtioCommonCfg as Common
from hdl.spec import VirtioF, VirtioNetCfg, VirtioNetF, VirtioPciCap, VirtioPciCapType
from hdl.spec import VirtioStatus, VirtqAvailF, VirtqDescF, VirtqUsedF, vring_need_event

from .testing_ctrl import MAC_TABLE_ENTRIES, ControlQueueModel
from .transport import (CONFIG_ACCESS_SIZES, MMIO_ACCESS_SIZES, DmaDirection, Transport,
                        TransportError)

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

IDX_MASK = 0xFFFF
_DESC = struct.Struct("<QIHH")          # struct virtq_desc (section 2.7.5)
_USED_ELEM = struct.Struct("<II")       # struct virtq_used_elem (section 2.7.8)
_LE16 = struct.Struct("<H")


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
    # ring engine state (section 2.7): next avail entry to read, next used idx
    last_avail_idx: int = 0
    used_idx: int = 0
    pending: bool = False        # notified, not processed yet (tx_autoprocess off)
    kicks: int = 0               # available buffer notifications received
    interrupts: int = 0          # used buffer notifications sent

    def reset(self, start_index: int = 0) -> None:
        self.size = self.max_size
        self.msix_vector = spec.VIRTIO_MSI_NO_VECTOR
        self.enable = self.desc = self.driver = self.device = 0
        self.last_avail_idx = self.used_idx = start_index
        self.pending = False


@dataclasses.dataclass(frozen=True)
class Segment:
    """One descriptor of a buffer, as the device read it."""
    addr: int
    len: int
    writable: bool


class FakeVirtioNetDevice(Transport):
    """In-memory virtio-net PCI function (see the module docstring)."""

    def __init__(self, *, features: int = DEFAULT_DEVICE_FEATURES, mac: bytes = DEFAULT_MAC,
                 mtu: int = spec.ETH_DATA_LEN, max_pairs: int = 1, link_up: bool = True,
                 queue_max_size: int = 256, num_queues: int | None = None,
                 msix_vectors: int = 0, refuse_features_ok: bool = False,
                 device_id: int = spec.VIRTIO_NET_PCI_DEVICE_ID, ring_start_index: int = 0,
                 tx_autoprocess: bool = True, use_no_notify: bool = False,
                 ctrl_autoprocess: bool = True, mac_table_entries: int = MAC_TABLE_ENTRIES,
                 follow_tx_flows: bool = False) -> None:
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
        self.ring_start_index = ring_start_index
        self.tx_autoprocess = tx_autoprocess
        self.use_no_notify = use_no_notify
        self.ctrl_autoprocess = ctrl_autoprocess
        self.ctrl = ControlQueueModel(max_pairs=max_pairs, mac=mac,
                                      mac_table_entries=mac_table_entries,
                                      follow_tx_flows=follow_tx_flows)
        # transmit queue index -> avail idx up to which it may still be used,
        # for queue pairs not in use (section 5.1.6.5.5.1)
        self._tx_limit: dict[int, int] = {}

        # The wire and the ring engine's counters.
        self.tx_frames: list[bytes] = []
        self.tx_pairs: list[int] = []       # the queue pair each of tx_frames left on
        self.rx_delivered = 0
        self.rx_dropped_no_buffer = 0
        self.rx_dropped_too_big = 0
        self.rx_filtered = 0                # dropped by the receive filter (wire_rx)
        self.rx_per_pair: collections.Counter[int] = collections.Counter()
        self.config_notifications = 0       # configuration change notifications sent
        # each control buffer's segments as (length, device-writable)
        self.ctrl_buffers: list[tuple[tuple[int, bool], ...]] = []
        self.indirect_buffers = 0           # data buffers read through an indirect table
        self.chained_buffers = 0            # data buffers of more than one direct descriptor

        # Interrupts: messages per vector, pending bits, waiting coroutines.
        self.msix_counts: collections.Counter[int] = collections.Counter()
        self._irq_pending: set[int] = set()
        self._irq_waiters: dict[int, list[asyncio.Future]] = {}

        # DMA mappings, sorted by address: (addr, end, direction).
        self._mappings: list[tuple[int, int, DmaDirection]] = []
        self._longest_mapping = 0

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
        self._allocations: list[tuple[int, bytearray]] = []   # sorted: a bump allocator
        self._allocation_bases: list[int] = []
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
            q.reset(self.ring_start_index)
        self.ctrl.reset()
        self._tx_limit = {spec.tx_queue_index(pair): self.ring_start_index
                          for pair in range(1, self.max_pairs)}

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
            self._on_notify(value)
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
        if new & VirtioStatus.FEATURES_OK:
            self.ctrl.features = self.driver_features
        if new & VirtioStatus.DRIVER_OK and not old & VirtioStatus.DRIVER_OK:
            for q in self.queues:
                if q.enable:
                    self._enable_notifications(q)

    def _device_config(self) -> bytes:
        """struct virtio_net_config (section 5.1.4)."""
        image = bytearray(spec.VIRTIO_NET_CFG_SIZE)

        def put(offset: int, size: int, value: int) -> None:
            image[offset:offset + size] = value.to_bytes(size, "little")

        image[VirtioNetCfg.MAC:VirtioNetCfg.MAC + spec.ETH_ALEN] = self.ctrl.mac
        status = spec.VirtioNetS(0)
        if self.link_up:
            status |= spec.VirtioNetS.LINK_UP
        if self.ctrl.announce:
            status |= spec.VirtioNetS.ANNOUNCE
        put(VirtioNetCfg.STATUS, 2, int(status))
        put(VirtioNetCfg.MAX_VIRTQUEUE_PAIRS, 2, self.max_pairs)
        put(VirtioNetCfg.MTU, 2, self.mtu)
        put(VirtioNetCfg.SPEED, 4, SPEED_UNKNOWN)
        put(VirtioNetCfg.DUPLEX, 1, DUPLEX_UNKNOWN)
        return bytes(image)

    # --- DMA memory ------------------------------------------------------------------------

    def dma_alloc(self, size: int, align: int) -> int:
        addr = -(-self._dma_next // align) * align
        self._allocations.append((addr, bytearray([DMA_GARBAGE]) * size))
        self._allocation_bases.append(addr)
        self._dma_next = addr + size
        return addr

    def _dma_find(self, addr: int, length: int) -> tuple[bytearray, int]:
        i = bisect.bisect_right(self._allocation_bases, addr) - 1
        if i >= 0:
            base, data = self._allocations[i]
            if addr + length <= base + len(data):
                return data, addr - base
        raise TransportError(f"DMA access of {length} bytes at {addr:#x} outside any allocation")

    def dma_peek(self, addr: int, length: int) -> bytes:
        """Read DMA memory without awaiting or checks (test inspection)."""
        data, offset = self._dma_find(addr, length)
        return bytes(data[offset:offset + length])

    def dma_poke(self, addr: int, data: bytes) -> None:
        """Write DMA memory without checks (tests corrupting what the device wrote)."""
        buf, offset = self._dma_find(addr, len(data))
        buf[offset:offset + len(data)] = data

    async def dma_read(self, addr: int, length: int) -> bytes:
        return self.dma_peek(addr, length)

    async def dma_write(self, addr: int, data: bytes) -> None:
        if self._overlaps_mapping(addr, len(data), DmaDirection.FROM_DEVICE):
            self._violation(f"driver wrote {len(data)} bytes at {addr:#x}, memory it has "
                            f"mapped FROM_DEVICE (the device owns it)")
        self.dma_poke(addr, data)

    # --- DMA mappings -------------------------------------------------------------------------

    def dma_map(self, addr: int, length: int, direction: DmaDirection) -> None:
        if length <= 0:
            self._violation(f"dma_map of {length} bytes at {addr:#x}")
        self._dma_find(addr, length)
        bisect.insort(self._mappings, (addr, addr + length, direction),
                      key=lambda m: (m[0], m[1]))
        self._longest_mapping = max(self._longest_mapping, length)

    def dma_unmap(self, addr: int, length: int, direction: DmaDirection) -> None:
        try:
            self._mappings.remove((addr, addr + length, direction))
        except ValueError:
            self._violation(f"dma_unmap of {length} bytes at {addr:#x} {direction.name}: "
                            f"not mapped so")

    @property
    def mappings(self) -> list[tuple[int, int, DmaDirection]]:
        """The driver's current mappings as (addr, length, direction)."""
        return [(a, end - a, d) for a, end, d in self._mappings]

    def _mappings_near(self, addr: int, end: int) -> Iterator[tuple[int, int, DmaDirection]]:
        """Mappings that start before `end` and may reach `addr`, nearest first."""
        i = bisect.bisect_left(self._mappings, end, key=lambda m: m[0])
        for j in range(i - 1, -1, -1):
            mapping = self._mappings[j]
            if mapping[0] < addr - self._longest_mapping:
                break
            yield mapping

    def _is_mapped(self, addr: int, length: int, direction: DmaDirection | None) -> bool:
        """Whether one mapping (of `direction`, if given) holds the whole range."""
        return any(a <= addr and addr + length <= end and direction in (None, d)
                   for a, end, d in self._mappings_near(addr, addr + length))

    def _overlaps_mapping(self, addr: int, length: int, direction: DmaDirection) -> bool:
        return any(end > addr and d == direction
                   for _, end, d in self._mappings_near(addr, addr + length))

    def _dev_read(self, addr: int, length: int, what: str) -> bytes:
        """A DMA read by the device: bus mastering on, memory mapped."""
        self._check_bus_master(what)
        if not self._is_mapped(addr, length, None):
            self._violation(f"device read of {what} ({length} bytes at {addr:#x}): not mapped")
        return self.dma_peek(addr, length)

    def _dev_write(self, addr: int, data: bytes, what: str) -> None:
        """A DMA write by the device: only into memory mapped FROM_DEVICE."""
        self._check_bus_master(what)
        if not self._is_mapped(addr, len(data), DmaDirection.FROM_DEVICE):
            self._violation(f"device write of {what} ({len(data)} bytes at {addr:#x}) "
                            f"outside the driver's FROM_DEVICE mappings")
        self.dma_poke(addr, data)

    def _dev_read16(self, addr: int, what: str) -> int:
        return _LE16.unpack(self._dev_read(addr, 2, what))[0]

    def _dev_write16(self, addr: int, value: int, what: str) -> None:
        self._dev_write(addr, _LE16.pack(value & IDX_MASK), what)

    def _check_bus_master(self, what: str) -> None:
        if not self.command & spec.PciCommand.BUS_MASTER:
            self._violation(f"device DMA ({what}) with bus mastering disabled")

    # --- interrupts ---------------------------------------------------------------------------

    def msix_vectors_available(self) -> int:
        return self.msix_vectors

    def _raise_msix(self, vector: int) -> None:
        self.msix_counts[vector] += 1
        woken = False
        for future in self._irq_waiters.pop(vector, []):
            if not future.done():
                future.set_result(None)
                woken = True
        if not woken:
            self._irq_pending.add(vector)

    def interrupt_pending(self, vector: int) -> bool:
        return vector in self._irq_pending

    async def wait_interrupt(self, vector: int, timeout_ns: int) -> None:
        """Take the vector's pending interrupt, or wait for one (wall-clock timeout)."""
        if vector in self._irq_pending:
            self._irq_pending.discard(vector)
            return
        future = asyncio.get_running_loop().create_future()
        self._irq_waiters.setdefault(vector, []).append(future)
        try:
            await asyncio.wait_for(future, timeout_ns / 1e9)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no interrupt on vector {vector} within {timeout_ns} ns") \
                from None
        finally:
            waiters = self._irq_waiters.get(vector, [])
            if future in waiters:
                waiters.remove(future)

    # --- ring engine: queues and notifications (sections 2.7.7, 2.7.10) -----------------------

    def _negotiated(self, feature: int) -> bool:
        return bool(self.driver_features & feature)

    def _queue_role(self, index: int) -> str:
        if self._negotiated(VirtioNetF.CTRL_VQ) and index == self.ctrl_queue_index:
            return "ctrl"
        return "rx" if index % 2 == 0 else "tx"

    def _running(self, q: FakeQueue) -> bool:
        return bool(q.enable and self.status & VirtioStatus.DRIVER_OK
                    and not self.status & VirtioStatus.DEVICE_NEEDS_RESET)

    def _on_notify(self, index: int) -> None:
        if not self.status & VirtioStatus.DRIVER_OK:
            self._violation(f"notification of queue {index} before DRIVER_OK (section 3.1.1)")
        if index >= len(self.queues) or not self.queues[index].enable:
            self._violation(f"notification of queue {index}, which is not enabled")
        q = self.queues[index]
        q.kicks += 1
        role = self._queue_role(index)
        autoprocess = {"tx": self.tx_autoprocess, "ctrl": self.ctrl_autoprocess}.get(role)
        if autoprocess is None:
            return
        if not autoprocess:
            q.pending = True
            self._disable_notifications(q)
        elif role == "tx":
            self._process_tx_queue(index)
        else:
            self.process_ctrl()

    def _enable_notifications(self, q: FakeQueue) -> None:
        """Ask for a notification on the next available buffer (section 2.7.10)."""
        if self._negotiated(VirtioF.EVENT_IDX):
            self._dev_write16(q.device + spec.virtq_avail_event_offset(q.size),
                              q.last_avail_idx, "avail_event")
        elif self.use_no_notify:
            self._dev_write16(q.device + spec.VIRTQ_FLAGS_OFFSET, 0, "used flags")

    def _disable_notifications(self, q: FakeQueue) -> None:
        """Under EVENT_IDX, leaving avail_event behind is enough."""
        if not self._negotiated(VirtioF.EVENT_IDX) and self.use_no_notify:
            self._dev_write16(q.device + spec.VIRTQ_FLAGS_OFFSET, int(VirtqUsedF.NO_NOTIFY),
                              "used flags")

    def _avail_pending(self, q: FakeQueue) -> int:
        """Buffers made available and not read yet (section 2.7.6)."""
        avail_idx = self._dev_read16(q.driver + spec.VIRTQ_IDX_OFFSET, "avail idx")
        pending = (avail_idx - q.last_avail_idx) & IDX_MASK
        if pending > q.size:
            self._violation(f"queue {self.queues.index(q)}: avail idx {avail_idx:#x} is "
                            f"{pending} ahead of the device's {q.last_avail_idx:#x}, more than "
                            f"the queue size {q.size} (section 2.7.6)")
        return pending

    def _avail_head(self, q: FakeQueue, nth: int = 0) -> int:
        slot = (q.last_avail_idx + nth) & (q.size - 1)
        head = self._dev_read16(q.driver + spec.virtq_avail_entry_offset(slot), "avail ring")
        if head >= q.size:
            self._violation(f"queue {self.queues.index(q)}: avail ring entry {head} is not a "
                            f"descriptor index (queue size {q.size})")
        return head

    def _read_chain(self, q: FakeQueue, head: int, *, count: bool = True) -> list[Segment]:
        """The descriptors of one buffer, direct or indirect (sections 2.7.5, 2.7.5.3).
        `count`: in indirect_buffers / chained_buffers (data buffers only)."""
        index = self.queues.index(q)
        table, table_size, i = q.desc, q.size, head
        indirect = False
        segments: list[Segment] = []
        while True:
            if i >= table_size:
                self._violation(f"queue {index}: descriptor {i} outside a table of {table_size}")
            addr, length, flags, next_ = _DESC.unpack(self._dev_read(
                table + spec.VIRTQ_DESC_SIZE * i, spec.VIRTQ_DESC_SIZE, "descriptor"))
            flags = VirtqDescF(flags)
            if flags & VirtqDescF.INDIRECT:
                table, table_size = self._enter_indirect(index, indirect, addr, length, flags)
                indirect, i = True, 0
                self.indirect_buffers += count
                continue
            if segments and segments[-1].writable and not flags & VirtqDescF.WRITE:
                self._violation(f"queue {index}: device-readable descriptor after a writable "
                                f"one (section 2.7.4)")
            segments.append(Segment(addr, length, bool(flags & VirtqDescF.WRITE)))
            if len(segments) > table_size:
                self._violation(f"queue {index}: descriptor chain from {head} loops")
            if not flags & VirtqDescF.NEXT:
                break
            i = next_
        if not indirect and len(segments) > 1:
            self.chained_buffers += count
        return segments

    def _enter_indirect(self, index: int, nested: bool, addr: int, length: int,
                        flags: VirtqDescF) -> tuple[int, int]:
        """Checks of section 2.7.5.3.1 on a descriptor with INDIRECT."""
        if not self._negotiated(VirtioF.INDIRECT_DESC):
            self._violation(f"queue {index}: INDIRECT descriptor without INDIRECT_DESC")
        if nested:
            self._violation(f"queue {index}: INDIRECT descriptor inside an indirect table")
        if flags & VirtqDescF.NEXT:
            self._violation(f"queue {index}: descriptor with both INDIRECT and NEXT")
        if not length or length % spec.VIRTQ_DESC_SIZE:
            self._violation(f"queue {index}: indirect table of {length} bytes")
        entries = length // spec.VIRTQ_DESC_SIZE
        if entries > self.queues[index].size:
            self._violation(f"queue {index}: indirect table of {entries} entries, longer than "
                            f"the queue")
        return addr, entries

    def _push_used(self, q: FakeQueue, elems: list[tuple[int, int]]) -> None:
        """Write used elements, then used idx, then notify if asked (section 2.7.8)."""
        old = q.used_idx
        for k, (head, length) in enumerate(elems):
            slot = (old + k) & (q.size - 1)
            self._dev_write(q.device + spec.virtq_used_elem_offset(slot),
                            _USED_ELEM.pack(head, length), "used element")
        q.used_idx = (old + len(elems)) & IDX_MASK
        self._dev_write16(q.device + spec.VIRTQ_IDX_OFFSET, q.used_idx, "used idx")
        if self._wants_interrupt(q, old, q.used_idx):
            self._notify_used(q)

    def _wants_interrupt(self, q: FakeQueue, old: int, new: int) -> bool:
        """Section 2.7.7.2: used_event with EVENT_IDX, else the NO_INTERRUPT flag."""
        if self._negotiated(VirtioF.EVENT_IDX):
            used_event = self._dev_read16(q.driver + spec.virtq_used_event_offset(q.size),
                                          "used_event")
            return vring_need_event(used_event, new, old)
        flags = self._dev_read16(q.driver + spec.VIRTQ_FLAGS_OFFSET, "avail flags")
        return not flags & VirtqAvailF.NO_INTERRUPT

    def _notify_used(self, q: FakeQueue) -> None:
        q.interrupts += 1
        if q.msix_vector != spec.VIRTIO_MSI_NO_VECTOR:
            self._raise_msix(q.msix_vector)
        else:
            self.isr |= spec.VirtioIsr.QUEUE

    # --- transmit: driver -> wire (section 5.1.6.2) -------------------------------------------

    def process_tx(self, queue: int | None = None) -> int:
        """Transmit what the driver made available on one transmit queue, or all.

        Returns the frames sent. Called by notifications unless tx_autoprocess
        is False.
        """
        indexes = [queue] if queue is not None else [
            i for i in range(len(self.queues)) if self._queue_role(i) == "tx"]
        return sum(self._process_tx_queue(i) for i in indexes)

    def _process_tx_queue(self, index: int) -> int:
        q = self.queues[index]
        if not self._running(q):
            return 0
        pending = self._avail_pending(q)
        limit = self._tx_limit.get(index)
        if limit is not None and pending > (limit - q.last_avail_idx) & IDX_MASK:
            self._violation(
                f"queue {index}: transmit buffer made available on queue pair {index // 2}, "
                f"not in use ({self.ctrl.pairs} pair(s) since the last VQ_PAIRS_SET, 1 "
                f"before it; section 5.1.6.5.5.1)")
        elems = []
        for nth in range(pending):
            head = self._avail_head(q, nth)
            frame = self._transmit(index, self._read_chain(q, head))
            self.tx_frames.append(frame)
            self.tx_pairs.append(index // 2)
            self.ctrl.transmitted(frame, index // 2)
            elems.append((head, 0))                # the device wrote nothing
        q.last_avail_idx = (q.last_avail_idx + pending) & IDX_MASK
        if elems:
            self._push_used(q, elems)
        q.pending = False
        self._enable_notifications(q)                # caught up
        return len(elems)

    def _transmit(self, index: int, segments: list[Segment]) -> bytes:
        if any(seg.writable for seg in segments):
            self._violation(f"queue {index}: device-writable descriptor in a transmit buffer")
        data = b"".join(self._dev_read(seg.addr, seg.len, "transmit buffer")
                        for seg in segments)
        hdr_len = spec.VIRTIO_NET_HDR_SIZE
        if len(data) < hdr_len + spec.ETH_HLEN:
            self._violation(f"queue {index}: transmit buffer of {len(data)} bytes")
        flags = data[spec.VIRTIO_NET_HDR_FLAGS_OFFSET]
        gso_type = data[spec.VIRTIO_NET_HDR_GSO_TYPE_OFFSET]
        num_buffers = int.from_bytes(data[spec.VIRTIO_NET_HDR_NUM_BUFFERS_OFFSET:][:2],
                                     "little")
        if flags and not self._negotiated(VirtioNetF.CSUM):
            self._violation(f"queue {index}: virtio_net_hdr flags {flags:#x} without CSUM")
        if gso_type != spec.VIRTIO_NET_HDR_GSO_NONE:
            self._violation(f"queue {index}: gso_type {gso_type} without a HOST_* offload")
        if num_buffers:
            self._violation(f"queue {index}: num_buffers {num_buffers} in a transmitted "
                            f"header (section 5.1.6.2.1: must be 0)")
        return data[hdr_len:]

    # --- receive: wire -> driver (sections 5.1.6.3, 5.1.6.4) ---------------------------------

    def inject_rx(self, frame: bytes, pair: int = 0, *, num_buffers: int | None = None) -> bool:
        """A frame arrives from the wire for receive queue `pair`.

        Writes header + frame into the next buffer (several with MRG_RXBUF),
        returns it used and notifies if asked; returns False and counts a
        drop when the queue is not running or has no (big enough) buffer.
        `num_buffers` overrides the header field (tests of driver checks).
        """
        if not 0 <= pair < self.ctrl.pairs:
            raise ValueError(f"receiveq{pair + 1}: the device uses only {self.ctrl.pairs} "
                             f"queue pair(s) (section 5.1.6.5.5.1)")
        q = self.queues[spec.rx_queue_index(pair)]
        if not self._running(q):
            self.rx_dropped_no_buffer += 1
            return False
        packet_len = spec.VIRTIO_NET_HDR_SIZE + len(frame)
        buffers = self._rx_buffers(q, packet_len)
        if buffers is None:
            return False
        count = len(buffers) if self._negotiated(VirtioNetF.MRG_RXBUF) else 1
        header = bytearray(spec.VIRTIO_NET_HDR_SIZE)      # no offload: flags, gso 0
        offset = spec.VIRTIO_NET_HDR_NUM_BUFFERS_OFFSET
        header[offset:offset + 2] = \
            (count if num_buffers is None else num_buffers).to_bytes(2, "little")
        self._push_used(q, self._scatter(bytes(header) + frame, buffers))
        q.last_avail_idx = (q.last_avail_idx + len(buffers)) & IDX_MASK
        if self._avail_pending(q):
            self._disable_notifications(q)
        else:
            self._enable_notifications(q)                # out of buffers: tell me
        self.rx_delivered += 1
        self.rx_per_pair[pair] += 1
        return True

    def wire_rx(self, frame: bytes) -> bool:
        """A frame from the wire: the receive filter, then steering to a receive
        queue in use, then inject_rx (testing_ctrl rules 5 and 6). False if
        filtered (counted in `rx_filtered`) or dropped for want of a buffer."""
        if not self.ctrl.accepts(frame):
            self.rx_filtered += 1
            return False
        return self.inject_rx(frame, self.ctrl.rx_queue(frame))

    def _rx_buffers(self, q: FakeQueue,
                    packet_len: int) -> list[tuple[int, list[Segment]]] | None:
        """The buffers the packet will take, or None (dropped and counted)."""
        index = self.queues.index(q)
        pending = self._avail_pending(q)
        mergeable = self._negotiated(VirtioNetF.MRG_RXBUF)
        buffers, capacity = [], 0
        while capacity < packet_len and len(buffers) < pending:
            head = self._avail_head(q, len(buffers))
            segments = self._read_chain(q, head)
            if not all(seg.writable for seg in segments):
                self._violation(f"queue {index}: device-readable descriptor in a receive "
                                f"buffer")
            buffers.append((head, segments))
            capacity += sum(seg.len for seg in segments)
            if not mergeable:
                break
        if capacity >= packet_len:
            return buffers
        if buffers and not mergeable:
            self.rx_dropped_too_big += 1
        else:
            self.rx_dropped_no_buffer += 1
            self._enable_notifications(q)
        return None

    def _scatter(self, packet: bytes, buffers: list[tuple[int, list[Segment]]]
                 ) -> list[tuple[int, int]]:
        """Write the packet across the buffers; their used elements (id, bytes written)."""
        elems, offset = [], 0
        for head, segments in buffers:
            written = 0
            for seg in segments:
                chunk = packet[offset:offset + seg.len]
                if not chunk:
                    break
                self._dev_write(seg.addr, chunk, "receive buffer")
                offset += len(chunk)
                written += len(chunk)
            elems.append((head, written))
        return elems

    # --- control virtqueue (section 5.1.6.5) ------------------------------------------------

    @property
    def ctrl_queue_index(self) -> int:
        """controlq after the pairs (section 5.1.2); a max_pairs out of range
        (a broken device) lays the queues out as one pair, as drivers do."""
        return spec.virtqueue_pairs_to_queues(max(1, self.max_pairs)) - 1

    def process_ctrl(self) -> int:
        """Answer every command buffer the driver made available on the control
        queue (testing_ctrl rules 1-3). Returns how many. Called by the
        notification unless ctrl_autoprocess is False."""
        index = self.ctrl_queue_index
        if not self._negotiated(VirtioNetF.CTRL_VQ) or index >= len(self.queues):
            return 0
        q = self.queues[index]
        if not self._running(q):
            return 0
        pending = self._avail_pending(q)
        for _ in range(pending):
            head = self._avail_head(q)             # last_avail_idx moves per buffer
            segments = self._read_chain(q, head, count=False)
            self.ctrl_buffers.append(tuple((seg.len, seg.writable) for seg in segments))
            out = b"".join(self._dev_read(seg.addr, seg.len, "control command")
                           for seg in segments if not seg.writable)
            writable = [seg for seg in segments if seg.writable]
            before = (self.ctrl.pairs, self.ctrl.mac, self.ctrl.announce)
            result = self.ctrl.handle(out, sum(seg.len for seg in writable))
            if result.ack is not None:
                self._dev_write(writable[0].addr, bytes([result.ack]), "control ack")
            if self.ctrl.pairs != before[0]:
                self._pairs_changed()
            if (self.ctrl.mac, self.ctrl.announce) != before[1:]:
                # mac or status changed in config space, at the driver's request:
                # a new generation, no notification
                self.config_generation = (self.config_generation + 1) & 0xFF
            # one buffer at a time: its effect is visible before the next is read
            self._push_used(q, [(head, result.used_len)])
            q.last_avail_idx = (q.last_avail_idx + 1) & IDX_MASK
        q.pending = False
        self._enable_notifications(q)
        return pending

    def _pairs_changed(self) -> None:
        """After VQ_PAIRS_SET: transmit queues of pairs no longer in use may still
        hold what was made available before the command, nothing more."""
        for pair in range(1, self.max_pairs):
            index = spec.tx_queue_index(pair)
            if pair < self.ctrl.pairs:
                self._tx_limit.pop(index, None)
            elif index not in self._tx_limit:
                q = self.queues[index]
                self._tx_limit[index] = self._dev_read16(
                    q.driver + spec.VIRTQ_IDX_OFFSET, "avail idx") if q.enable \
                    else q.last_avail_idx

    # --- configuration changes (sections 4.1.5.3, 5.1.4) ------------------------------------

    def set_link(self, up: bool) -> None:
        """The link goes up or down: status LINK_UP changes and the driver is told."""
        if self.link_up == up:
            return
        self.link_up = up
        self._config_changed()

    def request_announce(self) -> bool:
        """Ask the driver for gratuitous packets (section 5.1.6.5.4): set ANNOUNCE
        and notify. Only with GUEST_ANNOUNCE negotiated; returns whether it did."""
        if not self._negotiated(VirtioNetF.GUEST_ANNOUNCE):
            return False
        self.ctrl.announce = True
        self._config_changed()
        return True

    def _config_changed(self) -> None:
        self.config_generation = (self.config_generation + 1) & 0xFF
        if not self.status & VirtioStatus.DRIVER_OK:
            return
        self.config_notifications += 1
        if self.config_msix_vector != spec.VIRTIO_MSI_NO_VECTOR:
            self._raise_msix(self.config_msix_vector)
        else:
            self.isr |= spec.VirtioIsr.CONFIG

    # --- time ---------------------------------------------------------------------------------

    async def delay(self, ns: int) -> None:
        """Let `ns` nanoseconds of wall-clock time pass (other tasks run meanwhile)."""
        await asyncio.sleep(ns / 1e9)
