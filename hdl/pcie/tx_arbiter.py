"""Transmit arbiter: merge TLP sources into one stream, a whole TLP at a time."""
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .tlp import DwordStreamSignature

__all__ = ["TxArbiter"]


class TxArbiter(wiring.Component):
    """Round-robin between ``n`` sources; a grant holds from a TLP's first DW to its last.

    Sources listed in ``urgent`` go first: at a TLP boundary, a waiting urgent
    source wins over the others (round robin among the urgent ones). The core
    makes its DMA read requests urgent: a read's data is a round trip away, so
    a 4-DW MRd should not wait behind a train of 128-byte writes; it cannot
    starve them, since reads in flight are bounded by the readers' tags.

    Ports:
        i[n]: In(DwordStreamSignature), one per source (completer, DMA, MSI-X).
        o:    Out(DwordStreamSignature), to the packer.
    """

    def __init__(self, n, *, urgent=()):
        if not all(0 <= index < n for index in urgent):
            raise ValueError(f"urgent sources {urgent} are not all among 0..{n - 1}")
        self.n = n
        self.urgent = frozenset(urgent)
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
            # the first valid source after the last grant, wrapping round;
            # then the same among the urgent ones, which overrides (the
            # later assignment wins)
            for among in (range(self.n), sorted(self.urgent)):
                for last in range(self.n):
                    with m.If(grant == last):
                        for offset in reversed(range(1, self.n + 1)):
                            candidate = (last + offset) % self.n
                            if candidate in among:
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
