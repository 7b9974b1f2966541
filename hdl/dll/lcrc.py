"""The data link layer's two CRCs (PCIe Base 4.0 sections 3.5.2 and 3.6.2.1).

Both are computed the way the spec draws them (the CRC calculation
figures of 3.5.2 and 3.6.2.1): a register of storage elements ``c[n-1:0]`` (``c[n-1]`` is the
x^(n-1) term) seeded with all ones; the packet's bytes enter in order, each
byte bit 0 first; the polynomial is

- LCRC (3.6.2.1): 04C1_1DB7h over the 2-byte Sequence Number field (its 4
  reserved bits included) and the whole TLP, seed FFFF_FFFFh;
- DLLP CRC (3.5.2): 100Bh over the 4 DLLP bytes, seed FFFFh.

The result is the complemented register, sent with its bits reversed: the
first CRC byte carries ``c[n-1]`` in its bit 0 (sent first), ``c[n-8]`` in
bit 7; the next byte ``c[n-9]`` ... and so on.

The LCRC comes out exactly as the IEEE 802.3 CRC-32 (zlib's ``crc32``), least
significant byte first. Cross-checked against antmicro/warp-pipe's test
values (a sequence-number-0 MRd32 with an all-zero header: LCRC 0xD1BB79C7 as a
little-endian word; an Ack of sequence number 0: CRC 0x62B3), see
tests/test_dll_crc.py.

A receiver runs the register over the packet *and* its CRC; the register then
ends at a constant (`CrcSpec.residue`) when the CRC is right, and at another
constant (`CrcSpec.inverted_residue`) when the CRC is the right one
complemented, which is how a nullified TLP ends (section 3.6.3.1: EDB and an
inverted LCRC).

The gateware folds ``width`` data bits into the register in one cycle: one
serial step is linear over GF(2) in the register and the data bits, so
``width`` steps are an XOR matrix, found at elaboration time by pushing unit
vectors through the serial model.
"""
from functools import lru_cache

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["CrcSpec", "LCRC", "DLLP_CRC", "crc_next", "Lcrc"]

OCTET = 8


class CrcSpec:
    """One CRC as the spec defines it; a bit-serial Python model."""

    def __init__(self, name, width, poly, seed):
        self.name = name
        self.width = width
        self.poly = poly               # without the x^width term
        self.seed = seed
        self.mask = (1 << width) - 1

    # --- the serial register, straight from the figure ---------------------
    def step(self, state, data, nbits):
        """The register after ``nbits`` data bits, ``data`` bit 0 first."""
        top = self.width - 1
        for index in range(nbits):
            feedback = (state >> top ^ data >> index) & 1
            state = (state << 1) & self.mask
            if feedback:
                state ^= self.poly
        return state

    def register(self, octets, state=None):
        """The register after ``octets`` (each byte bit 0 first)."""
        state = self.seed if state is None else state
        for octet in octets:
            state = self.step(state, octet, OCTET)
        return state

    def output(self, state):
        """The CRC bytes as sent: complemented, ``c[n-1]`` into bit 0 of byte 0."""
        inverted = ~state & self.mask
        value = 0
        for bit in range(self.width):            # wire bit ``bit`` (byte bit 0 first)
            value |= (inverted >> (self.width - 1 - bit) & 1) << bit
        return value.to_bytes(self.width // OCTET, "little")

    def crc(self, octets):
        return self.output(self.register(octets))

    @property
    def residue(self):
        """The register after any packet followed by its right CRC."""
        return self.register(self.crc(b""))

    @property
    def inverted_residue(self):
        """... followed by its CRC complemented (a nullified TLP, 3.6.3.1)."""
        return self.register(bytes(b ^ 0xFF for b in self.crc(b"")))


#: Section 3.6.2.1.
LCRC = CrcSpec("LCRC", 32, 0x04C11DB7, 0xFFFFFFFF)
#: Section 3.5.2.
DLLP_CRC = CrcSpec("DLLP CRC", 16, 0x100B, 0xFFFF)


@lru_cache
def _masks(spec, nbits):
    """Per next-register bit: (register bits, data bits) it is the XOR of."""
    from_state = [spec.step(1 << i, 0, nbits) for i in range(spec.width)]
    from_data = [spec.step(0, 1 << i, nbits) for i in range(nbits)]
    return tuple(
        (sum(1 << i for i in range(spec.width) if from_state[i] >> bit & 1),
         sum(1 << i for i in range(nbits) if from_data[i] >> bit & 1))
        for bit in range(spec.width))


def crc_next(spec, state, data):
    """The register after ``data`` (an Amaranth value, bit 0 first) from
    ``state``: a combinational XOR network."""
    nbits = len(data)
    state = Const(state, spec.width) if isinstance(state, int) else state
    terms = []
    for state_mask, data_mask in _masks(spec, nbits):
        term = (state & state_mask).xor() if state_mask else 0
        if data_mask:
            term = term ^ (data & data_mask).xor()
        terms.append(term)
    return Cat(*terms)


def crc_output(spec, state):
    """The CRC bytes as sent (`CrcSpec.output`) of a register value, as an
    Amaranth value with wire byte 0 in bits 7:0."""
    return Cat(*(~state[spec.width - 1 - bit] for bit in range(spec.width)))


class Lcrc(wiring.Component):
    """LCRC register taking ``width`` bits (16: one link beat) a cycle.

    Ports (``sync``):
        data:     In(width), the next bytes, the earliest in bits 7:0.
        en:       In(1), fold ``data`` in this cycle.
        clear:    In(1), back to the seed (wins over ``en``).
        start:    In(1), with ``en``: ``data`` begins a packet (folded into
                  the seed, not the register).
        crc:      Out(32), the LCRC of what was folded in, LCRC byte 0 (sent
                  first) in bits 7:0.
        good:     Out(1), what was folded in ended with its right LCRC.
        nullified: Out(1), ... ended with its LCRC complemented (3.6.3.1).
    """

    def __init__(self, width=16, spec=LCRC):
        self.spec = spec
        super().__init__({
            "data": In(width),
            "en": In(1),
            "clear": In(1),
            "start": In(1),
            "crc": Out(spec.width),
            "good": Out(1),
            "nullified": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        state = Signal(self.spec.width, init=self.spec.seed)
        with m.If(self.clear):
            m.d.sync += state.eq(self.spec.seed)
        with m.Elif(self.en):
            m.d.sync += state.eq(crc_next(self.spec, Mux(self.start, self.spec.seed, state),
                                          self.data))
        m.d.comb += [
            self.crc.eq(crc_output(self.spec, state)),
            self.good.eq(state == self.spec.residue),
            self.nullified.eq(state == self.spec.inverted_residue),
        ]
        return m
