"""The whole soft link, end to end: two `PcieLink`s (physical layer + data
link layer), a root-side downstream port and our upstream port, joined by the
lane model `sim/pcie_lane.py`. They train from Detect to L0, initialise flow
control to DL_Active, and carry TLPs both ways byte for byte, in order,
exactly once; a symbol corrupted on the lane is caught by the LCRC (or the
framing) and the TLP replayed; a retrain in the middle of traffic loses
nothing.

The layers' own rules are tested in test_phy_*.py and test_dll_*.py; this
checks that they fit together (the link-packet boundary, LinkUp -> DL_Up).
"""
import random
from types import SimpleNamespace

import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import data, wiring
from amaranth.sim import Simulator

from hdl import spec
from hdl.pcie_link import CorrectableErrors, PcieLink
from hdl.phy.ltssm import LtssmState, LtssmTimeouts
from hdl.phy.phy import PortRole
from hdl.top import CoreParams, VirtioNetCore
from hdl.virtio.bar_layout import BarLayout
from sim.amaranth_tb import CoreHost
from sim.pcie_lane import PcieLane
from tests.amaranth_sim import CLOCK_PERIOD
from tests.test_dll_link import FAST as DLL_FAST
from tests.test_dll_link import Traffic, random_tlps
from tests.test_phy_link import FAST as PHY_FAST

LINK_NUMBER = 3
BAR = 0xFE00_0000
CYCLE_LIMIT = 40_000
#: The causes in `CorrectableErrors`, in order.
CORRECTABLE_CAUSES = tuple(data.Layout.cast(CorrectableErrors).members)


class Stack(Elaboratable):
    """``a``: the downstream port (root side), ``b``: our upstream port,
    ``lane`` between them (the attribute names `Traffic` expects)."""

    def __init__(self, **lane):
        phy = dict(timeouts=LtssmTimeouts(**PHY_FAST))
        self.a = PcieLink(PortRole.DOWNSTREAM, phy={**phy, "link_number": LINK_NUMBER},
                          dll=DLL_FAST)
        self.b = PcieLink(PortRole.UPSTREAM, phy=phy, dll=DLL_FAST)
        self.lane = PcieLane(**lane)

    def elaborate(self, platform):
        m = Module()
        m.submodules.a, m.submodules.b, m.submodules.lane = self.a, self.b, self.lane
        wiring.connect(m, self.a.pipe, self.lane.a)
        wiring.connect(m, self.b.pipe, self.lane.b)
        return m


def run(stack, control, *background):
    sim = Simulator(stack)
    sim.add_clock(CLOCK_PERIOD)

    def bind(bench):
        async def bound(ctx):
            await bench(ctx, stack)
        return bound

    sim.add_testbench(bind(control))
    for bench in background:
        sim.add_testbench(bind(bench), background=True)
    sim.run()


class ErrorWatch:
    """Counts each port's correctable error pulses (`CorrectableErrors`,
    section 6.2) cycle by cycle: ``counts[side][cause]``, ``any[side]``
    (``correctable_error``), and ``mismatches`` (cycles where
    ``correctable_error`` is not the OR of the causes)."""

    def __init__(self):
        self.counts = {side: dict.fromkeys(CORRECTABLE_CAUSES, 0) for side in "ab"}
        self.any = {side: 0 for side in "ab"}
        self.mismatches = 0

    async def bench(self, ctx, stack):
        ports = [getattr(stack, side).correctable for side in "ab"]
        ports += [getattr(stack, side).correctable_error for side in "ab"]
        while True:
            _, _, a, b, any_a, any_b = await ctx.tick().sample(*ports)
            for side, causes, any_ in (("a", a, any_a), ("b", b, any_b)):
                hit = False
                for name in CORRECTABLE_CAUSES:
                    if getattr(causes, name):
                        self.counts[side][name] += 1
                        hit = True
                self.any[side] += any_
                self.mismatches += hit != bool(any_)


async def until(ctx, condition, what, limit=CYCLE_LIMIT):
    for _ in range(limit):
        if condition():
            return
        await ctx.tick()
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("lane", [{}, {"shift_ab": True, "invert_ba": True}],
                         ids=["aligned", "shifted-inverted"])
def test_trains_to_dl_active_and_carries_tlps_both_ways(lane):
    rng = random.Random(7)
    traffic = Traffic(random_tlps(rng, 30), random_tlps(rng, 30), seed=1)
    seen = {"b_link_up_before_dl_up": False}
    errors = ErrorWatch()

    async def control(ctx, stack):
        async def dl_up():
            for _ in range(CYCLE_LIMIT):
                if ctx.get(stack.b.link_up) and not ctx.get(stack.b.dl_up):
                    seen["b_link_up_before_dl_up"] = True
                if ctx.get(stack.a.dl_up) and ctx.get(stack.b.dl_up):
                    return
                await ctx.tick()
            raise AssertionError("DL_Active not reached")
        await dl_up()
        assert ctx.get(stack.a.state) == LtssmState.L0 == ctx.get(stack.b.state)
        await until(ctx, traffic.done, "the TLPs")

    run(Stack(**lane), control, errors.bench, *traffic.benches())
    traffic.check()
    assert seen["b_link_up_before_dl_up"], "DL_Up came without LinkUp first"
    # a clean lane: no correctable error (section 6.2) on either side, training included
    assert errors.any == {"a": 0, "b": 0}, errors.counts
    assert errors.mismatches == 0


@pytest.mark.parametrize("direction", ["corrupt_ab", "corrupt_ba"])
def test_corrupted_symbols_are_replayed_and_nothing_is_lost(direction):
    """Symbols corrupted on the lane (8b/10b decode errors) under traffic:
    every TLP still arrives once, in order. The receiving side reports a
    Receiver Error for each and Bad TLPs (section 6.2, correctable), each as
    a pulse of ``correctable_error``; the sending side no Receiver Error."""
    rng = random.Random(11)
    traffic = Traffic(random_tlps(rng, 40), random_tlps(rng, 40), seed=2)
    hits = []
    errors = []
    watch = ErrorWatch()

    async def control(ctx, stack):
        await until(ctx, lambda: ctx.get(stack.a.dl_up) and ctx.get(stack.b.dl_up), "DL_Active")
        await until(ctx, traffic.done, "the TLPs")

    async def receiver_errors(ctx, stack):
        receiver = stack.b if direction == "corrupt_ab" else stack.a
        while True:
            if ctx.get(receiver.receiver_error):
                errors.append(1)
            await ctx.tick()

    async def corrupter(ctx, stack):
        await until(ctx, lambda: ctx.get(stack.a.dl_up) and ctx.get(stack.b.dl_up), "DL_Active")
        noise = random.Random(3)
        sender = stack.a if direction == "corrupt_ab" else stack.b
        while len(hits) < 6:
            # hit a symbol while a TLP is on the lane
            await until(ctx, lambda: ctx.get(sender.data_link.tx.valid)
                        and ctx.get(sender.data_link.tx.ready), "a TLP on the lane")
            for _ in range(noise.randrange(2, 20)):
                await ctx.tick()
            ctx.set(stack.lane.corrupt_slot, noise.randrange(2))
            ctx.set(getattr(stack.lane, direction), 1)
            await ctx.tick()
            ctx.set(getattr(stack.lane, direction), 0)
            hits.append(1)
            for _ in range(noise.randrange(100, 400)):
                await ctx.tick()

    run(Stack(), control, corrupter, receiver_errors, watch.bench, *traffic.benches())
    assert len(hits) == 6
    assert len(errors) >= 6, "the corruptions did not reach the receiver"
    traffic.check()
    receiver, sender = ("b", "a") if direction == "corrupt_ab" else ("a", "b")
    counts = watch.counts
    assert counts[receiver]["receiver_error"] >= len(hits), counts
    assert counts[receiver]["bad_tlp"] >= 1, counts
    assert watch.any[receiver] >= len(hits), (watch.any, counts)
    # nothing corrupted the other way (the sender may still see a Bad TLP: a
    # TLP cut when REPLAY_NUM rolls over and it retrains, section 3.6.2.1)
    assert counts[sender]["receiver_error"] == 0, counts
    assert watch.mismatches == 0


def test_receiver_errors_before_link_up_are_not_reported():
    """Symbols corrupted while the link trains (Polling) pulse
    ``receiver_error`` but are no correctable error: only a link that is up
    has errors to report (section 6.2). The link still trains."""
    watch = ErrorWatch()
    raw = []

    async def control(ctx, stack):
        await until(ctx, lambda: ctx.get(stack.b.state) == LtssmState.POLLING_ACTIVE, "Polling")
        for slot in (0, 1, 0):
            await ctx.tick().repeat(20)
            ctx.set(stack.lane.corrupt_slot, slot)
            ctx.set(stack.lane.corrupt_ab, 1)
            await ctx.tick()
            ctx.set(stack.lane.corrupt_ab, 0)
        await until(ctx, lambda: ctx.get(stack.a.dl_up) and ctx.get(stack.b.dl_up), "DL_Active")

    async def receiver_errors(ctx, stack):
        while True:
            _, _, error, link_up = await ctx.tick().sample(stack.b.receiver_error,
                                                            stack.b.link_up)
            if error:
                raw.append(link_up)

    run(Stack(), control, receiver_errors, watch.bench)
    assert len(raw) >= 3 and not any(raw), raw
    assert watch.any == {"a": 0, "b": 0}, watch.counts


def test_retrain_under_traffic_loses_nothing():
    rng = random.Random(13)
    traffic = Traffic(random_tlps(rng, 40), random_tlps(rng, 40), seed=3)
    states = []

    async def control(ctx, stack):
        await until(ctx, lambda: ctx.get(stack.a.dl_up) and ctx.get(stack.b.dl_up), "DL_Active")
        await until(ctx, lambda: len(traffic.got["b"]) >= 10, "some TLPs")
        # the root side asks for a retrain (as its DLL would after REPLAY_NUM rolled over)
        ctx.set(stack.a.retrain, 1)
        await ctx.tick()
        ctx.set(stack.a.retrain, 0)
        await until(ctx, traffic.done, "the TLPs")

    async def watch(ctx, stack):
        while True:
            state = ctx.get(stack.b.state)
            if not states or states[-1] != state:
                states.append(state)
            await ctx.tick()

    run(Stack(), control, watch, *traffic.benches())
    traffic.check()
    assert LtssmState.RECOVERY_RCVRLOCK in states, [s.name for s in states]
    assert states[-1] == LtssmState.L0


class CoreBehindTheLink(Elaboratable):
    """The root side's `PcieLink`, the lane, our `PcieLink` and the core
    behind it, as on the board (one clock here)."""

    def __init__(self):
        self.stack = Stack()
        self.core = VirtioNetCore(CoreParams(queue_pairs=1))

    def elaborate(self, platform):
        m = Module()
        m.submodules.stack = self.stack
        m.submodules.core = core = self.core
        wiring.connect(m, self.stack.b.tlp_rx, core.tlp_rx)
        wiring.connect(m, core.tlp_tx, self.stack.b.tlp_tx)
        return m


def test_the_core_answers_the_host_through_the_link():
    """Config and memory requests from the root side cross the lane, the
    core answers, its completions come back: the board's path, end to end."""
    dut = CoreBehindTheLink()
    stack = dut.stack

    async def testbench(ctx):
        await until(ctx, lambda: ctx.get(stack.a.dl_up) and ctx.get(stack.b.dl_up), "DL_Active")
        # the host model talks to the root side's link as if it were the core's ports
        host = CoreHost(ctx, SimpleNamespace(tlp_rx=stack.a.tlp_tx, tlp_tx=stack.a.tlp_rx))
        assert await host.cfg_read(0x00) == (spec.VIRTIO_NET_PCI_DEVICE_ID << 16
                                             | spec.VIRTIO_PCI_VENDOR_ID)
        await host.cfg_write(spec.PciCfg.BAR0, BAR)
        await host.cfg_write(spec.PciCfg.BAR0 + 4, 0)
        await host.cfg_write(spec.PciCfg.COMMAND, spec.PciCommand.MEMORY_SPACE)
        common = BAR + BarLayout().common
        data, _ = await host.mem_read(common + spec.VirtioCommonCfg.NUM_QUEUES, 2)
        assert int.from_bytes(data, "little") == 3          # one pair and the control queue

    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    sim.add_testbench(testbench)
    sim.run()
