"""Multiqueue and the control virtqueue through the whole system: the driver's
control commands executed by the gateware, RX steering over the queue
pairs, the receive filters, pairs changed under traffic, link changes."""
import collections
import random
import struct

import cocotb
from cocotb.triggers import Timer
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from hdl import spec
from sim.cocotb_tests.datapath import QUEUE_SIZE, TIMEOUT_NS, WIRE_1GBE_IDLE_CYCLES, opened

OWN = "02:00:5e:10:00:01"          # the build's default MAC (hdl/top.py DEFAULT_MAC)
PEER = "02:00:00:00:00:02"
POLL_NS = 2_000


def flow_frames(rng, flows, per_flow, dst=OWN):
    """`per_flow` frames of each of `flows` flows (IPv4/IPv6, TCP/UDP), shuffled
    but in order within a flow; (flow, frame) pairs."""
    made = []
    for n in range(flows):
        ip = IP(src=f"10.1.{n}.1", dst="10.0.0.1") if n % 2 == 0 else \
            IPv6(src=f"fd00::{n + 1:x}", dst="fd00::1")
        l4 = TCP(sport=4000 + n, dport=80) if n % 4 < 2 else UDP(sport=5000 + n, dport=53)
        made.append([bytes(Ether(src=PEER, dst=dst) / ip / l4 / Raw(rng.randbytes(rng.randint(10, 300))))
                     for _ in range(per_flow)])
    order = [n for n in range(flows) for _ in range(per_flow)]
    rng.shuffle(order)
    taken = collections.Counter()
    out = []
    for n in order:
        out.append((n, made[n][taken[n]]))
        taken[n] += 1
    return out


async def receive_all(net, expected, *, idle_ns=200_000):
    """Poll every pair until `expected` frames came or nothing came for
    `idle_ns`; {pair: [frames]}."""
    got = collections.defaultdict(list)
    quiet = 0
    while sum(map(len, got.values())) < expected and quiet < idle_ns:
        before = sum(map(len, got.values()))
        for pair in range(net.max_queue_pairs):
            await net.poll(pair)
            got[pair] += net.take_received(pair)
        quiet = 0 if sum(map(len, got.values())) > before else quiet + POLL_NS
        await Timer(POLL_NS, "ns")
    return got


@cocotb.test()
async def traffic_on_every_queue_both_ways(dut):
    """With every pair in use: each flow's frames land on one receive queue,
    the flows spread over all of them, and transmit uses every queue; both
    directions at once, nothing lost or duplicated."""
    tb, net = await opened(dut, "mq_traffic", queue_pairs=None)
    assert net.has_feature(spec.VirtioNetF.MQ) and net.curr_queue_pairs == net.max_queue_pairs > 1
    rng = random.Random(21)
    flows = max(24, 6 * net.curr_queue_pairs)      # enough to reach every queue
    incoming = flow_frames(rng, flows, 3)
    outgoing = [frame for _, frame in flow_frames(rng, flows, 2, dst=PEER)]
    tb.wire_source.set_gaps(idle_cycles=WIRE_1GBE_IDLE_CYCLES)
    for _, frame in incoming:
        tb.wire_source.send_nowait(frame)
    queues_used = collections.Counter()
    for frame in outgoing:
        queues_used[await net.send(frame, timeout_ns=TIMEOUT_NS)] += 1
    got = await receive_all(net, len(incoming))
    sent = [await tb.wire_sink.recv(timeout_ns=TIMEOUT_NS) for _ in outgoing]
    assert sorted(sent) == sorted(outgoing), "transmit lost or duplicated frames"
    assert set(queues_used) == set(range(net.curr_queue_pairs)), queues_used
    by_frame = {frame: pair for pair, frames in got.items() for frame in frames}
    delivered = sorted(f for frames in got.values() for f in frames)
    assert delivered == sorted(f for _, f in incoming), \
        f"{len(delivered)} of {len(incoming)} delivered; device drops {(await net.device_stats()).drops}"
    pairs_of_flow = collections.defaultdict(set)
    for flow, frame in incoming:
        pairs_of_flow[flow].add(by_frame[frame])
    assert all(len(p) == 1 for p in pairs_of_flow.values()), "a flow was split over queues"
    assert set().union(*pairs_of_flow.values()) == set(range(net.curr_queue_pairs))
    dev = await net.device_stats()
    for pair in range(net.curr_queue_pairs):
        assert dev.queues[spec.rx_queue_index(pair)].packets == len(got[pair])
        assert dev.queues[spec.tx_queue_index(pair)].packets == queues_used[pair]
    tb.check_memory()


@cocotb.test()
async def pairs_change_under_traffic(dut):
    """4 -> 1 -> 4 queue pairs while frames flow both ways: every transmitted
    frame reaches the wire once, every received frame is delivered once or
    counted as dropped."""
    tb, net = await opened(dut, "mq_pairs", queue_pairs=None)
    rng = random.Random(22)
    most = net.max_queue_pairs
    sent_tx, sent_rx, delivered = [], [], []
    tb.wire_source.set_gaps(idle_cycles=WIRE_1GBE_IDLE_CYCLES // 4)
    for pairs in (most, 1, most):
        if pairs != net.curr_queue_pairs:
            await net.set_channels(pairs)
        assert net.curr_queue_pairs == pairs
        rx = [frame for _, frame in flow_frames(rng, 12, 2)]
        tx = [frame for _, frame in flow_frames(rng, 12, 2, dst=PEER)]
        for frame in rx:
            tb.wire_source.send_nowait(frame)
        for frame in tx:
            await net.send(frame, timeout_ns=TIMEOUT_NS)
        sent_rx += rx
        sent_tx += tx
        got = await receive_all(net, len(rx), idle_ns=50_000)
        delivered += [f for frames in got.values() for f in frames]
        assert all(pair < pairs for pair, frames in got.items() if frames), \
            f"a frame landed on a pair out of use: {[p for p, f in got.items() if f]} with {pairs}"
    got = await receive_all(net, len(sent_rx) - len(delivered), idle_ns=100_000)
    delivered += [f for frames in got.values() for f in frames]
    wire = [await tb.wire_sink.recv(timeout_ns=TIMEOUT_NS) for _ in sent_tx]
    assert sorted(wire) == sorted(sent_tx)
    assert len(set(delivered)) == len(delivered) and set(delivered) <= set(sent_rx)
    dev = await net.device_stats()
    dropped = sum(dev.drops.values())
    assert len(delivered) + dropped == len(sent_rx), (len(delivered), dev.drops, len(sent_rx))
    tb.check_memory()


async def _deliveries(tb, net, frames):
    """Send `frames` from the wire; the set of those delivered (to any pair)."""
    for frame in frames:
        tb.wire_source.send_nowait(frame)
    got = await receive_all(net, len(frames), idle_ns=30_000)
    return {f for fs in got.values() for f in fs}


@cocotb.test()
async def filters_accept_and_drop_as_configured(dut):
    """Own MAC, broadcast, table entries, promiscuous and VLAN filtering do
    what the control commands set; refused frames are counted as filtered."""
    tb, net = await opened(dut, "mq_filters", queue_pairs=None)
    rng = random.Random(23)
    extra_uc = bytes.fromhex("020000aabbcc")
    mc_in, mc_out = bytes.fromhex("01005e000001"), bytes.fromhex("01005e000002")

    def frame(dst, vlan=None):
        eth = Ether(src=PEER, dst=dst)
        if vlan is not None:
            eth = eth / Dot1Q(vlan=vlan)
        return bytes(eth / IP(src="10.0.0.2", dst="10.0.0.1") / UDP() / Raw(rng.randbytes(40)))

    def mac_text(mac):
        return ":".join(f"{b:02x}" for b in mac)

    assert await net.set_rx_mode(promisc=False, allmulti=False, uc=[extra_uc], mc=[mc_in])
    accepted = [frame(OWN), frame("ff:ff:ff:ff:ff:ff"), frame(mac_text(extra_uc)),
                frame(mac_text(mc_in))]
    refused = [frame("02:00:00:00:00:77"), frame(mac_text(mc_out))]
    before = (await net.device_stats()).drops["rx_filtered"]
    assert await _deliveries(tb, net, accepted + refused) == set(accepted)
    assert (await net.device_stats()).drops["rx_filtered"] - before == len(refused)

    assert await net.set_rx_mode(promisc=True)
    assert await _deliveries(tb, net, refused) == set(refused)

    # VLAN filtering (CTRL_VLAN): tagged frames pass only with their id added
    assert net.has_feature(spec.VirtioNetF.CTRL_VLAN)
    assert await net.set_rx_mode(promisc=False)
    assert await net.vlan_rx_add_vid(42)
    tagged_in, tagged_out = frame(OWN, vlan=42), frame(OWN, vlan=43)
    assert await _deliveries(tb, net, [tagged_in, tagged_out]) == {tagged_in}
    assert await net.vlan_rx_kill_vid(42)
    assert await _deliveries(tb, net, [tagged_in]) == set()

    # a new own address (CTRL_MAC_ADDR): frames to it taken, to the old refused
    new_mac = bytes.fromhex("020000123456")
    await net.set_mac_address(new_mac)
    to_new, to_old = frame(mac_text(new_mac)), frame(OWN)
    assert await _deliveries(tb, net, [to_new, to_old]) == {to_new}
    tb.check_memory()


@cocotb.test()
async def malformed_control_commands_are_refused_and_change_nothing(dut):
    """Commands the gateware must refuse: VIRTIO_NET_ERR, and the device
    behaves as before."""
    tb, net = await opened(dut, "mq_refused", queue_pairs=None)
    C = spec.VirtioNetCtrlClass
    pairs = net.curr_queue_pairs
    refused = [
        (C.MQ, spec.VirtioNetCtrlMq.VQ_PAIRS_SET, [struct.pack("<H", 0)]),
        (C.MQ, spec.VirtioNetCtrlMq.VQ_PAIRS_SET, [struct.pack("<H", pairs + 100)]),
        (C.MQ, spec.VirtioNetCtrlMq.VQ_PAIRS_SET, [b"\x02"]),
        (C.RX, spec.VirtioNetCtrlRx.PROMISC, []),
        (C.RX, 17, [b"\x01"]),
        (9, 0, [b"\x01"]),
        (C.MAC, spec.VirtioNetCtrlMac.TABLE_SET, [struct.pack("<I", 3) + bytes(6)]),
        (C.MAC, spec.VirtioNetCtrlMac.ADDR_SET, [bytes.fromhex("01005e000001")]),
        (C.VLAN, spec.VirtioNetCtrlVlan.ADD, [struct.pack("<H", 4096)]),
    ]
    for cls, cmd, data in refused:
        assert await net.send_command(cls, cmd, data) is False, (cls, cmd, data)
    # still every pair in use and filtering as before: flows spread, strangers refused
    rng = random.Random(24)
    incoming = flow_frames(rng, 16, 1)
    for _, frame in incoming:
        tb.wire_source.send_nowait(frame)
    got = await receive_all(net, len(incoming))
    assert len([p for p, f in got.items() if f]) == pairs
    stranger = bytes(Ether(src=PEER, dst="02:00:00:00:00:77") / IP() / UDP())
    assert await _deliveries(tb, net, [stranger]) == set()
    assert net.stats().ctrl.errors == len(refused)
    tb.check_memory()


@cocotb.test()
async def link_flaps_reach_the_driver(dut):
    """The wire-side link signal: status LINK_UP changes, the configuration
    interrupt fires, the driver turns its carrier off and on."""
    tb, net = await opened(dut, "mq_link", queue_pairs=None)
    assert net.carrier
    for _ in range(3):
        dut.link_up.value = 0
        assert await net.wait_config_change(timeout_ns=TIMEOUT_NS)
        assert not net.carrier
        dut.link_up.value = 1
        assert await net.wait_config_change(timeout_ns=TIMEOUT_NS)
        assert net.carrier
    link = net.stats().link
    assert link.carrier_down == 3 and link.carrier_up >= 3
