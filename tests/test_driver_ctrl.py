"""Control virtqueue, multiqueue, filters, link changes and MSI-X vector allocation
of the Python driver, against the behavioural device and its control-queue
model (driver/testing_ctrl.py). No simulator.

Like test_driver_net.py, every driver-level test ends with remove(), no
protocol error in the device model and no DMA mapping left.
"""
import asyncio
import collections
import dataclasses
import ipaddress
import random

import pytest

from driver.flow import (DEFAULT_RSS_KEY, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, flow_dissect,
                         flow_hash, toeplitz_hash)
from driver.testing import DEFAULT_DEVICE_FEATURES, FakeDeviceProtocolError, FakeVirtioNetDevice
from driver.testing_ctrl import ControlQueueModel, CtrlError, CtrlResult
from driver.virtio_net import (DRIVER_FEATURES, NETDEV_TX_BUSY, NETDEV_TX_OK, VirtioNet,
                               VirtioNetCtrlError, VirtioNetCtrlTimeout, VirtioNetError,
                               VirtioNetProbeError, accept_features)
from hdl import spec
from hdl.spec import (VirtioF, VirtioIsr, VirtioNetCfg, VirtioNetCtrlAck, VirtioNetCtrlAnnounce,
                      VirtioNetCtrlClass, VirtioNetCtrlMac, VirtioNetCtrlMq, VirtioNetCtrlRx,
                      VirtioNetCtrlVlan, VirtioNetF, VirtioNetS, VirtioStatus)

F = VirtioNetF
CLS, RX, MAC, VLAN, MQ = VirtioNetCtrlClass, VirtioNetCtrlRx, VirtioNetCtrlMac, \
    VirtioNetCtrlVlan, VirtioNetCtrlMq
OK, ERR = VirtioNetCtrlAck.OK, VirtioNetCtrlAck.ERR
NO_VECTOR = spec.VIRTIO_MSI_NO_VECTOR
TIMEOUT_NS = 200_000_000            # wall-clock in the fake; only reached on failure
CTRL_FEATURES = int(F.CTRL_VLAN | F.CTRL_RX_EXTRA | F.GUEST_ANNOUNCE | F.CTRL_MAC_ADDR)
BROADCAST = b"\xff" * 6
OTHER_MAC = bytes.fromhex("020000000099")
MCAST = bytes.fromhex("01005e000001")


def device(features=DEFAULT_DEVICE_FEATURES | CTRL_FEATURES, **kwargs):
    kwargs.setdefault("msix_vectors", 16)
    return FakeVirtioNetDevice(features=features, **kwargs)


async def probed(dev, **kwargs):
    net = VirtioNet(dev, **kwargs)
    await net.probe()
    return net


async def opened(dev, **kwargs):
    net = await probed(dev, **kwargs)
    await net.open()
    return net


async def finish(dev, net):
    await net.remove()
    assert dev.protocol_errors == []
    assert dev.mappings == [], "buffers or rings left mapped"


def run(coro):
    return asyncio.run(coro)


# --- frames -----------------------------------------------------------------------------------

def eth(dst, src, etype, payload, vid=None):
    tag = b"" if vid is None else ETH_P_8021Q.to_bytes(2, "big") + vid.to_bytes(2, "big")
    return dst + src + tag + etype.to_bytes(2, "big") + payload


def ipv4(src, dst, proto, l4, frag=0):
    total = 20 + len(l4)
    return (bytes([0x45, 0]) + total.to_bytes(2, "big") + b"\x00\x01" + frag.to_bytes(2, "big")
            + bytes([64, proto]) + b"\x00\x00" + ipaddress.ip_address(src).packed
            + ipaddress.ip_address(dst).packed + l4)


def ipv6(src, dst, next_header, payload):
    return (b"\x60\x00\x00\x00" + len(payload).to_bytes(2, "big") + bytes([next_header, 64])
            + ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + payload)


def l4(sport, dport, payload=b""):
    return sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + bytes(4) + payload


def udp4(flow, dst_mac=OTHER_MAC, src_mac=bytes.fromhex("020000000001"), payload=b"", vid=None):
    """A UDP/IPv4 frame of flow number `flow` (its addresses and ports)."""
    return eth(dst_mac, src_mac, ETH_P_IP,
               ipv4(f"10.0.{flow // 250}.{flow % 250 + 1}", "10.1.0.1", 17,
                    l4(1024 + flow, 4789, payload)), vid)


def tcp6(flow, payload=b""):
    return eth(OTHER_MAC, bytes.fromhex("020000000001"), ETH_P_IPV6,
               ipv6(f"fd00::{flow + 1:x}", "fd00::ffff", 6, l4(40000 + flow, 443, payload)))


ARP = eth(BROADCAST, bytes.fromhex("020000000001"), 0x0806, bytes(28))


def model_state(dev):
    m = dev.ctrl
    return (dataclasses.replace(m.rx), frozenset(m.vlans), m.mac, m.pairs, m.announce)


# --- flow keys and the hash -------------------------------------------------------------------

def test_toeplitz_matches_the_rss_verification_suite():
    """Microsoft's RSS verification vectors, with the default key."""
    def ip(a):
        return ipaddress.ip_address(a).packed
    ports = (2794).to_bytes(2, "big") + (1766).to_bytes(2, "big")
    v4 = ip("66.9.149.187") + ip("161.142.100.80")
    v6 = ip("3ffe:2501:200:1fff::7") + ip("3ffe:2501:200:3::1")
    assert toeplitz_hash(v4 + ports) == 0x51CCC178 and toeplitz_hash(v4) == 0x323E8FC2
    assert toeplitz_hash(v6 + ports) == 0x40207D3D and toeplitz_hash(v6) == 0x2CC18CD5
    with pytest.raises(ValueError, match="cannot hash"):
        toeplitz_hash(bytes(37), DEFAULT_RSS_KEY)


def test_flow_dissect():
    keys = flow_dissect(udp4(3, payload=b"x" * 30))
    assert (keys.proto, keys.sport, keys.dport) == (17, 1027, 4789)
    assert flow_dissect(udp4(3, vid=7)) == keys                   # through a VLAN tag
    fragment = eth(OTHER_MAC, OTHER_MAC, ETH_P_IP,
                   ipv4("10.0.0.1", "10.0.0.2", 17, l4(1, 2), frag=0x2000))
    assert flow_dissect(fragment).sport is None                   # no ports in fragments
    hop_by_hop = bytes([17, 0]) + bytes(6)                        # then UDP
    ext = eth(OTHER_MAC, OTHER_MAC, ETH_P_IPV6,
              ipv6("fd00::1", "fd00::2", 0, hop_by_hop + l4(5, 6)))
    assert (flow_dissect(ext).proto, flow_dissect(ext).sport) == (17, 5)
    assert flow_dissect(ARP) is None and flow_hash(ARP) == 0
    assert flow_dissect(b"\x00" * 10) is None


# --- the control-queue model on its own (testing_ctrl rules) -------------------------------

def test_model_rules_without_a_ring():
    model = ControlQueueModel(max_pairs=4, mac=bytes.fromhex("525400000001"))
    model.features = int(F.CTRL_VQ | F.CTRL_RX | F.MQ | F.RSS | F.CTRL_GUEST_OFFLOADS)
    assert model.handle(b"\x00", 1) == CtrlResult(ERR, 1)
    assert model.log[-1].error == CtrlError.SHORT
    assert model.handle(b"\x00\x00\x01", 0) == CtrlResult(None, 0)         # nowhere to ack
    assert model.unanswerable == 1 and model.rx.promisc                   # unchanged
    assert model.handle(bytes([CLS.MQ, MQ.RSS_CONFIG]) + bytes(20), 1).ack == ERR
    assert model.log[-1].error == CtrlError.NOT_IMPLEMENTED
    assert model.handle(bytes([CLS.GUEST_OFFLOADS, 0]) + bytes(8), 1).ack == ERR
    assert model.log[-1].error == CtrlError.NOT_IMPLEMENTED
    assert model.handle(bytes([CLS.MQ, MQ.VQ_PAIRS_SET, 3, 0]), 1).ack == OK
    assert model.handle(bytes([CLS.RX, RX.PROMISC, 0]), 1).ack == OK
    assert model.handle(bytes([CLS.RX, RX.ALLMULTI, 0xFF]), 1).ack == OK   # non-zero: on
    assert (model.pairs, model.rx.promisc, model.rx.allmulti) == (3, False, True)
    assert sorted(set(model.indirection)) == [0, 1, 2]
    model.reset()                                                       # rule 4
    assert (model.pairs, model.rx.promisc, model.features) == (1, True, 0)


# --- command layout and every command's OK path -----------------------------------------------

def test_commands_ok_and_their_layout():
    async def body():
        dev = device(max_pairs=4)
        net = await opened(dev)
        uc, mc = [bytes.fromhex("020000000011")], [MCAST, bytes.fromhex("333300000001")]
        assert await net.set_rx_mode(promisc=True, allmulti=True, uc=uc, mc=mc)
        # header out, data out (one segment per table), ack in: one buffer
        assert dev.ctrl_buffers[-1] == ((2, False), (4 + 6, False), (4 + 12, False), (1, True))
        assert dev.ctrl.log[-1].data == b"\x01\x00\x00\x00" + uc[0] + b"\x02\x00\x00\x00" \
            + b"".join(mc)
        rx = dev.ctrl.rx
        assert rx.promisc and rx.allmulti and rx.uc_table == tuple(uc) and rx.mc_table == tuple(mc)
        for cmd in (RX.ALLUNI, RX.NOMULTI, RX.NOUNI, RX.NOBCAST):
            assert await net.set_rx_flag(cmd, True)
        assert rx.alluni and rx.nomulti and rx.nouni and rx.nobcast
        assert dev.ctrl_buffers[-1] == ((2, False), (1, False), (1, True))

        new_mac = bytes.fromhex("02aabbccddee")
        generation = dev.config_generation
        await net.set_mac_address(new_mac)
        assert dev.ctrl.mac == net.mac == new_mac
        assert await net.pci.read_config_bytes(VirtioNetCfg.MAC, 6) == new_mac   # 5.1.6.5.2.1
        assert dev.config_generation != generation

        assert await net.vlan_rx_add_vid(5) and await net.vlan_rx_add_vid(4095)
        assert await net.vlan_rx_kill_vid(5) and await net.vlan_rx_kill_vid(77)  # idempotent
        assert dev.ctrl.vlans == net.vlans == {4095}

        await net.set_channels(2)
        assert net.curr_queue_pairs == dev.ctrl.pairs == 2
        assert dev.ctrl.log[-1].data == b"\x02\x00"

        assert dev.request_announce()
        assert await net.wait_config_change(TIMEOUT_NS)
        assert (dev.ctrl.log[-1].cls, dev.ctrl.log[-1].cmd) == (CLS.ANNOUNCE, 0)
        assert dev.ctrl_buffers[-1] == ((2, False), (1, True))                 # no data

        assert all(record.ack == OK for record in dev.ctrl.log)
        stats = net.stats().ctrl
        assert stats.commands == stats.ok == len(dev.ctrl.log) and stats.errors == 0
        await finish(dev, net)
    run(body())


# --- ERR paths: the device answers VIRTIO_NET_ERR and changes nothing -------------------------

ERR_CASES = [
    ("unknown class", 9, 0, b"", CtrlError.UNKNOWN),
    ("unknown RX command", CLS.RX, 6, b"\x01", CtrlError.UNKNOWN),
    ("unknown MAC command", CLS.MAC, 2, b"", CtrlError.UNKNOWN),
    ("RSS not negotiated", CLS.MQ, MQ.RSS_CONFIG, bytes(16), CtrlError.NOT_NEGOTIATED),
    ("guest offloads not negotiated", CLS.GUEST_OFFLOADS, 0, bytes(8),
     CtrlError.NOT_NEGOTIATED),
    ("PROMISC without data", CLS.RX, RX.PROMISC, b"", CtrlError.LENGTH),
    ("PROMISC with 2 bytes", CLS.RX, RX.PROMISC, b"\x01\x00", CtrlError.LENGTH),
    ("VLAN id of 1 byte", CLS.VLAN, VLAN.ADD, b"\x05", CtrlError.LENGTH),
    ("VLAN id 4096", CLS.VLAN, VLAN.ADD, (4096).to_bytes(2, "little"), CtrlError.VALUE),
    ("VLAN DEL id 0xffff", CLS.VLAN, VLAN.DEL, b"\xff\xff", CtrlError.VALUE),
    ("0 pairs", CLS.MQ, MQ.VQ_PAIRS_SET, b"\x00\x00", CtrlError.VALUE),
    ("more pairs than max", CLS.MQ, MQ.VQ_PAIRS_SET, b"\x05\x00", CtrlError.VALUE),
    ("pairs of 3 bytes", CLS.MQ, MQ.VQ_PAIRS_SET, b"\x02\x00\x00", CtrlError.LENGTH),
    ("ADDR_SET of 5 bytes", CLS.MAC, MAC.ADDR_SET, bytes(5), CtrlError.LENGTH),
    ("ADDR_SET multicast", CLS.MAC, MAC.ADDR_SET, MCAST, CtrlError.VALUE),
    ("ADDR_SET zero", CLS.MAC, MAC.ADDR_SET, bytes(6), CtrlError.VALUE),
    ("TABLE_SET one table only", CLS.MAC, MAC.TABLE_SET, bytes(4), CtrlError.LENGTH),
    ("TABLE_SET count beyond data", CLS.MAC, MAC.TABLE_SET,
     b"\x02\x00\x00\x00" + OTHER_MAC + bytes(4), CtrlError.LENGTH),
    ("TABLE_SET trailing byte", CLS.MAC, MAC.TABLE_SET, bytes(8) + b"\x00", CtrlError.LENGTH),
    ("TABLE_SET longer than the command buffer", CLS.MAC, MAC.TABLE_SET,
     b"\x2a\x00\x00\x00" + OTHER_MAC * 42 + bytes(4), CtrlError.TOO_LONG),
    ("ANNOUNCE_ACK with data", CLS.ANNOUNCE, VirtioNetCtrlAnnounce.ACK, b"\x00",
     CtrlError.LENGTH),
    ("ANNOUNCE_ACK with nothing announced", CLS.ANNOUNCE, VirtioNetCtrlAnnounce.ACK, b"",
     CtrlError.NOTHING_TO_ACK),
]


@pytest.mark.parametrize("cls, cmd, data, reason", [case[1:] for case in ERR_CASES],
                         ids=[case[0] for case in ERR_CASES])
def test_malformed_command_gets_err_and_changes_nothing(cls, cmd, data, reason):
    async def body():
        dev = device(max_pairs=4)
        net = await opened(dev)
        assert await net.vlan_rx_add_vid(5)
        before = model_state(dev)
        assert await net.send_command(cls, cmd, [data]) is False
        assert dev.ctrl.log[-1].ack == ERR and dev.ctrl.log[-1].error == reason
        assert model_state(dev) == before
        assert net.stats().ctrl.errors == 1
        await finish(dev, net)
    run(body())


def test_commands_of_features_not_negotiated():
    """The device answers ERR; the driver's own calls refuse before sending."""
    async def body():
        dev = device(features=DEFAULT_DEVICE_FEATURES)        # CTRL_RX, no EXTRA / VLAN / MAC
        net = await opened(dev)
        before = model_state(dev)
        for cls, cmd, data in ((CLS.RX, RX.NOBCAST, b"\x01"), (CLS.VLAN, VLAN.ADD, b"\x01\x00"),
                               (CLS.MAC, MAC.ADDR_SET, OTHER_MAC),
                               (CLS.ANNOUNCE, VirtioNetCtrlAnnounce.ACK, b"")):
            assert await net.send_command(cls, cmd, [data]) is False
            assert dev.ctrl.log[-1].error == CtrlError.NOT_NEGOTIATED
        assert model_state(dev) == before
        sent = len(dev.ctrl.log)
        with pytest.raises(VirtioNetError, match="NOBCAST needs CTRL_RX_EXTRA"):
            await net.set_rx_flag(RX.NOBCAST, True)
        with pytest.raises(VirtioNetError, match="CTRL_VLAN"):
            await net.vlan_rx_add_vid(1)
        await net.set_mac_address(OTHER_MAC)                  # driver only, no command
        assert len(dev.ctrl.log) == sent and net.mac == OTHER_MAC
        assert await net.pci.read_config_bytes(VirtioNetCfg.MAC, 6) == dev.mac
        await finish(dev, net)
    run(body())


async def raw_command(net, out_pieces, in_lens):
    """Place a hand-made buffer on the control queue; (used length, writable bytes after)."""
    t = net.transport
    out, ins = [], []
    for piece in out_pieces:
        addr = t.dma_alloc(len(piece), 8)
        await t.dma_write(addr, piece)
        out.append((addr, len(piece)))
    for length in in_lens:
        addr = t.dma_alloc(length, 8)
        await t.dma_write(addr, b"\xee" * length)
        ins.append((addr, length))
    await net.cvq.add_sgs(out, ins, "raw")
    if await net.cvq.kick_prepare():
        await net.cvq.notify()
    token, used_len = await net.cvq.get_buf()
    assert token == "raw"
    return used_len, [await t.dma_read(addr, length) for addr, length in ins]


def test_buffer_shapes_on_the_ring():
    """Rule 1 through the ring: short buffers, no ack byte, data on the wrong side."""
    async def body():
        dev = device()
        net = await opened(dev)
        before = model_state(dev)
        assert await raw_command(net, [b"\x00"], [1]) == (1, [b"\x01"])           # short
        assert dev.ctrl.log[-1].error == CtrlError.SHORT
        assert await raw_command(net, [bytes([CLS.RX, RX.PROMISC, 1])], []) == (0, [])
        assert dev.ctrl.unanswerable == 1 and dev.ctrl.log[-1].ack is None
        # the on/off byte put in the device-writable part: too short, ERR in its first byte
        assert await raw_command(net, [bytes([CLS.RX, RX.PROMISC])], [1, 1]) == \
            (1, [b"\x01", b"\xee"])
        assert dev.ctrl.log[-1].error == CtrlError.LENGTH
        assert model_state(dev) == before
        # a correct command split over segments; a 4-byte ack area: only byte 0 written
        assert await raw_command(net, [bytes([CLS.RX]), bytes([RX.PROMISC]), b"\x01"], [4]) == \
            (1, [b"\x00\xee\xee\xee"])
        assert dev.ctrl.rx.promisc
        await finish(dev, net)
    run(body())


def test_buffers_queued_together_are_answered_in_order():
    """Two command buffers made available before one notification: the device
    answers both, in ring order, each taking effect before the next is read."""
    async def body():
        dev = device()
        net = await opened(dev)
        t, cvq = net.transport, net.cvq
        acks = []
        for data in (bytes([CLS.RX, RX.PROMISC, 1]), bytes([CLS.RX, RX.ALLMULTI, 7])):
            out, ack = t.dma_alloc(len(data), 8), t.dma_alloc(1, 8)
            await t.dma_write(out, data)
            await t.dma_write(ack, b"\xee")
            await cvq.add_sgs([(out, len(data))], [(ack, 1)], data)
            acks.append(ack)
        assert await cvq.kick_prepare() and await cvq.notify()
        assert [(await cvq.get_buf())[0][2] for _ in range(2)] == [1, 7]
        assert [await t.dma_read(ack, 1) for ack in acks] == [b"\x00", b"\x00"]
        assert [r.data for r in dev.ctrl.log[-2:]] == [b"\x01", b"\x07"]      # in ring order
        await finish(dev, net)
    run(body())


# --- waiting for the device -------------------------------------------------------------------

async def _lagging_ctrl(dev, stop, period=0.0005):
    while not stop.is_set():
        await asyncio.sleep(period)
        dev.process_ctrl()


def test_send_command_waits_for_a_lagging_device_and_is_exclusive():
    async def body():
        dev = device()
        net = await opened(dev)
        dev.ctrl_autoprocess = False
        stop = asyncio.Event()
        first = asyncio.create_task(net.vlan_rx_add_vid(10))
        await asyncio.sleep(0)                               # placed, now polling
        assert net.ctrl_busy
        with pytest.raises(VirtioNetError, match="busy"):
            await net.vlan_rx_add_vid(11)
        # an announcement meanwhile: its ack waits for the command in flight
        assert dev.request_announce()
        await net.config_changed()
        assert net.stats().link.announces == 1 and dev.ctrl.announce
        device_task = asyncio.create_task(_lagging_ctrl(dev, stop))
        assert await first
        stop.set()
        await device_task
        assert [(r.cls, r.ack) for r in dev.ctrl.log[-2:]] == [(CLS.VLAN, OK), (CLS.ANNOUNCE, OK)]
        assert not dev.ctrl.announce and net.vlans == {10}
        await finish(dev, net)
    run(body())


def test_send_command_timeout_is_a_clear_error():
    async def body():
        dev = device()
        net = await opened(dev)
        dev.ctrl_autoprocess = False                         # the device never answers
        with pytest.raises(VirtioNetCtrlTimeout, match="no answer within 2000000 ns") as info:
            await net.send_command(CLS.RX, RX.PROMISC, [b"\x01"], timeout_ns=2_000_000)
        assert isinstance(info.value, TimeoutError)
        assert net.stats().ctrl.timeouts == 1
        with pytest.raises(VirtioNetError, match="out of use"):
            await net.set_rx_mode(promisc=True)
        await finish(dev, net)                               # the buffer is taken back
    run(body())


def test_device_needs_reset_ends_the_wait():
    async def body():
        dev = device()
        net = await opened(dev)
        dev.ctrl_autoprocess = False

        async def break_device():
            await asyncio.sleep(0.001)
            dev.status |= VirtioStatus.DEVICE_NEEDS_RESET

        task = asyncio.create_task(break_device())
        with pytest.raises(VirtioNetError, match="DEVICE_NEEDS_RESET"):
            await net.vlan_rx_add_vid(3)
        await task
        await finish(dev, net)
    run(body())


# --- multiqueue ----------------------------------------------------------------------------

def test_probe_asks_for_the_pairs_and_set_channels_checks():
    async def body():
        dev = device(max_pairs=4)
        net = await probed(dev, queue_pairs=2)
        assert net.curr_queue_pairs == dev.ctrl.pairs == 2
        for bad in (0, 5):
            with pytest.raises(ValueError, match="1..4"):
                await net.set_channels(bad)
        # refused by the device: nothing changes
        dev.ctrl.max_pairs = 2
        with pytest.raises(VirtioNetCtrlError, match="refused VQ_PAIRS_SET 3"):
            await net.set_channels(3)
        assert net.curr_queue_pairs == dev.ctrl.pairs == 2
        await net.open()
        assert [sq.stopped for sq in net.sq] == [False, False, True, True]
        with pytest.raises(VirtioNetCtrlError):
            await net.set_channels(3)
        assert [sq.stopped for sq in net.sq] == [False, False, True, True]
        await net.set_channels(1)
        assert [sq.stopped for sq in net.sq] == [False, True, True, True]
        with pytest.raises(VirtioNetError, match="pair 1 is not in use"):
            await net.start_xmit(udp4(1), 1)
        await finish(dev, net)

        dev = device(features=int(VirtioF.VERSION_1 | F.MAC), max_pairs=4, num_queues=9)
        net = await probed(dev)                               # no MQ: one pair, no commands
        assert net.max_queue_pairs == net.curr_queue_pairs == 1 and net.cvq is None
        await net.set_channels(1)
        with pytest.raises(ValueError):
            await net.set_channels(2)
        with pytest.raises(VirtioNetError, match="CTRL_VQ was not negotiated"):
            await net.send_command(CLS.RX, RX.PROMISC, [b"\x01"])
        await finish(dev, net)

        with pytest.raises(VirtioNetError, match="before a successful probe"):
            await VirtioNet(device()).set_channels(1)
    run(body())


def test_device_refuses_tx_on_a_pair_not_in_use():
    """The fake's rule (section 5.1.6.5.5.1), reached by going around the driver."""
    async def body():
        dev = device(max_pairs=2)
        net = await opened(dev, queue_pairs=1)
        await net.xmit_skb(net.sq[1], [udp4(1)])
        with pytest.raises(FakeDeviceProtocolError, match="pair 1, not in use"):
            await net.sq[1].vq.kick()
    run(body())


def test_select_queue_is_stable_per_flow_and_spreads():
    async def body():
        dev = device(max_pairs=4)
        net = await opened(dev)
        for make in (udp4, tcp6):
            queues = []
            for flow in range(16):
                picks = {net.select_queue(make(flow, payload=bytes(n))) for n in (0, 7, 300)}
                assert len(picks) == 1, f"flow {flow} moved between queues"
                queues.append(picks.pop())
            assert set(queues) == {0, 1, 2, 3}, queues
        assert net.select_queue(ARP) == 0
        assert net.select_queue([udp4(5)[:20], udp4(5)[20:]]) == net.select_queue(udp4(5))
        mapping = [net.select_queue(udp4(flow)) for flow in range(64)]
        await net.set_channels(2)
        assert {net.select_queue(udp4(flow)) for flow in range(64)} == {0, 1}
        await net.set_channels(4)
        assert [net.select_queue(udp4(flow)) for flow in range(64)] == mapping
        # send() uses it: every frame of a flow leaves on its flow's queue
        for k in range(48):
            assert await net.send(udp4(k % 16, payload=bytes([k])), timeout_ns=TIMEOUT_NS) \
                == mapping[k % 16]
        assert dev.tx_pairs == [mapping[k % 16] for k in range(48)]
        await finish(dev, net)
    run(body())


async def drain_all(net, dev):
    """Poll every pair while a poll is scheduled or its interrupt is pending."""
    busy = True
    while busy:
        busy = False
        for rq in net.rq:
            if rq.napi.scheduled or dev.interrupt_pending(rq.vq.msix_vector):
                await net.wait_and_poll(rq.pair, timeout_ns=TIMEOUT_NS)
                busy = True


def test_set_channels_4_1_4_under_traffic():
    """A sender task and a lagging device (transmit and control queues) while the
    pairs go 4 -> 1 -> 4: every transmitted frame reaches the wire exactly once
    (and none on a pair after the command that took it out of use: the fake
    checks), every frame from the wire is delivered or counted, and steering
    follows the pairs in use."""
    async def body():
        dev = device(max_pairs=4, tx_autoprocess=False, queue_max_size=64,
                     features=DEFAULT_DEVICE_FEATURES | CTRL_FEATURES | int(VirtioF.EVENT_IDX))
        net = await opened(dev)
        assert net.curr_queue_pairs == 4
        sent, stop = [], asyncio.Event()
        dev.ctrl_autoprocess = False
        ctrl_task = asyncio.create_task(_lagging_ctrl(dev, stop))

        async def lagging_device():
            while not stop.is_set():
                await asyncio.sleep(0.0002)
                dev.process_tx()

        async def sender():
            for k in range(600):
                frame = udp4(k % 32, payload=k.to_bytes(2, "big"))
                await net.send(frame, timeout_ns=TIMEOUT_NS)
                sent.append(frame)
                if k % 16 == 0:
                    await asyncio.sleep(0)

        wire, delivered, refused = random.Random(7), [], 0

        async def receive_burst(count):
            nonlocal refused
            before = collections.Counter(dev.rx_per_pair)
            for _ in range(count):
                frame = udp4(wire.randrange(1000), dst_mac=net.mac,
                             payload=wire.randbytes(wire.randrange(1, 200)))
                if dev.wire_rx(frame):
                    delivered.append(frame)
                else:
                    refused += 1
            await drain_all(net, dev)
            return collections.Counter(dev.rx_per_pair) - before

        device_task = asyncio.create_task(lagging_device())
        sender_task = asyncio.create_task(sender())
        await asyncio.sleep(0.002)
        assert set(await receive_burst(60)) == {0, 1, 2, 3}
        await net.set_channels(1)
        assert dev.ctrl.pairs == 1 and net.curr_queue_pairs == 1
        await asyncio.sleep(0.002)
        burst = await receive_burst(100)                     # more than one ring holds
        assert set(burst) == {0} and dev.rx_dropped_no_buffer > 0
        await net.set_channels(4)
        await asyncio.sleep(0.002)
        assert set(await receive_burst(60)) == {0, 1, 2, 3}
        await sender_task
        stop.set()
        await device_task
        await ctrl_task

        dev.process_tx()
        for pair in range(4):
            await net.poll_tx(pair)
        await drain_all(net, dev)
        assert sorted(dev.tx_frames) == sorted(sent) and len(set(sent)) == len(sent)
        assert set(dev.tx_pairs) == {0, 1, 2, 3}
        received = [frame for pair in range(4) for frame in net.take_received(pair)]
        assert collections.Counter(received) == collections.Counter(delivered)
        assert refused == dev.rx_filtered + dev.rx_dropped_no_buffer and refused > 0
        stats = net.stats()
        assert len(stats.rx_queues) == len(stats.tx_queues) == 4
        assert all(q.packets for q in stats.rx_queues) and all(q.packets for q in stats.tx_queues)
        assert stats.tx_packets == len(sent) and stats.rx_packets == len(delivered)
        assert stats.tx_dropped == stats.rx_dropped == 0
        assert stats.ctrl.ok == stats.ctrl.commands and stats.ctrl.errors == 0
        await finish(dev, net)
    run(body())


def test_pairs_coming_into_use_have_receive_buffers_first():
    """The device may steer to a pair as soon as it has used VQ_PAIRS_SET: its
    receive ring is filled before the command (Linux refills after it)."""
    async def body():
        dev = device(max_pairs=4)
        net = await opened(dev, queue_pairs=1)
        assert [rq.vq.num_free == rq.vq.num for rq in net.rq] == [False, True, True, True]
        await net.set_channels(4)
        flows = [udp4(flow, dst_mac=net.mac) for flow in range(32)]
        assert all(dev.wire_rx(frame) for frame in flows)
        assert set(dev.rx_per_pair) == {0, 1, 2, 3} and dev.rx_dropped_no_buffer == 0
        await drain_all(net, dev)
        assert net.stats().rx_packets == 32
        await finish(dev, net)
    run(body())


# --- receive filters, end to end --------------------------------------------------------

def test_receive_filters_on_the_wire():
    async def body():
        dev = device(max_pairs=1)
        net = await probed(dev)
        assert await net.set_rx_mode(promisc=False)           # remembered, not sent yet
        assert dev.ctrl.rx.promisc and len(dev.ctrl.log) == 1  # VQ_PAIRS_SET only
        await net.open()                                       # open sends it
        assert not dev.ctrl.rx.promisc
        own = udp4(1, dst_mac=net.mac)

        def passes(frame):
            return dev.wire_rx(frame)

        assert passes(own) and passes(udp4(1, dst_mac=BROADCAST))
        assert not passes(udp4(1)) and not passes(udp4(1, dst_mac=MCAST))
        assert await net.set_rx_mode(uc=[OTHER_MAC], mc=[MCAST])
        assert passes(udp4(1)) and passes(udp4(1, dst_mac=MCAST))
        assert not passes(udp4(1, dst_mac=bytes.fromhex("01005e0000ff")))
        assert await net.set_rx_mode(allmulti=True)
        assert passes(udp4(1, dst_mac=bytes.fromhex("01005e0000ff"))) and not passes(udp4(1))
        # VLANs: a tagged frame needs its id in the table (CTRL_VLAN negotiated)
        assert not passes(udp4(1, dst_mac=net.mac, vid=5))
        assert await net.vlan_rx_add_vid(5)
        assert passes(udp4(1, dst_mac=net.mac, vid=5))
        assert await net.vlan_rx_kill_vid(5)
        assert not passes(udp4(1, dst_mac=net.mac, vid=5))
        # the CTRL_RX_EXTRA commands
        assert await net.set_rx_flag(RX.NOBCAST, True)
        assert not passes(udp4(1, dst_mac=BROADCAST))
        assert await net.set_rx_flag(RX.NOMULTI, True)          # even with allmulti
        assert not passes(udp4(1, dst_mac=MCAST))
        assert await net.set_rx_flag(RX.ALLUNI, True)
        assert passes(udp4(1, dst_mac=bytes.fromhex("020000000077")))
        assert await net.set_rx_flag(RX.NOUNI, True)            # even with alluni
        assert not passes(own)
        assert await net.set_rx_flag(RX.PROMISC, True)          # everything
        assert all(passes(f) for f in (own, udp4(1, dst_mac=BROADCAST),
                                       udp4(1, dst_mac=MCAST), udp4(2, vid=9)))
        assert net.rx_mode.promisc
        await drain_all(net, dev)
        assert len(net.take_received()) == dev.rx_delivered
        await finish(dev, net)
    run(body())


def test_mac_table_overflow_accepts_all_of_its_kind():
    async def body():
        dev = device(mac_table_entries=2)
        net = await opened(dev)
        macs = [bytes([2, 0, 0, 0, 0, n]) for n in range(3)]
        assert await net.set_rx_mode(uc=macs, mc=[MCAST])
        assert dev.ctrl.rx.uc_overflow and not dev.ctrl.rx.mc_overflow
        assert dev.wire_rx(udp4(1, dst_mac=bytes.fromhex("020000000077")))
        assert not dev.wire_rx(udp4(1, dst_mac=bytes.fromhex("01005e0000ff")))
        await finish(dev, net)
    run(body())


def test_set_mac_address():
    async def body():
        dev = device()
        net = await opened(dev)
        old, new = net.mac, bytes.fromhex("02aabbccddee")
        with pytest.raises(ValueError, match="not a unicast"):
            await net.set_mac_address(MCAST)
        with pytest.raises(ValueError, match="not a valid"):
            await net.set_mac_address(bytes(6))
        await net.set_mac_address(new)
        assert dev.wire_rx(udp4(1, dst_mac=new)) and not dev.wire_rx(udp4(1, dst_mac=old))
        dev.ctrl.features &= ~int(F.CTRL_MAC_ADDR)            # now the device refuses
        with pytest.raises(VirtioNetCtrlError, match="refused MAC address"):
            await net.set_mac_address(old)
        assert net.mac == new
        await finish(dev, net)

        # no MAC from the device: probe tells it the random one (Linux's virtnet_probe)
        dev = device(features=(DEFAULT_DEVICE_FEATURES | CTRL_FEATURES) & ~int(F.MAC))
        net = await probed(dev, rng=random.Random(1))
        assert not net.mac_from_device and dev.ctrl.mac == net.mac != dev.mac
        assert (dev.ctrl.log[0].cls, dev.ctrl.log[0].cmd) == (CLS.MAC, MAC.ADDR_SET)
        await finish(dev, net)
    run(body())


# --- link changes ---------------------------------------------------------------------------

def test_link_flaps_turn_the_carrier_and_are_counted():
    async def body():
        dev = device(max_pairs=2)
        net = await opened(dev)
        frame = udp4(1)
        for _ in range(3):
            dev.set_link(False)
            assert await net.wait_config_change(TIMEOUT_NS)
            assert not net.link_up and not net.carrier and all(sq.stopped for sq in net.sq)
            assert await net.start_xmit(frame, 0) == NETDEV_TX_BUSY
            with pytest.raises(VirtioNetError, match="carrier off"):
                await net.send(frame)
            dev.set_link(True)
            assert await net.wait_config_change(TIMEOUT_NS)
            assert net.carrier and not any(sq.stopped for sq in net.sq)
            assert await net.start_xmit(frame, 1) == NETDEV_TX_OK
        dev._config_changed()                                 # a change that is not the link
        assert await net.wait_config_change(TIMEOUT_NS)
        link = net.stats().link
        assert (link.config_changes, link.carrier_down, link.carrier_up) == (7, 3, 3)
        assert dev.config_notifications == dev.msix_counts[0] == 7
        assert not await net.wait_config_change(1_000_000)   # nothing more: timeout
        # closed while the link goes down: open() leaves the queues stopped
        await net.close()
        dev.set_link(False)
        await net.wait_config_change(TIMEOUT_NS)
        await net.open()
        assert all(sq.stopped for sq in net.sq)
        dev.set_link(True)
        await net.wait_config_change(TIMEOUT_NS)
        assert not any(sq.stopped for sq in net.sq)
        assert dev.tx_frames == [frame] * 3
        await finish(dev, net)
    run(body())


def test_announce_is_acknowledged():
    async def body():
        announced = []
        dev = device()
        net = await opened(dev, on_announce=lambda: announced.append(True))
        assert dev.request_announce()
        status = await net.pci.config_read16(VirtioNetCfg.STATUS)
        assert status & VirtioNetS.ANNOUNCE
        assert await net.wait_config_change(TIMEOUT_NS)
        assert announced == [True] and not dev.ctrl.announce
        assert not await net.pci.config_read16(VirtioNetCfg.STATUS) & VirtioNetS.ANNOUNCE
        link = net.stats().link
        assert (link.announces, link.carrier_up, link.carrier_down) == (1, 0, 0)
        await finish(dev, net)

        dev = device(features=DEFAULT_DEVICE_FEATURES)           # no GUEST_ANNOUNCE
        net = await opened(dev)
        assert not dev.request_announce()
        await finish(dev, net)
    run(body())


def test_config_change_without_vectors():
    async def body():
        dev = device(msix_vectors=0)
        net = await opened(dev)
        with pytest.raises(VirtioNetError, match="vp_interrupt"):
            await net.wait_config_change()
        dev.set_link(False)
        assert dev.isr & VirtioIsr.CONFIG
        assert await net.vp_interrupt() & VirtioIsr.CONFIG
        assert not net.carrier and net.stats().link.carrier_down == 1
        assert await net.vp_interrupt() == 0                   # read cleared it
        await finish(dev, net)
    run(body())


# --- MSI-X vectors --------------------------------------------------------------------------

@pytest.mark.parametrize("vectors, policy", [(9, "each"), (8, "shared"), (2, "shared"),
                                             (1, "none"), (0, "none")])
def test_msix_vector_fallback(vectors, policy):
    """4 pairs: a vector per data queue needs 8 + 1; else 1 shared + 1; else none.
    The control queue never has one (it is polled)."""
    async def body():
        dev = device(max_pairs=4, msix_vectors=vectors)
        net = await probed(dev)
        assert net.vector_policy.value == policy and net.msix == (policy != "none")
        expected = {"each": list(range(1, 9)), "shared": [1] * 8, "none": [NO_VECTOR] * 8}
        assert [dev.queues[i].msix_vector for i in range(9)] == expected[policy] + [NO_VECTOR]
        assert dev.config_msix_vector == (NO_VECTOR if policy == "none" else 0)
        assert net.summary()["vector_policy"] == policy
        await finish(dev, net)
    run(body())


def test_shared_vector_reaches_every_queue():
    async def body():
        dev = device(max_pairs=4, msix_vectors=2)
        net = await opened(dev)
        await drain_all(net, dev)                              # the polls open() scheduled
        a, b = udp4(1, dst_mac=net.mac), udp4(2, dst_mac=net.mac)
        assert dev.inject_rx(a, 3) and dev.inject_rx(b, 1)
        assert dev.msix_counts[1] == 2 and dev.msix_counts[0] == 0
        assert await net.wait_and_poll(3, timeout_ns=TIMEOUT_NS) == 1
        assert net.rq[1].napi.scheduled                        # its handler ran too
        assert await net.poll(1) == 1
        assert net.take_received(3) == [a] and net.take_received(1) == [b]
        await finish(dev, net)
    run(body())


# --- feature negotiation ----------------------------------------------------------------

@pytest.mark.parametrize("feature", [F.CTRL_RX, F.CTRL_VLAN, F.GUEST_ANNOUNCE, F.MQ,
                                     F.CTRL_MAC_ADDR], ids=lambda f: f.name)
def test_control_features_without_ctrl_vq_are_refused(feature):
    dev = FakeVirtioNetDevice(features=int(VirtioF.VERSION_1 | F.MAC | feature))
    net = VirtioNet(dev)
    with pytest.raises(VirtioNetProbeError) as info:
        run(net.probe())
    assert info.value.problems == [f"device offers {feature.name} but not its dependency CTRL_VQ"]
    assert dev.status == VirtioStatus.FAILED


def test_driver_accepts_control_features_only_with_their_dependencies():
    assert DRIVER_FEATURES & CTRL_FEATURES == CTRL_FEATURES
    offered = int(VirtioF.VERSION_1 | F.CTRL_VQ | F.CTRL_RX | F.CTRL_RX_EXTRA | F.MQ)
    assert accept_features(offered, DRIVER_FEATURES)[0] == offered
    accepted, notes = accept_features(offered, DRIVER_FEATURES & ~int(F.CTRL_VQ))
    assert accepted == int(VirtioF.VERSION_1)                  # the drops cascade
    assert "not accepting CTRL_RX: CTRL_VQ not accepted" in notes
    assert "not accepting CTRL_RX_EXTRA: CTRL_RX not accepted" in notes

    async def body():
        dev = device(max_pairs=2)
        net = await opened(dev, driver_features=DRIVER_FEATURES & ~int(F.CTRL_VQ))
        assert net.cvq is None and net.curr_queue_pairs == net.max_queue_pairs == 1
        assert not net.negotiated_features & (F.MQ | F.CTRL_RX | F.CTRL_VLAN)
        assert dev.ctrl.log == []
        await finish(dev, net)

        dev = device(features=int(VirtioF.VERSION_1 | F.CTRL_VQ | F.CTRL_RX_EXTRA))
        net = await opened(dev)
        assert net.negotiated_features == int(VirtioF.VERSION_1 | F.CTRL_VQ)
        await finish(dev, net)
    run(body())
