"""ControlCommands in the Amaranth simulator: each command's answer and effect,
and malformed commands answered VIRTIO_NET_ERR with nothing changed."""
import struct

import pytest

from hdl import spec
from hdl.net.ctrl import ControlCommands
from hdl.net.rx_filter import FILTER_LATENCY
from hdl.virtio.virtqueues import CTRL_MAX_COMMAND
from tests.amaranth_sim import simulate

C = spec.VirtioNetCtrlClass
RX, MAC, VLAN, MQ = spec.VirtioNetCtrlRx, spec.VirtioNetCtrlMac, spec.VirtioNetCtrlVlan, spec.VirtioNetCtrlMq
F = spec.VirtioNetF
ALL = int(F.CTRL_VQ | F.CTRL_RX | F.CTRL_RX_EXTRA | F.CTRL_VLAN | F.CTRL_MAC_ADDR | F.MQ)
OK, ERR = spec.VIRTIO_NET_OK, spec.VIRTIO_NET_ERR
MAX_PAIRS = 4
TABLE = 16                 # indirection table entries in these tests
DEFAULT_MAC = bytes.fromhex("02005e100001")
UC, MC = 4, 3              # MAC table sizes in these tests


def mac_int(mac):
    return int.from_bytes(mac, "little")


def table_set(uc, mc):
    return (struct.pack("<I", len(uc)) + b"".join(uc) + struct.pack("<I", len(mc)) + b"".join(mc))


class Observed:
    """What the block did: answers, state, table writes."""

    def __init__(self):
        self.acks = []
        self.uc, self.mc, self.vlan, self.steer = {}, {}, {}, {}
        self.announces = 0
        self.settled = []    # per answer: cycles since the filter's settings last changed


def run(commands, *, features=ALL, bad=()):
    """Send `commands` (bytes each, `bad` indexes flagged cmd_bad); return
    (Observed, final state dict)."""
    dut = ControlCommands(max_pairs=MAX_PAIRS, default_mac=DEFAULT_MAC, uc_entries=UC,
                          mc_entries=MC, table_size=TABLE)
    seen = Observed()
    final = {}

    async def bench(ctx):
        ctx.set(dut.features, features)
        ctx.set(dut.ack.ready, 1)
        for index, command in enumerate(commands):
            await ctx.tick().until(dut.steer_ready)
            beats = [command[i:i + 4] for i in range(0, len(command), 4)] or [b""]
            for n, chunk in enumerate(beats):
                ctx.set(dut.cmd.payload, {"data": int.from_bytes(chunk.ljust(4, b"\0"), "little"),
                                          "keep": (1 << len(chunk)) - 1,
                                          "last": n == len(beats) - 1})
                ctx.set(dut.cmd_bad, index in bad)
                ctx.set(dut.cmd.valid, 1)
                await ctx.tick().until(dut.cmd.ready)
            ctx.set(dut.cmd.valid, 0)
            count = len(seen.acks)
            while len(seen.acks) == count:
                await ctx.tick()
        await ctx.tick().until(dut.steer_ready)
        for name in ("pairs", "mac", "uc_count", "mc_count"):
            final[name] = ctx.get(getattr(dut, name))
        final["mode"] = {f: getattr(ctx.get(dut.mode), f) for f in
                         ("promisc", "allmulti", "alluni", "nomulti", "nouni", "nobcast")}

    ports = {"uc": dut.uc_w, "mc": dut.mc_w, "vlan": dut.vlan_w, "steer": dut.steer_w}

    # what RxFilter reads: a change to any of them must be FILTER_LATENCY
    # cycles old before the answer
    settings = [dut.mode.as_value(), dut.mac, dut.uc_count, dut.mc_count]
    filter_writes = [dut.uc_w.en, dut.mc_w.en, dut.vlan_w.en]

    async def monitor(ctx):
        signals = [dut.ack.valid, dut.ack.payload, dut.announce_ack]
        for port in ports.values():
            signals += [port.en, port.addr, port.data]
        cycle, last, changed = 0, None, None   # `changed`: the cycle of the last change made
        async for _, _, *values in ctx.tick().sample(*signals, *settings, *filter_writes):
            ack_v, ack, ann, *writes = values[:len(signals)]
            now = values[len(signals):len(signals) + len(settings)]
            if last is not None and now != last:
                changed = cycle - 1            # a register's new value was set the cycle before
            if any(values[len(signals) + len(settings):]):
                changed = cycle                # a table write, seen from the next cycle
            if ack_v:
                seen.acks.append(ack)
                seen.settled.append(None if changed is None else cycle - changed)
            last = now
            cycle += 1
            seen.announces += ann
            for n, name in enumerate(ports):
                en, addr, data = writes[3 * n:3 * n + 3]
                if en:
                    getattr(seen, name)[addr] = data

    from amaranth.sim import Simulator
    from tests.amaranth_sim import CLOCK_PERIOD
    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    sim.add_testbench(bench)
    sim.add_testbench(monitor, background=True)
    sim.run()
    return seen, final


def cmd(cls, command, data=b""):
    return bytes([cls, command]) + data


def test_reset_state_and_round_robin_steering():
    seen, final = run([])
    assert final["pairs"] == 1 and final["mac"] == mac_int(DEFAULT_MAC)
    assert final["mode"]["promisc"] == 1 and final["uc_count"] == final["mc_count"] == 0
    assert seen.steer == {i: 0 for i in range(TABLE)}


@pytest.mark.parametrize("command", list(RX))
def test_rx_mode_commands_set_and_clear_their_bit(command):
    name = command.name.lower()
    seen, final = run([cmd(C.RX, command, b"\x01"), cmd(C.RX, RX.PROMISC, b"\x00")])
    assert seen.acks == [OK, OK]
    assert final["mode"][name] == (command != RX.PROMISC)
    others = {k: v for k, v in final["mode"].items() if k not in (name, "promisc")}
    assert not any(others.values())


def test_mac_addr_set():
    new = bytes.fromhex("0a1b2c3d4e5f")
    seen, final = run([cmd(C.MAC, MAC.ADDR_SET, new)])
    assert seen.acks == [OK] and final["mac"] == mac_int(new)


def test_mac_table_set_writes_both_tables():
    uc = [bytes([2, 0, 0, 0, 0, n]) for n in range(3)]
    mc = [bytes([1, 0, 0x5e, 0, 0, n]) for n in range(5)]      # more than fit (MC = 3)
    seen, final = run([cmd(C.MAC, MAC.TABLE_SET, table_set(uc, mc))])
    assert seen.acks == [OK]
    assert final["uc_count"] == 3 and final["mc_count"] == 5   # above the size: all multicast
    assert seen.uc == {n: mac_int(a) for n, a in enumerate(uc)}
    assert seen.mc == {n: mac_int(a) for n, a in enumerate(mc[:MC])}


def test_answers_wait_until_the_filter_sees_the_change():
    """Each answer comes at least FILTER_LATENCY cycles after the last change
    to what RxFilter reads, so every frame decided after it sees the command."""
    uc = [bytes([2, 0, 0, 0, 0, n]) for n in range(2)]
    mc = [bytes([1, 0, 0x5e, 0, 0, 1])]
    commands = [cmd(C.RX, RX.PROMISC, b"\x00"), cmd(C.RX, RX.ALLMULTI, b"\x01"),
                cmd(C.MAC, MAC.TABLE_SET, table_set(uc, mc)),
                cmd(C.MAC, MAC.ADDR_SET, bytes.fromhex("0a1b2c3d4e5f")),
                cmd(C.VLAN, VLAN.ADD, struct.pack("<H", 7)),
                cmd(C.MAC, MAC.TABLE_SET, table_set([], uc))]
    seen, _ = run(commands)
    assert seen.acks == [OK] * len(commands)
    assert all(gap is not None for gap in seen.settled), seen.settled
    assert min(seen.settled) >= FILTER_LATENCY, seen.settled


def test_vlan_add_and_del():
    seen, _ = run([cmd(C.VLAN, VLAN.ADD, struct.pack("<H", 42)),
                   cmd(C.VLAN, VLAN.DEL, struct.pack("<H", 7)),
                   cmd(C.VLAN, VLAN.ADD, struct.pack("<H", 4096))])
    assert seen.acks == [OK, OK, ERR]
    assert seen.vlan == {42: 1, 7: 0}


def test_vq_pairs_set_refills_the_steering_table():
    seen, final = run([cmd(C.MQ, MQ.VQ_PAIRS_SET, struct.pack("<H", 3))])
    assert seen.acks == [OK] and final["pairs"] == 3
    assert seen.steer == {i: i % 3 for i in range(TABLE)}


MALFORMED = {
    "unknown class": cmd(9, 0, b"\x01"),
    "unknown command": cmd(C.RX, 6, b"\x01"),
    "only a class": bytes([C.RX]),
    "rx data too long": cmd(C.RX, RX.PROMISC, b"\x01\x00"),
    "rx data missing": cmd(C.RX, RX.PROMISC),
    "short mac": cmd(C.MAC, MAC.ADDR_SET, b"\x02\x00\x00"),
    "group mac": cmd(C.MAC, MAC.ADDR_SET, bytes.fromhex("01005e000001")),
    "zero mac": cmd(C.MAC, MAC.ADDR_SET, bytes(6)),
    "table counts past the end": cmd(C.MAC, MAC.TABLE_SET, struct.pack("<I", 9) + bytes(6)),
    "table longer than its counts": cmd(C.MAC, MAC.TABLE_SET, table_set([bytes(6)], []) + b"\0"),
    "huge table count": cmd(C.MAC, MAC.TABLE_SET, struct.pack("<I", 0xFFFFFFFF) + bytes(8)),
    "zero pairs": cmd(C.MQ, MQ.VQ_PAIRS_SET, struct.pack("<H", 0)),
    "too many pairs": cmd(C.MQ, MQ.VQ_PAIRS_SET, struct.pack("<H", MAX_PAIRS + 1)),
    "rss not offered": cmd(C.MQ, MQ.RSS_CONFIG, bytes(16)),
    "announce not negotiated": cmd(C.ANNOUNCE, 0),
    "longer than a command": cmd(C.MAC, MAC.TABLE_SET, bytes(CTRL_MAX_COMMAND)),
    "no multicast count": cmd(C.MAC, MAC.TABLE_SET, struct.pack("<I", 1) + bytes(6)),
    # counts above what fits a command, whose low bits would fit this one
    "table count 65": cmd(C.MAC, MAC.TABLE_SET, struct.pack("<I", 65) + bytes(6)
                          + struct.pack("<I", 0)),
    "table count 2**32 - 63": cmd(C.MAC, MAC.TABLE_SET, struct.pack("<I", 2**32 - 63) + bytes(6)
                                  + struct.pack("<I", 0)),
    "multicast count 65": cmd(C.MAC, MAC.TABLE_SET, struct.pack("<IIxxxxxx", 0, 65)),
    "42 addresses": cmd(C.MAC, MAC.TABLE_SET,       # counts right, but too long
                        table_set([bytes([2, 0, 0, 0, 0, n]) for n in range(42)], [])),
    "one byte over the limit": cmd(C.MAC, MAC.TABLE_SET,
                                   table_set([bytes([2, 0, 0, 0, 0, n]) for n in range(41)], [])
                                   + b"\0"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_commands_are_refused_and_change_nothing(name):
    seen, final = run([MALFORMED[name]])
    assert seen.acks == [ERR]
    clean_seen, clean = run([])
    assert final == clean and seen.uc == seen.mc == seen.vlan == {}


def test_commands_need_their_feature():
    seen, final = run([cmd(C.RX, RX.ALLUNI, b"\x01"), cmd(C.MQ, MQ.VQ_PAIRS_SET, b"\x02\x00")],
                      features=int(F.CTRL_VQ | F.CTRL_RX))
    assert seen.acks == [ERR, ERR] and final["pairs"] == 1 and final["mode"]["alluni"] == 0


def test_a_chain_flagged_bad_is_refused():
    seen, final = run([cmd(C.MQ, MQ.VQ_PAIRS_SET, b"\x02\x00")], bad={0})
    assert seen.acks == [ERR] and final["pairs"] == 1


def test_vlan_commands_wait_while_the_table_is_cleared():
    dut = ControlCommands(max_pairs=MAX_PAIRS, default_mac=DEFAULT_MAC, uc_entries=UC,
                          mc_entries=MC, table_size=TABLE)
    writes = []

    async def bench(ctx):
        ctx.set(dut.features, ALL)
        ctx.set(dut.ack.ready, 1)
        ctx.set(dut.vlan_busy, 1)
        await ctx.tick().until(dut.steer_ready)
        command = cmd(C.VLAN, VLAN.ADD, struct.pack("<H", 5))
        for n, chunk in enumerate([command]):
            ctx.set(dut.cmd.payload, {"data": int.from_bytes(chunk.ljust(4, b"\0"), "little"),
                                      "keep": 0b1111, "last": 1})
            ctx.set(dut.cmd.valid, 1)
            await ctx.tick().until(dut.cmd.ready)
        ctx.set(dut.cmd.valid, 0)
        for _ in range(50):
            _, _, en, ack = await ctx.tick().sample(dut.vlan_w.en, dut.ack.valid)
            assert not en and not ack, "a VLAN write while the table is being cleared is lost"
        ctx.set(dut.vlan_busy, 0)
        while True:
            _, _, en, addr, ack = await ctx.tick().sample(dut.vlan_w.en, dut.vlan_w.addr, dut.ack.valid)
            if en:
                writes.append(addr)
            if ack:
                break

    simulate(dut, bench)
    assert writes == [5]


def test_mac_table_set_of_empty_tables():
    seen, final = run([cmd(C.MAC, MAC.TABLE_SET, table_set([bytes([2, 0, 0, 0, 0, 9])], [])),
                       cmd(C.MAC, MAC.TABLE_SET, table_set([], []))])
    assert seen.acks == [OK, OK]
    assert final["uc_count"] == final["mc_count"] == 0
    assert seen.uc == {0: mac_int(bytes([2, 0, 0, 0, 0, 9]))} and seen.mc == {}


def test_mac_table_set_as_long_as_a_command_may_be():
    """41 addresses: CTRL_MAX_COMMAND bytes exactly (one more is refused, see
    MALFORMED)."""
    uc = [bytes([2, 0, 0, 0, 1, n]) for n in range(41)]
    command = cmd(C.MAC, MAC.TABLE_SET, table_set(uc, []))
    assert len(command) == CTRL_MAX_COMMAND
    seen, final = run([command])
    assert seen.acks == [OK] and final["uc_count"] == 41 and final["mc_count"] == 0
    assert seen.uc == {n: mac_int(a) for n, a in enumerate(uc[:UC])} and seen.mc == {}


def test_commands_of_every_beat_alignment():
    """The same answers whatever the bytes' places in the 4-byte beats (the
    command runs on after a TABLE_SET of 0..3 spare bytes)."""
    uc = [bytes([2, 0, 0, 0, 0, 1])]
    for mc_n in range(4):
        mc = [bytes([1, 0, 0x5e, 0, 0, n]) for n in range(mc_n)]
        seen, final = run([cmd(C.MAC, MAC.TABLE_SET, table_set(uc, mc)),
                           cmd(C.VLAN, VLAN.ADD, struct.pack("<H", 300 + mc_n)),
                           cmd(C.MAC, MAC.ADDR_SET, bytes([2, 1, 2, 3, 4, mc_n])),
                           cmd(C.RX, RX.ALLMULTI, b"\x02")])
        assert seen.acks == [OK] * 4, mc_n
        assert final["mc_count"] == mc_n and seen.mc == {n: mac_int(a) for n, a in enumerate(mc)}
        assert seen.vlan == {300 + mc_n: 1} and final["mac"] == mac_int(bytes([2, 1, 2, 3, 4, mc_n]))
        assert final["mode"]["allmulti"] == 1


def test_announce_ack():
    """A command of no data, after one whose command byte differs."""
    seen, _ = run([cmd(C.VLAN, VLAN.DEL, struct.pack("<H", 3)),
                   cmd(C.ANNOUNCE, spec.VirtioNetCtrlAnnounce.ACK)],
                  features=ALL | int(F.GUEST_ANNOUNCE))
    assert seen.acks == [OK, OK] and seen.announces == 1
