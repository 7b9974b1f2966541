"""A register stage for a stream: cuts the combinational path of payload and valid."""
from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["PipelineRegister", "SkidBuffer"]


class PipelineRegister(wiring.Component):
    """One registered stream stage. ``o.valid`` and ``o.payload`` come from
    flip-flops; ``i.ready`` is ``~o.valid | o.ready`` (full rate when the
    consumer keeps up).

    Ports:
        i: In(stream.Signature(shape)), from the producer.
        o: Out(stream.Signature(shape)), to the consumer.
    """

    def __init__(self, shape):
        super().__init__({
            "i": In(stream.Signature(shape)),
            "o": Out(stream.Signature(shape)),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.i.ready):
            m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload)]
        return m


class SkidBuffer(wiring.Component):
    """A registered stream stage whose ``i.ready`` is registered too: it cuts
    the combinational path in both directions (valid/payload forward, ready
    backward), at full rate, with a second entry to catch the DW that arrives
    in the cycle the consumer stalls.

    Ports:
        i: In(stream.Signature(shape)), from the producer.
        o: Out(stream.Signature(shape)), to the consumer.
    """

    def __init__(self, shape):
        self._shape = shape
        super().__init__({
            "i": In(stream.Signature(shape)),
            "o": Out(stream.Signature(shape)),
        })

    def elaborate(self, platform):
        m = Module()
        skid = Signal(self._shape)
        skid_valid = Signal()
        m.d.comb += self.i.ready.eq(~skid_valid)
        with m.If(~self.o.valid | self.o.ready):
            with m.If(skid_valid):
                m.d.sync += [self.o.payload.eq(skid), self.o.valid.eq(1), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o.payload.eq(self.i.payload), self.o.valid.eq(self.i.valid)]
        with m.Elif(self.i.valid & self.i.ready):
            m.d.sync += [skid.eq(self.i.payload), skid_valid.eq(1)]
        return m
