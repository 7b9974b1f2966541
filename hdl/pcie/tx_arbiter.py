"""Transmit arbiter: merge TLP sources into one stream, a whole TLP at a time."""
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .tlp import DwordStreamSignature

__all__ = ["TxArbiter"]


class TxArbiter(wiring.Component):
    """Round-robin between ``n`` sources; a grant holds from a TLP's first DW to its last.

    Ports:
        i[n]: In(DwordStreamSignature), one per source (completer, DMA, MSI-X).
        o:    Out(DwordStreamSignature), to the packer.
    """

    def __init__(self, n):
        self.n = n
        super().__init__({
            "i": In(DwordStreamSignature).array(n),
            "o": Out(DwordStreamSignature),
        })

    def elaborate(self, platform):
        m = Module()
        grant = Signal(range(self.n))
        locked = Signal()            # inside a TLP of the granted source, or offering it
        current = Signal(range(self.n))
        # Pick the next requester after the last granted one (round robin).
        with m.If(locked):
            m.d.comb += current.eq(grant)
        with m.Else():
            m.d.comb += current.eq(grant)
            for last in range(self.n):
                with m.If(grant == last):
                    # the first valid source after `last`, wrapping round
                    for offset in reversed(range(1, self.n + 1)):
                        candidate = (last + offset) % self.n
                        with m.If(self.i[candidate].valid):
                            m.d.comb += current.eq(candidate)

        for index in range(self.n):
            with m.If(current == index):
                m.d.comb += [
                    self.o.valid.eq(self.i[index].valid),
                    self.o.payload.eq(self.i[index].payload),
                    self.i[index].ready.eq(self.o.ready),
                ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += [
                grant.eq(current),
                locked.eq(~self.o.payload.last),
            ]
        with m.Elif(self.o.valid):
            # offered but not taken: keep offering the same DW (stream rule)
            m.d.sync += [grant.eq(current), locked.eq(1)]
        return m
