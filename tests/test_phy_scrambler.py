"""The Gen1 scrambler (PCIe Base section 4.2.1.3): the Python model against
the spec's key stream, the gateware against the model, and the descrambler
undoing the scrambler."""
import random

from hdl.phy.scrambler import Descrambler, Scrambler, ScramblerModel
from hdl.phy.symbols import KSymbol
from tests.amaranth_sim import simulate

# What 32 D0.0 symbols after a COM look like once scrambled (seed FFFFh):
# the key stream tabulated in the spec's appendix on the scrambler (PCI
# Express Base 2.1 Appendix C), as quoted by several open implementations
# that check themselves against it.
SPEC_KEYS = bytes.fromhex(
    "FF17C014B2E70282726E28A6BE6DBF8D"
    "BE40A7E62CD3E2B20702772ACD34BEE0")


def test_model_matches_spec_key_stream():
    model = ScramblerModel()
    assert model.symbol(KSymbol.COM, is_k=True) == KSymbol.COM
    assert bytes(model.symbol(0x00) for _ in range(32)) == SPEC_KEYS


def test_model_rules():
    model = ScramblerModel()
    model.symbol(KSymbol.COM, is_k=True)
    # SKP neither scrambled nor advancing; K symbols and disabled (TS) data
    # symbols advance but pass unscrambled; COM reseeds.
    assert model.symbol(KSymbol.SKP, is_k=True) == KSymbol.SKP
    assert model.symbol(0x00) == SPEC_KEYS[0]
    assert model.symbol(KSymbol.STP, is_k=True) == KSymbol.STP
    assert model.symbol(0x4A, enable=False) == 0x4A
    assert model.symbol(0x00) == SPEC_KEYS[3]
    model.symbol(KSymbol.COM, is_k=True)
    assert model.symbol(0x00) == SPEC_KEYS[0]


def random_symbols(rng, count):
    """(byte, is_k, enable) with COM, SKP and other K symbols mixed in."""
    out = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.05:
            out.append((KSymbol.COM, True, True))
        elif roll < 0.12:
            out.append((KSymbol.SKP, True, True))
        elif roll < 0.16:
            out.append((rng.choice([KSymbol.STP, KSymbol.SDP, KSymbol.END, KSymbol.PAD]),
                        True, True))
        else:
            out.append((rng.randrange(256), False, rng.random() < 0.8))
    return out


def run_scrambler(dut, symbols, *, valid_gaps=False, rng=None):
    """Feed `symbols` two a cycle (optionally with invalid cycles between);
    returns the output bytes of the valid cycles."""
    out = []

    async def testbench(ctx):
        pairs = [symbols[i:i + 2] for i in range(0, len(symbols), 2)]
        for pair in pairs + [None]:
            while valid_gaps and pair is not None and rng.random() < 0.2:
                ctx.set(dut.valid, 0)
                ctx.set(dut.data, rng.randrange(1 << 16))
                await ctx.tick()
                if ctx.get(dut.o_valid):
                    out.extend([ctx.get(dut.o_data) & 0xFF, ctx.get(dut.o_data) >> 8])
            if pair is not None:
                ctx.set(dut.data, pair[0][0] | pair[1][0] << 8)
                ctx.set(dut.datak, pair[0][1] | pair[1][1] << 1)
                ctx.set(dut.enable, pair[0][2] | pair[1][2] << 1)
                ctx.set(dut.valid, 1)
            else:
                ctx.set(dut.valid, 0)
            await ctx.tick()
            if ctx.get(dut.o_valid):
                out.extend([ctx.get(dut.o_data) & 0xFF, ctx.get(dut.o_data) >> 8])

    simulate(dut, testbench)
    return out


def test_gateware_matches_spec_key_stream():
    symbols = [(KSymbol.COM, True, True), (KSymbol.SKP, True, True)] + \
        [(0x00, False, True)] * 32
    out = run_scrambler(Scrambler(), symbols)
    assert bytes(out[2:]) == SPEC_KEYS


def test_gateware_matches_model():
    rng = random.Random(4)
    symbols = random_symbols(rng, 4000)
    model = ScramblerModel()
    expected = [model.symbol(b, k, e) for b, k, e in symbols]
    assert run_scrambler(Scrambler(), symbols, valid_gaps=True, rng=rng) == expected


def test_descrambler_undoes_scrambler():
    rng = random.Random(5)
    symbols = [(b, k, True) for b, k, _ in random_symbols(rng, 2000)]
    model = ScramblerModel()
    wire = [(model.symbol(b, k), k, True) for b, k, _ in symbols]
    assert run_scrambler(Descrambler(), wire) == [b for b, _, _ in symbols]
