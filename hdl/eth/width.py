"""Width conversion between the core's 32-bit beats and the MAC's octets.

The core's frame streams carry four octets a beat (`ByteBeat`, dense: every
beat but a frame's last has ``keep = 0b1111``, the last keeps its ``n``
octets in the low lanes). The MAC moves one octet a cycle. Both converters
sit in the Ethernet clock domains, on the MAC's side of the clock-domain
crossing: there a beat is needed only every fourth cycle, so the crossing
FIFOs carry whole beats and the core reads or writes one a core cycle.
"""
from amaranth.hdl import Cat, Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..lib.bytes import BYTES_PER_BEAT, ByteBeat, ByteStreamSignature
from .frame import OCTET_BITS, OctetStreamSignature, RxOctetStreamSignature

__all__ = ["RxBeat", "RxBeatStreamSignature", "BeatsToOctets", "OctetsToBeats"]

#: A received beat: a `ByteBeat` and, with ``last``, the MAC's abort flag.
RxBeat = data.StructLayout({
    "data": unsigned(OCTET_BITS * BYTES_PER_BEAT),
    "keep": unsigned(BYTES_PER_BEAT),
    "last": unsigned(1),
    "abort": unsigned(1),
})
RxBeatStreamSignature = stream.Signature(RxBeat)


class BeatsToOctets(wiring.Component):
    """Splits dense 32-bit beats into octets, one a cycle, without bubbles.

    Ports (all in ``sync``):
        i: In(ByteStreamSignature), dense frames (keep 0b1111 but on a frame's
           last beat, whose ``n`` >= 1 octets are in the low lanes).
        o: Out(OctetStreamSignature), the same frames an octet a beat.
    """
    i: In(ByteStreamSignature)
    o: Out(OctetStreamSignature)

    def elaborate(self, platform):
        m = Module()
        held = Signal(ByteBeat)
        held_valid = Signal()
        lane = Signal(range(BYTES_PER_BEAT))
        # the held beat's last octet: lane 3, or the next lane is not kept
        at_end = (lane == BYTES_PER_BEAT - 1) | ~held.keep.bit_select(lane + 1, 1)

        m.d.comb += [
            self.o.valid.eq(held_valid),
            self.o.payload.data.eq(held.data.word_select(lane, OCTET_BITS)),
            self.o.payload.last.eq(held.last & at_end),
            self.i.ready.eq(~held_valid | (self.o.ready & at_end)),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += lane.eq(lane + 1)
            with m.If(at_end):
                m.d.sync += [held_valid.eq(0), lane.eq(0)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [held.eq(self.i.payload), held_valid.eq(1), lane.eq(0)]
        return m


class OctetsToBeats(wiring.Component):
    """Gathers octets into dense 32-bit beats; a frame's last octet closes its beat.

    Ports (all in ``sync``):
        i: In(RxOctetStreamSignature), frames an octet a beat, ``abort`` with ``last``.
        o: Out(RxBeatStreamSignature), dense beats, registered; ``abort`` with ``last``.

    Takes an octet a cycle while ``o`` is taken as it comes.
    """
    i: In(RxOctetStreamSignature)
    o: Out(RxBeatStreamSignature)

    def elaborate(self, platform):
        m = Module()
        gathered = Signal(OCTET_BITS * (BYTES_PER_BEAT - 1))   # lanes 0..2 of the beat
        lane = Signal(range(BYTES_PER_BEAT))

        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            octet = self.i.payload.data
            with m.If(self.i.payload.last | (lane == BYTES_PER_BEAT - 1)):
                beat = Signal(OCTET_BITS * BYTES_PER_BEAT)
                m.d.comb += beat.eq(gathered)
                m.d.comb += beat.word_select(lane, OCTET_BITS).eq(octet)
                m.d.sync += [
                    self.o.valid.eq(1),
                    self.o.payload.data.eq(beat),
                    self.o.payload.keep.eq(Cat(*(lane >= n for n in range(BYTES_PER_BEAT)))),
                    self.o.payload.last.eq(self.i.payload.last),
                    self.o.payload.abort.eq(self.i.payload.last & self.i.payload.abort),
                    lane.eq(0),
                ]
            with m.Else():
                m.d.sync += [
                    gathered.word_select(lane, OCTET_BITS).eq(octet),
                    lane.eq(lane + 1),
                ]
        return m
