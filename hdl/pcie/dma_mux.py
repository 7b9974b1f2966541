"""Several DMA clients sharing one DMA writer.

`DmaWriteMux` passes a client's requests through unchanged (see `dma.py`
for the client contract) and takes turns round robin among the clients
with a request waiting. A write is a request plus its DWs; the mux grants a
client and keeps the grant until that write's ``last`` DW has passed, so
writes never interleave. ``busy`` is shared: a client waiting for its own writes
  to leave also waits for writes another client queued before them, which
  only errs on the safe side.
"""
from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .dma import DmaWriteSignature

__all__ = ["DmaWriteMux"]


def _round_robin(m, requests, last, name):
    """The next requester after ``last``, round robin (comb); ``any`` says if there is one."""
    count = len(requests)
    pick = Signal(range(count), name=f"{name}_pick")
    any_ = Signal(name=f"{name}_any")
    m.d.comb += any_.eq(requests.any())
    # search from last+1 upwards, wrapping: the later assignments win
    for offset in reversed(range(1, count + 1)):
        for start in range(count):
            candidate = (start + offset) % count
            with m.If((last == start) & requests[candidate]):
                m.d.comb += pick.eq(candidate)
    return pick, any_


class DmaWriteMux(wiring.Component):
    """Ports:
        clients: In(DmaWriteSignature()).array(n), one per client.
        out:     Out(DmaWriteSignature()), to the DMA writer.
    """

    def __init__(self, n):
        self.n = n
        super().__init__({
            "clients": In(DmaWriteSignature()).array(n),
            "out": Out(DmaWriteSignature()),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.n
        waiting = Signal(n)
        m.d.comb += waiting.eq(Cat(client.req.valid for client in self.clients))
        last = Signal(range(n))
        pick, any_ = _round_robin(m, waiting, last, "wr")
        granted = Signal()                 # a write is passing: its request, then its DWs
        owner = Signal(range(n))
        req_done = Signal()                # the granted write's request has been taken
        data_done = Signal()               # ... and its last DW

        with m.If(~granted & any_):
            m.d.sync += [granted.eq(1), owner.eq(pick), req_done.eq(0), data_done.eq(0),
                         last.eq(pick)]

        for index, client in enumerate(self.clients):
            mine = granted & (owner == index)
            with m.If(mine):
                m.d.comb += [
                    self.out.req.valid.eq(client.req.valid & ~req_done),
                    self.out.req.payload.eq(client.req.payload),
                    client.req.ready.eq(self.out.req.ready & ~req_done),
                    self.out.data.valid.eq(client.data.valid & ~data_done),
                    self.out.data.payload.eq(client.data.payload),
                    client.data.ready.eq(self.out.data.ready & ~data_done),
                ]
            m.d.comb += client.busy.eq(self.out.busy | granted)
        # the grant ends once both the request and its last DW have passed
        # (a client may offer either first)
        req_now = self.out.req.valid & self.out.req.ready
        last_now = self.out.data.valid & self.out.data.ready & self.out.data.payload.last
        with m.If(granted):
            with m.If((req_done | req_now) & (data_done | last_now)):
                m.d.sync += granted.eq(0)
            with m.Else():
                m.d.sync += [req_done.eq(req_done | req_now), data_done.eq(data_done | last_now)]
        return m


