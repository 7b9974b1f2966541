"""Split virtqueues, driver side (virtio 1.2 section 2.7).

A Python rendering of the split-ring half of Linux's
drivers/virtio/virtio_ring.c. A split virtqueue has three parts in driver
memory that the device reaches by DMA:

- the Descriptor Table (Descriptor Area): Queue Size descriptors of 16 bytes;
- the Available Ring (Driver Area): flags, idx, ring[Queue Size], used_event;
- the Used Ring (Device Area): flags, idx, ring[Queue Size] of 8-byte
  elements, avail_event.

The driver adds buffers (`add_sgs`, `add_outbuf`, `add_inbuf`) as chains of
descriptors, or as one descriptor pointing at an indirect table when
VIRTIO_RING_F_INDIRECT_DESC is negotiated; publishes them in the available
ring; notifies the device when the device wants it (`kick_prepare`, `notify`);
and collects them from the used ring (`get_buf`). Used buffer notifications
are suppressed with the NO_INTERRUPT flag, or with used_event under
VIRTIO_RING_F_EVENT_IDX (`disable_cb`, `enable_cb_prepare`, `poll`,
`enable_cb`, `enable_cb_delayed`).

DMA: every buffer segment is mapped when added (device-readable segments
TO_DEVICE, device-writable ones FROM_DEVICE) and unmapped when the buffer comes
back, as vring_map_one_sg / vring_unmap_one_split do. The descriptor table and
the available ring are mapped TO_DEVICE, the used ring FROM_DEVICE, for the
life of the queue; indirect tables are mapped TO_DEVICE while in use.

Ordering: each coroutine does its DMA accesses in program order, which is the
order the spec's barriers ask for (descriptors, then the ring entry, then idx;
idx before reading the device's suppression fields; used idx before the used
element).

Concurrency: the bookkeeping (free list, shadow indexes) changes without an
await in between, but a queue still takes one producer (add, kick_prepare) and
one consumer (get_buf, callback control) at a time; Linux gets that from its
callers' locks. Overlapping calls in the same role raise VirtqueueError rather
than corrupt the ring.

Test-only: `start_index` starts both ring indexes at a value other than 0 (the
spec starts them at 0), so that 16-bit wrap-around is reached in a few
packets. The device must be told the same value (driver.testing's
FakeVirtioNetDevice takes `ring_start_index`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import struct
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from hdl import spec
from hdl.spec import VirtioF, VirtqAvailF, VirtqDescF, VirtqUsedF, vring_need_event

from .transport import DmaDirection, Transport

__all__ = [
    "SplitVirtqueue", "Sg", "VirtqueueError", "VirtqueueFullError", "VirtqueueBrokenError",
    "vring_need_event", "desc_table_size", "avail_ring_size", "used_ring_size",
]

log = logging.getLogger("virtio_net.ring")

# Section 2.7: alignment and size of each part, for a queue of size N.
VIRTQ_DESC_ALIGN = 16
VIRTQ_AVAIL_ALIGN = 2
VIRTQ_USED_ALIGN = 4
VIRTQ_DESC_SIZE = spec.VIRTQ_DESC_SIZE               # struct virtq_desc: addr, len, flags, next
VIRTQ_USED_ELEM_SIZE = spec.VIRTQ_USED_ELEM_SIZE     # struct virtq_used_elem: id, len
VIRTQ_RING_HEADER_SIZE = spec.VIRTQ_RING_HEADER_SIZE  # flags, idx (both rings)
VIRTQ_RING_EVENT_SIZE = spec.VIRTQ_EVENT_SIZE        # used_event / avail_event trailer
VIRTQ_AVAIL_ELEM_SIZE = spec.VIRTQ_AVAIL_ELEM_SIZE   # a descriptor head index

# Section 2.7: "Queue Size ... is a power of 2"; 16-bit indices cap it at 32768.
VIRTQ_MAX_SIZE = 32768

# Section 2.7.5.3: an indirect table is an array of struct virtq_desc.
VIRTQ_INDIRECT_ALIGN = 16
VIRTQ_INDIRECT_MIN_ENTRIES = 2          # smallest table the pool hands out

VRING_IDX_MASK = 0xFFFF                 # avail/used idx are free-running le16 (2.7.6, 2.7.8)
# With EVENT_IDX, disable_cb parks used_event half the index space away from
# last_used_idx: the farthest an event can be from where the device is.
VRING_EVENT_FAR = 0x8000
# Linux kicks on its own once this many buffers were added without a kick, so
# that old/new in kick_prepare stay within 16 bits of each other.
VRING_MAX_ADDED = 0xFFFF

# Spec-defined layouts, little-endian (section 2.7.5, 2.7.8).
_DESC = struct.Struct("<QIHH")          # addr, len, flags, next
_USED_ELEM = struct.Struct("<II")       # id, len
_LE16 = struct.Struct("<H")
MAX_DESC_LEN = 0xFFFF_FFFF              # len is le32
MAX_DMA_ADDR = (1 << 64) - 1            # addr is le64

Sg = tuple[int, int]
"""One scatter-gather segment: (bus address, length in bytes)."""


class VirtqueueError(Exception):
    """A virtqueue that cannot be built or used as asked."""


class VirtqueueFullError(VirtqueueError):
    """Not enough free descriptors for the buffer (Linux's -ENOSPC)."""


class VirtqueueBrokenError(VirtqueueError):
    """The device broke the ring protocol (Linux's BAD_RING); the queue is unusable."""


def desc_table_size(num: int) -> int:
    return VIRTQ_DESC_SIZE * num


def avail_ring_size(num: int) -> int:
    return VIRTQ_RING_HEADER_SIZE + VIRTQ_AVAIL_ELEM_SIZE * num + VIRTQ_RING_EVENT_SIZE


def used_ring_size(num: int) -> int:
    return VIRTQ_RING_HEADER_SIZE + VIRTQ_USED_ELEM_SIZE * num + VIRTQ_RING_EVENT_SIZE


def check_queue_size(num: int) -> None:
    """Raise VirtqueueError unless `num` is a valid split virtqueue size."""
    if not 0 < num <= VIRTQ_MAX_SIZE or num & (num - 1):
        raise VirtqueueError(
            f"queue size {num} is not a power of 2 in 1..{VIRTQ_MAX_SIZE} "
            f"(virtio 1.2 section 2.7)")


def pack_desc(addr: int, length: int, flags: int, next_: int) -> bytes:
    """struct virtq_desc (section 2.7.5)."""
    return _DESC.pack(addr, length, flags, next_)


def _direction(flags: VirtqDescF) -> DmaDirection:
    """Who writes the memory a descriptor points at."""
    return DmaDirection.FROM_DEVICE if flags & VirtqDescF.WRITE else DmaDirection.TO_DEVICE


@dataclasses.dataclass
class DescExtra:
    """What the driver remembers of a descriptor it wrote (Linux's vring_desc_extra).

    The device can overwrite the table; unmapping and freeing only ever use
    this copy.
    """
    addr: int = 0
    len: int = 0
    flags: VirtqDescF = VirtqDescF(0)


@dataclasses.dataclass
class IndirectTable:
    """An indirect descriptor table in DMA memory (section 2.7.5.3)."""
    addr: int
    capacity: int                        # entries
    segments: list[DescExtra] = dataclasses.field(default_factory=list)

    @property
    def used_bytes(self) -> int:
        return VIRTQ_DESC_SIZE * len(self.segments)


@dataclasses.dataclass
class DescState:
    """A buffer in flight, by head descriptor (Linux's vring_desc_state_split)."""
    token: Any
    indirect: IndirectTable | None = None


class IndirectTablePool:
    """Indirect tables by power-of-two capacity, reused after the device is done.

    Transports allocate DMA memory without freeing it, so tables are kept
    rather than allocated per buffer (Linux kmallocs one per add).
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.free: dict[int, list[int]] = {}
        self.allocated = 0

    @staticmethod
    def capacity_for(entries: int) -> int:
        return max(VIRTQ_INDIRECT_MIN_ENTRIES, 1 << (entries - 1).bit_length())

    def get(self, entries: int) -> IndirectTable:
        capacity = self.capacity_for(entries)
        stack = self.free.setdefault(capacity, [])
        if stack:
            return IndirectTable(stack.pop(), capacity)
        self.allocated += 1
        return IndirectTable(
            self.transport.dma_alloc(VIRTQ_DESC_SIZE * capacity, VIRTQ_INDIRECT_ALIGN), capacity)

    def put(self, table: IndirectTable) -> None:
        self.free.setdefault(table.capacity, []).append(table.addr)


class SplitVirtqueue:
    """One split virtqueue: ring memory, free list, add/get, notifications.

    Build it with `await SplitVirtqueue.allocate(transport, index, num, ...)`.
    The free list lives on the driver side: `free_head` is the first free
    descriptor, `desc_next[i]` the one after descriptor i (also the chain link
    of a descriptor in use), `num_free` how many are free. `avail_idx_shadow`
    is the next avail->idx to publish, `last_used_idx` the used->idx consumed
    so far. The coroutine `callback(vq)` runs from `vring_interrupt` (the
    driver's interrupt handler).
    """

    def __init__(self, index: int, num: int, desc_addr: int, avail_addr: int,
                 used_addr: int, *, transport: Transport | None = None, features: int = 0,
                 start_index: int = 0) -> None:
        check_queue_size(num)
        if not 0 <= start_index <= VRING_IDX_MASK:
            raise VirtqueueError(f"queue {index}: start index {start_index} is not 16-bit")
        self.index = index
        self.num = num
        self.desc_addr = desc_addr
        self.avail_addr = avail_addr
        self.used_addr = used_addr
        self.transport = transport
        self.event = bool(features & VirtioF.EVENT_IDX)           # section 2.7.7, 2.7.10
        self.indirect = bool(features & VirtioF.INDIRECT_DESC)    # section 2.7.5.3
        self.start_index = start_index
        self.free_head = 0
        self.num_free = num
        self.desc_next = [i + 1 for i in range(num)]   # last entry == num: end of list
        self.desc_extra = [DescExtra() for _ in range(num)]
        self.desc_state: list[DescState | None] = [None] * num
        self.avail_idx_shadow = start_index      # next avail->idx the driver will publish
        self.last_used_idx = start_index         # used->idx the driver has consumed up to
        self.avail_flags_shadow = VirtqAvailF(0)
        self.num_added = 0                       # added since the last kick_prepare
        self.broken: str | None = None           # why, once the device broke the ring
        self.mapped = False
        self.callback: Callable[[SplitVirtqueue], Awaitable[None]] | None = None
        self.msix_vector: int | None = None
        self.notify_address: int | None = None
        self._indirect_pool = IndirectTablePool(transport) if transport else None
        self._busy: dict[str, str] = {}

    @classmethod
    async def allocate(cls, transport: Transport, index: int, num: int, *, features: int = 0,
                       start_index: int = 0) -> SplitVirtqueue:
        """Allocate, zero and map the three parts of a queue of `num` entries.

        Like vring_create_virtqueue_split. `features` are the negotiated
        feature bits (EVENT_IDX and INDIRECT_DESC matter here); `start_index`
        is the test-only initial ring index (see the module docstring).
        """
        check_queue_size(num)
        parts = []
        for size, align in ((desc_table_size(num), VIRTQ_DESC_ALIGN),
                            (avail_ring_size(num), VIRTQ_AVAIL_ALIGN),
                            (used_ring_size(num), VIRTQ_USED_ALIGN)):
            addr = transport.dma_alloc(size, align)
            if addr % align:
                raise VirtqueueError(
                    f"queue {index}: DMA allocation {addr:#x} not aligned to {align}")
            await transport.dma_write(addr, bytes(size))
            parts.append(addr)
        vq = cls(index, num, *parts, transport=transport, features=features,
                 start_index=start_index)
        if start_index:
            # Both idx fields, and the event fields that shadow them, start
            # where the device will also start (test-only): the same state as
            # all-zero rings with every index shifted.
            await vq._write16(vq.avail_addr + spec.VIRTQ_IDX_OFFSET, start_index)
            await vq._write16(vq.used_addr + spec.VIRTQ_IDX_OFFSET, start_index)
            await vq._write16(vq._used_event_addr, start_index)
            await vq._write16(vq._avail_event_addr, start_index)
        vq.map_rings()
        log.debug("queue %d: %d entries, desc %#x avail %#x used %#x", index, num, *parts)
        return vq

    def __repr__(self) -> str:
        return (f"SplitVirtqueue(index={self.index}, num={self.num}, "
                f"desc={self.desc_addr:#x}, avail={self.avail_addr:#x}, "
                f"used={self.used_addr:#x})")

    # --- ring memory ----------------------------------------------------------------

    def _ring_mappings(self) -> list[tuple[int, int, DmaDirection]]:
        return [(self.desc_addr, desc_table_size(self.num), DmaDirection.TO_DEVICE),
                (self.avail_addr, avail_ring_size(self.num), DmaDirection.TO_DEVICE),
                (self.used_addr, used_ring_size(self.num), DmaDirection.FROM_DEVICE)]

    def map_rings(self) -> None:
        """Hand the rings to the device: the used ring is the only part it writes."""
        for addr, length, direction in self._ring_mappings():
            self._transport.dma_map(addr, length, direction)
        self.mapped = True

    def free(self) -> None:
        """Unmap the rings (vring_free). Call after the device was reset and
        every buffer was taken back with detach_unused_buf."""
        if not self.mapped:
            return
        if self.num_free != self.num:
            log.warning("queue %d freed with %d descriptor(s) still in use", self.index,
                        self.num - self.num_free)
        for addr, length, direction in self._ring_mappings():
            self._transport.dma_unmap(addr, length, direction)
        self.mapped = False

    @property
    def _transport(self) -> Transport:
        if self.transport is None:
            raise VirtqueueError(f"queue {self.index} has no transport (built without allocate)")
        return self.transport

    async def _write16(self, addr: int, value: int) -> None:
        await self._transport.dma_write(addr, _LE16.pack(value & VRING_IDX_MASK))

    async def _read16(self, addr: int) -> int:
        return _LE16.unpack(await self._transport.dma_read(addr, 2))[0]

    @property
    def _used_event_addr(self) -> int:
        return self.avail_addr + spec.virtq_used_event_offset(self.num)

    @property
    def _avail_event_addr(self) -> int:
        return self.used_addr + spec.virtq_avail_event_offset(self.num)

    async def _write_avail_flags(self) -> None:
        await self._write16(self.avail_addr + spec.VIRTQ_FLAGS_OFFSET,
                            int(self.avail_flags_shadow))

    async def _write_used_event(self, value: int) -> None:
        await self._write16(self._used_event_addr, value)

    async def _read_used_idx(self) -> int:
        return await self._read16(self.used_addr + spec.VIRTQ_IDX_OFFSET)

    # --- guards ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self, role: str, operation: str) -> Iterator[None]:
        """One producer and one consumer at a time (see the module docstring)."""
        if role in self._busy:
            raise VirtqueueError(
                f"queue {self.index}: {operation} while {self._busy[role]} is in progress; "
                f"callers must serialise the queue's {role}s")
        self._busy[role] = operation
        try:
            yield
        finally:
            del self._busy[role]

    def _check_usable(self) -> None:
        if self.broken is not None:
            raise VirtqueueBrokenError(f"queue {self.index} is broken: {self.broken}")
        if not self.mapped:
            raise VirtqueueError(f"queue {self.index} is not mapped (freed, or never allocated)")

    def _bad_ring(self, message: str) -> None:
        """Mark the queue broken and raise (Linux's BAD_RING)."""
        self.broken = message
        log.error("queue %d: %s", self.index, message)
        raise VirtqueueBrokenError(f"queue {self.index}: {message}")

    @property
    def is_broken(self) -> bool:
        return self.broken is not None

    def get_vring_size(self) -> int:
        return self.num

    # --- adding buffers (section 2.7.13) ------------------------------------------------------

    async def add_outbuf(self, sgs: Sequence[Sg], token: Any) -> None:
        """Expose device-readable segments `sgs` as one buffer (virtqueue_add_outbuf)."""
        await self.add_sgs(sgs, (), token)

    async def add_inbuf(self, sgs: Sequence[Sg], token: Any) -> None:
        """Expose device-writable segments `sgs` as one buffer (virtqueue_add_inbuf)."""
        await self.add_sgs((), sgs, token)

    async def add_sgs(self, out_sgs: Sequence[Sg], in_sgs: Sequence[Sg], token: Any) -> None:
        """Expose one buffer: readable segments, then writable ones (virtqueue_add_sgs).

        `token` (not None) comes back from get_buf. Raises VirtqueueFullError
        when the free descriptors do not suffice; nothing is changed then.
        """
        self._check_usable()
        if token is None:
            raise ValueError(f"queue {self.index}: a buffer needs a token (not None)")
        segments = self._segments(out_sgs, in_sgs)
        with self._exclusive("producer", "add_sgs"):
            # Section 2.7.5.3: one descriptor for the whole buffer, if allowed.
            use_indirect = self.indirect and len(segments) > 1
            descs_used = 1 if use_indirect else len(segments)
            if self.num_free < descs_used:
                raise VirtqueueFullError(
                    f"queue {self.index}: {descs_used} descriptor(s) needed, "
                    f"{self.num_free} free")
            for seg in segments:
                self._transport.dma_map(seg.addr, seg.len, _direction(seg.flags))
            head = self.free_head
            chain = self._take_descriptors(descs_used)
            table = self._indirect_table(segments) if use_indirect else None
            self.desc_state[head] = DescState(token, table)
            slot_idx = self.avail_idx_shadow
            self.avail_idx_shadow = (slot_idx + 1) & VRING_IDX_MASK
            self.num_added += 1

            if table is not None:
                await self._transport.dma_write(table.addr, self._desc_image(segments))
                self._transport.dma_map(table.addr, table.used_bytes, DmaDirection.TO_DEVICE)
                await self._write_chain(chain, [DescExtra(table.addr, table.used_bytes,
                                                          VirtqDescF.INDIRECT)])
            else:
                await self._write_chain(chain, segments)
            await self._publish(head, slot_idx)
        if self.num_added == VRING_MAX_ADDED:
            await self.kick()

    def _segments(self, out_sgs: Sequence[Sg], in_sgs: Sequence[Sg]) -> list[DescExtra]:
        segments = [DescExtra(addr, length, VirtqDescF(0)) for addr, length in out_sgs]
        segments += [DescExtra(addr, length, VirtqDescF.WRITE) for addr, length in in_sgs]
        if not segments:
            raise ValueError(f"queue {self.index}: a buffer needs at least one segment")
        for seg in segments:
            if not 0 < seg.len <= MAX_DESC_LEN or not 0 <= seg.addr <= MAX_DMA_ADDR - seg.len:
                raise ValueError(f"queue {self.index}: bad segment addr {seg.addr:#x} "
                                 f"len {seg.len}")
        return segments

    def _take_descriptors(self, count: int) -> list[int]:
        """Unlink `count` descriptors from the free list; they stay chained by desc_next."""
        chain = []
        i = self.free_head
        for _ in range(count):
            chain.append(i)
            i = self.desc_next[i]
        self.free_head = i
        self.num_free -= count
        return chain

    def _indirect_table(self, segments: list[DescExtra]) -> IndirectTable:
        assert self._indirect_pool is not None
        table = self._indirect_pool.get(len(segments))
        table.segments = segments
        return table

    @staticmethod
    def _desc_image(segments: list[DescExtra]) -> bytes:
        """An indirect table: entries chained 0, 1, 2, ... (section 2.7.5.3.1)."""
        last = len(segments) - 1
        return b"".join(
            pack_desc(seg.addr, seg.len, seg.flags | (VirtqDescF.NEXT if i < last else 0),
                      i + 1 if i < last else 0)
            for i, seg in enumerate(segments))

    async def _write_chain(self, chain: list[int], segments: list[DescExtra]) -> None:
        """Section 2.7.13.1: fill the descriptors, NEXT on all but the last."""
        last = len(chain) - 1
        for k, (i, seg) in enumerate(zip(chain, segments)):
            flags = seg.flags | (VirtqDescF.NEXT if k < last else VirtqDescF(0))
            self.desc_extra[i] = DescExtra(seg.addr, seg.len, flags)
            next_ = self.desc_next[i] if k < last else 0
            await self._transport.dma_write(self.desc_addr + VIRTQ_DESC_SIZE * i,
                                            pack_desc(seg.addr, seg.len, flags, next_))

    async def _publish(self, head: int, slot_idx: int) -> None:
        """Sections 2.7.13.2-3: ring entry first, then (after a write barrier) idx."""
        slot = slot_idx & (self.num - 1)
        await self._write16(self.avail_addr + spec.virtq_avail_entry_offset(slot), head)
        await self._write16(self.avail_addr + spec.VIRTQ_IDX_OFFSET, slot_idx + 1)

    # --- notifying the device (section 2.7.13.4, 2.7.10) --------------------------------------

    async def kick_prepare(self) -> bool:
        """Whether the device wants a notification for the buffers added since the
        last call (virtqueue_kick_prepare)."""
        self._check_usable()
        with self._exclusive("producer", "kick_prepare"):
            new = self.avail_idx_shadow
            old = (new - self.num_added) & VRING_IDX_MASK
            self.num_added = 0
            # A full barrier here in Linux: idx is published before reading these.
            if self.event:
                return vring_need_event(await self._read16(self._avail_event_addr), new, old)
            flags = VirtqUsedF(await self._read16(self.used_addr + spec.VIRTQ_FLAGS_OFFSET))
            return not flags & VirtqUsedF.NO_NOTIFY

    async def notify(self) -> bool:
        """Write the queue index to the notification address (virtqueue_notify, vp_notify)."""
        if self.broken is not None:
            return False
        if self.notify_address is None:
            raise VirtqueueError(f"queue {self.index} has no notification address")
        await self._transport.mmio_write(self.notify_address, 2, self.index)
        return True

    async def kick(self) -> bool:
        """kick_prepare, then notify if asked. True if a notification was sent
        (Linux's virtqueue_kick returns true also when none was needed)."""
        return await self.kick_prepare() and await self.notify()

    # --- collecting used buffers (section 2.7.14) ---------------------------------------------

    async def more_used(self) -> bool:
        """Whether the device has used buffers the driver has not collected."""
        ahead = (await self._read_used_idx() - self.last_used_idx) & VRING_IDX_MASK
        if ahead > self.num:
            self._bad_ring(f"used idx is {ahead} entries ahead of last_used_idx "
                           f"{self.last_used_idx:#x}, more than the queue size {self.num}")
        return ahead != 0

    async def get_buf(self) -> tuple[Any, int] | None:
        """The next used buffer as (token, used length), or None (virtqueue_get_buf).

        A used id that is out of range or not the head of a buffer in flight
        breaks the queue: VirtqueueBrokenError, now and on every later use.
        """
        self._check_usable()
        with self._exclusive("consumer", "get_buf"):
            if not await self.more_used():
                return None
            # Read barrier in Linux: the element is read only after idx.
            slot = self.last_used_idx & (self.num - 1)
            head, length = _USED_ELEM.unpack(await self._transport.dma_read(
                self.used_addr + spec.virtq_used_elem_offset(slot), VIRTQ_USED_ELEM_SIZE))
            if head >= self.num:
                self._bad_ring(f"used id {head} out of range (queue size {self.num})")
            state = self.desc_state[head]
            if state is None:
                self._bad_ring(f"used id {head} is not the head of a buffer in flight")
            self.detach_buf(head)
            self.last_used_idx = (self.last_used_idx + 1) & VRING_IDX_MASK
            # Section 2.7.7: keep used_event on the next entry while callbacks are on.
            if self.event and not self.avail_flags_shadow & VirtqAvailF.NO_INTERRUPT:
                await self._write_used_event(self.last_used_idx)
            return state.token, length

    def detach_buf(self, head: int) -> Any:
        """Unmap a buffer's segments and return its descriptors to the free list."""
        state = self.desc_state[head]
        assert state is not None
        self.desc_state[head] = None
        i, count = head, 1
        self._unmap(self.desc_extra[i])
        while self.desc_extra[i].flags & VirtqDescF.NEXT:
            i = self.desc_next[i]
            self._unmap(self.desc_extra[i])
            count += 1
        self.desc_next[i] = self.free_head
        self.free_head = head
        self.num_free += count
        if state.indirect is not None:
            for seg in state.indirect.segments:
                self._unmap(seg)
            state.indirect.segments = []
            assert self._indirect_pool is not None
            self._indirect_pool.put(state.indirect)
        return state.token

    def _unmap(self, extra: DescExtra) -> None:
        self._transport.dma_unmap(extra.addr, extra.len, _direction(extra.flags))

    async def detach_unused_buf(self) -> Any:
        """Take back one buffer the device never used, after a reset (virtqueue_detach_unused_buf).

        Returns its token, or None when no buffer is left. Works on a broken queue.
        """
        for head, state in enumerate(self.desc_state):
            if state is None:
                continue
            token = self.detach_buf(head)
            self.avail_idx_shadow = (self.avail_idx_shadow - 1) & VRING_IDX_MASK
            await self._write16(self.avail_addr + spec.VIRTQ_IDX_OFFSET, self.avail_idx_shadow)
            return token
        return None

    # --- used buffer notifications (section 2.7.7) -------------------------------------------

    async def disable_cb(self) -> None:
        """Ask the device not to interrupt (virtqueue_disable_cb). Best effort:
        the device may still interrupt. Needs no serialisation."""
        if self.avail_flags_shadow & VirtqAvailF.NO_INTERRUPT:
            return
        self.avail_flags_shadow |= VirtqAvailF.NO_INTERRUPT
        if self.event:
            # The device ignores the flag under EVENT_IDX: move the event away.
            await self._write_used_event(self.last_used_idx + VRING_EVENT_FAR)
        else:
            await self._write_avail_flags()

    async def enable_cb_prepare(self) -> int:
        """Ask for an interrupt on the next used buffer; return the value for
        `poll` (virtqueue_enable_cb_prepare)."""
        with self._exclusive("consumer", "enable_cb_prepare"):
            if self.avail_flags_shadow & VirtqAvailF.NO_INTERRUPT:
                self.avail_flags_shadow &= ~VirtqAvailF.NO_INTERRUPT
                if not self.event:
                    await self._write_avail_flags()
            last_used = self.last_used_idx
            if self.event:
                await self._write_used_event(last_used)
            return last_used

    async def poll(self, last_used: int) -> bool:
        """Whether buffers were used since `enable_cb_prepare` returned `last_used`
        (virtqueue_poll); a full barrier precedes the read in Linux."""
        if self.broken is not None:
            return False
        return await self._read_used_idx() != last_used

    async def enable_cb(self) -> bool:
        """Re-enable callbacks; False if buffers are already pending (virtqueue_enable_cb)."""
        return not await self.poll(await self.enable_cb_prepare())

    async def enable_cb_delayed(self) -> bool:
        """Re-enable callbacks for when about 3/4 of the pending buffers are used
        (virtqueue_enable_cb_delayed); False if that many already are."""
        with self._exclusive("consumer", "enable_cb_delayed"):
            if self.avail_flags_shadow & VirtqAvailF.NO_INTERRUPT:
                self.avail_flags_shadow &= ~VirtqAvailF.NO_INTERRUPT
                if not self.event:
                    await self._write_avail_flags()
            pending = (self.avail_idx_shadow - self.last_used_idx) & VRING_IDX_MASK
            bufs = pending * 3 // 4
            if self.event:
                await self._write_used_event(self.last_used_idx + bufs)
            used = (await self._read_used_idx() - self.last_used_idx) & VRING_IDX_MASK
            return used <= bufs

    async def vring_interrupt(self) -> bool:
        """The queue's interrupt arrived (vring_interrupt): run the callback if
        the device used buffers. Returns False for an interrupt with no work."""
        if self.broken is not None or not self.mapped or not await self.more_used():
            return False
        if self.callback is not None:
            await self.callback(self)
        return True
