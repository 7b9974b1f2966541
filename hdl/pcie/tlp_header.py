"""Memory request headers for the DMA requester (PCIe Base 4.0 sections 2.2.1,
2.2.4.1, 2.2.5, 2.2.7).

A memory request header is three DWs below 4 GiB (an address at or above
4 GiB needs the 64-bit, four-DW form; below it the 32-bit form is required,
section 2.2.4.1)::

    DW0  Fmt | Type | ... | Length (DWs; 0 means 1024)
    DW1  Requester ID | Tag | Last DW BE | First DW BE
    DW2  Address[63:32]                  (four-DW header only)
    DW3  Address[31:2] | 00

`RequestHeader` holds these DWs as combinational values and hands them out
one at a time through a header DW index that skips Address[63:32] in the
three-DW form.
"""
import enum

from amaranth.hdl import Cat, Mux, Signal, unsigned

from .. import spec
from ..lib.byte_packer import keep_mask
from .tlp import RequestDw1, TlpDw0

__all__ = ["RequestHeader", "byte_enables", "chunk_bytes", "ceil_dw", "HeaderDw",
           "HEADER_INDEX_BITS", "DW_BYTES", "LANE_BITS", "MAX_LENGTH_DW"]

_TYPE_MASK = 0x1F
_FMT_SHIFT = 5
DW_BYTES = 4
LANES = DW_BYTES
LANE_BITS = 2                    # byte lane in a DW: address bits 1:0
LENGTH_FIELD_BITS = 10
MAX_LENGTH_DW = 1 << LENGTH_FIELD_BITS   # the Length field's 0 (section 2.2.1)


def ceil_dw(nbytes):
    """DWs spanned by ``nbytes`` bytes from lane 0 (an Amaranth value or an int)."""
    return (nbytes + DW_BYTES - 1) >> LANE_BITS


class HeaderDw(enum.IntEnum):
    """Position of each DW in the four-DW order (the three-DW form skips ADDR_HI)."""
    DW0 = 0
    DW1 = 1
    ADDR_HI = 2
    ADDR_LO = 3


HEADER_INDEX_BITS = 2


def byte_enables(m, first_lane, last_lane, single_dw):
    """First and Last DW Byte Enables (section 2.2.5) of a contiguous run of
    bytes from lane ``first_lane`` of the first DW to lane ``last_lane`` of
    the last DW. A one-DW request has Last BE 0 and First BE covering both.

    Small Switch tables over the two 2-bit lanes: no dynamic shift."""
    first_be = Signal(LANES)
    last_be = Signal(LANES)
    with m.If(single_dw):
        with m.Switch(Cat(first_lane, last_lane)):
            for lo in range(LANES):
                for hi in range(LANES):
                    if hi >= lo:
                        with m.Case(lo | hi << 2):
                            m.d.comb += first_be.eq(keep_mask(lo, hi))
    with m.Else():
        with m.Switch(first_lane):
            for lo in range(LANES):
                with m.Case(lo):
                    m.d.comb += first_be.eq(keep_mask(lo, LANES - 1))
        with m.Switch(last_lane):
            for hi in range(LANES):
                with m.Case(hi):
                    m.d.comb += last_be.eq(keep_mask(0, hi))
    return first_be, last_be


def chunk_bytes(m, addr, remaining, size_code, max_bytes):
    """Bytes of the next request of a transfer at ``addr`` with ``remaining``
    bytes to go: up to the next boundary of ``min(128 << size_code,
    max_bytes)`` bytes. That size is a power of two dividing 4 KiB, so the
    request never crosses a 4 KiB boundary (section 2.2.7) and is no larger
    than Max_Payload_Size / Max_Read_Request_Size (sections 2.2.2, 7.5.3.4;
    reserved codes count as 4096). A Switch over the size code: no dynamic
    shift. Returns a Signal of ``range(max_bytes + 1)``."""
    room = Signal(range(max_bytes + 1))
    with m.Switch(size_code):
        for code in range(1 << spec.PCIE_SIZE_CODE_BITS):
            size = min(spec.pcie_size_bytes(min(code, spec.PCIE_MAX_SIZE_CODE)), max_bytes)
            offset_bits = size.bit_length() - 1
            with m.Case(code):
                m.d.comb += room.eq(size - addr[:offset_bits])
    length = Signal(range(max_bytes + 1))
    m.d.comb += length.eq(Mux(remaining < room, remaining, room))
    return length


class RequestHeader:
    """The header DWs of a memory read or write request, combinational.

    ``with_data``: MWr (True) or MRd (False). ``addr`` (64 bits),
    ``length_dw`` (1 to 1024), ``requester_id``, ``tag``, ``first_be``,
    ``last_be`` are Amaranth values that must stay stable while the header is
    sent. ``dw(index)`` is the header DW at a `HeaderDw` position,
    ``next_index(index)`` the position after it
    (a Signal of HEADER_INDEX_BITS), ``is_last(index)`` whether it
    ends the header.
    """

    def __init__(self, m, *, with_data, addr, length_dw, requester_id, tag, first_be, last_be):
        self.is_64 = Signal()
        m.d.comb += self.is_64.eq(addr[32:] != 0)
        fmt_type_32 = spec.TlpFmtType.MWR32 if with_data else spec.TlpFmtType.MRD32
        fmt_type_64 = spec.TlpFmtType.MWR64 if with_data else spec.TlpFmtType.MRD64
        dw0 = Signal(TlpDw0)
        dw1 = Signal(RequestDw1)
        m.d.comb += [
            dw0.fmt.eq(fmt_type_32 >> _FMT_SHIFT),
            dw0.type.eq(fmt_type_32 & _TYPE_MASK),
            # 1024 DWs wraps to the field's 0
            dw0.length.eq(length_dw[:LENGTH_FIELD_BITS]),
            dw1.first_be.eq(first_be),
            dw1.last_be.eq(last_be),
            dw1.tag.eq(tag),
            dw1.requester_id.eq(requester_id),
        ]
        with m.If(self.is_64):
            m.d.comb += dw0.fmt.eq(fmt_type_64 >> _FMT_SHIFT)
        self._dws = {
            HeaderDw.DW0: dw0.as_value(),
            HeaderDw.DW1: dw1.as_value(),
            HeaderDw.ADDR_HI: addr[32:64],
            HeaderDw.ADDR_LO: addr[2:32] << 2,   # bits 1:0 reserved
        }
        self._m = m

    def dw(self, index):
        value = Signal(32)
        with self._m.Switch(index):
            for position, dw in self._dws.items():
                with self._m.Case(position):
                    self._m.d.comb += value.eq(dw)
        return value

    def next_index(self, index):
        value = Signal(unsigned(HEADER_INDEX_BITS))
        self._m.d.comb += value.eq(index + 1)
        with self._m.If((index == HeaderDw.DW1) & ~self.is_64):
            self._m.d.comb += value.eq(HeaderDw.ADDR_LO)
        return value

    def is_last(self, index):
        return index == HeaderDw.ADDR_LO
