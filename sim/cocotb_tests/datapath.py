"""Traffic through the whole system: the Python driver's rings in host memory,
the gateware ring engine and DMA, and the wire-side frame models."""
import random

import cocotb
from cocotb.triggers import RisingEdge, Timer
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from driver.virtio_net import VirtioNet
from hdl import spec
from sim.tb import TB

TIMEOUT_NS = 2_000_000
RX_VECTOR = 1                 # config is vector 0, queue i is vector i + 1
TX_VECTOR = 2
QUEUE_SIZE = 64


async def opened(dut, **kwargs):
    tb = TB(dut)
    await tb.init()
    net = VirtioNet(tb.transport, queue_size=kwargs.pop("queue_size", QUEUE_SIZE),
                    ring_start_index=tb.params.ring_start_index, **kwargs)
    await net.probe()
    await net.open()
    return tb, net


def mixed_frames(rng, mtu, count):
    """ARP, IPv4 UDP/TCP/ICMP, IPv6, VLAN-tagged: random payloads, many sizes."""
    src, dst = "02:00:00:00:00:01", "02:00:5e:10:00:01"
    kinds = [
        lambda: Ether(src=src, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.0.1", pdst="10.0.0.2"),
        lambda: Ether(src=src, dst=dst) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=2000),
        lambda: Ether(src=src, dst=dst) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000, dport=80),
        lambda: Ether(src=src, dst=dst) / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(),
        lambda: Ether(src=src, dst=dst) / IPv6(src="fe80::1", dst="fe80::2") / UDP(sport=5, dport=6),
        lambda: Ether(src=src, dst=dst) / Dot1Q(vlan=42) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(),
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
    tb, net = await opened(dut)
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
    tb, net = await opened(dut)
    rng = random.Random(3)
    frames = mixed_frames(rng, net.mtu, 40)
    tb.wire_source.set_gaps(idle_cycles=20, gap_probability=0.1, seed=4)
    got = []
    for frame in frames:
        await tb.wire_source.send(frame)
        got += await net.receive(1, pair=0, timeout_ns=TIMEOUT_NS)
    assert got == frames
    stats = net.stats()
    assert stats.rx_packets == len(frames) and stats.rx_length_errors == 0
    dev = await net.device_stats()
    assert dev.queues[spec.rx_queue_index(0)].packets == len(frames)
    assert tb.transport.interrupts[RX_VECTOR] > 0
    tb.check_memory()
