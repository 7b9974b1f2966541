"""ToeplitzHash and RxQueueSelect behind FrameHeadParser: the published RSS
verification vectors, random flows and keys against a Python Toeplitz, the
indirection table, and back-to-back minimum-size frames."""
import random
import socket

import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from hdl.net.rss import (HASH_LATENCY, MICROSOFT_RSS_KEY, QUEUE_SELECT_LATENCY,
                         SUPPORTED_HASH_TYPES, RxQueueSelect, ToeplitzHash,
                         mq_indirection_table)
from hdl.net.rx_parse import HEAD_LATENCY, FrameHeadParser
from hdl.spec import VirtioNetHashReport as Report, VirtioNetHashType as Type
from tests.amaranth_sim import CLOCK_PERIOD
from tests.test_rx_parse import drive_frames, expected_head, random_packet

MAX_PAIRS = 8
TABLE_SIZE = 128

# Microsoft, "Verifying the RSS Hash Calculation" (also Intel 82599 datasheet
# 7.1.2.8.3): (source, destination, source port, destination port,
# hash over the addresses, hash over addresses and ports), default key.
IPV4_VECTORS = [
    ("66.9.149.187", "161.142.100.80", 2794, 1766, 0x323e8fc2, 0x51ccc178),
    ("199.92.111.2", "65.69.140.83", 14230, 4739, 0xd718262a, 0xc626b0ea),
    ("24.19.198.95", "12.22.207.184", 12898, 38024, 0xd2d0a5de, 0x5c2b394a),
    ("38.27.205.30", "209.142.163.6", 48228, 2217, 0x82989176, 0xafc7327f),
    ("153.39.163.191", "202.188.127.2", 44251, 1303, 0x5d1809c5, 0x10e828a2),
]
IPV6_VECTORS = [
    ("3ffe:2501:200:1fff::7", "3ffe:2501:200:3::1", 2794, 1766, 0x2cc18cd5, 0x40207d3d),
    ("3ffe:501:8::260:97ff:fe40:efab", "ff02::1", 14230, 4739, 0x0f0c461c, 0xdde51bbf),
    ("3ffe:1900:4545:3:200:f8ff:fe21:67cf", "fe80::200:f8ff:fe21:67cf", 44251, 38024,
     0x4b61e985, 0x02d1feef),
]


def toeplitz(key, data):
    """Microsoft's definition: for every input bit set (MSB of byte 0 first),
    XOR in the 32 key bits starting at that bit's position."""
    key_int, key_bits = int.from_bytes(key, "big"), 8 * len(key)
    result = 0
    for bit in range(8 * len(data)):
        if data[bit // 8] >> (7 - bit % 8) & 1:
            result ^= key_int >> (key_bits - 32 - bit) & 0xFFFF_FFFF
    return result


def reference_hash(head, hash_types, key):
    """(report, value) for a parsed head, from virtio 1.2 section 5.1.6.4.3."""
    if head.get("is_ipv4"):
        size, types = 4, ((Type.TCPv4, Report.TCPv4), (Type.UDPv4, Report.UDPv4),
                          (Type.IPv4, Report.IPv4))
    elif head.get("is_ipv6"):
        size, types = 16, ((Type.TCPv6, Report.TCPv6), (Type.UDPv6, Report.UDPv6),
                           (Type.IPv6, Report.IPv6))
    else:
        return Report.NONE, 0
    addresses = (head["src_ip"].to_bytes(16, "little")[:size]
                 + head["dst_ip"].to_bytes(16, "little")[:size])
    ports = head.get("src_port", 0).to_bytes(2, "big") + head.get("dst_port", 0).to_bytes(2, "big")
    (tcp_type, tcp), (udp_type, udp), (ip_type, ip) = types
    if hash_types & tcp_type and head["is_tcp"]:
        return tcp, toeplitz(key, addresses + ports)
    if hash_types & udp_type and head["is_udp"]:
        return udp, toeplitz(key, addresses + ports)
    if hash_types & ip_type:
        return ip, toeplitz(key, addresses)
    return Report.NONE, 0


class Classifier(Elaboratable):
    """Parser, hash and queue selection wired as the RX path will use them."""

    def __init__(self):
        self.parser = FrameHeadParser()
        self.hash = ToeplitzHash()
        self.select = RxQueueSelect(max_pairs=MAX_PAIRS, table_size=TABLE_SIZE)

    def elaborate(self, platform):
        m = Module()
        m.submodules.parser = self.parser
        m.submodules.hash = self.hash
        m.submodules.select = self.select
        wiring.connect(m, self.parser.tuple, self.hash.tuple)
        wiring.connect(m, self.parser.head, self.hash.head)
        wiring.connect(m, self.hash.hash, self.select.hash)
        return m


def run(frames, *, hash_types, key=None, table=None, mask=TABLE_SIZE - 1, default_queue=0,
        seed=0, **drive):
    """Frames through the classifier. Returns [(report, value, queue)] and the
    cycle counts of every head, hash and queue pulse."""
    rng = random.Random(seed)
    top = Classifier()
    results, queues = [], []
    cycles = {"head": [], "hash": [], "queue": []}

    async def testbench(ctx):
        ctx.set(top.hash.hash_types, hash_types)
        if key is not None:
            for index, byte in enumerate(key):
                ctx.set(top.hash.key_w.en, 1)
                ctx.set(top.hash.key_w.addr, index)
                ctx.set(top.hash.key_w.data, byte)
                await ctx.tick()
            ctx.set(top.hash.key_w.en, 0)
        if table is not None:
            for index, queue in enumerate(table):
                ctx.set(top.select.table_w.en, 1)
                ctx.set(top.select.table_w.addr, index)
                ctx.set(top.select.table_w.data, queue)
                await ctx.tick()
            ctx.set(top.select.table_w.en, 0)
        ctx.set(top.select.mask, mask)
        ctx.set(top.select.default_queue, default_queue)
        await drive_frames(ctx, top.parser.tap, frames, rng, **drive)

    async def monitor(ctx):
        cycle = 0
        async for _, _, head_valid, hash_valid, report, value, queue_valid, queue in \
                ctx.tick().sample(top.parser.head.valid, top.hash.hash.valid,
                                  top.hash.hash.report, top.hash.hash.value,
                                  top.select.queue_valid, top.select.queue):
            if head_valid:
                cycles["head"].append(cycle)
            if hash_valid:
                cycles["hash"].append(cycle)
                results.append((Report(report), value))
            if queue_valid:
                cycles["queue"].append(cycle)
                queues.append(queue)
            cycle += 1

    sim = Simulator(top)
    sim.add_clock(CLOCK_PERIOD)
    sim.add_testbench(testbench)
    sim.add_process(monitor)
    sim.run()
    assert len(results) == len(queues) == len(frames), "one result per frame"
    assert [c + HASH_LATENCY for c in cycles["head"]] == cycles["hash"]
    assert [c + QUEUE_SELECT_LATENCY for c in cycles["hash"]] == cycles["queue"]
    return [(r, v, q) for (r, v), q in zip(results, queues)], cycles


def mac():
    return dict(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")


def vector_frames():
    frames, expect = [], []
    for src, dst, sport, dport, two, four in IPV4_VECTORS:
        for l4 in (TCP, UDP):
            frames.append(bytes(Ether(**mac()) / IP(src=src, dst=dst) / l4(sport=sport, dport=dport)))
            expect.append((two, four))
    for src, dst, sport, dport, two, four in IPV6_VECTORS:
        for l4 in (TCP, UDP):
            frames.append(bytes(Ether(**mac()) / IPv6(src=src, dst=dst) / l4(sport=sport, dport=dport)))
            expect.append((two, four))
    return frames, expect


def test_reference_matches_published_vectors():
    """The Python Toeplitz the other tests trust gives the published values."""
    for family, vectors in ((socket.AF_INET, IPV4_VECTORS), (socket.AF_INET6, IPV6_VECTORS)):
        for src, dst, sport, dport, two, four in vectors:
            addresses = socket.inet_pton(family, src) + socket.inet_pton(family, dst)
            ports = sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
            assert toeplitz(MICROSOFT_RSS_KEY, addresses) == two
            assert toeplitz(MICROSOFT_RSS_KEY, addresses + ports) == four


@pytest.mark.parametrize("hash_types, with_ports", [
    (SUPPORTED_HASH_TYPES, True),
    (Type.IPv4 | Type.IPv6, False),
])
def test_published_vectors(hash_types, with_ports):
    """The reset key is the verification key; TCP/UDP types hash the ports, the
    IP types the addresses alone."""
    frames, expect = vector_frames()
    results, _ = run(frames, hash_types=hash_types)
    got = [value for _, value, _ in results]
    assert got == [four if with_ports else two for two, four in expect]
    reports = [report for report, _, _ in results]
    if with_ports:
        assert reports == [Report.TCPv4, Report.UDPv4] * 5 + [Report.TCPv6, Report.UDPv6] * 3
    else:
        assert reports == [Report.IPv4] * 10 + [Report.IPv6] * 6


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_flows_keys_and_tables(seed):
    """Random frames (any kind, cut or padded), a random key, random enabled hash
    types, a random indirection table, mask and unclassified queue."""
    rng = random.Random(seed)
    key = rng.randbytes(40)
    hash_types = rng.choice([SUPPORTED_HASH_TYPES, rng.getrandbits(6), Type.TCPv4 | Type.IPv6,
                             Type.UDPv4 | Type.UDPv6 | Type.IPv4])
    table = [rng.randrange(MAX_PAIRS) for _ in range(TABLE_SIZE)]
    mask = (1 << rng.randint(0, 7)) - 1
    default_queue = rng.randrange(MAX_PAIRS)
    cases = []
    for _ in range(90):
        packet = random_packet(rng)
        full = bytes(packet)[:1518]
        n = rng.choice([len(full), len(full), rng.randint(14, len(full))])
        cases.append((packet, full[:n]))
    results, _ = run([frame for _, frame in cases], hash_types=hash_types, key=key,
                     table=table, mask=mask, default_queue=default_queue, seed=seed)
    hashed = 0
    for (packet, frame), (report, value, queue) in zip(cases, results):
        want_report, want_value = reference_hash(expected_head(packet, len(frame)),
                                                 hash_types, key)
        assert (report, value) == (want_report, want_value), packet.summary()
        want_queue = table[value & mask] if want_report != Report.NONE else default_queue
        assert queue == want_queue
        hashed += want_report != Report.NONE
    assert hashed > 10


def test_multiqueue_round_robin_table():
    """Plain MQ: default key, every type, table = round robin over the pairs:
    a flow stays on one queue, and flows spread over every queue."""
    rng = random.Random(4)
    pairs = 3
    flows = [(f"10.0.{rng.randrange(256)}.{rng.randrange(256)}", rng.getrandbits(16))
             for _ in range(24)]
    frames, flow_of = [], []
    for _ in range(72):
        index = rng.randrange(len(flows))
        src, sport = flows[index]
        payload = Raw(rng.randbytes(rng.randint(0, 30)))
        frames.append(bytes(Ether(**mac()) / IP(src=src, dst="10.1.1.1")
                            / TCP(sport=sport, dport=443) / payload))
        flow_of.append(index)
    frames.append(bytes(Ether(**mac(), type=0x88B5) / Raw(b"\0" * 50)))   # not IP
    results, _ = run(frames, hash_types=SUPPORTED_HASH_TYPES,
                     table=mq_indirection_table(pairs, TABLE_SIZE), mask=TABLE_SIZE - 1)
    queue_of_flow = {}
    for flow, (_, value, queue) in zip(flow_of, results):
        assert queue == (value & (TABLE_SIZE - 1)) % pairs
        assert queue_of_flow.setdefault(flow, queue) == queue
    assert set(queue_of_flow.values()) == set(range(pairs))
    assert results[-1][0] == Report.NONE and results[-1][2] == 0   # receiveq1


def test_back_to_back_minimum_frames():
    """64-byte frames (and 14-byte runts between some) with valid and ready
    always high: every frame gets its hash, at the same latency."""
    rng = random.Random(5)
    frames, packets = [], []
    for number in range(60):
        kind = number % 4
        if kind == 0:
            packet = Ether(**mac()) / IP(src=f"10.0.0.{number}", dst="10.0.1.1") / \
                TCP(sport=number, dport=80)
        elif kind == 1:
            packet = Ether(**mac()) / IPv6(src=f"2001:db8::{number:x}", dst="2001:db8::1") / \
                UDP(sport=number, dport=53)
        elif kind == 2:
            packet = Ether(**mac()) / Dot1Q(vlan=number) / IP(src="10.9.9.9", dst="10.0.0.1") / \
                UDP(sport=number, dport=4789)
        else:
            packet = Ether(**mac()) / IP(src="10.2.2.2", dst="10.0.0.1") / ICMP()
        packets.append(packet)
        frames.append(bytes(packet)[:64].ljust(64, b"\0"))
        if number % 7 == 3:
            runt = Ether(**mac(), type=0x0800)
            packets.append(runt)
            frames.append(bytes(runt))
    results, cycles = run(frames, hash_types=SUPPORTED_HASH_TYPES, p_idle=0, p_stall=0)
    for packet, frame, (report, value, _) in zip(packets, frames, results):
        assert (report, value) == reference_hash(expected_head(packet, len(frame)),
                                                 SUPPORTED_HASH_TYPES, MICROSOFT_RSS_KEY)
    gaps = [b - a for a, b in zip(cycles["head"], cycles["head"][1:])]
    assert min(gaps) == 4 and gaps.count(16) > 40      # heads as often as frames end
    assert sum(r != Report.NONE for r, _, _ in results) == 60     # all but the runts
