"""Traffic through the whole system: the Python driver's rings in host memory,
the gateware ring engine and DMA, and the wire-side frame models."""
import random
import struct

import cocotb
from cocotb.triggers import RisingEdge, Timer
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from driver.transport import DmaDirection
from driver.virtio_net import DRIVER_FEATURES, VirtioNet
from hdl import spec
from hdl.virtio.bar_layout import BarLayout
from sim.tb import TB

TIMEOUT_NS = 2_000_000
RX_VECTOR = 1                 # config is vector 0, queue i is vector i + 1
TX_VECTOR = 2
QUEUE_SIZE = 64
WIRE_1GBE_IDLE_CYCLES = 600          # the source runs at 4 bytes a cycle, 1 GbE is about 1
F_NEXT = spec.VirtqDescF.NEXT
OUTSIDE_HOST_MEMORY = 1 << 40        # added to a buffer address: nothing there
MSIX_TABLE = BarLayout().msix_table
MSIX_PBA = BarLayout().msix_pba
MIXED_VLAN = 42                      # the VLAN of mixed_frames()' tagged frames
MSIX_VECTOR_CTRL = 12                # Vector Control in a table entry (PCI 3.0 section 6.8.2.9)


def _tb(dut, name):
    return TB(dut, pcap_name=f"{name}.pcapng")


async def opened(dut, name, **kwargs):
    tb = _tb(dut, name)
    await tb.init()
    # one queue pair unless asked (these tests are about one transmitq and receiveq)
    kwargs.setdefault("queue_pairs", 1)
    net = VirtioNet(tb.transport, queue_size=kwargs.pop("queue_size", QUEUE_SIZE),
                    ring_start_index=tb.params.ring_start_index, **kwargs)
    await net.probe()
    await net.open()
    if net.has_feature(spec.VirtioNetF.CTRL_VLAN):
        # the guest has an interface on the VLAN of mixed_frames(): Linux adds
        # its id to the device's VLAN filter (ndo_vlan_rx_add_vid)
        assert await net.vlan_rx_add_vid(MIXED_VLAN)
    return tb, net


def to_device(net, frame):
    """`frame` with the device's MAC as destination: the receive filter the
    driver set up at open() takes it (random bytes could be anyone's)."""
    return bytes(net.mac) + bytes(frame[len(net.mac):])


def mixed_frames(rng, mtu, count):
    """ARP, IPv4 UDP/TCP/ICMP, IPv6, VLAN-tagged: random payloads, many sizes."""
    src, dst = "02:00:00:00:00:01", "02:00:5e:10:00:01"
    kinds = [
        lambda: Ether(src=src, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.0.1", pdst="10.0.0.2"),
        lambda: Ether(src=src, dst=dst) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=2000),
        lambda: Ether(src=src, dst=dst) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000, dport=80),
        lambda: Ether(src=src, dst=dst) / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(),
        lambda: Ether(src=src, dst=dst) / IPv6(src="fe80::1", dst="fe80::2") / UDP(sport=5, dport=6),
        lambda: Ether(src=src, dst=dst) / Dot1Q(vlan=MIXED_VLAN) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(),
    ]
    frames = []
    for n in range(count):
        packet = kinds[n % len(kinds)]()
        vlan = Dot1Q in packet
        limit = mtu + spec.ETH_HLEN + (spec.VLAN_HLEN if vlan else 0)
        size = rng.choice([60, 61, 64, 127, 128, 255, 256, 511, 512, 1023, limit, rng.randint(60, limit)])
        size = max(min(size, limit), len(packet))
        frames.append(bytes(packet / Raw(rng.randbytes(size - len(packet)))))
    return frames


@cocotb.test()
async def tx_frames_reach_the_wire(dut):
    """Every kind and size of frame the driver sends leaves on the wire byte for byte."""
    tb, net = await opened(dut, "tx_frames")
    rng = random.Random(1)
    frames = mixed_frames(rng, net.mtu, 40)
    tb.wire_sink.set_backpressure(probability=0.7, seed=2)
    for frame in frames:
        await net.send(frame, timeout_ns=TIMEOUT_NS)
    got = [await tb.wire_sink.recv(timeout_ns=TIMEOUT_NS) for _ in frames]
    assert got == frames
    await net.poll_tx(0)
    stats = net.stats()
    assert stats.tx_packets == len(frames) and stats.tx_bytes == sum(map(len, frames))
    dev = await net.device_stats()
    assert dev.queues[spec.tx_queue_index(0)].packets == len(frames)
    assert dev.queues[spec.tx_queue_index(0)].bytes == sum(map(len, frames))
    assert tb.transport.interrupts[TX_VECTOR] > 0
    tb.check_memory()


@cocotb.test()
async def rx_frames_reach_the_driver(dut):
    """Frames from the wire land in the driver's buffers, header stripped, in order."""
    tb, net = await opened(dut, "rx_frames")
    rng = random.Random(3)
    frames = mixed_frames(rng, net.mtu, 40)
    tb.wire_source.set_gaps(idle_cycles=20, gap_probability=0.1, seed=4)
    got = []
    for frame in frames:
        await tb.wire_source.send(frame)
        got += await net.receive(1, pair=0, timeout_ns=TIMEOUT_NS)
    missing = [Ether(f).summary() for f in frames if f not in got]
    assert got == frames, (f"{len(missing)} of {len(frames)} frames missing: {missing[:4]}; "
                           f"device drops {(await net.device_stats()).drops}")
    stats = net.stats()
    assert stats.rx_packets == len(frames) and stats.rx_length_errors == 0
    dev = await net.device_stats()
    assert dev.queues[spec.rx_queue_index(0)].packets == len(frames)
    assert tb.transport.interrupts[RX_VECTOR] > 0
    tb.check_memory()


@cocotb.test()
async def indexes_wrap_around(dut):
    """Built with ring indexes starting near 0xFFFF: more than three times the
    queue size each way, across the 16-bit wrap."""
    tb, net = await opened(dut, "wrap_around", queue_size=16)
    assert tb.params.ring_start_index > 0xFFFF - 16, "build this test with ring_start_index near 0xFFFF"
    rng = random.Random(5)
    count = 3 * 16 + 5
    tx = [rng.randbytes(rng.randint(60, 300)) for _ in range(count)]
    for frame in tx:
        await net.send(frame, timeout_ns=TIMEOUT_NS)
    assert [await tb.wire_sink.recv(timeout_ns=TIMEOUT_NS) for _ in tx] == tx
    rx = [to_device(net, rng.randbytes(rng.randint(60, 300))) for _ in range(count)]
    got = []
    for frame in rx:
        await tb.wire_source.send(frame)
        got += await net.receive(1, pair=0, timeout_ns=TIMEOUT_NS)
    assert got == rx
    used_idx = await net.queues[spec.tx_queue_index(0)]._read_used_idx()
    assert used_idx == (tb.params.ring_start_index + count) & 0xFFFF
    tb.check_memory()


@cocotb.test()
async def rx_without_buffers_drops_and_counts(dut):
    """Frames arriving before the driver posts RX buffers: the wire is never
    stalled, what does not fit is dropped and counted, the rest is delivered."""
    tb = _tb(dut, "rx_without_buffers")
    await tb.init()
    net = VirtioNet(tb.transport, queue_size=QUEUE_SIZE, queue_pairs=1)
    await net.probe()                          # DRIVER_OK, no RX buffer posted yet
    rng = random.Random(6)
    frames = [to_device(net, rng.randbytes(1500)) for _ in range(8)]
    for frame in frames:
        await tb.wire_source.send(frame)
    await tb.wire_source.wait_idle()
    dev = await net.device_stats()
    dropped = dev.drops["rx_no_space"]
    assert dropped >= 1 and dev.queues[0].drops == dropped
    await net.open()
    got = await net.receive(len(frames) - dropped, pair=0, timeout_ns=TIMEOUT_NS)
    assert got == frames[:len(got)], "the frames kept are the first ones, intact"
    await Timer(20, "us")
    assert net.take_received(0) == []
    tb.check_memory()


async def _post_raw(tb, vq, descriptors, head):
    """Write descriptors and an avail entry as a buggy driver would, then kick."""
    for index, (addr, length, flags, next_) in descriptors.items():
        await tb.transport.dma_write(vq.desc_addr + 16 * index,
                                     struct.pack("<QIHH", addr, length, flags, next_))
    slot = vq.avail_idx_shadow % vq.num
    await tb.transport.dma_write(vq.avail_addr + 4 + 2 * slot, struct.pack("<H", head))
    vq.avail_idx_shadow = (vq.avail_idx_shadow + 1) & 0xFFFF
    await tb.transport.dma_write(vq.avail_addr + 2, struct.pack("<H", vq.avail_idx_shadow))
    await vq.notify()


BAD_CHAINS = {
    # name: (queue, {desc index: (addr offset, len, flags, next)}, head)
    "index_out_of_range": ("tx", {}, 1000),
    "loop": ("tx", {0: (0, 64, F_NEXT, 1), 1: (64, 64, F_NEXT, 0)}, 0),
    "zero_length": ("tx", {0: (0, 0, 0, 0)}, 0),
    "read_only_rx_buffer": ("rx", {0: (0, 2048, 0, 0)}, 0),
    "chain_longer_than_queue": ("tx", {i: (0, 64, F_NEXT, (i + 1) % QUEUE_SIZE) for i in range(QUEUE_SIZE)}, 0),
    # the root complex answers a read outside host memory with UR: a DMA error
    "buffer_outside_host_memory": ("tx", {0: (OUTSIDE_HOST_MEMORY, 64, 0, 0)}, 0),
}


async def _bad_descriptor(dut, name):
    tb = _tb(dut, f"bad_descriptor_{name}")
    await tb.init()
    net = VirtioNet(tb.transport, queue_size=QUEUE_SIZE, queue_pairs=1)
    await net.probe()
    which, descriptors, head = BAD_CHAINS[name]
    vq = net.queues[spec.tx_queue_index(0) if which == "tx" else spec.rx_queue_index(0)]
    scratch = tb.transport.dma_alloc(4096, 64)
    # a scratch buffer mapped to the device the way its direction says
    tb.transport.dma_map(scratch, 4096, DmaDirection.TO_DEVICE)
    await _post_raw(tb, vq, {i: (scratch + a, n, f, x) for i, (a, n, f, x) in descriptors.items()}, head)
    if which == "rx":
        await tb.wire_source.send(bytes(100))
    await tb.transport.wait_interrupt(0, TIMEOUT_NS)           # config change
    status = await net.pci.get_status()
    assert status & spec.VirtioStatus.DEVICE_NEEDS_RESET, f"status {status:#x}"
    tb.check_memory()
    # the driver recovers: reset, probe again, and traffic flows
    recovered = VirtioNet(tb.transport, queue_size=QUEUE_SIZE, queue_pairs=1)
    await recovered.probe()
    assert not await recovered.pci.get_status() & spec.VirtioStatus.DEVICE_NEEDS_RESET
    await recovered.open()
    frame = bytes(Ether(dst="02:00:5e:10:00:01") / IP() / UDP() / Raw(b"after reset"))
    await recovered.send(frame, timeout_ns=TIMEOUT_NS)
    assert await tb.wire_sink.recv(timeout_ns=TIMEOUT_NS) == frame
    await tb.wire_source.send(frame)
    assert await recovered.receive(1, pair=0, timeout_ns=TIMEOUT_NS) == [frame]
    tb.check_memory()


def _make_bad_test(name):
    async def test(dut):
        await _bad_descriptor(dut, name)
    test.__name__ = test.__qualname__ = f"bad_descriptor_{name}"
    test.__doc__ = f"A {name.replace('_', ' ')}: DEVICE_NEEDS_RESET, nothing written, recovery."
    return cocotb.test()(test)


for _name in BAD_CHAINS:
    globals()[f"bad_descriptor_{_name}"] = _make_bad_test(_name)


@cocotb.test()
async def masked_vector_is_pending_then_fires(dut):
    """MSI-X: a masked queue vector sets its PBA bit instead of firing; unmasked, it fires."""
    tb, net = await opened(dut, "masked_vector")
    await net.poll(0)                         # NAPI completes: RX interrupts armed
    bar = tb.transport.bar_address(0)
    entry = bar + MSIX_TABLE + spec.MSIX_ENTRY_SIZE * RX_VECTOR
    await tb.transport.mmio_write(entry + MSIX_VECTOR_CTRL, 4, 1)          # mask
    before = tb.transport.interrupts[RX_VECTOR]
    frame = bytes(Ether(dst="02:00:5e:10:00:01") / IP() / UDP() / Raw(b"masked"))
    await tb.wire_source.send(frame)
    await Timer(20, "us")
    assert tb.transport.interrupts[RX_VECTOR] == before
    pba = await tb.transport.mmio_read(bar + MSIX_PBA, 4)
    assert pba >> RX_VECTOR & 1, f"PBA {pba:#x}"
    await tb.transport.mmio_write(entry + MSIX_VECTOR_CTRL, 4, 0)          # unmask
    assert await net.receive(1, pair=0, timeout_ns=TIMEOUT_NS) == [frame]
    assert tb.transport.interrupts[RX_VECTOR] == before + 1
    assert not (await tb.transport.mmio_read(bar + MSIX_PBA, 4)) >> RX_VECTOR & 1


async def _notification_counts(tb, features, rng):
    """Bursts both ways with one driver configuration; (kicks, interrupts)."""
    net = VirtioNet(tb.transport, queue_size=QUEUE_SIZE, driver_features=features,
                    queue_pairs=1)
    await net.probe()
    await net.open()
    before = sum(tb.transport.interrupts)
    tb.wire_sink.set_backpressure(probability=0.5, seed=7)
    # about 1 GbE from the wire side (a byte a cycle), back to back
    tb.wire_source.set_gaps(idle_cycles=WIRE_1GBE_IDLE_CYCLES)
    for _ in range(4):
        burst = [rng.randbytes(rng.randint(60, 600)) for _ in range(24)]
        for frame in burst:
            await net.send(frame, timeout_ns=TIMEOUT_NS)
        for frame in burst:
            assert await tb.wire_sink.recv(timeout_ns=TIMEOUT_NS) == frame
        incoming = [to_device(net, rng.randbytes(rng.randint(60, 600))) for _ in range(24)]
        for frame in incoming:
            tb.wire_source.send_nowait(frame)
        got = await net.receive(len(incoming), pair=0, timeout_ns=TIMEOUT_NS)
        assert got == incoming, f"{len(got)} of {len(incoming)} frames received"
    await net.poll_tx(0)
    stats = net.stats()
    kicks = stats.tx_kicks + stats.rx_kicks
    interrupts = sum(tb.transport.interrupts) - before
    await net.remove()
    return kicks, interrupts


@cocotb.test()
async def event_idx_reduces_notifications(dut):
    """The same traffic with and without VIRTIO_F_EVENT_IDX: fewer doorbells
    and fewer interrupts with it (both counted)."""
    tb = _tb(dut, "event_idx")
    await tb.init()
    assert tb.params.device_features & spec.VirtioF.EVENT_IDX
    without = await _notification_counts(tb, DRIVER_FEATURES & ~spec.VirtioF.EVENT_IDX, random.Random(8))
    with_event_idx = await _notification_counts(tb, DRIVER_FEATURES, random.Random(8))
    tb.log.info("kicks, interrupts without EVENT_IDX: %s; with: %s", without, with_event_idx)
    assert with_event_idx[0] < without[0], f"doorbells: {with_event_idx[0]} with, {without[0]} without"
    assert with_event_idx[1] < without[1], f"interrupts: {with_event_idx[1]} with, {without[1]} without"
    tb.check_memory()


async def _receive_mixed(dut, name, seed, **driver_args):
    """The mixed frames from the wire through one driver configuration."""
    tb, net = await opened(dut, name, **driver_args)
    rng = random.Random(seed)
    frames = mixed_frames(rng, net.mtu, 30)
    tb.wire_source.set_gaps(idle_cycles=20, gap_probability=0.1, seed=seed)
    got = []
    for frame in frames:
        await tb.wire_source.send(frame)
        got += await net.receive(1, pair=0, timeout_ns=TIMEOUT_NS)
    assert got == frames
    stats = net.stats()
    assert stats.rx_packets == len(frames) and stats.rx_length_errors == 0
    tb.check_memory()
    return tb, net, frames


@cocotb.test()
async def mergeable_rx_buffers_carry_long_frames(dut):
    """With VIRTIO_NET_F_MRG_RXBUF and small receive buffers, frames spread
    over several buffers (num_buffers set) and arrive whole."""
    buf_len = 256
    tb, net, frames = await _receive_mixed(dut, "mergeable_rx", 11, mergeable_buf_len=buf_len)
    assert net.has_feature(spec.VirtioNetF.MRG_RXBUF)
    vq = net.rq[0].vq
    used = (vq.last_used_idx - tb.params.ring_start_index) & 0xFFFF   # buffers the driver took back
    spread = sum(-(-(spec.VIRTIO_NET_HDR_SIZE + len(f)) // buf_len) for f in frames)
    assert used == spread, f"{used} buffers used, {spread} expected"
    assert used > len(frames)


@cocotb.test()
async def rx_without_mergeable_buffers(dut):
    """The same frames when the driver does not take MRG_RXBUF: one big buffer each."""
    await _receive_mixed(dut, "big_rx", 12,
                         driver_features=DRIVER_FEATURES & ~spec.VirtioNetF.MRG_RXBUF)
