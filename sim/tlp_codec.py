"""Packed TLP bytes <-> the core's DW and beat streams (see hdl/pcie/tlp.py).

Header DWs travel as the spec's big-endian values, payload DWs as
little-endian values (byte 0 in bits 7:0). No cocotb or Amaranth import.
"""
import struct

from hdl import spec

__all__ = ["header_dwords", "tlp_to_dwords", "dwords_to_tlp", "tlp_to_beats", "beats_to_tlp"]


def header_dwords(first_dw):
    """3 or 4, from the Fmt field of the first DW."""
    fmt = first_dw >> 29
    return 4 if fmt in (spec.TlpFmt.DW4_NODATA, spec.TlpFmt.DW4_DATA) else 3


def tlp_to_dwords(packed):
    packed = bytes(packed)
    if len(packed) % 4:
        raise ValueError(f"TLP of {len(packed)} bytes is not whole DWs")
    first = struct.unpack_from(">I", packed, 0)[0]
    n_header = header_dwords(first)
    dws = []
    for index in range(len(packed) // 4):
        order = ">I" if index < n_header else "<I"
        dws.append(struct.unpack_from(order, packed, 4 * index)[0])
    return dws


def dwords_to_tlp(dws):
    n_header = header_dwords(dws[0])
    return b"".join(struct.pack(">I" if index < n_header else "<I", dw)
                    for index, dw in enumerate(dws))


def tlp_to_beats(packed, dw_per_beat=2):
    """[(data, keep, first, last)] for one TLP."""
    dws = tlp_to_dwords(packed)
    beats = []
    for start in range(0, len(dws), dw_per_beat):
        chunk = dws[start:start + dw_per_beat]
        data = sum(dw << (32 * n) for n, dw in enumerate(chunk))
        keep = (1 << len(chunk)) - 1
        beats.append((data, keep, start == 0, start + dw_per_beat >= len(dws)))
    return beats


def beats_to_tlp(beats, dw_per_beat=2):
    dws = []
    for data, keep, _first, _last in beats:
        for n in range(dw_per_beat):
            if keep >> n & 1:
                dws.append(data >> (32 * n) & 0xFFFFFFFF)
    return dwords_to_tlp(dws)
