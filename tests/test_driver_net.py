"""virtio-net datapath of the Python driver against the behavioural device (no simulator).

Each test runs one asyncio.run: probe, open, traffic, checks, remove. The
device model checks the driver's rings, descriptors and DMA mappings as it
goes (driver.testing); every test ends with no protocol error and, after
remove(), no mapping left.
"""
import asyncio
import random

import pytest

from driver.testing import DEFAULT_DEVICE_FEATURES, FakeDeviceProtocolError, FakeVirtioNetDevice
from driver.transport import DmaDirection
from driver.virtio_net import (DRIVER_FEATURES, ETH_HLEN, MAX_SKB_FRAGS, NETDEV_TX_BUSY,
                               NETDEV_TX_OK, TX_STOP_THRESHOLD, VirtioNet, VirtioNetError)
from driver.virtio_ring import VirtqueueBrokenError
from hdl import spec
from hdl.spec import VirtioF, VirtioNetF

ETH_ZLEN = 60                       # shortest Ethernet frame without FCS
ETH_FRAME_MAX = 1514                # MTU 1500 + Ethernet header
TIMEOUT_NS = 200_000_000            # wall-clock in the fake; only reached on failure
RX_VECTOR, TX_VECTOR = 1, 2         # queue i uses MSI-X vector i + 1

EVENT_IDX = int(VirtioF.EVENT_IDX)
INDIRECT = int(VirtioF.INDIRECT_DESC)
MRG = int(VirtioNetF.MRG_RXBUF)
ALL_RING_FEATURES = EVENT_IDX | INDIRECT | MRG


def frames(seed, count, low=ETH_ZLEN, high=ETH_FRAME_MAX):
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(low, high)) for _ in range(count)]


def device(extra=0, **kwargs):
    kwargs.setdefault("msix_vectors", 8)
    return FakeVirtioNetDevice(features=DEFAULT_DEVICE_FEATURES | extra, **kwargs)


async def opened(dev, **kwargs):
    net = VirtioNet(dev, **kwargs)
    await net.probe()
    await net.open()
    return net


async def finish(dev, net):
    """remove() and the checks every test ends with."""
    await net.remove()
    assert dev.protocol_errors == []
    assert dev.mappings == [], "buffers or rings left mapped"


async def drain_rx(net):
    """Poll while a poll is scheduled or an interrupt is pending: everything the
    device delivered must be reachable that way (no lost interrupt)."""
    while net.rq[0].napi.scheduled or net.transport.interrupt_pending(RX_VECTOR):
        await net.wait_and_poll(0, timeout_ns=TIMEOUT_NS)


def assert_totals_are_sums(stats):
    for total, field, queues in (
            ("rx_packets", "packets", stats.rx_queues), ("tx_packets", "packets", stats.tx_queues),
            ("rx_bytes", "bytes", stats.rx_queues), ("tx_bytes", "bytes", stats.tx_queues),
            ("rx_dropped", "drops", stats.rx_queues), ("tx_dropped", "drops", stats.tx_queues),
            ("rx_length_errors", "length_errors", stats.rx_queues),
            ("tx_errors", "errors", stats.tx_queues),
            ("rx_kicks", "kicks", stats.rx_queues), ("tx_kicks", "kicks", stats.tx_queues),
            ("rx_interrupts", "interrupts", stats.rx_queues),
            ("tx_interrupts", "interrupts", stats.tx_queues),
            ("tx_stops", "stops", stats.tx_queues), ("tx_wakes", "wakes", stats.tx_queues)):
        assert getattr(stats, total) == sum(getattr(q, field) for q in queues), total


# --- round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [0, ALL_RING_FEATURES], ids=["plain", "event_indirect_mrg"])
def test_tx_round_trip_many_sizes(extra):
    async def body():
        dev = device(extra)
        net = await opened(dev)
        sent = frames(1, 300)
        for frame in sent:
            assert await net.start_xmit(frame) == NETDEV_TX_OK
        assert dev.tx_frames == sent
        await net.poll_tx(0)                            # reclaim the last ones
        stats = net.stats()
        assert stats.tx_packets == len(sent)
        assert stats.tx_bytes == sum(map(len, sent))
        assert stats.tx_kicks == dev.queues[1].kicks > 0
        assert stats.tx_dropped == stats.tx_errors == 0
        await finish(dev, net)
    asyncio.run(body())


@pytest.mark.parametrize("extra", [0, ALL_RING_FEATURES], ids=["plain", "event_indirect_mrg"])
def test_rx_round_trip_many_sizes(extra):
    async def body():
        dev = device(extra)
        net = await opened(dev)
        expected = frames(2, 300)
        for k, frame in enumerate(expected):
            assert dev.inject_rx(frame)
            if k % 7 == 6:                              # bursts of 7 between polls
                await drain_rx(net)
        await drain_rx(net)
        assert net.take_received() == expected
        stats = net.stats()
        assert stats.rx_packets == len(expected)
        assert stats.rx_bytes == sum(map(len, expected))
        assert stats.rx_length_errors == stats.rx_dropped == 0
        assert stats.rx_interrupts > 0 and stats.rx_kicks == dev.queues[0].kicks
        assert dev.rx_dropped_no_buffer == 0
        await finish(dev, net)
    asyncio.run(body())


@pytest.mark.parametrize("start", [0, 0xFFF0], ids=["from_0", "across_0xffff"])
def test_indices_wrap_with_small_queues(start):
    """More than 3 x queue size packets each way on 8-entry rings."""
    async def body():
        dev = device(EVENT_IDX, queue_max_size=8, ring_start_index=start)
        net = await opened(dev, ring_start_index=start)
        sent, expected = frames(3, 40), frames(4, 40)
        for frame, rx_frame in zip(sent, expected):
            await net.send(frame, timeout_ns=TIMEOUT_NS)
            assert dev.inject_rx(rx_frame)
            await drain_rx(net)
        assert dev.tx_frames == sent
        assert net.take_received() == expected
        for vq in (net.rq[0].vq, net.sq[0].vq):
            assert (vq.avail_idx_shadow - start) & 0xFFFF >= 40
        if start:                                        # the 16-bit index really wrapped
            assert net.sq[0].vq.avail_idx_shadow < start and net.rq[0].vq.last_used_idx < start
        await finish(dev, net)
    asyncio.run(body())


def test_multi_piece_frames_direct_and_indirect():
    pieces = [b"\x01" * 14, b"\x02" * 100, b"\x03" * 7, b"\x04" * 300]

    async def run_one(extra):
        dev = device(extra, tx_autoprocess=False)
        net = await opened(dev)
        for _ in range(5):
            assert await net.start_xmit(pieces) == NETDEV_TX_OK
        in_flight = net.sq[0].vq.num - net.sq[0].vq.num_free
        dev.process_tx()
        assert dev.tx_frames == [b"".join(pieces)] * 5
        counts = (in_flight, dev.indirect_buffers, dev.chained_buffers)
        await finish(dev, net)
        return counts

    assert asyncio.run(run_one(INDIRECT)) == (5, 5, 0)       # one descriptor per frame
    assert asyncio.run(run_one(0)) == (5 * 4, 0, 5)          # a chain of 4 per frame


def test_jumbo_mtu_without_mergeable_buffers():
    async def body():
        dev = device(mtu=9000)
        net = await opened(dev)
        assert net.rx_buf_len == 12 + 9000 + 14 + 4
        big = frames(5, 3, 9000, 9014)
        for frame in big:
            await net.send(frame)
            assert dev.inject_rx(frame)
        await drain_rx(net)
        assert dev.tx_frames == big and net.take_received() == big
        with pytest.raises(ValueError, match="outside"):
            await net.start_xmit(bytes(9019))
        await finish(dev, net)
    asyncio.run(body())


# --- transmit queue stop / wake ---------------------------------------------------------------

def test_queue_stops_when_full_and_wakes_on_interrupt():
    async def body():
        dev = device(tx_autoprocess=False, queue_max_size=64)
        net = await opened(dev)
        sq = net.sq[0]
        assert sq.stop_threshold == TX_STOP_THRESHOLD
        sent = frames(6, 200)
        accepted = 0
        while await net.start_xmit(sent[accepted]) == NETDEV_TX_OK:
            accepted += 1
        # stops once fewer than 2 + MAX_SKB_FRAGS descriptors are free
        assert accepted == 64 - TX_STOP_THRESHOLD + 1 and sq.stopped
        assert sq.vq.num_free == TX_STOP_THRESHOLD - 1
        assert await net.start_xmit(sent[accepted]) == NETDEV_TX_BUSY
        assert dev.tx_frames == []

        assert dev.process_tx() == accepted               # device catches up, interrupts
        assert dev.msix_counts[TX_VECTOR] == 1
        assert await net.wait_and_poll_tx(0, TIMEOUT_NS) == accepted
        assert not sq.stopped and sq.vq.num_free == 64

        for frame in sent[accepted:]:                     # the rest, with send()'s waiting
            while await net.start_xmit(frame) == NETDEV_TX_BUSY:
                dev.process_tx()
                await net.wait_and_poll_tx(0, TIMEOUT_NS)
        dev.process_tx()
        assert dev.tx_frames == sent
        stats = net.stats()
        assert stats.tx_stops >= 2 and stats.tx_wakes == stats.tx_stops
        assert stats.tx_busy >= 2 and stats.tx_interrupts >= 2
        await finish(dev, net)
    asyncio.run(body())


def test_send_waits_for_a_lagging_device():
    """send() against a device task that transmits only now and then."""
    async def body():
        dev = device(EVENT_IDX, tx_autoprocess=False, queue_max_size=32)
        net = await opened(dev)
        done = asyncio.Event()

        async def lagging_device():
            while not done.is_set():
                await asyncio.sleep(0.0005)
                dev.process_tx()

        task = asyncio.create_task(lagging_device())
        sent = frames(22, 200)
        for frame in sent:
            await net.send(frame, timeout_ns=TIMEOUT_NS)
        done.set()
        await task
        dev.process_tx()
        assert dev.tx_frames == sent
        stats = net.stats()
        assert stats.tx_stops >= 1 and stats.tx_interrupts >= 1
        assert stats.tx_interrupts <= dev.msix_counts[TX_VECTOR]
        await finish(dev, net)
    asyncio.run(body())


def test_small_ring_stops_at_half_and_limits_pieces():
    async def body():
        dev = device(queue_max_size=8)
        net = await opened(dev)
        assert net.sq[0].stop_threshold == 4
        with pytest.raises(ValueError, match="1..4 pieces"):
            await net.start_xmit([b"x" * 14] + [b"y"] * 4)
        await finish(dev, net)
    asyncio.run(body())


# --- notification suppression -----------------------------------------------------------------

def test_event_idx_reduces_kicks_and_interrupts():
    """The same traffic against a device that lags by a burst, with and without EVENT_IDX."""
    burst = 8

    async def run_one(driver_features):
        dev = device(EVENT_IDX, tx_autoprocess=False)
        net = await opened(dev, driver_features=driver_features)
        sent, expected = frames(7, 160), frames(8, 160)
        for start in range(0, len(sent), burst):
            for frame in sent[start:start + burst]:
                await net.send(frame)
            dev.process_tx()
            for frame in expected[start:start + burst]:
                assert dev.inject_rx(frame)
            await drain_rx(net)
        dev.process_tx()
        assert dev.tx_frames == sent and net.take_received() == expected
        stats = net.stats()
        counts = {
            "kicks": sum(q.kicks for q in dev.queues[:2]),     # not the control queue
            "interrupts": sum(dev.msix_counts.values()),
            "driver_kicks": stats.rx_kicks + stats.tx_kicks,
        }
        assert counts["kicks"] == counts["driver_kicks"]
        await finish(dev, net)
        return counts

    with_event = asyncio.run(run_one(DRIVER_FEATURES))
    without = asyncio.run(run_one(DRIVER_FEATURES & ~EVENT_IDX))
    # one kick per burst instead of one per frame; one RX interrupt per burst
    # instead of one per frame
    assert with_event["kicks"] * 4 < without["kicks"], (with_event, without)
    assert with_event["interrupts"] * 2 < without["interrupts"], (with_event, without)


def test_driver_honours_no_notify_without_event_idx():
    async def body():
        dev = device(tx_autoprocess=False, use_no_notify=True)
        net = await opened(dev)
        for frame in frames(9, 10):
            await net.send(frame)
        assert dev.queues[1].kicks == 1                   # NO_NOTIFY set after the first
        dev.process_tx()
        await net.send(frames(10, 1)[0])
        assert dev.queues[1].kicks == 2                   # cleared once caught up
        dev.process_tx()
        assert len(dev.tx_frames) == 11
        await finish(dev, net)
    asyncio.run(body())


# --- receive errors ------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [0, MRG], ids=["small", "mergeable"])
def test_short_frame_is_a_length_error(extra):
    async def body():
        dev = device(extra)
        net = await opened(dev)
        good = frames(11, 2)
        assert dev.inject_rx(good[0])
        assert dev.inject_rx(b"\xee" * (ETH_HLEN - 1))    # header + 13 bytes: too short
        assert dev.inject_rx(good[1])
        await drain_rx(net)
        assert net.take_received() == good
        stats = net.stats()
        assert stats.rx_length_errors == 1 and stats.rx_errors == 1
        assert stats.rx_packets == 2
        rq = net.rq[0]
        await net.try_fill_recv(rq)                        # the buffer was recycled:
        assert rq.vq.num_free == 0 and rq.pool.allocated == rq.vq.num  # none allocated anew
        await finish(dev, net)
    asyncio.run(body())


def test_corrupted_used_id_is_a_clear_error():
    async def body():
        dev = device()
        net = await opened(dev)
        vq = net.rq[0].vq
        await net.poll(0)                                  # the poll scheduled by open()
        assert dev.inject_rx(frames(12, 1)[0])
        slot = (dev.queues[0].used_idx - 1) % vq.num
        used_elem = vq.used_addr + spec.virtq_used_elem_offset(slot)
        dev.dma_poke(used_elem, (4242).to_bytes(4, "little"))           # its id
        with pytest.raises(VirtqueueBrokenError, match="used id 4242 out of range"):
            await net.wait_and_poll(0, timeout_ns=TIMEOUT_NS)
        assert vq.is_broken
        await net.remove()                                 # still releases everything
        assert dev.mappings == [] and dev.protocol_errors == []
    asyncio.run(body())


@pytest.mark.parametrize("extra", [0, MRG], ids=["small", "mergeable"])
def test_used_length_beyond_the_buffer_is_a_length_error(extra):
    """A device claiming more bytes than the buffer holds: the frame is dropped
    and counted, the buffer recycled, nothing read past it."""
    async def body():
        dev = device(extra)
        net = await opened(dev)
        vq = net.rq[0].vq
        await net.poll(0)                                  # the poll scheduled by open()
        good = frames(16, 1)[0]
        assert dev.inject_rx(frames(17, 1)[0])
        slot = (dev.queues[0].used_idx - 1) % vq.num
        used_len = vq.used_addr + spec.virtq_used_elem_offset(slot) + spec.VIRTQ_USED_ELEM_LEN_OFFSET
        dev.dma_poke(used_len, (net.rx_buf_len + 1).to_bytes(4, "little"))
        assert dev.inject_rx(good)
        await drain_rx(net)
        assert net.take_received() == [good]
        assert net.stats().rx_length_errors == 1
        await finish(dev, net)
    asyncio.run(body())


# --- mergeable receive buffers ----------------------------------------------------------------

def test_mergeable_buffers_gather_num_buffers():
    async def body():
        dev = device(MRG, queue_max_size=32)
        net = await opened(dev, mergeable_buf_len=256)
        assert net.rx_buf_len == 256
        expected = frames(13, 60)
        for frame in expected:
            assert dev.inject_rx(frame)
            await drain_rx(net)
        assert net.take_received() == expected
        assert net.stats().rx_packets == 60
        rq = net.rq[0]
        await net.try_fill_recv(rq)
        assert rq.vq.num_free == 0 and rq.pool.allocated == rq.vq.num
        await finish(dev, net)
    asyncio.run(body())


@pytest.mark.parametrize("num_buffers", [0, 3], ids=["zero", "more_than_used"])
def test_mergeable_bad_num_buffers(num_buffers):
    async def body():
        dev = device(MRG)
        net = await opened(dev)
        good = frames(14, 1)[0]
        assert dev.inject_rx(frames(15, 1)[0], num_buffers=num_buffers)  # one buffer used
        assert dev.inject_rx(good)
        await drain_rx(net)
        stats = net.stats()
        assert stats.rx_length_errors == 1 and stats.rx_dropped == 1
        # "3" swallowed the next buffer as part of the bad packet; "0" did not
        assert net.take_received() == ([good] if num_buffers == 0 else [])
        await finish(dev, net)
    asyncio.run(body())


def test_rx_without_buffers_is_dropped_by_the_device():
    async def body():
        dev = device(queue_max_size=8)
        net = await opened(dev)
        burst = frames(16, 10)
        delivered = [frame for frame in burst if dev.inject_rx(frame)]
        assert len(delivered) == 8 and dev.rx_dropped_no_buffer == 2
        await drain_rx(net)
        assert net.take_received() == delivered
        assert dev.inject_rx(burst[0])                     # refilled
        await finish(dev, net)
    asyncio.run(body())


# --- statistics and life cycle ----------------------------------------------------------------

def test_stats_totals_are_sums_of_queues():
    async def body():
        dev = device(EVENT_IDX, max_pairs=2, msix_vectors=8)
        net = await opened(dev)
        assert len(net.rq) == len(net.sq) == 2            # max pairs, both in use
        for frame in frames(17, 30):
            await net.send(frame, 0)
            dev.inject_rx(frame)
        dev.inject_rx(b"short")
        await drain_rx(net)
        await net.poll_tx(0)
        stats = net.stats()
        assert_totals_are_sums(stats)
        assert stats.rx_packets == stats.tx_packets == 30 and stats.rx_length_errors == 1
        assert stats.rx_queues[1].packets == stats.tx_queues[1].packets == 0
        net.rq[0].stats.packets += 1                       # a snapshot, not live counters
        assert stats.rx_packets == 30
        await finish(dev, net)
    asyncio.run(body())


def test_harness_tasks_receive_by_interrupt():
    """What a test harness does: a receiver task waits for interrupts while frames arrive."""
    async def body():
        dev = device(EVENT_IDX)
        received = []
        net = VirtioNet(dev, on_receive=lambda pair, frame: received.append(frame))
        await net.probe()
        await net.open()
        expected = frames(18, 50)
        stop = asyncio.Event()

        async def receiver():
            while not stop.is_set():
                await net.wait_and_poll(0, budget=16, timeout_ns=2_000_000)

        task = asyncio.create_task(receiver())
        for frame in expected:
            assert dev.inject_rx(frame)
            await asyncio.sleep(0)
        for _ in range(100):
            if len(received) == len(expected):
                break
            await asyncio.sleep(0.001)
        stop.set()
        await task
        assert received == expected
        assert net.stats().rx_interrupts >= 1 and net.rq[0].frames == []
        await finish(dev, net)
    asyncio.run(body())


def test_receive_helper_and_close():
    async def body():
        dev = device()
        net = await opened(dev)
        expected = frames(19, 5)
        for frame in expected:
            dev.inject_rx(frame)
        assert await net.receive(5, timeout_ns=TIMEOUT_NS) == expected
        await net.close()
        assert await net.start_xmit(expected[0]) == NETDEV_TX_BUSY
        before = sum(dev.msix_counts.values())
        assert dev.inject_rx(expected[0])                  # posted buffers stay posted
        assert sum(dev.msix_counts.values()) == before     # but interrupts are off
        await finish(dev, net)
    asyncio.run(body())


def test_without_msix_poll_is_the_way():
    async def body():
        dev = device(msix_vectors=0)
        net = await opened(dev)
        frame = frames(20, 1)[0]
        assert await net.poll(0) == 0                      # the poll open() scheduled
        dev.inject_rx(frame)
        assert dev.isr & spec.VirtioIsr.QUEUE              # the device could only set ISR
        with pytest.raises(VirtioNetError, match="no MSI-X vector"):
            await net.wait_and_poll(0)
        assert await net.poll(0) == 1 and net.take_received() == [frame]
        await finish(dev, net)
    asyncio.run(body())


def test_device_catches_a_write_outside_the_mappings():
    """The model's own check: a receive buffer taken back behind the device's back."""
    async def body():
        dev = device()
        net = await opened(dev)
        vq = net.rq[0].vq
        first_buffer = int.from_bytes(dev.dma_peek(vq.desc_addr, 8), "little")   # desc 0
        dev.dma_unmap(first_buffer, net.rx_buf_len, DmaDirection.FROM_DEVICE)
        with pytest.raises(FakeDeviceProtocolError, match="outside the driver's FROM_DEVICE"):
            dev.inject_rx(frames(21, 1)[0])
    asyncio.run(body())


def test_frame_validation():
    async def body():
        dev = device()
        net = await opened(dev)
        with pytest.raises(ValueError, match="outside"):
            await net.start_xmit(bytes(ETH_HLEN - 1))
        with pytest.raises(ValueError, match="pieces"):
            await net.start_xmit([b"a" * 14] + [b"b"] * (MAX_SKB_FRAGS + 1))
        with pytest.raises(ValueError, match="empty fragment"):
            await net.start_xmit([b"a" * 14, b""])
        with pytest.raises(VirtioNetError, match="pair 1 is not in use"):
            await net.start_xmit(bytes(60), 1)
        await finish(dev, net)
    asyncio.run(body())
