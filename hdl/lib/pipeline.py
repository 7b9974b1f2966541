"""A register stage for a stream: cuts the combinational path of payload and valid."""
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["PipelineRegister"]


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
