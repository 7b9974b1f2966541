"""The Ethernet CRC-32 (IEEE 802.3 Clause 3.2.9), several bits a cycle.

Clause 3.2.9 defines the FCS as the CRC of the frame from the destination
address to the end of the pad, with the generator polynomial

    G(x) = x^32 + x^26 + x^23 + x^22 + x^16 + x^12 + x^11 + x^10
         + x^8 + x^7 + x^5 + x^4 + x^2 + x + 1

The first 32 bits are complemented (the register starts at all ones), bits
enter in transmission order (each octet least significant bit first,
Clause 3.3), and the remainder is complemented and sent x^31 first. Held in
"reflected" form (bit 0 of the register is the x^31 term), the register
then takes each octet's bit 0 first, and the FCS's four octets are the
complemented register, least significant octet first, exactly as zlib's
``crc32`` produces them.

The hardware is built from the polynomial at elaboration time. One step of
the bit-serial register (`crc32_step`) is linear over GF(2) in the register
and the data, so ``width`` steps fold into one matrix: each next-state bit
is the XOR of some register bits and some data bits, found by pushing unit
vectors through the serial model (`step_masks`).

Receiving, the register run over a frame *and its FCS* ends at a constant,
`CRC32_RESIDUE`, whatever the frame, when the FCS is right.
"""
from functools import lru_cache

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .frame import FCS_LENGTH, OCTET_BITS

__all__ = ["CRC32_TERMS", "CRC32_POLY", "CRC32_INIT", "CRC32_RESIDUE", "CRC_BITS",
           "crc32_step", "crc32", "fcs_bytes", "step_masks", "Crc32"]

CRC_BITS = 32
#: Exponents of G(x) below x^32 (Clause 3.2.9).
CRC32_TERMS = (26, 23, 22, 16, 12, 11, 10, 8, 7, 5, 4, 2, 1, 0)
#: G(x) without its x^32 term, x^0 in bit 0.
CRC32_POLY = sum(1 << e for e in CRC32_TERMS)
_MASK = (1 << CRC_BITS) - 1
#: Clause 3.2.9 a): the first 32 bits of the frame are complemented, i.e.
#: the register starts at all ones.
CRC32_INIT = _MASK


def _reflect(value, bits):
    return int(f"{value:0{bits}b}"[::-1], 2)


#: The polynomial in reflected order (x^31 in bit 0), for LSB-first data.
_POLY_REFLECTED = _reflect(CRC32_POLY, CRC_BITS)


def crc32_step(state, data, bits):
    """The serial register after ``bits`` data bits, ``data`` bit 0 first."""
    for index in range(bits):
        feedback = (state ^ (data >> index)) & 1
        state >>= 1
        if feedback:
            state ^= _POLY_REFLECTED
    return state


def crc32(frame, state=CRC32_INIT):
    """The register after ``frame`` (bytes), from ``state``."""
    for octet in frame:
        state = crc32_step(state, octet, OCTET_BITS)
    return state


def fcs_bytes(frame):
    """The four FCS octets of ``frame``, in transmission order (Clause 3.2.9 e)."""
    return (crc32(frame) ^ _MASK).to_bytes(FCS_LENGTH, "little")


#: The register after any frame followed by its own FCS.
CRC32_RESIDUE = crc32(fcs_bytes(b""), crc32(b""))


@lru_cache
def step_masks(width):
    """For each next-state bit: (register bits, data bits) it is the XOR of,
    as masks, for one step of ``width`` data bits."""
    from_state = [crc32_step(1 << i, 0, width) for i in range(CRC_BITS)]
    from_data = [crc32_step(0, 1 << i, width) for i in range(width)]
    return tuple(
        (sum(1 << i for i in range(CRC_BITS) if from_state[i] >> bit & 1),
         sum(1 << i for i in range(width) if from_data[i] >> bit & 1))
        for bit in range(CRC_BITS))


class Crc32(wiring.Component):
    """Ethernet CRC-32 register taking ``width`` bits (a multiple of 8) a cycle.

    Ports (all in ``sync``):
        data:  In(width), the next bits, byte 0 in bits 7:0 (sent first).
        en:    In(1), fold ``data`` into the register this cycle.
        clear: In(1), restart from `CRC32_INIT` (wins over ``en``).
        crc:   Out(32), the FCS of what was folded in: complemented register,
               FCS octet 0 (sent first) in bits 7:0.
        match: Out(1), the register equals `CRC32_RESIDUE`: what was folded
               in was a frame followed by its correct FCS.
    """

    def __init__(self, width=OCTET_BITS):
        if width <= 0 or width % OCTET_BITS:
            raise ValueError(f"width {width}: a positive multiple of {OCTET_BITS}")
        self.width = width
        super().__init__({
            "data": In(width),
            "en": In(1),
            "clear": In(1),
            "crc": Out(CRC_BITS),
            "match": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        state = Signal(CRC_BITS, init=CRC32_INIT)
        next_state = Cat(*((state & state_mask).xor() ^ (self.data & data_mask).xor()
                           for state_mask, data_mask in step_masks(self.width)))
        with m.If(self.clear):
            m.d.sync += state.eq(CRC32_INIT)
        with m.Elif(self.en):
            m.d.sync += state.eq(next_state)
        m.d.comb += [
            self.crc.eq(~state),
            self.match.eq(state == CRC32_RESIDUE),
        ]
        return m
