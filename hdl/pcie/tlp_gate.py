"""Stop a TLP source at a TLP boundary, so that it can be reset safely."""
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .tlp import DwordStreamSignature

__all__ = ["TlpGate"]


class TlpGate(wiring.Component):
    """Passes TLPs through; with ``stop`` high, lets the TLP under way (or
    already offered) finish and then passes nothing.

    A source reset in the middle of a TLP would leave the TX arbiter granted
    to a TLP that never ends; a source reset while ``quiet`` cannot.

    Ports:
        i:     In(DwordStreamSignature), from the source.
        o:     Out(DwordStreamSignature), to a TX arbiter input.
        stop:  In(1), hold new TLPs back.
        quiet: Out(1), no TLP under way or offered: the source may be reset.
    """
    i: In(DwordStreamSignature)
    o: Out(DwordStreamSignature)
    stop: In(1)
    quiet: Out(1)

    def elaborate(self, platform):
        m = Module()
        busy = Signal()              # a TLP has started (or been offered) and not ended
        blocked = self.stop & ~busy
        m.d.comb += [
            self.o.payload.eq(self.i.payload),
            self.o.valid.eq(self.i.valid & ~blocked),
            self.i.ready.eq(self.o.ready & ~blocked),
            self.quiet.eq(~busy & ~self.o.valid),
        ]
        with m.If(self.o.valid):
            m.d.sync += busy.eq(~(self.o.ready & self.i.payload.last))
        return m
