"""Conversion between the TLP boundary stream and the core's DW stream."""
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .tlp import DW_PER_BEAT, DwordStreamSignature, TlpStreamSignature

__all__ = ["DwordUnpacker", "DwordPacker"]


class DwordUnpacker(wiring.Component):
    """Split TLP beats into DWs, one a cycle.

    Ports:
        i: In(TlpStreamSignature()), beats from the link.
        o: Out(DwordStreamSignature), the same TLPs one DW a transfer.
    """
    i: In(TlpStreamSignature())
    o: Out(DwordStreamSignature)

    def elaborate(self, platform):
        m = Module()
        lane = Signal(range(DW_PER_BEAT))
        lanes = [self.i.payload.data[32 * n:32 * (n + 1)] for n in range(DW_PER_BEAT)]
        keep = self.i.payload.keep
        # the last DW of this beat: no kept lane above this one
        beat_done = Signal()
        m.d.comb += beat_done.eq((keep >> (lane + 1)) == 0)

        with m.Switch(lane):
            for n in range(DW_PER_BEAT):
                with m.Case(n):
                    m.d.comb += self.o.payload.data.eq(lanes[n])
        m.d.comb += [
            self.o.valid.eq(self.i.valid),
            self.o.payload.first.eq(self.i.payload.first & (lane == 0)),
            self.o.payload.last.eq(self.i.payload.last & beat_done),
            self.i.ready.eq(self.o.ready & beat_done),
        ]
        with m.If(self.o.valid & self.o.ready):
            with m.If(beat_done):
                m.d.sync += lane.eq(0)
            with m.Else():
                m.d.sync += lane.eq(lane + 1)
        return m


class DwordPacker(wiring.Component):
    """Gather DWs into TLP beats; a TLP's last beat keeps only its DWs.

    Ports:
        i: In(DwordStreamSignature), TLPs one DW a transfer.
        o: Out(TlpStreamSignature()), beats to the link (registered).
    """
    i: In(DwordStreamSignature)
    o: Out(TlpStreamSignature())

    def elaborate(self, platform):
        m = Module()
        held = [Signal(32, name=f"held{n}") for n in range(DW_PER_BEAT - 1)]
        held_first = Signal()
        count = Signal(range(DW_PER_BEAT))      # DWs held for the beat being built

        can_load = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(can_load)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.If(self.i.valid & self.i.ready):
            with m.If((count == DW_PER_BEAT - 1) | self.i.payload.last):
                # this DW closes the beat
                for n in range(DW_PER_BEAT):
                    lane = self.o.payload.data[32 * n:32 * (n + 1)]
                    if n < DW_PER_BEAT - 1:
                        with m.If(count > n):
                            m.d.sync += lane.eq(held[n])
                        with m.Elif(count == n):
                            m.d.sync += lane.eq(self.i.payload.data)
                        with m.Else():
                            m.d.sync += lane.eq(0)
                    else:
                        m.d.sync += lane.eq(self.i.payload.data)
                m.d.sync += [
                    self.o.payload.keep.eq((1 << (count + 1)) - 1),
                    self.o.payload.first.eq(Mux(count == 0, self.i.payload.first, held_first)),
                    self.o.payload.last.eq(self.i.payload.last),
                    self.o.valid.eq(1),
                    count.eq(0),
                ]
            with m.Else():
                for n in range(DW_PER_BEAT - 1):
                    with m.If(count == n):
                        m.d.sync += held[n].eq(self.i.payload.data)
                with m.If(count == 0):
                    m.d.sync += held_first.eq(self.i.payload.first)
                m.d.sync += count.eq(count + 1)
        return m

