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
    src = [(dw, n == 0, n == len(t) - 1) for t in tlps for n, dw in enumerate(t)]
    expected_beats = [b for t in tlps for b in tlp_to_beats(dwords_to_tlp(t))]
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


def test_full_rate_without_back_pressure():
    """With nothing stalling, a DW goes in and comes out every cycle."""
    rng = random.Random(11)
    tlps = random_tlps(rng, 20)
    total = sum(len(t) for t in tlps)
    cycles = run_round_trip(tlps, rng, p_valid=1.0, p_mid=1.0, p_ready=1.0, max_cycles=total + 50)
    # the packer registers its beat, and a one-DW beat costs the unpacker a cycle: a small latency
    assert cycles <= total + 3
