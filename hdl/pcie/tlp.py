"""TLP streams and header layouts (PCIe Base 4.0 section 2.2).

The core's boundary is a pair of TLP streams. A beat carries ``DW_PER_BEAT``
double words; ``keep`` says which are valid (only the last beat of a TLP may
leave the upper ones empty); ``first``/``last`` frame the TLP.

Lane order and byte order::

    data[ 0:32]  DW n     (header DWs as the spec draws them: Fmt in bits 31:29)
    data[32:64]  DW n+1

Header DWs hold the spec's big-endian field layout as a 32-bit value. Payload
DWs hold the bytes in address order, byte 0 in bits 7:0 (little-endian), so a
payload DW is the value the host sees at that address.

Inside the core, TLPs move one DW a cycle (``DwordStream``); `DwordUnpacker`
and `DwordPacker` convert at the boundary. At 125 MHz a DW a cycle is 4 Gb/s,
above the Gen1 and Gen2 x1 link rates.
"""
from amaranth.hdl import unsigned
from amaranth.lib import data, stream


DW_PER_BEAT = 2


class TlpBeat(data.StructLayout):
    def __init__(self, dw_per_beat=DW_PER_BEAT):
        super().__init__({
            "data": unsigned(32 * dw_per_beat),
            "keep": unsigned(dw_per_beat),
            "first": unsigned(1),
            "last": unsigned(1),
        })


def TlpStreamSignature(dw_per_beat=DW_PER_BEAT):
    """The core's TLP boundary: one beat of ``dw_per_beat`` DWs per transfer."""
    return stream.Signature(TlpBeat(dw_per_beat))


DwordBeat = data.StructLayout({
    "data": unsigned(32),
    "first": unsigned(1),
    "last": unsigned(1),
})

DwordStreamSignature = stream.Signature(DwordBeat)


class TlpDw0(data.Struct):
    """First header DW, common to every TLP (section 2.2.1), bit 0 first."""
    length: 10
    at: 2
    attr: 2
    ep: 1
    td: 1
    th: 1
    ln: 1          # 1b reserved in Gen1/2
    attr2: 1
    tag8: 1
    tc: 3
    tag9: 1
    type: 5
    fmt: 3         # spec.TlpFmt


class RequestDw1(data.Struct):
    """Second DW of a request header: byte enables, tag, requester ID."""
    first_be: 4
    last_be: 4
    tag: 8
    requester_id: 16


class ConfigDw2(data.Struct):
    """Third DW of a configuration request (section 2.2.7)."""
    reserved0: 2
    register: 10   # DW index (register number | extended register number << 6)
    reserved1: 4
    completer_id: 16


class CompletionDw1(data.Struct):
    """Second DW of a completion header (section 2.2.9)."""
    byte_count: 12
    bcm: 1
    status: 3
    completer_id: 16


class CompletionDw2(data.Struct):
    """Third DW of a completion header."""
    lower_address: 7
    reserved: 1
    tag: 8
    requester_id: 16
