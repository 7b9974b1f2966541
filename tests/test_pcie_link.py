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

import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hdl.pcie_link import PcieLink
from hdl.phy.ltssm import LtssmState, LtssmTimeouts
from hdl.phy.phy import PortRole
from sim.pcie_lane import PcieLane
from tests.amaranth_sim import CLOCK_PERIOD
from tests.test_dll_link import FAST as DLL_FAST
from tests.test_dll_link import Traffic, random_tlps
from tests.test_phy_link import FAST as PHY_FAST

LINK_NUMBER = 3
CYCLE_LIMIT = 40_000


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

    run(Stack(**lane), control, *traffic.benches())
    traffic.check()
    assert seen["b_link_up_before_dl_up"], "DL_Up came without LinkUp first"


@pytest.mark.parametrize("direction", ["corrupt_ab", "corrupt_ba"])
def test_corrupted_symbols_are_replayed_and_nothing_is_lost(direction):
    rng = random.Random(11)
    traffic = Traffic(random_tlps(rng, 40), random_tlps(rng, 40), seed=2)
    hits = []
    errors = []

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

    run(Stack(), control, corrupter, receiver_errors, *traffic.benches())
    assert len(hits) == 6
    assert len(errors) >= 6, "the corruptions did not reach the receiver"
    traffic.check()


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
