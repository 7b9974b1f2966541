"""Store-and-forward frame buffer between the wire and the ring engine.

Frames are written whole and only then become visible: a frame that turns out
bad is taken back, never half-delivered. The same block buffers both
directions; ``backpressure`` picks what happens when the buffer is full:

- TX (ring engine -> wire): ``backpressure=True``; the writer waits for room.
- RX (wire -> ring engine): ``backpressure=False``; the wire is never stalled,
  a frame that does not fit is dropped (and reported) instead.

In RAM, frames sit back to back, DW-aligned, wrapping round a ring of
``depth`` DWs. Reading is by segment: any byte range of the head frame, so
that a frame can be spread over descriptor buffers of any length.
"""
import enum

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..lib.block_ram import BLOCK_RAM_ATTRS, BlockRamReadPort
from ..lib.bytes import BYTES_PER_BEAT, ByteStreamSignature

__all__ = ["DropReason", "PacketFifo", "Segment", "TAG_BITS"]

FRAMES_IN_FLIGHT = 16       # committed frames the buffer can hold at once
_LENGTH_BITS = 16


class DropReason(enum.IntEnum):
    """Why a written frame was taken back (one-hot on ``dropped``)."""
    TOO_SHORT = 0
    TOO_LONG = 1
    NO_SPACE = 2
    ABORTED = 3


Segment = data.StructLayout({
    "offset": unsigned(_LENGTH_BITS),     # first byte, from the frame's start
    "length": unsigned(_LENGTH_BITS),     # bytes, at least 1
})

TAG_BITS = 8               # a word kept with each frame (RX: the queue pair it is steered to)

_Head = data.StructLayout({
    "start": unsigned(_LENGTH_BITS),      # DW index in the ring (wraps)
    "length": unsigned(_LENGTH_BITS),     # bytes
    "tag": unsigned(TAG_BITS),
})


def _dwords(nbytes):
    return (nbytes + BYTES_PER_BEAT - 1) >> 2


class PacketFifo(wiring.Component):
    """Ports:
        w:         In(ByteStreamSignature), dense frames (keep 0b1111 but on last).
        w_abort:   In(1), sampled with a frame's last beat: take the frame back.
        w_tag:     In(8), sampled with a frame's last beat: kept with the frame.
        dropped:   Out(len(DropReason)), one-hot pulse: a frame was taken back, why.
        committed: Out(1), pulse: a frame became readable.
        length:    Out(16), with ``committed`` or ``dropped``: the frame's bytes so far.
        space:     Out(16), bytes the buffer can take now (registered; saturates).
        head_valid:  Out(1), a frame is readable.
        head_length: Out(16), its length in bytes.
        head_tag:  Out(8), its tag.
        seg_req:   In(stream.Signature(Segment)), read a byte range of the head frame.
        seg:       Out(ByteStreamSignature), its bytes at their own lanes (frame
                   offset mod 4): keep marks them; last ends the segment.
        pop:       In(1), pulse: the head frame is done with.

    Frames shorter than ``min_length`` or longer than ``max_length`` bytes
    are dropped. ``depth`` (DWs, a power of two) must hold a longest frame.
    """

    def __init__(self, *, depth, min_length, max_length, backpressure):
        if depth & (depth - 1) or depth >= 1 << (_LENGTH_BITS - 1):
            raise ValueError(f"depth {depth}: a power of two below {1 << (_LENGTH_BITS - 1)}")
        if _dwords(max_length) > depth:
            raise ValueError(f"a {max_length}-byte frame does not fit {depth} DWs")
        self.depth = depth
        self.min_length = min_length
        self.max_length = max_length
        self.backpressure = backpressure
        super().__init__({
            "w": In(ByteStreamSignature),
            "w_abort": In(1),
            "w_tag": In(TAG_BITS),
            "dropped": Out(len(DropReason)),
            "committed": Out(1),
            "length": Out(_LENGTH_BITS),
            "space": Out(_LENGTH_BITS),
            "head_valid": Out(1),
            "head_length": Out(_LENGTH_BITS),
            "head_tag": Out(TAG_BITS),
            "seg_req": In(stream.Signature(Segment)),
            "seg": Out(ByteStreamSignature),
            "pop": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        depth = self.depth
        ptr_bits = depth.bit_length()                 # one more than the address: full vs empty
        # A read in the cycle of a write to the same DW is undefined
        # (`BLOCK_RAM_ATTRS`) and never used: segments are read from whole
        # frames only, and the writer writes past them.
        m.submodules.ram = ram = Memory(shape=32, depth=depth, init=[], attrs=BLOCK_RAM_ATTRS)
        wr = ram.write_port()
        rd = BlockRamReadPort(m, ram)
        m.submodules.heads = heads = SyncFIFOBuffered(width=_Head.size, depth=FRAMES_IN_FLIGHT)

        # --- write side -----------------------------------------------------
        wr_ptr = Signal(ptr_bits)        # next DW to write
        frame_start = Signal(ptr_bits)   # first DW of the frame being written
        tail = Signal(ptr_bits)          # first DW still in use (head frame's start)
        count = Signal(_LENGTH_BITS + 1)  # bytes of the frame so far
        discarding = Signal()            # rest of this frame goes nowhere
        reason = Signal(len(DropReason))  # one-hot, why it is discarded

        used = Signal(ptr_bits)
        m.d.comb += used.eq(wr_ptr - tail)
        room = used != depth
        free = depth - used
        max_space = (1 << _LENGTH_BITS) - 1
        m.d.sync += self.space.eq(Mux(free > max_space // BYTES_PER_BEAT, max_space,
                                      free * BYTES_PER_BEAT))
        beat_bytes = Signal(range(BYTES_PER_BEAT + 1))
        m.d.comb += beat_bytes.eq(sum(self.w.payload.keep[n] for n in range(BYTES_PER_BEAT)))
        new_count = count + beat_bytes

        if self.backpressure:
            # room for the data and for the frame's entry in `heads`
            m.d.comb += self.w.ready.eq(discarding | (room & heads.w_rdy))
        else:
            m.d.comb += self.w.ready.eq(1)

        def drop(why):
            return [wr_ptr.eq(frame_start), discarding.eq(1), reason.eq(1 << why)]

        head_in = _Head(heads.w_data)
        m.d.comb += [
            wr.addr.eq(wr_ptr[:ptr_bits - 1]),
            wr.data.eq(self.w.payload.data),
            head_in.start.eq(frame_start),
            head_in.length.eq(new_count),
            head_in.tag.eq(self.w_tag),
            self.length.eq(new_count),
        ]
        with m.If(self.w.valid & self.w.ready):
            m.d.sync += count.eq(new_count)
            with m.If(~discarding):
                with m.If(~room):
                    m.d.sync += drop(DropReason.NO_SPACE)
                with m.Elif(new_count > self.max_length):
                    m.d.sync += drop(DropReason.TOO_LONG)
                with m.Elif(beat_bytes != 0):        # an empty last beat only ends the frame
                    m.d.comb += wr.en.eq(1)
                    m.d.sync += wr_ptr.eq(wr_ptr + 1)
            with m.If(self.w.payload.last):
                m.d.sync += [count.eq(0), discarding.eq(0)]
                why = Signal(len(DropReason))
                with m.If(discarding):
                    m.d.comb += why.eq(reason)
                with m.Elif(~room):
                    m.d.comb += why.eq(1 << DropReason.NO_SPACE)
                with m.Elif(new_count > self.max_length):
                    m.d.comb += why.eq(1 << DropReason.TOO_LONG)
                with m.Elif(new_count < self.min_length):
                    m.d.comb += why.eq(1 << DropReason.TOO_SHORT)
                with m.Elif(self.w_abort):
                    m.d.comb += why.eq(1 << DropReason.ABORTED)
                with m.Elif(~heads.w_rdy):
                    m.d.comb += why.eq(1 << DropReason.NO_SPACE)
                with m.If(why != 0):
                    m.d.comb += self.dropped.eq(why)
                    m.d.sync += wr_ptr.eq(frame_start)
                with m.Else():
                    m.d.comb += [heads.w_en.eq(1), self.committed.eq(1)]
                    m.d.sync += frame_start.eq(wr_ptr + (beat_bytes != 0))

        # --- read side ------------------------------------------------------
        head = _Head(heads.r_data)
        m.d.comb += [
            self.head_valid.eq(heads.r_rdy),
            self.head_length.eq(head.length),
            self.head_tag.eq(head.tag),
            heads.r_en.eq(self.pop),
        ]
        with m.If(self.pop & heads.r_rdy):
            m.d.sync += tail.eq(head.start + _dwords(head.length))

        # Segment reader: the RAM's read data is the output payload, held
        # (read enable low) while the consumer stalls.
        ptr = Signal(ptr_bits)           # next DW to present
        end = Signal(ptr_bits)           # last DW of the segment
        first_lane = Signal(2)
        last_lane = Signal(2)
        reading = Signal()
        at_first = Signal()
        out_first = Signal()
        out_last = Signal()
        out_first_lane = Signal(2)
        out_last_lane = Signal(2)
        advance = ~self.seg.valid | self.seg.ready

        req = self.seg_req.payload
        seg_end = Signal(_LENGTH_BITS + 1)
        m.d.comb += [
            seg_end.eq(req.offset + req.length - 1),
            self.seg_req.ready.eq(~reading & heads.r_rdy),
        ]
        with m.If(self.seg_req.valid & self.seg_req.ready):
            m.d.sync += [
                ptr.eq(head.start + (req.offset >> 2)),
                end.eq(head.start + (seg_end >> 2)),
                first_lane.eq(req.offset[:2]),
                last_lane.eq(seg_end[:2]),
                reading.eq(1),
                at_first.eq(1),
            ]

        m.d.comb += [
            rd.addr.eq(ptr[:ptr_bits - 1]),
            rd.en.eq(advance),
        ]
        with m.If(advance):
            m.d.sync += self.seg.valid.eq(reading)
            with m.If(reading):
                m.d.sync += [
                    out_first.eq(at_first),
                    out_last.eq(ptr == end),
                    out_first_lane.eq(first_lane),
                    out_last_lane.eq(last_lane),
                    ptr.eq(ptr + 1),
                    at_first.eq(0),
                ]
                with m.If(ptr == end):
                    m.d.sync += reading.eq(0)

        lanes = Signal(BYTES_PER_BEAT)
        for lane in range(BYTES_PER_BEAT):
            after_first = ~out_first | (out_first_lane <= lane)
            before_last = ~out_last | (out_last_lane >= lane)
            m.d.comb += lanes[lane].eq(after_first & before_last)
        m.d.comb += [
            self.seg.payload.data.eq(rd.data),
            self.seg.payload.keep.eq(lanes),
            self.seg.payload.last.eq(out_last),
        ]
        return m
