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

from hdl.net.rss import INDIRECTION_TABLE_MAX, MICROSOFT_RSS_KEY, mq_indirection_table
from hdl.net.rx_classifier import CLASSIFY_LATENCY, RxClassifier
from hdl.net.rx_filter import RX_MODE_RESET
from tests.amaranth_sim import CLOCK_PERIOD
from tests.test_rss import toeplitz

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


def run(frames, *, pairs, promisc, bad=()):
    """Frames in back to back; per frame out: (bytes, abort, tag, cycles in->out)."""
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
