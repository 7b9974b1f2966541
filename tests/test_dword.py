"""DwordPacker -> DwordUnpacker round trip under random back-pressure."""
import random

import pytest
from amaranth.hdl import Elaboratable, Module, Signal

from hdl.pcie.dword import DwordPacker, DwordUnpacker
from sim.tlp_codec import dwords_to_tlp, tlp_to_beats, tlp_to_dwords
from tests.amaranth_sim import simulate


class RoundTrip(Elaboratable):
    """packer.o -> unpacker.i through a gate the testbench opens and closes."""

    def __init__(self):
        self.packer = DwordPacker()
        self.unpacker = DwordUnpacker()
        self.gate = Signal(init=1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.packer = p = self.packer
        m.submodules.unpacker = u = self.unpacker
        m.d.comb += [
            u.i.payload.eq(p.o.payload),
            u.i.valid.eq(p.o.valid & self.gate),
            p.o.ready.eq(u.i.ready & self.gate),
        ]
        return m


def framed(tlps):
    """The TLPs as one DW stream: (data, first, last) per DW."""
    return [(dw, n == 0, n == len(t) - 1) for t in tlps for n, dw in enumerate(t)]


def beats_of(tlps):
    """The beats the TLP boundary carries for these TLPs (sim/tlp_codec.py)."""
    return [b for t in tlps for b in tlp_to_beats(dwords_to_tlp(t))]


def random_tlps(rng, count):
    tlps = []
    for _ in range(count):
        dws = [rng.getrandbits(32) for _ in range(rng.randint(1, 20))]
        # the packed bytes as the host would see them, back to DWs
        assert tlp_to_dwords(dwords_to_tlp(dws)) == dws
        tlps.append(dws)
    return tlps


def run_round_trip(tlps, rng, *, p_valid, p_mid, p_ready, max_cycles):
    dut = RoundTrip()
    p, u = dut.packer, dut.unpacker
    src = framed(tlps)
    expected_beats = beats_of(tlps)
    got_beats, got_dws = [], []
    result = {}

    async def tb(ctx):
        index, src_valid, stalled_beat = 0, False, None
        cycles = 0
        idle_after_done = 0
        while cycles < max_cycles:
            if not src_valid:
                src_valid = index < len(src) and rng.random() < p_valid
            ctx.set(p.i.valid, src_valid)
            if src_valid:
                dw, first, last = src[index]
                ctx.set(p.i.payload.data, dw)
                ctx.set(p.i.payload.first, first)
                ctx.set(p.i.payload.last, last)
            gate = rng.random() < p_mid
            ctx.set(dut.gate, gate)
            ctx.set(u.o.ready, rng.random() < p_ready)

            # input side
            if src_valid and ctx.get(p.i.ready):
                index += 1
                src_valid = False
            # between packer and unpacker: the beats the link would carry
            if ctx.get(p.o.valid):
                keep = ctx.get(p.o.payload.keep)
                # lanes outside keep carry no DW: compare only the kept ones
                mask = sum(0xFFFFFFFF << (32 * n) for n in range(2) if keep >> n & 1)
                beat = (ctx.get(p.o.payload.data) & mask, keep,
                        bool(ctx.get(p.o.payload.first)), bool(ctx.get(p.o.payload.last)))
                if stalled_beat is not None:
                    assert beat == stalled_beat, "packer changed a beat before it was taken"
                if ctx.get(p.o.ready):
                    got_beats.append(beat)
                    stalled_beat = None
                else:
                    stalled_beat = beat
            else:
                assert stalled_beat is None, "packer dropped valid before the beat was taken"
            # output side
            if ctx.get(u.o.valid) and ctx.get(u.o.ready):
                got_dws.append((ctx.get(u.o.payload.data), bool(ctx.get(u.o.payload.first)),
                                bool(ctx.get(u.o.payload.last))))
            await ctx.tick()
            cycles += 1
            if len(got_dws) >= len(src):
                idle_after_done += 1
                if idle_after_done > 8:     # watch a little longer for duplicates
                    break
        result["cycles"] = cycles - idle_after_done

    simulate(dut, tb)
    for data, keep, first, last in got_beats:
        if not last:
            assert keep == 0b11, "a beat other than a TLP's last one is short"
    assert got_beats == expected_beats
    assert got_dws == src
    return result["cycles"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_round_trip_with_random_back_pressure(seed):
    rng = random.Random(seed)
    tlps = random_tlps(rng, 40)
    run_round_trip(tlps, rng, p_valid=0.6, p_mid=0.6, p_ready=0.6, max_cycles=6000)


def test_round_trip_heavy_back_pressure_single_dw_tlps():
    rng = random.Random(7)
    tlps = [[rng.getrandbits(32)] for _ in range(15)] + random_tlps(rng, 10)
    rng.shuffle(tlps)
    run_round_trip(tlps, rng, p_valid=0.3, p_mid=0.3, p_ready=0.3, max_cycles=6000)


def test_packer_takes_a_dw_every_cycle():
    """With the link always ready, the packer never stalls its input."""
    rng = random.Random(11)
    tlps = random_tlps(rng, 20)
    src = framed(tlps)
    expected = beats_of(tlps)
    dut = DwordPacker()
    beats = []

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.valid, 1)
        for dw, first, last in src:
            ctx.set(dut.i.payload.data, dw)
            ctx.set(dut.i.payload.first, first)
            ctx.set(dut.i.payload.last, last)
            assert ctx.get(dut.i.ready), "packer stalled with the link ready"
            if ctx.get(dut.o.valid):
                beats.append(ctx.get(dut.o.payload))
            await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for _ in range(3):
            if ctx.get(dut.o.valid):
                beats.append(ctx.get(dut.o.payload))
            await ctx.tick()

    simulate(dut, tb)
    got = []
    for b in beats:
        mask = sum(0xFFFFFFFF << (32 * n) for n in range(2) if b.keep >> n & 1)
        got.append((b.data & mask, b.keep, bool(b.first), bool(b.last)))
    assert got == expected


def test_unpacker_gives_a_dw_every_cycle():
    """Fed beats back to back and never stalled, the unpacker outputs a DW each cycle."""
    rng = random.Random(12)
    tlps = random_tlps(rng, 20)
    src = framed(tlps)
    beats = beats_of(tlps)
    dut = DwordUnpacker()
    got = []

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        index = 0
        for _ in range(len(src)):
            assert index < len(beats)
            data, keep, first, last = beats[index]
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload.data, data)
            ctx.set(dut.i.payload.keep, keep)
            ctx.set(dut.i.payload.first, first)
            ctx.set(dut.i.payload.last, last)
            assert ctx.get(dut.o.valid)
            got.append((ctx.get(dut.o.payload.data), bool(ctx.get(dut.o.payload.first)),
                        bool(ctx.get(dut.o.payload.last))))
            if ctx.get(dut.i.ready):
                index += 1
            await ctx.tick()
        assert index == len(beats), "a beat was not taken"

    simulate(dut, tb)
    assert got == src
