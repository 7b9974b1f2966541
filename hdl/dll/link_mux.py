"""Sharing the transmit link between DLLPs and TLPs (PCIe Base 4.0 section
3.6.2.1, "recommended priority of scheduled transmissions").

The highest priority is finishing the packet under way; then, in this
design, every DLLP (Acks and Naks that are due, then flow control DLLPs:
the DLLP source orders those) before TLPs (replays and new ones: the
transmitter orders those). The spec puts FC DLLPs that are not required
below TLPs; here they only come on an event or a 30 us timer, so they cannot
starve TLPs.
"""
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..phy.link_packet import LinkPacketSignature

__all__ = ["LinkPacketMux"]


class LinkPacketMux(wiring.Component):
    """Two packet streams onto one, whole packets at a time.

    Ports (``sync``):
        dllp: In(LinkPacketSignature()), the first choice.
        tlp:  In(LinkPacketSignature()), when no DLLP waits.
        tx:   Out(LinkPacketSignature()), to the physical layer.
    """

    def __init__(self):
        super().__init__({
            "dllp": In(LinkPacketSignature()),
            "tlp": In(LinkPacketSignature()),
            "tx": Out(LinkPacketSignature()),
        })

    def elaborate(self, platform):
        m = Module()
        in_packet = Signal()        # between an accepted first beat and its last
        owner_tlp = Signal()        # who owns the packet under way
        pick_tlp = Signal()
        m.d.comb += pick_tlp.eq(Mux(in_packet, owner_tlp, ~self.dllp.valid))
        with m.If(pick_tlp):
            wiring.connect(m, wiring.flipped(self.tlp), wiring.flipped(self.tx))
        with m.Else():
            wiring.connect(m, wiring.flipped(self.dllp), wiring.flipped(self.tx))
        with m.If(self.tx.valid & self.tx.ready):
            m.d.sync += [in_packet.eq(~self.tx.payload.last), owner_tlp.eq(pick_tlp)]
        return m

