"""The wire-side frame streams: Ethernet frames (destination MAC to the end
of the payload, no preamble, no FCS) as dense byte streams.

Every beat but a frame's last carries four bytes (``keep == 0b1111``); the
last beat keeps its ``n`` bytes in the low lanes (``keep == (1 << n) - 1``).
"""
from ..lib.bytes import ByteBeat, ByteStreamSignature

FrameBeat = ByteBeat
FrameStreamSignature = ByteStreamSignature
