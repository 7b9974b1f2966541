"""QueueCounters (hdl/net/counters.py) in the Amaranth simulator: random event
streams against a Python model, read back through the statistics window."""
import random

import pytest
from amaranth.hdl import ResetInserter, Signal

from hdl import spec
from hdl.net.counters import QUEUE_STATS_BASE_DW, QUEUE_STATS_DW, DropCounter, QueueCounters
from tests.amaranth_sim import simulate

NUM_QUEUES = 9
MASK = (1 << 32) - 1
Q = spec.StatsQueue


class Model:
    def __init__(self):
        self.queue = {q: {stat: 0 for stat in Q} for q in range(NUM_QUEUES)}
        self.reason = {reason: 0 for reason in DropCounter}

    def event(self, queue, packet, length, drop, parity):
        if queue >= NUM_QUEUES or queue % 2 != parity:
            return                      # events of the other kind's queues are not counted
        counters = self.queue[queue]
        if packet:
            counters[Q.PACKETS] = (counters[Q.PACKETS] + 1) & MASK
            counters[Q.BYTES] = (counters[Q.BYTES] + length) & MASK
        if drop:
            counters[Q.DROPS] = (counters[Q.DROPS] + 1) & MASK

    def read(self, dw):
        if dw < len(DropCounter):
            return self.reason[DropCounter(dw)]
        q, stat = divmod(dw - QUEUE_STATS_BASE_DW, QUEUE_STATS_DW)
        if dw < QUEUE_STATS_BASE_DW or q >= NUM_QUEUES or stat >= len(Q):
            return 0
        return self.queue[q][Q(stat)]


class Bench:
    def __init__(self):
        self.reset = Signal()
        self.counters = QueueCounters(NUM_QUEUES)
        self.dut = ResetInserter(self.reset)(self.counters)
        self.model = Model()

    def set_event(self, ctx, port, queue=0, packet=0, length=0, drop=0):
        ctx.set(port.queue, queue)
        ctx.set(port.packet, packet)
        ctx.set(port.length, length)
        ctx.set(port.drop, drop)

    async def idle(self, ctx, cycles=2):
        c = self.counters
        self.set_event(ctx, c.tx)
        self.set_event(ctx, c.rx)
        ctx.set(c.rx_drop, 0)
        ctx.set(c.reasons, 0)
        await ctx.tick().repeat(cycles)

    async def read(self, ctx, dw):
        bus = self.counters.bus
        ctx.set(bus.addr, dw)
        ctx.set(bus.r_stb, 1)
        await ctx.tick()
        ctx.set(bus.r_stb, 0)
        return ctx.get(bus.r_data)

    async def check_all(self, ctx):
        await self.idle(ctx)                   # the last events are written back
        for dw in range(QUEUE_STATS_BASE_DW + QUEUE_STATS_DW * (NUM_QUEUES + 1)):
            assert await self.read(ctx, dw) == self.model.read(dw), hex(dw * 4)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_events_against_model(seed):
    """Receive and transmit events, wire drops and drop reasons, at once and
    back to back, often on the same queue; queues of the wrong kind and past
    the last one are ignored."""
    rng = random.Random(seed)
    bench = Bench()
    c = bench.counters

    async def testbench(ctx):
        await ctx.tick().repeat(NUM_QUEUES)    # the tables' first sweep
        hot = rng.randrange(NUM_QUEUES)
        for _ in range(1500):
            for parity, port in ((0, c.rx), (1, c.tx)):
                queue = hot if rng.random() < 0.5 else rng.randrange(NUM_QUEUES + 2)
                packet, drop = rng.random() < 0.6, rng.random() < 0.2
                length = rng.choice([0, 1, 60, 1514, 0xFFFF, rng.randrange(1 << 16)])
                bench.set_event(ctx, port, queue, packet, length, drop)
                bench.model.event(queue, packet, length, drop, parity)
            wire_drop = rng.random() < 0.3
            ctx.set(c.rx_drop, wire_drop)
            bench.model.queue[0][Q.DROPS] = (bench.model.queue[0][Q.DROPS] + wire_drop) & MASK
            reasons = rng.getrandbits(len(DropCounter))
            ctx.set(c.reasons, reasons)
            for reason in DropCounter:
                bench.model.reason[reason] += reasons >> reason & 1
            await ctx.tick()
        await bench.check_all(ctx)

    simulate(bench.dut, testbench)


def test_reset_clears_and_counting_goes_on():
    bench = Bench()
    c = bench.counters

    async def testbench(ctx):
        await ctx.tick().repeat(NUM_QUEUES)
        for q in range(NUM_QUEUES):
            port = c.tx if q % 2 else c.rx
            bench.set_event(ctx, port, q, 1, 100 + q, 1)
            ctx.set(c.rx_drop, 1)
            ctx.set(c.reasons, (1 << len(DropCounter)) - 1)
            await ctx.tick()
            await bench.idle(ctx, 1)
        assert await bench.read(ctx, QUEUE_STATS_BASE_DW + QUEUE_STATS_DW * 3 + Q.BYTES) == 103
        ctx.set(bench.reset, 1)
        await ctx.tick()
        ctx.set(bench.reset, 0)
        await ctx.tick().repeat(c.clear_cycles)          # the documented sweep
        bench.model = Model()
        await bench.check_all(ctx)
        bench.set_event(ctx, c.rx, 2, 1, 64, 0)
        bench.model.event(2, 1, 64, 0, 0)
        await ctx.tick()
        await bench.check_all(ctx)

    simulate(bench.dut, testbench)


def test_counters_wrap_at_32_bits():
    """Bytes pass 2**32 and wrap (65 537 frames of 65 535 bytes)."""
    bench = Bench()
    c = bench.counters
    frames = (1 << 32) // 0xFFFF + 1

    async def testbench(ctx):
        await ctx.tick().repeat(NUM_QUEUES)
        bench.set_event(ctx, c.tx, 1, 1, 0xFFFF, 0)
        await ctx.tick().repeat(frames)
        for _ in range(frames):
            bench.model.event(1, 1, 0xFFFF, 0, 1)
        assert bench.model.queue[1][Q.BYTES] < 0xFFFF          # it wrapped
        await bench.check_all(ctx)

    simulate(bench.dut, testbench)


def dw_of(queue, stat):
    return QUEUE_STATS_BASE_DW + QUEUE_STATS_DW * queue + stat


def test_back_to_back_events_on_one_queue():
    """Each event's row is read on the edge the previous event's sum is written
    to it (block RAM: the read must be transparent); both tables at once."""
    bench = Bench()
    c = bench.counters

    async def testbench(ctx):
        await ctx.tick().repeat(NUM_QUEUES)
        for length in (10, 20, 30, 40):
            bench.set_event(ctx, c.rx, 4, 1, length, length == 20)
            bench.set_event(ctx, c.tx, 3, 1, length + 1, 1)
            bench.model.event(4, 1, length, length == 20, 0)
            bench.model.event(3, 1, length + 1, 1, 1)
            await ctx.tick()
        await bench.check_all(ctx)

    simulate(bench.dut, testbench)


def test_read_as_the_row_is_written():
    """A read counts the events up to the cycle before it, also when the row is
    written on the read's edge; events meanwhile are all counted and r_data
    holds until the next read."""
    bench = Bench()
    c = bench.counters
    bus = c.bus

    async def testbench(ctx):
        await ctx.tick().repeat(NUM_QUEUES)
        bench.set_event(ctx, c.tx, 5, 1, 100, 0)      # cycle t
        bench.model.event(5, 1, 100, 0, 1)
        ctx.set(bus.addr, dw_of(5, Q.BYTES))
        ctx.set(bus.r_stb, 1)
        await ctx.tick()                               # read in cycle t: before it
        assert ctx.get(bus.r_data) == 0
        bench.set_event(ctx, c.tx, 5, 1, 7, 0)         # cycle t + 1: t's is written
        bench.model.event(5, 1, 7, 0, 1)
        await ctx.tick()                               # read in t + 1: t's counted
        assert ctx.get(bus.r_data) == 100
        ctx.set(bus.r_stb, 0)
        bench.set_event(ctx, c.tx, 5, 1, 1000, 0)      # rows written, no read
        bench.model.event(5, 1, 1000, 0, 1)
        await ctx.tick()
        assert ctx.get(bus.r_data) == 100
        ctx.set(bus.addr, dw_of(4, Q.PACKETS))         # not a read: r_stb is low
        await bench.idle(ctx, 3)
        assert ctx.get(bus.r_data) == 100              # held until the next read
        assert await bench.read(ctx, dw_of(5, Q.BYTES)) == 1107
        await bench.check_all(ctx)

    simulate(bench.dut, testbench)


@pytest.mark.parametrize("seed", [4, 5])
def test_reasons_read_while_they_pulse(seed):
    """Drop reasons pulsing in any cycle, as often as every cycle, read
    meanwhile: each read counts the pulses up to the cycle before it,
    whichever reason's word the round robin is folding then."""
    rng = random.Random(seed)
    bench = Bench()
    c = bench.counters
    bus = c.bus

    async def testbench(ctx):
        await ctx.tick().repeat(c.clear_cycles)
        expected = None
        for cycle in range(600):
            if expected is not None:
                assert ctx.get(bus.r_data) == expected, cycle
            reasons = (1 << len(DropCounter)) - 1 if cycle % 50 < 20 else rng.getrandbits(len(DropCounter))
            ctx.set(c.reasons, reasons)
            reading = rng.random() < 0.4
            reason = rng.choice(list(DropCounter))
            ctx.set(bus.addr, reason)
            ctx.set(bus.r_stb, reading)
            expected = bench.model.reason[reason] & MASK if reading else expected
            for r in DropCounter:
                bench.model.reason[r] += reasons >> r & 1
            await ctx.tick()
        ctx.set(bus.r_stb, 0)
        await bench.check_all(ctx)

    simulate(bench.dut, testbench)
