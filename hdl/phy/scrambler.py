"""The Gen1/Gen2 scrambler (PCIe Base 4.0 section 4.2.1.3), two symbols a cycle.

Rules (section 4.2.1.3, 8b/10b):

* G(X) = X^16 + X^5 + X^4 + X^3 + 1, a Galois LFSR seeded with FFFFh;
* COM (K28.5) re-initialises the LFSR to FFFFh (the symbol after COM is
  scrambled with the seed's key);
* the LFSR advances eight serial shifts on every symbol except SKP (K28.0);
* K symbols are never scrambled, nor the data symbols of TS1/TS2 ordered sets
  (the transmitter says which symbols to scramble with ``enable``; the
  descrambler descrambles every data symbol and the training-set receiver
  looks at the raw stream instead);
* bit 0 of a byte meets the LFSR's first output bit (bit 15 of the state).

Scrambling is additive, so the same circuit descrambles (`Descrambler`).
Appendix C of the spec lists the key stream after a COM; the tests check it.
"""
from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .pipe import SYMBOLS_PER_CYCLE
from .symbols import KSymbol

__all__ = ["SEED", "TAPS", "ScramblerModel", "Scrambler", "Descrambler"]

SEED = 0xFFFF
#: X^5 + X^4 + X^3 + 1 folded back in when bit 15 shifts out.
TAPS = 0x0039


class ScramblerModel:
    """Python reference: one symbol at a time."""

    def __init__(self, seed=SEED):
        self.seed = seed
        self.lfsr = seed

    def _key(self):
        key = 0
        for bit in range(8):
            out = (self.lfsr >> 15) & 1
            key |= out << bit
            self.lfsr = ((self.lfsr << 1) & 0xFFFF) ^ (TAPS if out else 0)
        return key

    def symbol(self, byte, is_k=False, enable=True):
        """Scramble (or descramble) one symbol; returns the byte on the wire."""
        if is_k and byte == KSymbol.COM:
            self.lfsr = self.seed
            return byte
        if is_k and byte == KSymbol.SKP:
            return byte
        key = self._key()
        return byte if (is_k or not enable) else byte ^ key


def _advance8(state):
    """Eight serial shifts of the LFSR as expressions: (key byte, next state).
    `state` is a list of 16 one-bit values, bit 0 first."""
    bits = list(state)
    key = []
    for _ in range(8):
        out = bits[15]
        key.append(out)
        bits = [out] + bits[:15]
        for tap in (3, 4, 5):
            bits[tap] = bits[tap] ^ out
    return Cat(*key), Cat(*bits)


class Scrambler(wiring.Component):
    """Scrambles two symbols a cycle (symbol 0 first), one register stage.

    Ports: ``data``/``datak`` the symbols, ``enable`` per symbol (scramble
    this data symbol), ``valid`` (the LFSR only moves on valid cycles);
    ``o_data``/``o_datak``/``o_valid`` the same one cycle later.
    """

    data: In(8 * SYMBOLS_PER_CYCLE)
    datak: In(SYMBOLS_PER_CYCLE)
    enable: In(SYMBOLS_PER_CYCLE, init=(1 << SYMBOLS_PER_CYCLE) - 1)
    valid: In(1, init=1)
    o_data: Out(8 * SYMBOLS_PER_CYCLE)
    o_datak: Out(SYMBOLS_PER_CYCLE)
    o_valid: Out(1)

    def __init__(self, seed=SEED):
        self._seed = seed
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        lfsr = Signal(16, init=self._seed)
        state = lfsr
        out = []
        for i in range(SYMBOLS_PER_CYCLE):
            byte = self.data[8 * i:8 * i + 8]
            is_k = self.datak[i]
            is_com = is_k & (byte == KSymbol.COM)
            is_skp = is_k & (byte == KSymbol.SKP)
            key, advanced = _advance8([state[b] for b in range(16)])
            scramble = ~is_k & self.enable[i]
            out.append(Mux(scramble, byte ^ key, byte))
            after = Signal(16, name=f"lfsr_after_{i}")
            m.d.comb += after.eq(Mux(is_com, Const(self._seed, 16), Mux(is_skp, state, advanced)))
            state = after
        with m.If(self.valid):
            m.d.sync += lfsr.eq(state)
        m.d.sync += [
            self.o_data.eq(Cat(*out)),
            self.o_datak.eq(self.datak),
            self.o_valid.eq(self.valid),
        ]
        return m


class Descrambler(Scrambler):
    """The receive side: every data symbol is descrambled (``enable`` stays
    all ones); COM resynchronises the LFSR."""
