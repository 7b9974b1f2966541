"""The boundary between the data link layer and the physical layer.

A *link packet* is what the physical layer frames on the wire (PCIe Base 4.0
section 4.2.2 framing, 8b/10b): a TLP as the data link layer sends it
(2-byte sequence number, the TLP, 4-byte LCRC; framed STP ... END), or a
6-byte DLLP (DLLP and its CRC-16; framed SDP ... END). Both are a whole
number of 2-byte beats, so a beat is always full.

Transmit: the DLL offers a packet beat by beat; once the first beat is taken
the PHY takes one beat per cycle until ``last`` (a packet is never stalled in
the middle: the DLL must have it all at hand). The PHY may hold ``ready`` low
between packets (ordered sets, SKP insertion, link not in L0).

Receive: the PHY delivers beats with no back-pressure (``ready`` is not
used: the DLL must take one beat per cycle). ``bad`` on the last beat says the
packet was ended by EDB, or a framing, decode or disparity error hit it: the
DLL discards it (and, for a TLP, treats it as bad: section 3.6.3.1).
"""
import enum

from amaranth.hdl import unsigned
from amaranth.lib import data, stream

__all__ = ["LINK_BYTES_PER_BEAT", "PacketKind", "LinkPacketBeat", "LinkPacketSignature",
           "DLLP_BYTES"]

LINK_BYTES_PER_BEAT = 2
#: A DLLP on the wire: 4 bytes and a 16-bit CRC (section 3.5).
DLLP_BYTES = 6


class PacketKind(enum.IntEnum):
    TLP = 0      # STP-framed
    DLLP = 1     # SDP-framed


LinkPacketBeat = data.StructLayout({
    "data": unsigned(8 * LINK_BYTES_PER_BEAT),  # byte 0 (first on the wire) in bits 7:0
    "kind": PacketKind,
    "first": unsigned(1),
    "last": unsigned(1),
    "bad": unsigned(1),                         # receive only, with last
})


def LinkPacketSignature():
    return stream.Signature(LinkPacketBeat)
