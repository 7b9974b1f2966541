"""The DMA requester's client interfaces (bus-master reads and writes of host memory).

A client asks for ``length`` bytes at byte address ``addr`` (any alignment;
``length`` from 1 to ``MAX_DMA_LENGTH``). Data moves as DWs *source-aligned*:
the transfer's first byte is in bits 7:0 of its first DW, and a transfer of
``length`` bytes is exactly ``ceil(length / 4)`` DWs, the last one flagged.

Reads: requests may be queued back to back; data comes back in request
order. A read that failed (error completion, completion timeout, poisoned
data) still delivers all its DWs, with ``error`` set on its last one, so that
no client ever waits forever.

Writes: each request is followed (or preceded) by its DWs on ``data``;
``busy`` stays high until every accepted write has left as TLPs, so a client
that must order a later message (an MSI-X) after its writes waits for it.
"""
from amaranth.hdl import unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

MAX_DMA_LENGTH = (1 << 16) - 1

DmaRequest = data.StructLayout({
    "addr": unsigned(64),
    "length": unsigned(16),
})

DmaData = data.StructLayout({
    "data": unsigned(32),
    "last": unsigned(1),
    "error": unsigned(1),      # reads only: the transfer failed
})


class DmaReadSignature(wiring.Signature):
    """Seen from the client (Out: what the client drives)."""
    def __init__(self):
        super().__init__({
            "req": Out(stream.Signature(DmaRequest)),
            "data": In(stream.Signature(DmaData)),
        })


class DmaWriteSignature(wiring.Signature):
    """Seen from the client (Out: what the client drives)."""
    def __init__(self):
        super().__init__({
            "req": Out(stream.Signature(DmaRequest)),
            "data": Out(stream.Signature(DmaData)),
            "busy": In(1),
        })
