"""Free-running event counters for the MAC's statistics."""
from amaranth.hdl import Module
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["COUNTER_BITS", "EventCounters"]

#: Counters wrap at 2^32, like the core's statistics (`hdl/net/counters.py`).
COUNTER_BITS = 32


class EventCounters(wiring.Component):
    """One wrapping counter per event bit.

    Ports (all in ``sync``):
        events: In(count), pulses; bit ``n`` counts into ``counts[n]``.
        counts: Out(ArrayLayout(32, count)), the counters.
    """

    def __init__(self, count, *, width=COUNTER_BITS):
        self.count = count
        super().__init__({
            "events": In(count),
            "counts": Out(data.ArrayLayout(width, count)),
        })

    def elaborate(self, platform):
        m = Module()
        for index in range(self.count):
            with m.If(self.events[index]):
                m.d.sync += self.counts[index].eq(self.counts[index] + 1)
        return m
