"""PacketFifo: frames stored whole, read back by segments, bad frames taken back."""
import random

import pytest

from hdl.net.packet_fifo import DropReason, PacketFifo
from tests.amaranth_sim import beats, simulate

MIN, MAX = 14, 300



def tag_of(frame):
    """The tag a test writes with a frame: from its bytes, so that it can be checked."""
    return sum(frame) & 0xFF


def segments_of(length, rng):
    """A random split of [0, length) into segments."""
    cuts = sorted(rng.sample(range(1, length), min(length - 1, rng.randint(0, 4))))
    bounds = [0] + cuts + [length]
    return [(a, b - a) for a, b in zip(bounds, bounds[1:])]


def run(frames, *, backpressure, depth=256, p_valid=0.8, p_ready=0.8, seed=1,
        abort=(), read_delay=0):
    """Write `frames`; read every committed one back in random segments.
    Returns (frames read, drop reasons)."""
    rng = random.Random(seed)
    dut = PacketFifo(depth=depth, min_length=MIN, max_length=MAX, backpressure=backpressure)
    read, drops = [], []
    state = {"writing": True}

    async def writer(ctx):
        for index, frame in enumerate(frames):
            for data, keep, last in beats(frame):
                while rng.random() > p_valid:
                    await ctx.tick()
                ctx.set(dut.w.payload, {"data": data, "keep": keep, "last": last})
                ctx.set(dut.w_abort, index in abort)
                ctx.set(dut.w_tag, tag_of(frame))
                ctx.set(dut.w.valid, 1)
                await ctx.tick().until(dut.w.ready)
                ctx.set(dut.w.valid, 0)
        for _ in range(5):
            await ctx.tick()
        state["writing"] = False

    async def monitor(ctx):
        async for _, _, dropped in ctx.tick().sample(dut.dropped):
            for reason in DropReason:
                if dropped >> reason & 1:
                    drops.append(reason)

    async def reader(ctx):
        for _ in range(read_delay):
            await ctx.tick()
        idle = 0
        while state["writing"] or ctx.get(dut.head_valid):
            if not ctx.get(dut.head_valid):
                await ctx.tick()
                continue
            length = ctx.get(dut.head_length)
            tag = ctx.get(dut.head_tag)
            got = bytearray(length)
            for offset, seg_len in segments_of(length, rng):
                ctx.set(dut.seg_req.payload, {"offset": offset, "length": seg_len})
                ctx.set(dut.seg_req.valid, 1)
                await ctx.tick().until(dut.seg_req.ready)
                ctx.set(dut.seg_req.valid, 0)
                seen = 0
                while True:
                    ready = rng.random() < p_ready
                    ctx.set(dut.seg.ready, ready)
                    _, _, valid, payload = await ctx.tick().sample(dut.seg.valid, dut.seg.payload)
                    if valid and ready:
                        base = (offset // 4 + seen) * 4
                        for lane in range(4):
                            if payload.keep >> lane & 1:
                                assert offset <= base + lane < offset + seg_len, "byte outside segment"
                                got[base + lane] = payload.data >> (8 * lane) & 0xFF
                        seen += 1
                        if payload.last:
                            break
                ctx.set(dut.seg.ready, 0)
            ctx.set(dut.pop, 1)
            await ctx.tick()
            ctx.set(dut.pop, 0)
            read.append(bytes(got))
            assert tag == tag_of(got), "the frame's tag did not come with it"
            idle += 1


    from amaranth.sim import Simulator
    from tests.amaranth_sim import CLOCK_PERIOD
    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    sim.add_testbench(writer)
    sim.add_testbench(reader)
    sim.add_process(monitor)
    sim.run()
    return read, drops


def random_frames(rng, count, lo=MIN, hi=MAX):
    return [rng.randbytes(rng.randint(lo, hi)) for _ in range(count)]


@pytest.mark.parametrize("backpressure", [True, False])
def test_frames_come_back_whole(backpressure):
    rng = random.Random(7)
    frames = random_frames(rng, 30)
    read, drops = run(frames, backpressure=backpressure, depth=1024)
    assert drops == []
    assert read == frames


def test_bad_lengths_are_dropped_with_their_reason():
    rng = random.Random(3)
    frames = [rng.randbytes(n) for n in (60, MIN - 1, 100, MAX + 1, 2000, MIN, MAX, 61)]
    read, drops = run(frames, backpressure=True, depth=128, abort={7})
    assert read == [frames[0], frames[2], frames[5], frames[6]]
    assert drops == [DropReason.TOO_SHORT, DropReason.TOO_LONG, DropReason.TOO_LONG,
                     DropReason.ABORTED]


def test_backpressure_waits_for_room():
    """A small buffer and a late reader: nothing lost, the writer waited."""
    rng = random.Random(5)
    frames = random_frames(rng, 12, 200, MAX)
    read, drops = run(frames, backpressure=True, depth=128, read_delay=400)
    assert drops == [] and read == frames


def test_without_backpressure_a_full_buffer_drops():
    """The wire is never stalled: frames that do not fit are dropped, the rest intact."""
    rng = random.Random(9)
    frames = random_frames(rng, 12, 200, MAX)
    read, drops = run(frames, backpressure=False, depth=128, p_valid=1.0, read_delay=2000)
    assert drops and all(d == DropReason.NO_SPACE for d in drops)
    assert len(read) + len(drops) == len(frames)
    assert read == [f for f in frames if f in read]      # in order, intact
    assert read[0] == frames[0]


def test_backpressure_with_more_frames_than_entries():
    """More small frames than the buffer has frame entries: the writer waits, nothing is dropped."""
    from hdl.net.packet_fifo import FRAMES_IN_FLIGHT
    rng = random.Random(6)
    frames = random_frames(rng, 2 * FRAMES_IN_FLIGHT + 3, MIN, MIN + 6)
    read, drops = run(frames, backpressure=True, depth=1024, p_valid=1.0, read_delay=600)
    assert drops == [] and read == frames
