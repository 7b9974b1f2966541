"""Receive demux: split the incoming TLPs into requests and completions."""
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .tlp import DwordStreamSignature, TlpDw0

__all__ = ["RxDemux"]

# Completion types are 0b0101x (Cpl/CplD and their locked forms), section 2.2.1.
_CPL_TYPE_PREFIX = 0b0101


class RxDemux(wiring.Component):
    """Route each TLP whole, by its first DW.

    Ports:
        i:   In(DwordStreamSignature), every TLP from the link.
        req: Out(DwordStreamSignature), requests (config, memory, I/O, messages)
             for the completer.
        cpl: Out(DwordStreamSignature), completions for the DMA requester.
    """
    i: In(DwordStreamSignature)
    req: Out(DwordStreamSignature)
    cpl: Out(DwordStreamSignature)

    def elaborate(self, platform):
        m = Module()
        to_cpl_held = Signal()
        to_cpl = Signal()
        dw0 = TlpDw0(self.i.payload.data)
        with m.If(self.i.payload.first):
            m.d.comb += to_cpl.eq((dw0.type >> 1) == _CPL_TYPE_PREFIX)
        with m.Else():
            m.d.comb += to_cpl.eq(to_cpl_held)
        with m.If(self.i.valid & self.i.ready & self.i.payload.first):
            m.d.sync += to_cpl_held.eq(to_cpl)

        for port, selected in ((self.req, ~to_cpl), (self.cpl, to_cpl)):
            m.d.comb += [
                port.payload.eq(self.i.payload),
                port.valid.eq(self.i.valid & selected),
            ]
        m.d.comb += self.i.ready.eq(Mux(to_cpl, self.cpl.ready, self.req.ready))
        return m

