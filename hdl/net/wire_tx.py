"""Send the TX frame buffer's frames to the wire, whole and in order."""
from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..lib.bytes import ByteStreamSignature
from .packet_fifo import Segment

__all__ = ["FrameSender"]


class FrameSender(wiring.Component):
    """Reads each head frame of a PacketFifo as one segment and pops it.

    Ports:
        head_valid, head_length: In, the buffer's head frame.
        seg_req: Out(stream.Signature(Segment)), to the buffer.
        seg:     In(ByteStreamSignature), the frame's bytes from the buffer.
        pop:     Out(1), pulse: the frame has gone.
        o:       Out(ByteStreamSignature), frames to the wire (dense: the
                 segment starts at offset 0).
    """
    head_valid: In(1)
    head_length: In(16)
    seg_req: Out(stream.Signature(Segment))
    seg: In(ByteStreamSignature)
    pop: Out(1)
    o: Out(ByteStreamSignature)

    def elaborate(self, platform):
        m = Module()
        sending = Signal()
        m.d.comb += [
            self.seg_req.valid.eq(self.head_valid & ~sending),
            self.seg_req.payload.offset.eq(0),
            self.seg_req.payload.length.eq(self.head_length),
        ]
        with m.If(self.seg_req.valid & self.seg_req.ready):
            m.d.sync += sending.eq(1)
        wiring.connect(m, wiring.flipped(self.seg), wiring.flipped(self.o))
        with m.If(self.o.valid & self.o.ready & self.o.payload.last):
            m.d.comb += self.pop.eq(1)
            m.d.sync += sending.eq(0)
        return m
