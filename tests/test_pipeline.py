"""PipelineRegister and SkidBuffer: every item once, in order, under random stalls."""
import random

import pytest
from amaranth.sim import Simulator

from hdl.lib.pipeline import PipelineRegister, SkidBuffer
from tests.amaranth_sim import CLOCK_PERIOD


@pytest.mark.parametrize("block", [PipelineRegister, SkidBuffer])
@pytest.mark.parametrize("p_valid,p_ready", [(1.0, 1.0), (0.7, 0.5), (1.0, 0.3)])
def test_items_pass_once_in_order(block, p_valid, p_ready):
    dut = block(16)
    rng = random.Random(1)
    items = list(range(1, 300))
    got = []
    cycles = {"n": 0}

    async def producer(ctx):
        for item in items:
            while rng.random() > p_valid:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.payload, item)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        while len(got) < len(items):
            ctx.set(dut.o.ready, rng.random() < p_ready)
            _, _, valid, ready, payload = await ctx.tick().sample(dut.o.valid, dut.o.ready, dut.o.payload)
            cycles["n"] += 1
            if valid and ready:
                got.append(payload)

    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    sim.add_testbench(producer, background=True)
    sim.add_testbench(consumer)
    sim.run()
    assert got == items
    if p_valid == p_ready == 1.0:
        assert cycles["n"] <= len(items) + 3, "not full rate"
