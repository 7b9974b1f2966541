"""TlpGate: stop lets the TLP under way finish, then holds the source back."""
from hdl.pcie.tlp_gate import TlpGate
from tests.amaranth_sim import simulate


def test_stop_waits_for_the_tlp_boundary():
    dut = TlpGate()
    seen = []

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        # a 4-DW TLP starts, then stop is raised after its second DW
        for n in range(4):
            ctx.set(dut.i.payload, {"data": n, "first": n == 0, "last": n == 3})
            ctx.set(dut.i.valid, 1)
            if n == 2:
                ctx.set(dut.stop, 1)
            assert ctx.get(dut.o.valid), f"DW {n} of the started TLP must pass"
            assert not ctx.get(dut.quiet)
            seen.append(ctx.get(dut.o.payload.data))
            await ctx.tick()
        # the next TLP is held back while stop is high; the gate is quiet
        ctx.set(dut.i.payload, {"data": 9, "first": 1, "last": 1})
        for _ in range(3):
            assert not ctx.get(dut.o.valid) and not ctx.get(dut.i.ready)
            assert ctx.get(dut.quiet)
            await ctx.tick()
        ctx.set(dut.stop, 0)
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload.data) == 9

    simulate(dut, tb)
    assert seen == [0, 1, 2, 3]


def test_an_offered_tlp_is_not_withdrawn():
    """A first DW offered but not yet taken counts as started."""
    dut = TlpGate()

    async def tb(ctx):
        ctx.set(dut.o.ready, 0)
        ctx.set(dut.i.payload, {"data": 5, "first": 1, "last": 0})
        ctx.set(dut.i.valid, 1)
        await ctx.tick()                  # offered, not taken
        ctx.set(dut.stop, 1)
        assert ctx.get(dut.o.valid) and not ctx.get(dut.quiet)
        ctx.set(dut.o.ready, 1)
        await ctx.tick()
        ctx.set(dut.i.payload, {"data": 6, "first": 0, "last": 1})
        assert ctx.get(dut.o.valid)
        await ctx.tick()
        ctx.set(dut.i.valid, 0)
        assert ctx.get(dut.quiet)

    simulate(dut, tb)
