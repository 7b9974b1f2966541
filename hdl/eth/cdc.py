"""Event pulses from one clock domain to another, none lost or merged.

Each cycle in which any of the ``width`` pulse bits is set writes the whole
vector into a small `AsyncFIFO` (Gray-coded pointers, two-flop
synchronisers); the destination reads one entry a cycle and replays it as
one cycle of pulses. Unlike a toggle synchroniser, two events close together
stay two events, as long as, over any stretch of time, events arrive no
faster than one per destination cycle on average and never more than
``depth`` ahead. The MAC's events come at most once per frame (at least two
Ethernet cycles apart, 16 ns), slower than a core clock of 62.5 MHz or more.
"""
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.fifo import AsyncFIFO
from amaranth.lib.wiring import In, Out

__all__ = ["PulseCrossing"]

#: Events in flight: a handful covers the synchronisers' latency.
DEFAULT_DEPTH = 8


class PulseCrossing(wiring.Component):
    """Ports:
        i: In(width), pulses in ``i_domain``.
        o: Out(width), the same pulses in ``o_domain``, a few cycles later.
    """

    def __init__(self, width, *, i_domain, o_domain, depth=DEFAULT_DEPTH):
        self.width = width
        self.i_domain = i_domain
        self.o_domain = o_domain
        self.depth = depth
        super().__init__({"i": In(width), "o": Out(width)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = AsyncFIFO(width=self.width, depth=self.depth,
                                             w_domain=self.i_domain, r_domain=self.o_domain)
        m.d.comb += [
            fifo.w_data.eq(self.i),
            fifo.w_en.eq(self.i.any()),
            fifo.r_en.eq(1),
        ]
        with m.If(fifo.r_rdy):
            m.d.comb += self.o.eq(fifo.r_data)
        return m
