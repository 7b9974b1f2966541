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

How, cheaply on a LUT4 fabric: the packer holds up to two beats of bytes,
packed from byte 0, in two registers: ``head`` (bytes 0-3, which is
``o.payload.data``) and ``spill`` (bytes 4-7). Byte ``n`` of the buffer always
sits on lane ``n % 4``. An arriving run that starts at lane ``first`` continues
the buffer at byte ``kept`` (what stays after this cycle's output), so all its
bytes move up by the same ``(kept - first) % 4`` lanes: one byte rotation of
the input beat (two stages of 2:1 multiplexers) puts every byte on its final
lane. Each ``spill`` byte then loads from its lane of the rotated beat, and
each ``head`` byte either from its lane of the rotated beat or, when a full
beat leaves, from the ``spill`` byte above it; a per-byte enable says whether
it loads at all. A beat comes in only while ``kept <= 4``, so no new byte ever
has to move between the two registers. There is no compaction of the run to
lane 0 and no multiplexer over the fill level.
"""
from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from .bytes import BYTES_PER_BEAT, ByteStreamSignature

__all__ = ["BytePacker", "keep_mask"]

_BYTE = 8
_LANE_BITS = exact_log2(BYTES_PER_BEAT)
# Two beats of bytes: up to one beat waiting plus one beat arriving.
_BUFFER_BYTES = 2 * BYTES_PER_BEAT


def keep_mask(first_lane, last_lane):
    """The keep (or byte enable) value of lanes ``first_lane`` to ``last_lane``
    inclusive, as a Python int (for Case tables)."""
    return ((1 << (last_lane + 1)) - 1) & ~((1 << first_lane) - 1)


def _byte(value, lane):
    """Byte ``lane`` of a beat-wide value."""
    return value.word_select(lane, _BYTE)


def _first_lane(keep):
    """The lane of the first byte of a contiguous, non-zero ``keep``, from
    ``keep[0:3]`` only (a run that misses lanes 0 to 2 is lane 3 alone)."""
    assert BYTES_PER_BEAT == 4, "written for four lanes"
    return Cat(
        ~keep[0] & (keep[1] | ~keep[2]),            # bit 0: the run starts at lane 1 or 3
        ~keep[0] & ~keep[1],                        # bit 1: the run starts at lane 2 or 3
    )


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
    round); ``o.valid`` and ``o.payload`` come from registers (``data`` is a
    register; ``keep``, ``last`` and ``valid`` are decoded from the fill-level
    registers alone). Bytes of ``data`` outside ``keep`` are junk, and hold
    still while ``o.valid`` waits for ``o.ready``.
    """
    i: In(ByteStreamSignature)
    o: Out(ByteStreamSignature)

    def elaborate(self, platform):
        m = Module()
        head = Signal(_BYTE * BYTES_PER_BEAT)       # buffer bytes 0-3: the output
        spill = Signal(_BYTE * BYTES_PER_BEAT)      # buffer bytes 4-7
        count = Signal(range(_BUFFER_BYTES + 1))   # valid bytes in the buffer, from byte 0
        fill_lane = Signal(_LANE_BITS)              # lane the next byte in lands on
        tail = Signal()                             # the packet's last beat is in

        head_keep = Signal(BYTES_PER_BEAT)          # head byte n is valid
        spill_keep = Signal(BYTES_PER_BEAT)         # spill byte n is valid
        for lane in range(BYTES_PER_BEAT):
            m.d.comb += [
                head_keep[lane].eq(count > lane),
                spill_keep[lane].eq(count > BYTES_PER_BEAT + lane),
            ]

        # --- output: straight from the registers ----------------------------
        tail_out = tail & ~spill_keep[0]            # count <= 4: the tail is in head
        m.d.comb += [
            self.o.valid.eq(spill_keep[0] | (tail & head_keep[0])),
            self.o.payload.data.eq(head),
            self.o.payload.keep.eq(head_keep),
            self.o.payload.last.eq(tail_out),
        ]
        out_taken = self.o.valid & self.o.ready
        out_beat = out_taken & ~tail_out            # a full, non-last beat left
        out_last = out_taken & tail_out             # the packet's tail left

        # After this cycle's output, at most one beat is left: room for a whole
        # beat. While a tail waits, the next packet waits for it to leave.
        m.d.comb += self.i.ready.eq(
            out_last | (~tail & (~spill_keep[0] | self.o.ready)))
        in_taken = self.i.valid & self.i.ready

        kept_count = Signal.like(count)             # bytes that stay after the output
        m.d.comb += kept_count.eq(count)
        with m.If(out_beat):
            m.d.comb += kept_count.eq(count - BYTES_PER_BEAT)
        with m.If(out_last):
            m.d.comb += kept_count.eq(0)

        # --- input: rotate each byte onto the lane it will occupy -----------
        keep = self.i.payload.keep
        data = self.i.payload.data
        n_in = Signal(range(BYTES_PER_BEAT + 1))    # bytes in the run (0 if keep == 0)
        m.d.comb += n_in.eq(sum(keep[lane] for lane in range(BYTES_PER_BEAT)))
        first = Signal(_LANE_BITS)                  # lane of the run's first byte
        m.d.comb += first.eq(_first_lane(keep))
        # A beat comes in with kept_count equal to count, to count - 4 (a full
        # beat left) or to 0 (a tail left: the only way in while `tail` is
        # set), so kept_count % 4 is the register fill_lane, and the rotation
        # does not depend on o.ready.
        rotation = Signal(_LANE_BITS)               # lanes every input byte moves up
        m.d.comb += rotation.eq(fill_lane - first)  # mod 4
        rotated = data
        for bit in range(_LANE_BITS):               # by 1 lane, then by 2 lanes
            stage = Signal.like(data, name=f"rotated_{bit}")
            m.d.comb += stage.eq(
                Mux(rotation[bit], rotated.rotate_left(_BYTE << bit), rotated))
            rotated = stage

        # --- update the bytes -----------------------------------------------
        # A beat comes in only when kept_count <= 4: its bytes for buffer bytes
        # 4-7 land in `spill`, which holds nothing else then (emptied into
        # `head` if a full beat left). Bytes past the new fill level are junk.
        with m.If(in_taken):
            m.d.sync += spill.eq(rotated)
        for lane in range(BYTES_PER_BEAT):
            # A full beat left: every head byte loads, those below kept_count
            # (= count - 4) from the spill byte above them. Otherwise a beat
            # came in, and the head bytes at or past kept_count (= count, or 0
            # after a tail) load the rotated input: the ones the run reaches
            # are valid.
            load = out_beat | (in_taken & (tail | ~head_keep[lane]))
            with m.If(load):
                m.d.sync += _byte(head, lane).eq(
                    Mux(spill_keep[lane], _byte(spill, lane), _byte(rotated, lane)))

        # --- update the fill level ------------------------------------------
        next_count = Signal.like(count)
        next_tail = Signal()
        m.d.comb += [next_count.eq(kept_count), next_tail.eq(tail & ~out_last)]
        with m.If(in_taken):
            new_count = kept_count + n_in
            m.d.comb += [
                next_count.eq(new_count),
                # an empty packet leaves nothing to flush: dropped
                next_tail.eq(self.i.payload.last & (new_count != 0)),
            ]
        m.d.sync += [
            count.eq(next_count),
            tail.eq(next_tail),
            # the packet after a tail starts on lane 0
            fill_lane.eq(Mux(next_tail, 0, next_count[:_LANE_BITS])),
        ]
        return m
