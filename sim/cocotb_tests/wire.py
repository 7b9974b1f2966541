"""Testbench tests: the wire-side frame models, the pcap, the host memory guard.

Run through tests/test_wire.py. `echo_frames` checks FrameSource, FrameSink
and PcapRecorder against each other through the whole system: the guest
driver sends back every frame it receives.
"""
import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge, Timer
from cocotbext.pcie.core.tlp import Tlp, TlpType
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, ICMPv6EchoRequest
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Padding, Raw
from scapy.utils import rdpcap

from driver.transport import DmaDirection
from driver.virtio_net import VirtioNet
from hdl import spec
from sim.tb import TB
from sim.wire import pack_beat

ETH_MIN_FRAME = 60          # without FCS
ETH_MAX_FRAME = 1514        # MTU 1500 + 14-byte header, without FCS
FRAME_COUNT = 100
SEED = 20240611
HOST_MAC = "52:54:00:00:00:01"
PEER_MAC = "52:54:00:00:00:02"
RECV_TIMEOUT_NS = 200_000
DYNAMIC_PORTS = 49152       # RFC 6335: 49152..65535


def _headers(kind, rng):
    """A frame's headers, without payload, for one traffic kind."""
    eth = Ether(src=HOST_MAC, dst=PEER_MAC)
    ip4 = IP(src="10.0.0.1", dst="10.0.0.2", id=rng.randrange(1 << 16))
    ip6 = IPv6(src="fd00::1", dst="fd00::2")
    # ports from the dynamic range: no application dissector takes the random payloads
    sport, dport = rng.randrange(DYNAMIC_PORTS, 1 << 16), rng.randrange(DYNAMIC_PORTS, 1 << 16)
    if kind == "arp":
        return Ether(src=HOST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
            hwsrc=HOST_MAC, psrc="10.0.0.1", pdst="10.0.0.2")
    if kind == "udp":
        return eth / ip4 / UDP(sport=sport, dport=dport)
    if kind == "tcp":
        return eth / ip4 / TCP(sport=sport, dport=dport, seq=rng.randrange(1 << 32), flags="PA")
    if kind == "icmp":
        return eth / ip4 / ICMP(id=rng.randrange(1 << 16), seq=rng.randrange(1 << 16))
    if kind == "ipv6_udp":
        return eth / ip6 / UDP(sport=sport, dport=dport)
    if kind == "ipv6_icmp":
        return eth / ip6 / ICMPv6EchoRequest(id=rng.randrange(1 << 16))
    if kind == "vlan_udp":
        return eth / Dot1Q(vlan=rng.randrange(1, 4095), prio=rng.randrange(8)) / ip4 / UDP(
            sport=sport, dport=dport)
    if kind == "vlan_tcp":
        return eth / Dot1Q(vlan=rng.randrange(1, 4095)) / ip4 / TCP(sport=sport, dport=dport)
    raise ValueError(kind)


KINDS = ["arp", "udp", "tcp", "icmp", "ipv6_udp", "ipv6_icmp", "vlan_udp", "vlan_tcp"]


def make_frames(count, seed):
    """``count`` scapy frames of every kind, ETH_MIN_FRAME..ETH_MAX_FRAME bytes
    (both ends and every length mod 4 included), random payloads."""
    rng = random.Random(seed)
    edge_sizes = [ETH_MIN_FRAME, ETH_MIN_FRAME + 1, ETH_MIN_FRAME + 2, ETH_MIN_FRAME + 3,
                  ETH_MAX_FRAME, ETH_MAX_FRAME - 1, ETH_MAX_FRAME - 2, ETH_MAX_FRAME - 3]
    frames = []
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        headers = _headers(kind, rng)
        size = edge_sizes[index] if index < len(edge_sizes) else rng.randint(ETH_MIN_FRAME, ETH_MAX_FRAME)
        if kind == "arp":
            frame = headers / Padding(b"\0" * (ETH_MIN_FRAME - len(headers)))
        else:
            size = max(size, len(headers))
            frame = headers / Raw(rng.randbytes(size - len(headers)))
        frames.append(Ether(bytes(frame)))          # built once: checksums and lengths fixed
    return frames


def _first_difference(got, expected):
    for offset, (a, b) in enumerate(zip(got, expected)):
        if a != b:
            return offset
    return min(len(got), len(expected))


async def _send_and_compare(tb, frames, offset):
    # one frame in flight: the device's RX frame buffer holds two frames and
    # drops what does not fit (the wire is never stalled)
    for index, frame in enumerate(frames, offset):
        await tb.wire_source.send(frame)
        expected = bytes(frame)
        got = await tb.wire_sink.recv(timeout_ns=RECV_TIMEOUT_NS)
        if got != expected:
            at = _first_difference(got, expected)
            raise AssertionError(
                f"frame {index} ({frame.summary()}): got {len(got)} bytes, expected "
                f"{len(expected)}; first difference at byte {at}: "
                f"got {got[at:at + 8].hex()} expected {expected[at:at + 8].hex()}")
    await tb.wire_source.wait_idle()


async def _guest_echo(net, count):
    """The guest sends every frame it receives straight back (a reflector)."""
    for _ in range(count):
        for frame in await net.receive(1, pair=0, timeout_ns=RECV_TIMEOUT_NS):
            await net.send(frame, timeout_ns=RECV_TIMEOUT_NS)


@cocotb.test()
async def echo_frames(dut):
    """~100 frames of every kind from the wire, through the device to the
    guest driver and back out, with valid gaps and ready back-pressure, byte
    for byte; the pcap holds both directions."""
    tb = TB(dut)
    await tb.init()
    net = VirtioNet(tb.transport, queue_size=64, queue_pairs=1)
    await net.probe()
    await net.open()
    # the guest echoes frames addressed to the peer: it listens promiscuously
    assert await net.set_rx_mode(promisc=True)
    frames = make_frames(FRAME_COUNT, SEED)
    half = len(frames) // 2
    echo = cocotb.start_soon(_guest_echo(net, len(frames)))

    tb.wire_source.set_gaps(idle_cycles=1, gap_probability=0.2, seed=SEED)
    tb.wire_sink.set_backpressure(probability=0.6, seed=SEED + 1)
    await _send_and_compare(tb, frames[:half], 0)

    tb.wire_source.set_gaps(idle_cycles=0, gap_probability=0.05)
    tb.wire_sink.set_backpressure(pattern=[1, 1, 0, 1, 0, 0, 1])
    await _send_and_compare(tb, frames[half:], half)
    await echo

    assert tb.wire_source.frames_sent == len(frames)
    assert tb.wire_sink.count == len(frames)
    assert tb.wire_sink.bytes_received == sum(len(f) for f in frames)
    assert not tb.wire_sink.framing_errors

    # the capture: every frame twice, wire_rx then wire_tx, time ordered
    tb.pcap.close()
    packets = rdpcap(str(tb.pcap.path))
    assert len(packets) == 2 * len(frames), f"{len(packets)} packets in {tb.pcap.path}"
    times = [p.time for p in packets]
    assert times == sorted(times), "pcap records out of time order"
    by_port = {"wire_rx": [], "wire_tx": []}
    for packet in packets:
        by_port[packet.sniffed_on].append(packet)
    for port, direction in (("wire_rx", 1), ("wire_tx", 2)):
        assert [bytes(p) for p in by_port[port]] == [bytes(f) for f in frames], port
        assert all(p.direction == direction for p in by_port[port]), port
    for sent, received in zip(by_port["wire_rx"], by_port["wire_tx"]):
        assert received.time > sent.time
    assert any(p.haslayer(Dot1Q) for p in by_port["wire_tx"])
    assert any(p.haslayer(ARP) for p in by_port["wire_tx"])
    tb.check_memory()


def _mem_write_tlp(tb, addr, data):
    """A MWr TLP as the core would send it (requester: the DUT)."""
    tlp = Tlp()
    tlp.fmt_type = TlpType.MEM_WRITE if addr + len(data) <= 1 << 32 else TlpType.MEM_WRITE_64
    tlp.requester_id = tb.function.pcie_id
    tlp.set_addr_be_data(addr, data)
    return tlp


async def _device_writes_seen(tb, count, timeout_cycles=200):
    """Wait until the guard has seen ``count`` host memory writes in all."""
    for _ in range(timeout_cycles):
        if tb.guard.stats.writes >= count:
            return
        await RisingEdge(tb.dut.clk)
    raise AssertionError(f"the guard saw {tb.guard.stats.writes} device writes, not {count}")


QUIET_NS = 5_000       # no device write for this long: the device has settled


@cocotb.test()
async def guard_catches_device_writes(dut):
    """Device writes inside FROM_DEVICE mappings pass; outside one, or into a
    TO_DEVICE mapping, they are violations with the bytes named; MSI-X
    messages and the driver's own writes are not device host-memory writes."""
    tb = TB(dut)
    await tb.init()
    net = VirtioNet(tb.transport, queue_pairs=1)
    await net.probe()
    guard, transport = tb.guard, tb.transport
    # probe's control commands (VQ_PAIRS_SET) were device writes, and the
    # TX engine's last ones (avail_event, with EVENT_IDX) may follow the
    # ack the driver waited for: start counting once no write came for a while
    while True:
        before = guard.stats.writes
        await Timer(QUIET_NS, "ns")
        if guard.stats.writes == before:
            break
    probe_writes, probe_bytes = guard.stats.writes, guard.stats.bytes
    assert not guard.violations

    # an MSI-X message from the core itself (link change on the config vector)
    vector = await net.pci.common.read16(spec.VirtioCommonCfg.CONFIG_MSIX_VECTOR)
    waiter = cocotb.start_soon(transport.wait_interrupt(vector, 2000))
    dut.link_up.value = 0
    await waiter
    assert guard.stats.msi_writes == 1
    assert guard.stats.writes == probe_writes and not guard.violations

    rx = transport.dma_alloc(256, 64)
    tx = transport.dma_alloc(256, 64)
    transport.dma_map(rx, 128, DmaDirection.FROM_DEVICE)
    transport.dma_map(rx + 64, 128, DmaDirection.FROM_DEVICE)       # overlaps the first
    transport.dma_map(tx, 256, DmaDirection.TO_DEVICE)
    await transport.dma_write(rx, bytes(256))                       # the driver's: not counted
    await transport.dma_write(tx, bytes(256))
    assert guard.stats.writes == probe_writes

    inside = bytes(range(1, 41))
    await tb.dev.upstream_send(_mem_write_tlp(tb, rx + 0x3E, inside))       # across both maps
    await tb.dev.upstream_send(_mem_write_tlp(tb, rx + 0xBE, b"\xAA" * 6))  # 2 bytes past the end
    await tb.dev.upstream_send(_mem_write_tlp(tb, tx + 0x10, b"\xBB" * 4))  # TO_DEVICE only
    await _device_writes_seen(tb, probe_writes + 3)

    assert await transport.dma_read(rx + 0x3E, len(inside)) == inside, "the write was not done"
    assert guard.stats.writes == probe_writes + 3
    assert guard.stats.bytes == probe_bytes + len(inside) + 6 + 4
    assert [v.outside for v in guard.violations] == [((rx + 0xC0, rx + 0xC4),),
                                                   ((tx + 0x10, tx + 0x14),)]
    # the 6-byte write: DW-aligned 0xBC..0xC4, bytes 0xBE..0xC4 enabled; 0xC0.. unmapped
    assert guard.violations[0].addr == rx + 0xBC and guard.violations[0].length == 8
    try:
        tb.check_memory()
    except AssertionError as error:
        assert "2 device write(s)" in str(error) and f"{tx + 0x10:#x}" in str(error)
    else:
        raise AssertionError("check_memory() passed with violations recorded")

    # unmapped, the range is closed to the device again
    guard.violations.clear()
    transport.dma_unmap(rx, 128, DmaDirection.FROM_DEVICE)
    await tb.dev.upstream_send(_mem_write_tlp(tb, rx + 0xA0, b"\xCC" * 4))  # still in the 2nd map
    await tb.dev.upstream_send(_mem_write_tlp(tb, rx + 0x20, b"\xCC" * 4))  # only the 1st had it
    await _device_writes_seen(tb, probe_writes + 5)
    assert [v.outside for v in guard.violations] == [((rx + 0x20, rx + 0x24),)]
    assert len(guard.written(rx + 0xA0, 4)) == 1
    guard.violations.clear()
    tb.check_memory()
