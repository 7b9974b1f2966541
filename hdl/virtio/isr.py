"""ISR status (virtio 1.2 section 4.1.4.5): one byte, cleared when read."""
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from .. import spec
from ..pcie.register_bus import RegisterBusSignature

__all__ = ["IsrStatus"]


class IsrStatus(wiring.Component):
    """Ports:
        bus:    In(RegisterBusSignature(1)), the ISR window (ISR is its first byte).
        queue:  In(1), pulse: a used buffer notification (sets bit 0).
        config: In(1), pulse: a configuration change (sets bit 1).
        reset:  In(1), device reset clears both.
    """
    bus: In(RegisterBusSignature(1))
    queue: In(1)
    config: In(1)
    reset: In(1)

    def elaborate(self, platform):
        m = Module()
        isr = Signal(8)
        read_clears = self.bus.r_stb & self.bus.be[0] & (self.bus.addr == 0)
        with m.If(self.bus.r_stb):
            m.d.sync += self.bus.r_data.eq(0)
            with m.If(self.bus.addr == 0):
                m.d.sync += self.bus.r_data.eq(isr)
        events = (self.queue * spec.VirtioIsr.QUEUE) | (self.config * spec.VirtioIsr.CONFIG)
        with m.If(self.reset):
            m.d.sync += isr.eq(0)
        with m.Elif(read_clears):
            m.d.sync += isr.eq(events)
        with m.Else():
            m.d.sync += isr.eq(isr | events)
        return m
