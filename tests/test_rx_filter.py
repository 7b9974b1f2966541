"""RxFilter: every CTRL_RX mode combination, the MAC tables (in use, unused,
overflowing), VLAN filtering on and off, against a reference written from
virtio 1.2 sections 5.1.6.5.1 to 5.1.6.5.3."""
import copy
import itertools
import random
from dataclasses import dataclass, field

import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether

from hdl.net.rx_filter import COMPARE_CYCLES, FILTER_LATENCY, FilterReason, RxFilter, RX_MODE_RESET
from hdl.net.rx_parse import FrameHeadParser
from tests.amaranth_sim import CLOCK_PERIOD
from tests.test_rx_parse import drive_frames

MODES = ("promisc", "allmulti", "alluni", "nomulti", "nouni", "nobcast")
BROADCAST = b"\xff" * 6
UC_ENTRIES = MC_ENTRIES = 16


@dataclass
class Config:
    mode: dict
    mac: bytes
    uc: list                  # the table's contents (every entry, used or not)
    mc: list
    uc_count: int
    mc_count: int
    vlan_filter: bool
    vlans: set = field(default_factory=set)


@dataclass
class Head:
    dst: bytes = BROADCAST
    eth: bool = True
    vid: int | None = None    # None: untagged


def reference(head, cfg):
    """The decision the spec asks for (see hdl/net/rx_filter.py for the order)."""
    mode = cfg.mode
    if mode["promisc"]:                       # "SHOULD receive all incoming packets"
        return FilterReason.ACCEPTED
    if cfg.vlan_filter and head.vid is not None and head.vid not in cfg.vlans:
        return FilterReason.VLAN_REJECTED      # "SHOULD drop ... VLAN tag is absent"
    if not head.eth:
        return FilterReason.ACCEPTED           # runts are the frame buffer's to drop
    if head.dst == BROADCAST:                  # NOMULTI "SHOULD NOT apply to broadcast"
        return FilterReason.BROADCAST_REJECTED if mode["nobcast"] else FilterReason.ACCEPTED
    if head.dst[0] & 1:
        if mode["nomulti"]:                    # "even if ... ALLMULTI is on"
            return FilterReason.MULTICAST_REJECTED
        if (mode["allmulti"] or cfg.mc_count > len(cfg.mc)
                or head.dst in cfg.mc[:cfg.mc_count]):
            return FilterReason.ACCEPTED
        return FilterReason.MULTICAST_REJECTED
    if mode["nouni"]:                          # "even if ... ALLUNI is on"
        return FilterReason.NOT_FOR_US
    if (mode["alluni"] or cfg.uc_count > len(cfg.uc) or head.dst == cfg.mac
            or head.dst in cfg.uc[:cfg.uc_count]):
        return FilterReason.ACCEPTED
    return FilterReason.NOT_FOR_US


def mac_int(mac):
    return int.from_bytes(mac, "little")


def random_mac(rng, group):
    return bytes([(rng.getrandbits(8) & 0xFE) | group]) + rng.randbytes(5)


def make_tables(rng):
    uc = [random_mac(rng, 0) for _ in range(UC_ENTRIES)]
    mc = [random_mac(rng, 1) for _ in range(MC_ENTRIES)]
    return uc, mc


async def write_config(ctx, dut, cfg, *, tables=True):
    for name in MODES:
        ctx.set(getattr(dut.mode, name), cfg.mode[name])
    ctx.set(dut.mac, mac_int(cfg.mac))
    ctx.set(dut.uc_count, cfg.uc_count)
    ctx.set(dut.mc_count, cfg.mc_count)
    ctx.set(dut.vlan_filter_enable, cfg.vlan_filter)
    if tables:
        for port, table in ((dut.uc_w, cfg.uc), (dut.mc_w, cfg.mc)):
            for index, mac in enumerate(table):
                ctx.set(port.en, 1)
                ctx.set(port.addr, index)
                ctx.set(port.data, mac_int(mac))
                await ctx.tick()
            ctx.set(port.en, 0)


async def vlan_write(ctx, dut, vid, present):
    ctx.set(dut.vlan_w.en, 1)
    ctx.set(dut.vlan_w.addr, vid)
    ctx.set(dut.vlan_w.data, int(present))
    await ctx.tick()
    ctx.set(dut.vlan_w.en, 0)


async def push_heads(ctx, dut, heads):
    """Heads as close as the filter takes them (a frame's ``COMPARE_CYCLES``
    cycles after the previous frame's, a runt's at any cycle), then let the
    pipeline drain."""
    since_frame = COMPARE_CYCLES              # cycles since the last frame's head
    for head in heads:
        if head.eth:
            ctx.set(dut.head.valid, 0)
            while since_frame < COMPARE_CYCLES:
                await ctx.tick()
                since_frame += 1
            since_frame = 0
        ctx.set(dut.head.valid, 1)
        ctx.set(dut.head.payload, {
            "dst_mac": mac_int(head.dst), "eth": int(head.eth),
            "vlan": int(head.vid is not None), "vid": head.vid or 0,
        })
        await ctx.tick()
        since_frame += 1
    ctx.set(dut.head.valid, 0)
    for _ in range(FILTER_LATENCY):
        await ctx.tick()


def run(dut, testbench, *, top=None):
    """Simulate ``top`` (``dut`` by default) and return ``dut``'s decisions,
    checking that each comes ``FILTER_LATENCY`` cycles after its head."""
    decisions = []
    heads, decided = [], []                   # cycles of head.valid, of decision_valid

    async def monitor(ctx):
        cycle = 0
        async for _, _, head_valid, valid, accept, reason in ctx.tick().sample(
                dut.head.valid, dut.decision_valid, dut.accept, dut.reason):
            if head_valid:
                heads.append(cycle)
            if valid:
                assert accept == (reason == FilterReason.ACCEPTED)
                decisions.append(reason)
                decided.append(cycle)
            cycle += 1

    sim = Simulator(top if top is not None else dut)
    sim.add_clock(CLOCK_PERIOD)
    sim.add_testbench(testbench)
    sim.add_process(monitor)
    sim.run()
    assert [cycle + FILTER_LATENCY for cycle in heads] == decided
    return decisions


def head_kinds(cfg, rng, allowed_vid, denied_vid):
    """Heads for our MAC, table entries in use and not, others, broadcast, runts;
    untagged, tagged with a VID in the table and with one not in it."""
    other_uc = random_mac(rng, 0)
    other_mc = random_mac(rng, 1)
    dsts = [cfg.mac, cfg.uc[0], cfg.uc[UC_ENTRIES - 1], other_uc,
            cfg.mc[0], cfg.mc[MC_ENTRIES - 1], other_mc, BROADCAST]
    heads = []
    for vid in (None, allowed_vid, denied_vid):
        heads += [Head(dst, True, vid) for dst in dsts]
        heads.append(Head(rng.choice(dsts), False, None))
    return heads


def test_every_mode_combination():
    rng = random.Random(21)
    dut = RxFilter()
    uc, mc = make_tables(rng)
    vlans = set(rng.sample(range(4096), 40)) | {0}
    deleted = set(rng.sample(sorted(vlans), 8))
    allowed = sorted(vlans - deleted)
    # (uc_count, mc_count): partly used, empty, full, overflowing (17 or a
    # count only le32 holds) -> ALLUNI / ALLMULTI
    counts = [(5, 9), (0, 0), (UC_ENTRIES, MC_ENTRIES), (UC_ENTRIES + 1, 3),
              (2, 0xFFFF_FFFF), (1 << 20, MC_ENTRIES + 1)]
    expected, configs = [], []
    base = Config(mode={}, mac=random_mac(rng, 0), uc=uc, mc=mc, uc_count=0, mc_count=0,
                  vlan_filter=False, vlans=set(allowed))
    for bits, vlan_filter, (uc_count, mc_count) in itertools.product(
            range(1 << len(MODES)), (False, True), counts):
        if (uc_count, mc_count) != counts[0] and bits % 5:   # overflow: a fifth of the modes
            continue
        mode = {name: bits >> n & 1 for n, name in enumerate(MODES)}
        cfg = Config(mode=mode, mac=base.mac, uc=uc, mc=mc, uc_count=uc_count,
                     mc_count=mc_count, vlan_filter=vlan_filter, vlans=base.vlans)
        heads = head_kinds(cfg, rng, rng.choice(allowed), rng.choice(sorted(deleted)))
        configs.append((cfg, heads))
        expected += [reference(h, cfg) for h in heads]

    async def testbench(ctx):
        await write_config(ctx, dut, configs[0][0])
        for vid in sorted(vlans):
            await vlan_write(ctx, dut, vid, True)
        for vid in sorted(deleted):                 # VLAN_DEL
            await vlan_write(ctx, dut, vid, False)
        for cfg, heads in configs:
            await write_config(ctx, dut, cfg, tables=False)
            await push_heads(ctx, dut, heads)

    decisions = run(dut, testbench)
    assert decisions == expected
    # the cases reached every reason and both overflow fallbacks mattered
    assert set(expected) == set(FilterReason)


def test_every_entry_position_in_use_and_not():
    """Each entry of both tables (every bank and row of the comparison): found
    while the count covers it, not found once the count stops just before it;
    heads at the closest spacing, each followed at once by a runt."""
    rng = random.Random(25)
    dut = RxFilter()
    uc, mc = make_tables(rng)
    configs, expected = [], []
    for count in (UC_ENTRIES, *range(UC_ENTRIES)):
        cfg = Config(mode=dict.fromkeys(MODES, 0), mac=random_mac(rng, 0), uc=uc, mc=mc,
                     uc_count=count, mc_count=count, vlan_filter=False)
        heads = []
        for dst in uc + mc:
            heads += [Head(dst), Head(rng.choice(uc + mc), eth=False)]
        configs.append((cfg, heads))
        expected += [reference(h, cfg) for h in heads]
    assert expected.count(FilterReason.ACCEPTED) > len(expected) // 2
    assert FilterReason.NOT_FOR_US in expected and FilterReason.MULTICAST_REJECTED in expected

    async def testbench(ctx):
        await write_config(ctx, dut, configs[0][0])
        for cfg, heads in configs:
            await write_config(ctx, dut, cfg, tables=False)
            await push_heads(ctx, dut, heads)

    assert run(dut, testbench) == expected


def test_each_table_kept_apart():
    """The tables share memories and comparators: a destination is compared
    with its class's table only, under that table's count. Addresses of the
    other kind in a table (ControlCommands does not check) never match."""
    rng = random.Random(26)
    dut = RxFilter()
    uc, mc = make_tables(rng)
    mac = random_mac(rng, 0)
    off = dict.fromkeys(MODES, 0)
    configs = [Config(mode=off, mac=mac, uc=uc, mc=mc, uc_count=UC_ENTRIES, mc_count=0,
                      vlan_filter=False),
               Config(mode=off, mac=mac, uc=uc, mc=mc, uc_count=0, mc_count=MC_ENTRIES,
                      vlan_filter=False)]
    swapped = Config(mode=off, mac=mac, uc=mc, mc=uc, uc_count=UC_ENTRIES, mc_count=MC_ENTRIES,
                     vlan_filter=False)
    heads = [Head(dst) for dst in uc + mc]
    expected = [reference(h, cfg) for cfg in configs + [swapped] for h in heads]
    assert expected.count(FilterReason.ACCEPTED) == len(uc) + len(mc)

    async def testbench(ctx):
        await write_config(ctx, dut, configs[0])
        for cfg in configs:
            await write_config(ctx, dut, cfg, tables=False)
            await push_heads(ctx, dut, heads)
        await write_config(ctx, dut, swapped)
        await push_heads(ctx, dut, heads)

    assert run(dut, testbench) == expected


def test_writes_to_both_tables_in_one_cycle_keep_the_multicast_one():
    rng = random.Random(27)
    dut = RxFilter()
    uc, mc = make_tables(rng)
    entry = UC_ENTRIES // 2
    new_uc, new_mc = random_mac(rng, 0), random_mac(rng, 1)
    cfg = Config(mode=dict.fromkeys(MODES, 0), mac=random_mac(rng, 0), uc=uc, mc=mc,
                 uc_count=UC_ENTRIES, mc_count=MC_ENTRIES, vlan_filter=False)
    after = Config(**{**cfg.__dict__, "mc": mc[:entry] + [new_mc] + mc[entry + 1:]})
    heads = [Head(new_uc), Head(uc[entry]), Head(new_mc), Head(mc[entry])]
    expected = [reference(h, after) for h in heads]
    assert expected == [FilterReason.NOT_FOR_US, FilterReason.ACCEPTED,
                        FilterReason.ACCEPTED, FilterReason.MULTICAST_REJECTED]

    async def testbench(ctx):
        await write_config(ctx, dut, cfg)
        for port, mac in ((dut.uc_w, new_uc), (dut.mc_w, new_mc)):
            ctx.set(port.en, 1)
            ctx.set(port.addr, entry)
            ctx.set(port.data, mac_int(mac))
        await ctx.tick()
        ctx.set(dut.uc_w.en, 0)
        ctx.set(dut.mc_w.en, 0)
        await push_heads(ctx, dut, heads)

    assert run(dut, testbench) == expected


def test_a_change_reaches_every_later_head():
    """A change made in a cycle is seen by a head in the next cycle, so by
    every decision more than FILTER_LATENCY cycles after the change (what
    the control side's wait before its ack relies on). Each head here comes
    in the first cycle after a change that turns its verdict: a register set
    (present from that cycle, as a control-side register written the cycle
    before), an entry written in every bank and row of both tables, a VLAN
    table bit."""
    rng = random.Random(28)
    dut = RxFilter()
    uc, mc = make_tables(rng)
    vid = 42
    start = Config(mode=dict.fromkeys(MODES, 0), mac=random_mac(rng, 0), uc=uc, mc=mc,
                   uc_count=UC_ENTRIES, mc_count=MC_ENTRIES, vlan_filter=False)
    cfg = copy.deepcopy(start)
    plan, expected = [], []                    # (registers set, a table write, the head)

    def step(head, registers=None, write=None):
        registers = registers or {}
        before = copy.deepcopy(cfg)
        for name, value in registers.items():
            setattr(cfg, name, value)
        if write is not None:
            table, index, value = write
            if table == "vlans":
                (cfg.vlans.add if value else cfg.vlans.discard)(index)
            else:
                getattr(cfg, table)[index] = value
        assert reference(head, cfg) != reference(head, before), (registers, write)
        plan.append((registers, write, head))
        expected.append(reference(head, cfg))

    replaced = []
    for entry in range(UC_ENTRIES):
        for table, group in (("uc", 0), ("mc", 1)):
            replaced.append(getattr(cfg, table)[entry])
            new = random_mac(rng, group)
            step(Head(new), write=(table, entry, new))
    step(Head(cfg.uc[3]), {"uc_count": 3})     # an entry leaves use...
    step(Head(cfg.uc[3]), {"uc_count": 4})     # ...and comes back
    step(Head(cfg.mc[0]), {"mc_count": 0})
    step(Head(random_mac(rng, 1)), {"mc_count": MC_ENTRIES + 1})   # all multicast
    new_mac = random_mac(rng, 0)
    step(Head(new_mac), {"mac": new_mac})
    step(Head(BROADCAST), {"mode": {**cfg.mode, "nobcast": 1}})
    step(Head(random_mac(rng, 0)), {"mode": {**cfg.mode, "alluni": 1}})
    step(Head(BROADCAST, vid=vid), {"vlan_filter": True})
    step(Head(BROADCAST, vid=vid), write=("vlans", vid, True))
    step(Head(BROADCAST, vid=vid), write=("vlans", vid, False))
    step(Head(BROADCAST, vid=vid), {"vlan_filter": False})
    # and the addresses the writes replaced are gone
    heads = [Head(dst) for dst in replaced]
    expected += [reference(h, cfg) for h in heads]

    async def testbench(ctx):
        await write_config(ctx, dut, start)
        for registers, write, head in plan:
            if write is not None:
                table, index, value = write
                port = {"uc": dut.uc_w, "mc": dut.mc_w, "vlans": dut.vlan_w}[table]
                ctx.set(port.en, 1)
                ctx.set(port.addr, index)
                ctx.set(port.data, value if table == "vlans" else mac_int(value))
                await ctx.tick()
                ctx.set(port.en, 0)
            for name, value in registers.items():
                if name == "mode":
                    ctx.set(dut.mode, value)
                elif name == "mac":
                    ctx.set(dut.mac, mac_int(value))
                elif name == "vlan_filter":
                    ctx.set(dut.vlan_filter_enable, value)
                else:
                    ctx.set(getattr(dut, name), value)
            await push_heads(ctx, dut, [head])          # the head in this very cycle
        await push_heads(ctx, dut, heads)

    assert run(dut, testbench) == expected


@pytest.mark.parametrize("uc_entries, mc_entries", [(3, 1), (2, 1), (1, 6), (12, 7), (5, 16)])
def test_table_rewrite_and_other_sizes(uc_entries, mc_entries):
    """Tables of other sizes (one bank, banks not a power of 2, tables of
    different sizes); entries rewritten (TABLE_SET again); counts from 0 to
    just above the size; writes beyond a table's size ignored."""
    rng = random.Random(22 + uc_entries * 100 + mc_entries)
    dut = RxFilter(uc_entries=uc_entries, mc_entries=mc_entries)
    beyond = {"uc": range(uc_entries, 1 << len(dut.uc_w.addr)),
              "mc": range(mc_entries, 1 << len(dut.mc_w.addr))}
    expected = []
    steps = []
    mac = random_mac(rng, 0)
    for uc_count, mc_count in zip(rng.sample(range(uc_entries + 2), uc_entries + 2) * 2,
                                  rng.sample(range(mc_entries + 2), mc_entries + 2) * 2):
        uc = [random_mac(rng, 0) for _ in range(uc_entries)]
        mc = [random_mac(rng, 1) for _ in range(mc_entries)]
        junk = {"uc": [random_mac(rng, 0) for _ in beyond["uc"]],
                "mc": [random_mac(rng, 1) for _ in beyond["mc"]]}
        cfg = Config(mode=dict.fromkeys(MODES, 0), mac=mac, uc=uc, mc=mc, uc_count=uc_count,
                     mc_count=mc_count, vlan_filter=False)
        heads = [Head(d) for d in uc + mc + junk["uc"] + junk["mc"]
                 + [mac, random_mac(rng, 0), random_mac(rng, 1)]]
        steps.append((cfg, junk, heads))
        expected += [reference(h, cfg) for h in heads]

    async def testbench(ctx):
        for cfg, junk, heads in steps:
            await write_config(ctx, dut, cfg)
            for port, name in ((dut.uc_w, "uc"), (dut.mc_w, "mc")):
                for addr, mac in zip(beyond[name], junk[name]):
                    ctx.set(port.en, 1)
                    ctx.set(port.addr, addr)
                    ctx.set(port.data, mac_int(mac))
                    await ctx.tick()
                ctx.set(port.en, 0)
            await push_heads(ctx, dut, heads)

    assert run(dut, testbench) == expected


def test_vlan_clear_empties_the_table():
    rng = random.Random(23)
    dut = RxFilter()
    vids = rng.sample(range(1, 4095), 10) + [0, 4095]     # both ends of the sweep
    mac = random_mac(rng, 0)
    cfg = Config(mode=dict.fromkeys(MODES, 0), mac=mac, uc=[mac] * UC_ENTRIES,
                 mc=[random_mac(rng, 1)] * MC_ENTRIES, uc_count=0, mc_count=0,
                 vlan_filter=True, vlans=set(vids))
    heads = [Head(mac, True, vid) for vid in vids] + [Head(mac)]
    cleared = Config(**{**cfg.__dict__, "vlans": set()})
    expected = [reference(h, cfg) for h in heads] + [reference(h, cleared) for h in heads]
    assert FilterReason.VLAN_REJECTED not in expected[:len(heads)]

    async def testbench(ctx):
        await write_config(ctx, dut, cfg)
        for vid in vids:
            await vlan_write(ctx, dut, vid, True)
        await push_heads(ctx, dut, heads)
        ctx.set(dut.vlan_clear, 1)
        await ctx.tick()
        ctx.set(dut.vlan_clear, 0)
        cycles = 0
        while ctx.get(dut.vlan_clearing):
            await ctx.tick()
            cycles += 1
        assert cycles >= 4095
        await push_heads(ctx, dut, heads)

    assert run(dut, testbench) == expected


def test_reset_mode_is_promiscuous():
    """RX_MODE_RESET: everything accepted, whatever the tables hold."""
    rng = random.Random(24)
    dut = RxFilter()
    uc, mc = make_tables(rng)
    cfg = Config(mode=RX_MODE_RESET, mac=random_mac(rng, 0), uc=uc, mc=mc, uc_count=0,
                 mc_count=0, vlan_filter=True)
    heads = head_kinds(cfg, rng, 5, 6)

    async def testbench(ctx):
        await write_config(ctx, dut, cfg)
        await push_heads(ctx, dut, heads)

    assert run(dut, testbench) == [FilterReason.ACCEPTED] * len(heads)


class ParseAndFilter(Elaboratable):
    """FrameHeadParser feeding RxFilter, as the RX path will use them."""

    def __init__(self):
        self.parser = FrameHeadParser()
        self.filter = RxFilter()

    def elaborate(self, platform):
        m = Module()
        m.submodules.parser = self.parser
        m.submodules.filter = self.filter
        wiring.connect(m, self.parser.head, self.filter.head)
        return m


def test_frames_through_the_parser():
    """Scapy frames on a stream: tagged and untagged, to us, to a table entry,
    multicast, broadcast, others."""
    rng = random.Random(25)
    top = ParseAndFilter()
    dut = top.filter
    uc, mc = make_tables(rng)
    mac = random_mac(rng, 0)
    allowed = {0, 7, 100}
    cfg = Config(mode=dict.fromkeys(MODES, 0), mac=mac, uc=uc, mc=mc, uc_count=4,
                 mc_count=6, vlan_filter=True, vlans=allowed)
    frames, heads = [], []
    for _ in range(80):
        dst = rng.choice([mac, uc[1], uc[10], mc[2], mc[12], BROADCAST, random_mac(rng, 0),
                          random_mac(rng, 1)])
        vid = rng.choice([None, None, 0, 7, 100, 8, 4095])
        ether = Ether(dst=":".join(f"{b:02x}" for b in dst), src="02:00:00:00:00:01")
        l3 = rng.choice([IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2),
                         ARP(psrc="10.0.0.1", pdst="10.0.0.2")])
        packet = ether / Dot1Q(vlan=vid) / l3 if vid is not None else ether / l3
        frame = bytes(packet) + rng.randbytes(rng.randint(0, 40))
        frames.append(frame)
        heads.append(Head(dst, True, vid))
    expected = [reference(h, cfg) for h in heads]

    async def testbench(ctx):
        await write_config(ctx, dut, cfg)
        for vid in allowed:
            await vlan_write(ctx, dut, vid, True)
        await drive_frames(ctx, top.parser.tap, frames, rng)

    decisions = run(dut, testbench, top=top)
    assert decisions == expected
    assert len(set(expected)) >= 4
