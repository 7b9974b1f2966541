"""RxClassifier in the Amaranth simulator: frames leave unchanged and
CLASSIFY_LATENCY cycles later, each last beat carrying the filter's answer
and the queue pair its flow hashes to (plain multiqueue steering)."""
import random
import socket
import struct

import pytest
from amaranth.sim import Simulator
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from hdl.lib.bytes import BYTES_PER_BEAT
from hdl.net.rss import INDIRECTION_TABLE_MAX, MICROSOFT_RSS_KEY, mq_indirection_table
from hdl.net.rx_classifier import CLASSIFY_LATENCY, MIN_FRAME_BEATS, RxClassifier
from hdl.net.rx_filter import MAC_TABLE_ENTRIES, RX_MODE_RESET
from hdl.net.rx_parse import ETHERTYPE_IPV4
from tests.amaranth_sim import CLOCK_PERIOD
from tests.test_rss import toeplitz
from tests.test_rx_parse import random_mac

OWN = "02:00:5e:10:00:01"
OTHER = "02:00:5e:10:00:99"
PAIRS = 4


def mac_int(text):
    return int.from_bytes(bytes.fromhex(text.replace(":", "")), "little")


def expected_pair(frame, pairs):
    """Plain multiqueue: TCP/UDP over IPv4/IPv6 hash address and ports, other IP
    the addresses; anything else goes to pair 0."""
    packet = Ether(frame)
    for ip, family in ((IP, socket.AF_INET), (IPv6, socket.AF_INET6)):
        if ip in packet:
            data = socket.inet_pton(family, packet[ip].src) + socket.inet_pton(family, packet[ip].dst)
            l4 = packet[TCP] if TCP in packet else packet[UDP] if UDP in packet else None
            if l4 is not None:
                data += struct.pack(">HH", l4.sport, l4.dport)
            value = toeplitz(MICROSOFT_RSS_KEY, data)
            return mq_indirection_table(pairs)[value & (INDIRECTION_TABLE_MAX - 1)]
    return 0


def run(frames, *, pairs, promisc, bad=(), uc=(), mc=()):
    """Frames in back to back, the MAC tables holding ``uc`` and ``mc`` (all in
    use); per frame out: (bytes, abort, tag)."""
    dut = RxClassifier(max_pairs=PAIRS)
    out = []
    timing = {"first_in": [], "first_out": []}

    async def setup_and_send(ctx):
        ctx.set(dut.pairs, pairs)
        ctx.set(dut.steer, pairs > 1)
        ctx.set(dut.mode, {**RX_MODE_RESET, "promisc": promisc})
        ctx.set(dut.mac, mac_int(OWN))
        ctx.set(dut.vlan_clear, 1)
        await ctx.tick()
        ctx.set(dut.vlan_clear, 0)
        for index, entry in enumerate(mq_indirection_table(PAIRS if pairs > 1 else 1)):
            ctx.set(dut.steer_w.en, 1)
            ctx.set(dut.steer_w.addr, index)
            ctx.set(dut.steer_w.data, entry % pairs)
            await ctx.tick()
        ctx.set(dut.steer_w.en, 0)
        for port, table in ((dut.uc_w, uc), (dut.mc_w, mc)):
            for index, mac in enumerate(table):
                ctx.set(port.en, 1)
                ctx.set(port.addr, index)
                ctx.set(port.data, mac_int(mac))
                await ctx.tick()
            ctx.set(port.en, 0)
        ctx.set(dut.uc_count, len(uc))
        ctx.set(dut.mc_count, len(mc))
        for _ in range(4200):                 # the VLAN table clears
            await ctx.tick()
        cycle = 0
        for frame in frames:
            beats = [frame[i:i + 4] for i in range(0, len(frame), 4)]
            for n, chunk in enumerate(beats):
                ctx.set(dut.i.payload, {"data": int.from_bytes(chunk.ljust(4, b"\0"), "little"),
                                        "keep": (1 << len(chunk)) - 1, "last": n == len(beats) - 1})
                ctx.set(dut.i_abort, frame in bad and n == len(beats) - 1)
                ctx.set(dut.i.valid, 1)
                await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for _ in range(CLASSIFY_LATENCY + 4):
            await ctx.tick()

    async def watch(ctx):
        current = bytearray()
        async for _, _, valid, payload, abort, tag in ctx.tick().sample(
                dut.o.valid, dut.o.payload, dut.abort, dut.tag):
            if valid:
                for lane in range(4):
                    if payload.keep >> lane & 1:
                        current.append(payload.data >> (8 * lane) & 0xFF)
                if payload.last:
                    out.append((bytes(current), bool(abort), tag))
                    current = bytearray()

    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    sim.add_testbench(setup_and_send)
    sim.add_testbench(watch, background=True)
    sim.run()
    return out


def flows(rng, count):
    frames = []
    for n in range(count):
        kind = n % 3
        ip = (IP(src=f"10.0.{n}.1", dst="10.0.0.2") if kind != 2
              else IPv6(src=f"fe80::{n + 1:x}", dst="fe80::2"))
        l4 = TCP(sport=1000 + n, dport=80) if kind == 0 else UDP(sport=2000 + n, dport=53)
        frames.append(bytes(Ether(src="02:00:00:00:00:01", dst=OWN) / ip / l4
                            / Raw(rng.randbytes(rng.randint(0, 40)))))
    return frames


def test_flows_are_steered_by_their_hash_and_spread_over_the_pairs():
    rng = random.Random(1)
    frames = flows(rng, 24)
    frames = frames + frames                      # every flow twice
    out = run(frames, pairs=PAIRS, promisc=0)
    assert [f for f, _, _ in out] == frames
    tags = [tag for _, _, tag in out]
    assert tags == [expected_pair(f, PAIRS) for f in frames]
    assert set(tags) == set(range(PAIRS)), "flows did not spread over every pair"


def test_one_pair_takes_everything():
    rng = random.Random(2)
    frames = flows(rng, 8)
    out = run(frames, pairs=1, promisc=1)
    assert [(f, a, t) for f, a, t in out] == [(f, False, 0) for f in frames]


def test_filter_answers_ride_on_the_last_beat():
    rng = random.Random(3)
    mine = bytes(Ether(dst=OWN) / IP() / UDP() / Raw(rng.randbytes(30)))
    broadcast = bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP())
    stranger = bytes(Ether(dst=OTHER) / IP() / UDP() / Raw(rng.randbytes(30)))
    frames = [mine, stranger, broadcast, stranger, mine, Ether(dst=OTHER) / ARP()]
    frames = [bytes(f) for f in frames]
    out = run(frames, pairs=1, promisc=0)
    assert [f for f, _, _ in out] == frames
    assert [a for _, a, _ in out] == [False, True, False, True, False, True]
    out = run(frames, pairs=1, promisc=1)
    assert not any(a for _, a, _ in out)


def test_frames_the_mac_marks_bad_are_dropped():
    rng = random.Random(4)
    frames = flows(rng, 6)
    out = run(frames, pairs=1, promisc=1, bad={frames[1], frames[4]})
    assert [a for _, a, _ in out] == [False, True, False, False, True, False]


def test_shortest_frames_back_to_back_meet_the_mac_tables():
    """Frames of just an Ethernet header, MIN_FRAME_BEATS beats each, back to
    back: each one's destination is compared with the whole MAC table of its
    class (virtio 1.2 section 5.1.6.5.2) before its last beat leaves."""
    rng = random.Random(5)

    def macs(group):
        return [random_mac(rng, group) for _ in range(MAC_TABLE_ENTRIES)]
    uc, mc = macs(0), macs(1)
    strangers = macs(0)[:4] + macs(1)[:4]
    dsts = uc + mc + strangers + [OWN]
    rng.shuffle(dsts)
    frames = [bytes(Ether(dst=dst, src=OTHER, type=ETHERTYPE_IPV4)) for dst in dsts]
    assert all(-(-len(frame) // BYTES_PER_BEAT) == MIN_FRAME_BEATS for frame in frames)
    out = run(frames, pairs=1, promisc=0, uc=uc, mc=mc)
    assert [f for f, _, _ in out] == frames
    assert [a for _, a, _ in out] == [dst in strangers for dst in dsts]

