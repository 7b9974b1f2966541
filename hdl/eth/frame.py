"""IEEE 802.3 frame format constants and the byte-wide streams inside the MAC.

On the wire a frame is (Clause 3.1.1, Figure 3-1; Clause 4.2.5)::

    preamble (7 x 0x55) | SFD (0xD5) | destination .. payload/pad | FCS (4) | IFG (>= 12)

Byte values are as transmitted least significant bit first (Clause 3.3):
the preamble pattern 10101010 is the octet 0x55, the SFD 10101011 is 0xD5.

Inside the MAC, frames move one byte a beat (``OctetBeat``: ``data``,
``last``), from the destination address to the end of the payload; the FCS
and everything before it belong to the MAC only. The receive direction adds
``abort`` on a frame's last beat (``RxOctetBeat``): the frame turned out bad
after some of it was already handed on, and must be taken back.
"""
from amaranth.hdl import unsigned
from amaranth.lib import data, stream

__all__ = [
    "OCTET_BITS", "PREAMBLE_OCTET", "PREAMBLE_LENGTH", "SFD_OCTET",
    "HEADER_LENGTH", "FCS_LENGTH", "MIN_FRAME_LENGTH", "MIN_DATA_LENGTH",
    "MAX_FRAME_LENGTH", "IFG_OCTETS",
    "OctetBeat", "OctetStreamSignature", "RxOctetBeat", "RxOctetStreamSignature",
]

OCTET_BITS = 8

#: Clause 4.2.5: the preamble is seven octets of 10101010 (0x55 sent LSB first).
PREAMBLE_OCTET = 0x55
PREAMBLE_LENGTH = 7
#: Clause 3.2.2: Start Frame Delimiter 10101011 (0xD5 sent LSB first).
SFD_OCTET = 0xD5

#: Clause 3.2.3-3.2.6: destination (6), source (6), length/type (2).
HEADER_LENGTH = 14
#: Clause 3.2.9: the Frame Check Sequence, a 32-bit CRC.
FCS_LENGTH = 4
#: Clause 4.4.2 minFrameSize: 512 bits, destination through FCS.
MIN_FRAME_LENGTH = 64
#: Clause 3.2.8 / 4.2.3.3: shorter frames are padded to this, before the FCS.
MIN_DATA_LENGTH = MIN_FRAME_LENGTH - FCS_LENGTH
#: Clause 3.2.7 / 3.5: maxUntaggedFrameSize 1518 with FCS; a Q-tag adds 4. The
#: core's default ``max_frame`` (MTU 1500 + header + one VLAN tag, no FCS) is
#: this same 1518.
MAX_FRAME_LENGTH = 1518
#: Clause 4.4.2 interFrameGap: 96 bit times, 12 octets at 1 Gb/s.
IFG_OCTETS = 12

OctetBeat = data.StructLayout({
    "data": unsigned(OCTET_BITS),
    "last": unsigned(1),
})
OctetStreamSignature = stream.Signature(OctetBeat)

RxOctetBeat = data.StructLayout({
    "data": unsigned(OCTET_BITS),
    "last": unsigned(1),
    "abort": unsigned(1),       # with last: the frame is bad, take it back
})
RxOctetStreamSignature = stream.Signature(RxOctetBeat)
