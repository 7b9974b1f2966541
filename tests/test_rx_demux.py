"""RxDemux: completions to `cpl`, everything else to `req`, a whole TLP at a time."""
import random

import pytest

from hdl.pcie.rx_demux import RxDemux
from tests.amaranth_sim import simulate

CPL_TYPES = [0b01010, 0b01011]                      # CplD/Cpl and their locked forms
# MRd, MRdLk, IORd, CfgRd0, CfgRd1, Msg, and the types one bit away from a completion
REQ_TYPES = [0b00000, 0b00001, 0b00010, 0b00100, 0b00101, 0b10000, 0b10100,
             0b01000, 0b01001, 0b11010, 0b11011, 0b01110]


def dw0(rng, tlp_type):
    return rng.getrandbits(32) & ~(0x1F << 24) | tlp_type << 24


def random_tlps(rng, count):
    """[(is_cpl, [dw, ...])]; later DWs carry "types" that would route the other way."""
    tlps = []
    for _ in range(count):
        is_cpl = rng.random() < 0.5
        first = dw0(rng, rng.choice(CPL_TYPES if is_cpl else REQ_TYPES))
        rest = [dw0(rng, rng.choice(REQ_TYPES if is_cpl else CPL_TYPES))
                for _ in range(rng.randint(0, 8))]
        tlps.append((is_cpl, [first] + rest))
    return tlps


def run(tlps, rng, *, p_valid, p_req_ready, p_cpl_ready, max_cycles=4000):
    dut = RxDemux()
    src = [(dw, n == 0, n == len(t) - 1, is_cpl) for is_cpl, t in tlps for n, dw in enumerate(t)]
    got = {"req": [], "cpl": []}

    async def tb(ctx):
        index, src_valid = 0, False
        for _ in range(max_cycles):
            if index == len(src):
                break
            if not src_valid:
                src_valid = rng.random() < p_valid
            ctx.set(dut.i.valid, src_valid)
            dw, first, last, is_cpl = src[index]
            ctx.set(dut.i.payload.data, dw)
            ctx.set(dut.i.payload.first, first)
            ctx.set(dut.i.payload.last, last)
            ready = {"req": rng.random() < p_req_ready, "cpl": rng.random() < p_cpl_ready}
            ctx.set(dut.req.ready, ready["req"])
            ctx.set(dut.cpl.ready, ready["cpl"])

            selected, other = ("cpl", "req") if is_cpl else ("req", "cpl")
            port, other_port = getattr(dut, selected), getattr(dut, other)
            assert not ctx.get(other_port.valid), f"DW {index} shown on {other}"
            assert ctx.get(port.valid) == src_valid
            # only the selected output's ready matters
            assert ctx.get(dut.i.ready) == ready[selected]
            if src_valid:
                assert ctx.get(port.payload.data) == dw
                assert ctx.get(port.payload.first) == first
                assert ctx.get(port.payload.last) == last
            for name in ("req", "cpl"):
                p = getattr(dut, name)
                if ctx.get(p.valid) and ctx.get(p.ready):
                    got[name].append((ctx.get(p.payload.data), bool(ctx.get(p.payload.first)),
                                      bool(ctx.get(p.payload.last))))
            if src_valid and ctx.get(dut.i.ready):
                index += 1
                src_valid = False
            await ctx.tick()
        assert index == len(src), "input stalled"

    simulate(dut, tb)
    for name, want_cpl in (("req", False), ("cpl", True)):
        expected = [(dw, first, last) for dw, first, last, is_cpl in src if is_cpl == want_cpl]
        assert got[name] == expected


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_mix_with_back_pressure(seed):
    rng = random.Random(seed)
    run(random_tlps(rng, 60), rng, p_valid=0.7, p_req_ready=0.6, p_cpl_ready=0.6)


def test_stalled_cpl_does_not_stall_requests():
    rng = random.Random(4)
    tlps = [t for t in random_tlps(rng, 40) if not t[0]]
    run(tlps, rng, p_valid=1.0, p_req_ready=1.0, p_cpl_ready=0.0)


def test_stalled_req_does_not_stall_completions():
    rng = random.Random(5)
    tlps = [t for t in random_tlps(rng, 40) if t[0]]
    run(tlps, rng, p_valid=1.0, p_req_ready=0.0, p_cpl_ready=1.0)


def test_route_holds_while_first_dw_waits():
    """A completion's first DW stalled on `cpl` stays on `cpl`; its later DWs follow it."""
    dut = RxDemux()
    cpl_dws = [0x4A00_0001, 0x0000_0000, 0x0012_3456]     # CplD header: 0x4A = fmt 010, type 01010
    req_dw = 0x0000_0001                                   # MRd 3DW

    async def tb(ctx):
        ctx.set(dut.req.ready, 1)
        ctx.set(dut.cpl.ready, 0)
        ctx.set(dut.i.valid, 1)
        for n, dw in enumerate(cpl_dws):
            ctx.set(dut.i.payload.data, dw)
            ctx.set(dut.i.payload.first, n == 0)
            ctx.set(dut.i.payload.last, n == len(cpl_dws) - 1)
            for _ in range(3):                 # stalled: nothing moves, nothing on req
                assert ctx.get(dut.cpl.valid) and not ctx.get(dut.req.valid)
                assert not ctx.get(dut.i.ready)
                await ctx.tick()
            ctx.set(dut.cpl.ready, 1)
            assert ctx.get(dut.i.ready) and ctx.get(dut.cpl.payload.data) == dw
            await ctx.tick()
            ctx.set(dut.cpl.ready, 0)
        # next TLP is a request: it goes to req though cpl is stalled
        ctx.set(dut.i.payload.data, req_dw)
        ctx.set(dut.i.payload.first, 1)
        ctx.set(dut.i.payload.last, 1)
        assert ctx.get(dut.req.valid) and not ctx.get(dut.cpl.valid) and ctx.get(dut.i.ready)

    simulate(dut, tb)
