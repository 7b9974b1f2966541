"""BytePacker: squeeze a byte stream with holes into a dense one (ready, tested).

Input beats carry a contiguous run of valid bytes (``keep``) that may start
at any lane, or no byte at all (``keep == 0``). The output carries the same
bytes in the same order, packed: every beat has ``keep == 0b1111`` except the
last beat of a packet, whose ``keep`` is low-contiguous (0b0001, 0b0011,
0b0111 or 0b1111).

Uses in the core: the DMA reader drops the ``addr & 3`` leading bytes of a
read's first DW; the DMA writer prepends ``addr & 3`` pad bytes so the data
lands on its address lanes; the TX datapath concatenates descriptor buffers
of any byte length into one frame.
"""
from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .bytes import BYTES_PER_BEAT, ByteStreamSignature

__all__ = ["BytePacker", "keep_mask"]

_BYTE = 8
# Two beats of bytes: up to one beat waiting plus one beat arriving.
_BUFFER_BYTES = 2 * BYTES_PER_BEAT


def keep_mask(first_lane, last_lane):
    """The keep (or byte enable) value of lanes ``first_lane`` to ``last_lane``
    inclusive, as a Python int (for Case tables)."""
    return ((1 << (last_lane + 1)) - 1) & ~((1 << first_lane) - 1)


class BytePacker(wiring.Component):
    """Ports:
        i: In(ByteStreamSignature), beats with a contiguous run of valid bytes
           at any lane (``keep`` may be 0, on any beat, the last one included).
        o: Out(ByteStreamSignature), the same bytes packed from lane 0.

    Packets are delimited by ``last`` on the input. A packet must carry at
    least one byte in total; an empty packet (every beat ``keep == 0``) is
    dropped without any output beat. A ``keep`` that is not contiguous is a
    client error (the bytes come out in an unspecified order).

    Throughput: one beat a cycle in and out when nothing stalls. A full beat
    leaves only once a byte after it (or the packet's end) has arrived, so the
    packer knows whether it is the last one: latency two cycles. The tail of a
    packet leaves in the cycle after its ``last`` beat came in (two cycles when
    more than four bytes remain); the next packet's first beat may come in
    while the tail goes out.

    ``i.ready`` depends combinationally on ``o.ready`` (never the other way
    round); ``o.valid`` and ``o.payload`` come from registers.
    """
    i: In(ByteStreamSignature)
    o: Out(ByteStreamSignature)

    def elaborate(self, platform):
        m = Module()
        buffer = Signal(_BYTE * _BUFFER_BYTES)
        count = Signal(range(_BUFFER_BYTES + 1))   # valid bytes in `buffer`, from byte 0
        tail = Signal()                            # the packet's last beat is in

        # --- output: straight from the registers ----------------------------
        tail_out = tail & (count <= BYTES_PER_BEAT)
        m.d.comb += [
            self.o.valid.eq((count > BYTES_PER_BEAT) | (tail & (count != 0))),
            self.o.payload.data.eq(buffer[:_BYTE * BYTES_PER_BEAT]),
            self.o.payload.last.eq(tail_out),
        ]
        with m.Switch(count):
            for n in range(1, BYTES_PER_BEAT):
                with m.Case(n):
                    m.d.comb += self.o.payload.keep.eq(keep_mask(0, n - 1))
            with m.Default():
                m.d.comb += self.o.payload.keep.eq(keep_mask(0, BYTES_PER_BEAT - 1))
        out_taken = self.o.valid & self.o.ready
        out_beat = out_taken & ~tail_out            # a full, non-last beat left
        out_last = out_taken & tail_out             # the packet's tail left

        # --- input: compact the run of bytes to lane 0 ----------------------
        keep = self.i.payload.keep
        data = self.i.payload.data
        compact = Signal(_BYTE * BYTES_PER_BEAT)
        n_in = Signal(range(BYTES_PER_BEAT + 1))
        with m.Switch(keep):
            for first in range(BYTES_PER_BEAT):
                for last in range(first, BYTES_PER_BEAT):
                    with m.Case(keep_mask(first, last)):
                        m.d.comb += [
                            compact.eq(data[_BYTE * first:]),
                            n_in.eq(last - first + 1),
                        ]
            # keep == 0 (and any non-contiguous keep) leaves n_in at 0

        # After this cycle's output, at most one beat is left: room for a whole
        # beat. While a tail waits, the next packet waits for it to leave.
        m.d.comb += self.i.ready.eq(
            out_last | (~tail & ((count <= BYTES_PER_BEAT) | self.o.ready)))
        in_taken = self.i.valid & self.i.ready

        # --- update ----------------------------------------------------------
        kept = Signal.like(buffer)                  # what stays after the output
        kept_count = Signal.like(count)
        m.d.comb += [kept.eq(buffer), kept_count.eq(count)]
        with m.If(out_beat):
            m.d.comb += [
                kept.eq(buffer[_BYTE * BYTES_PER_BEAT:]),
                kept_count.eq(count - BYTES_PER_BEAT),
            ]
        with m.If(out_last):
            m.d.comb += kept_count.eq(0)

        merged = Signal.like(buffer)
        with m.Switch(kept_count):
            for n in range(BYTES_PER_BEAT + 1):     # kept_count <= 4 whenever in_taken
                with m.Case(n):
                    m.d.comb += merged.eq(Cat(kept[:_BYTE * n], compact))
        new_count = kept_count + n_in

        with m.If(in_taken):
            m.d.sync += [buffer.eq(merged), count.eq(new_count)]
            # an empty packet leaves nothing to flush: dropped
            m.d.sync += tail.eq(self.i.payload.last & (new_count != 0))
        with m.Else():
            m.d.sync += [buffer.eq(kept), count.eq(kept_count)]
            with m.If(out_last):
                m.d.sync += tail.eq(0)
        return m
