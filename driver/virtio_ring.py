"""Split virtqueues: memory layout and allocation (virtio 1.2 section 2.7).

A split virtqueue has three parts in driver memory the device reaches by DMA:

- the Descriptor Table (Descriptor Area): Queue Size descriptors of 16 bytes;
- the Available Ring (Driver Area): flags, idx, ring[Queue Size], used_event;
- the Used Ring (Device Area): flags, idx, ring[Queue Size] of 8-byte
  elements, avail_event.

Only allocation and the driver's bookkeeping are here; adding and collecting
buffers come later.
"""
from __future__ import annotations

import logging

from .transport import Transport

log = logging.getLogger("virtio_net.ring")

# Section 2.7: alignment and size of each part, for a queue of size N.
VIRTQ_DESC_ALIGN = 16
VIRTQ_AVAIL_ALIGN = 2
VIRTQ_USED_ALIGN = 4
VIRTQ_DESC_SIZE = 16                 # struct virtq_desc: addr, len, flags, next
VIRTQ_USED_ELEM_SIZE = 8             # struct virtq_used_elem: id, len
VIRTQ_RING_HEADER_SIZE = 4           # flags, idx (both rings)
VIRTQ_RING_EVENT_SIZE = 2            # used_event / avail_event trailer
VIRTQ_AVAIL_ELEM_SIZE = 2            # a descriptor head index

# Section 2.7: "Queue Size ... is a power of 2"; 16-bit indices cap it at 32768.
VIRTQ_MAX_SIZE = 32768


class VirtqueueError(Exception):
    """A virtqueue that cannot be built as asked."""


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


class SplitVirtqueue:
    """One split virtqueue's memory and free-descriptor bookkeeping.

    Build it with `await SplitVirtqueue.allocate(transport, index, num)`.
    The descriptor free list lives on the driver side (like Linux's
    desc_extra): `free_head` is the first free descriptor, `desc_next[i]` the
    one after descriptor i, `num_free` how many are free.
    """

    def __init__(self, index: int, num: int, desc_addr: int, avail_addr: int,
                 used_addr: int) -> None:
        check_queue_size(num)
        self.index = index
        self.num = num
        self.desc_addr = desc_addr
        self.avail_addr = avail_addr
        self.used_addr = used_addr
        self.free_head = 0
        self.num_free = num
        self.desc_next = [i + 1 for i in range(num)]   # last entry == num: end of list
        self.avail_idx_shadow = 0     # next avail->idx the driver will publish
        self.last_used_idx = 0        # used->idx the driver has consumed up to
        self.msix_vector: int | None = None
        self.notify_address: int | None = None

    @classmethod
    async def allocate(cls, transport: Transport, index: int, num: int) -> SplitVirtqueue:
        """Allocate and zero the three parts of a queue of `num` entries."""
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
        vq = cls(index, num, *parts)
        log.debug("queue %d: %d entries, desc %#x avail %#x used %#x",
                  index, num, *parts)
        return vq

    def __repr__(self) -> str:
        return (f"SplitVirtqueue(index={self.index}, num={self.num}, "
                f"desc={self.desc_addr:#x}, avail={self.avail_addr:#x}, "
                f"used={self.used_addr:#x})")
