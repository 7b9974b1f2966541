"""Split virtqueue, driver side (driver/virtio_ring.py), against raw DMA memory.

The test plays the device by reading and writing the rings directly
(FakeVirtioNetDevice serves only as DMA memory with mapping bookkeeping).
"""
import asyncio
import random
import struct

import pytest

from driver.testing import FakeVirtioNetDevice
from driver.transport import DmaDirection
from driver.virtio_ring import (SplitVirtqueue, VirtqueueBrokenError, VirtqueueError,
                                VirtqueueFullError, avail_ring_size, desc_table_size,
                                used_ring_size, vring_need_event)
from hdl import spec
from hdl.spec import VirtioF, VirtqAvailF, VirtqDescF, VirtqUsedF

TO, FROM = DmaDirection.TO_DEVICE, DmaDirection.FROM_DEVICE
NOTIFY_ADDRESS = 0xFE00_3000


def run(coro):
    return asyncio.run(coro)


def le16(dev, addr):
    return int.from_bytes(dev.dma_peek(addr, 2), "little")


def poke16(dev, addr, value):
    dev.dma_poke(addr, (value & 0xFFFF).to_bytes(2, "little"))


def desc(dev, table, i):
    return struct.unpack("<QIHH", dev.dma_peek(table + 16 * i, 16))


def avail_idx(dev, vq):
    return le16(dev, vq.avail_addr + 2)


def avail_entry(dev, vq, idx):
    return le16(dev, vq.avail_addr + 4 + 2 * (idx % vq.num))


def used_event(dev, vq):
    return le16(dev, vq.avail_addr + spec.virtq_used_event_offset(vq.num))


def device_use(dev, vq, head, length=0, *, count=1):
    """Play the device: return `head` as used, then bump used idx by `count`."""
    idx = le16(dev, vq.used_addr + 2)
    dev.dma_poke(vq.used_addr + 4 + 8 * (idx % vq.num), struct.pack("<II", head, length))
    poke16(dev, vq.used_addr + 2, idx + count)


def buffers(dev, n, size=64):
    return [dev.dma_alloc(size, 64) for _ in range(n)]


class RingMemory(FakeVirtioNetDevice):
    """DMA memory and mappings of the fake device; MMIO writes only recorded."""

    def __init__(self):
        super().__init__()
        self.mmio_writes = []

    async def mmio_write(self, addr, size, value):
        self.mmio_writes.append((addr, size, value))


def make_vq(num=8, features=0, start_index=0):
    dev = RingMemory()
    vq = run(SplitVirtqueue.allocate(dev, 1, num, features=int(features),
                                     start_index=start_index))
    vq.notify_address = NOTIFY_ADDRESS
    return dev, vq


# --- allocation and mappings -----------------------------------------------------------------

def test_allocate_maps_rings_by_direction():
    dev, vq = make_vq(8)
    assert sorted(dev.mappings) == sorted([
        (vq.desc_addr, desc_table_size(8), TO),
        (vq.avail_addr, avail_ring_size(8), TO),
        (vq.used_addr, used_ring_size(8), FROM)])
    vq.free()
    assert dev.mappings == [] and dev.protocol_errors == []


def test_start_index_written_to_both_rings():
    dev, vq = make_vq(8, start_index=0xFFFE)
    assert avail_idx(dev, vq) == 0xFFFE and le16(dev, vq.used_addr + 2) == 0xFFFE
    assert vq.avail_idx_shadow == vq.last_used_idx == 0xFFFE


# --- adding buffers ---------------------------------------------------------------------------

def test_chain_layout_and_publication():
    dev, vq = make_vq(8)
    out1, out2, in1 = buffers(dev, 3)
    run(vq.add_sgs([(out1, 10), (out2, 20)], [(in1, 30)], "tok"))
    assert vq.num_free == 5 and vq.free_head == 3
    assert desc(dev, vq.desc_addr, 0) == (out1, 10, VirtqDescF.NEXT, 1)
    assert desc(dev, vq.desc_addr, 1) == (out2, 20, VirtqDescF.NEXT, 2)
    assert desc(dev, vq.desc_addr, 2) == (in1, 30, VirtqDescF.WRITE, 0)
    assert avail_idx(dev, vq) == 1 and avail_entry(dev, vq, 0) == 0
    assert (out1, 10, TO) in dev.mappings and (in1, 30, FROM) in dev.mappings

    run(vq.add_outbuf([(out1, 5)], "second"))
    assert avail_idx(dev, vq) == 2 and avail_entry(dev, vq, 1) == 3
    assert desc(dev, vq.desc_addr, 3) == (out1, 5, 0, 0)


def test_full_queue_raises_and_changes_nothing():
    dev, vq = make_vq(4)
    bufs = buffers(dev, 5)
    run(vq.add_outbuf([(b, 8) for b in bufs[:3]], "a"))
    before = (vq.num_free, vq.free_head, vq.avail_idx_shadow, len(dev.mappings))
    with pytest.raises(VirtqueueFullError, match="2 descriptor"):
        run(vq.add_outbuf([(bufs[3], 8), (bufs[4], 8)], "b"))
    assert (vq.num_free, vq.free_head, vq.avail_idx_shadow, len(dev.mappings)) == before
    run(vq.add_outbuf([(bufs[3], 8)], "c"))
    assert vq.num_free == 0


def test_bad_arguments():
    dev, vq = make_vq(4)
    (buf,) = buffers(dev, 1)
    with pytest.raises(ValueError, match="token"):
        run(vq.add_outbuf([(buf, 8)], None))
    with pytest.raises(ValueError, match="at least one segment"):
        run(vq.add_sgs([], [], "x"))
    with pytest.raises(ValueError, match="bad segment"):
        run(vq.add_inbuf([(buf, 0)], "x"))


def test_indirect_table_for_several_segments_only():
    dev, vq = make_vq(8, VirtioF.INDIRECT_DESC)
    a, b, c = buffers(dev, 3)
    run(vq.add_sgs([(a, 10), (b, 20)], [(c, 30)], "ind"))
    assert vq.num_free == 7
    addr, length, flags, _ = desc(dev, vq.desc_addr, 0)
    assert flags == VirtqDescF.INDIRECT and length == 3 * 16
    assert desc(dev, addr, 0) == (a, 10, VirtqDescF.NEXT, 1)
    assert desc(dev, addr, 1) == (b, 20, VirtqDescF.NEXT, 2)
    assert desc(dev, addr, 2) == (c, 30, VirtqDescF.WRITE, 0)
    assert (addr, 48, TO) in dev.mappings

    run(vq.add_outbuf([(a, 10)], "direct"))              # one segment: no table
    assert desc(dev, vq.desc_addr, 1)[2] == 0 and vq.num_free == 6

    device_use(dev, vq, 0, 30)
    assert run(vq.get_buf()) == ("ind", 30)
    assert (addr, 48, TO) not in dev.mappings and (c, 30, FROM) not in dev.mappings
    run(vq.add_outbuf([(a, 1), (b, 2), (c, 3), (a, 4)], "reuse"))  # 4 entries: same table
    assert desc(dev, vq.desc_addr, 0)[0] == addr
    assert dev.protocol_errors == []


# --- collecting used buffers ------------------------------------------------------------------

def test_get_buf_returns_token_and_frees_chain():
    dev, vq = make_vq(8)
    bufs = buffers(dev, 4)
    run(vq.add_outbuf([(bufs[0], 8), (bufs[1], 8)], "a"))
    run(vq.add_inbuf([(bufs[2], 8)], "b"))
    assert run(vq.get_buf()) is None
    device_use(dev, vq, 2, 7)                            # out of order: b first
    assert run(vq.get_buf()) == ("b", 7)
    assert vq.num_free == 6 and vq.free_head == 2
    device_use(dev, vq, 0)
    assert run(vq.get_buf()) == ("a", 0)
    assert vq.num_free == 8 and run(vq.get_buf()) is None
    assert len(dev.mappings) == 3                        # the rings only
    # every descriptor is reachable once from free_head
    seen, i = [], vq.free_head
    while i != vq.num and len(seen) <= vq.num:
        seen.append(i)
        i = vq.desc_next[i]
    assert sorted(seen) == list(range(8))


@pytest.mark.parametrize("bad_id, message", [
    (1000, "used id 1000 out of range"),
    (5, "used id 5 is not the head of a buffer in flight"),
])
def test_corrupted_used_id_breaks_the_ring(bad_id, message):
    dev, vq = make_vq(8)
    (buf,) = buffers(dev, 1)
    run(vq.add_outbuf([(buf, 8)], "a"))
    device_use(dev, vq, bad_id)
    with pytest.raises(VirtqueueBrokenError, match=message):
        run(vq.get_buf())
    assert vq.is_broken
    with pytest.raises(VirtqueueBrokenError, match="is broken"):
        run(vq.add_outbuf([(buf, 8)], "b"))
    with pytest.raises(VirtqueueBrokenError, match="is broken"):
        run(vq.get_buf())
    assert not run(vq.notify())
    # clean-up still works on a broken ring
    assert run(vq.detach_unused_buf()) == "a" and run(vq.detach_unused_buf()) is None


def test_used_idx_too_far_ahead_breaks_the_ring():
    dev, vq = make_vq(8)
    (buf,) = buffers(dev, 1)
    run(vq.add_outbuf([(buf, 8)], "a"))
    device_use(dev, vq, 0, count=9)
    with pytest.raises(VirtqueueBrokenError, match="9 entries ahead"):
        run(vq.get_buf())


def test_detach_unused_buf_and_free():
    dev, vq = make_vq(8, VirtioF.INDIRECT_DESC)
    bufs = buffers(dev, 4)
    run(vq.add_outbuf([(bufs[0], 8), (bufs[1], 8)], "a"))
    run(vq.add_inbuf([(bufs[2], 8)], "b"))
    tokens = {run(vq.detach_unused_buf()), run(vq.detach_unused_buf())}
    assert tokens == {"a", "b"} and run(vq.detach_unused_buf()) is None
    assert vq.num_free == 8 and avail_idx(dev, vq) == 0
    vq.free()
    assert dev.mappings == [] and dev.protocol_errors == []
    with pytest.raises(VirtqueueError, match="not mapped"):
        run(vq.add_outbuf([(bufs[3], 8)], "c"))


# --- wrap-around ------------------------------------------------------------------------------

def test_indexes_wrap_at_16_bits():
    dev, vq = make_vq(4, VirtioF.EVENT_IDX, start_index=0xFFFD)
    (buf,) = buffers(dev, 1)
    for n in range(12):                                # crosses 0xFFFF -> 0 once
        run(vq.add_outbuf([(buf, 8)], n))
        head = avail_entry(dev, vq, (0xFFFD + n) & 0xFFFF)
        device_use(dev, vq, head, n)
        assert run(vq.get_buf()) == (n, n)
    assert vq.avail_idx_shadow == vq.last_used_idx == (0xFFFD + 12) & 0xFFFF == 9
    assert avail_idx(dev, vq) == 9 and used_event(dev, vq) == 9


# --- notifications ----------------------------------------------------------------------------

def test_vring_need_event_matches_definition():
    rng = random.Random(7)
    for _ in range(5000):
        old = rng.randrange(0x10000)
        new = (old + rng.randrange(0, 300)) & 0xFFFF
        event = (old + rng.randrange(-400, 400)) & 0xFFFF
        crossed = {(old + k) & 0xFFFF for k in range((new - old) & 0xFFFF)}
        assert vring_need_event(event, new, old) == (event in crossed), (event, new, old)


def test_kick_prepare_honours_no_notify():
    dev, vq = make_vq(8)
    (buf,) = buffers(dev, 1)
    run(vq.add_outbuf([(buf, 8)], "a"))
    assert run(vq.kick_prepare())
    assert run(vq.kick()) and dev.mmio_writes == [(NOTIFY_ADDRESS, 2, 1)]
    poke16(dev, vq.used_addr, VirtqUsedF.NO_NOTIFY)
    run(vq.add_outbuf([(buf, 8)], "b"))
    assert not run(vq.kick())
    assert len(dev.mmio_writes) == 1


@pytest.mark.parametrize("start", [0, 0xFFFE])
def test_kick_prepare_with_event_idx(start):
    dev, vq = make_vq(8, VirtioF.EVENT_IDX, start_index=start)
    (buf,) = buffers(dev, 1)
    avail_event = vq.used_addr + spec.virtq_avail_event_offset(8)
    poke16(dev, avail_event, start)                 # device: "tell me about idx start"
    for _ in range(3):
        run(vq.add_outbuf([(buf, 8)], "x"))
    assert run(vq.kick_prepare())                   # start..start+3 crosses start
    run(vq.add_outbuf([(buf, 8)], "y"))
    assert not run(vq.kick_prepare())               # start+3..start+4 does not
    poke16(dev, avail_event, start + 4)
    run(vq.add_outbuf([(buf, 8)], "z"))
    assert run(vq.kick_prepare())


def test_callbacks_without_event_idx_use_the_flag():
    dev, vq = make_vq(8)
    flags = lambda: le16(dev, vq.avail_addr)           # noqa: E731
    run(vq.disable_cb())
    assert flags() == VirtqAvailF.NO_INTERRUPT
    (buf,) = buffers(dev, 1)
    run(vq.add_outbuf([(buf, 8)], "a"))
    assert run(vq.enable_cb()) and flags() == 0
    run(vq.disable_cb())
    device_use(dev, vq, 0)
    assert not run(vq.enable_cb())                      # a buffer is already waiting
    opaque = run(vq.enable_cb_prepare())
    assert run(vq.poll(opaque))


def test_callbacks_with_event_idx_use_used_event():
    dev, vq = make_vq(16, VirtioF.EVENT_IDX)
    bufs = buffers(dev, 1)
    run(vq.disable_cb())
    assert le16(dev, vq.avail_addr) == 0                # the flag is not used
    assert used_event(dev, vq) == 0x8000                # parked far away
    for n in range(8):
        run(vq.add_outbuf([(bufs[0], 8)], n))
    assert run(vq.enable_cb_delayed())                  # 3/4 of 8 pending
    assert used_event(dev, vq) == 6
    for n in range(7):
        device_use(dev, vq, n)
    assert not run(vq.enable_cb_delayed())              # 7 > 6 already used
    assert run(vq.get_buf()) == (0, 0) and used_event(dev, vq) == 1
    assert run(vq.enable_cb_prepare()) == 1 and used_event(dev, vq) == 1


# --- callers' serialisation -------------------------------------------------------------------

class YieldingMemory(RingMemory):
    """DMA writes that let other coroutines run, as a simulator's may."""

    async def dma_write(self, addr, data):
        await asyncio.sleep(0)
        await super().dma_write(addr, data)


def test_concurrent_producers_are_refused():
    dev = YieldingMemory()
    vq = run(SplitVirtqueue.allocate(dev, 0, 8))
    a, b = buffers(dev, 2)

    async def both():
        await asyncio.gather(vq.add_outbuf([(a, 8)], "a"), vq.add_outbuf([(b, 8)], "b"))

    with pytest.raises(VirtqueueError, match="add_sgs while add_sgs is in progress"):
        run(both())
