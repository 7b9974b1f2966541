"""Several DMA clients sharing one DMA reader and one DMA writer.

Both multiplexers pass a client's requests through unchanged (see `dma.py`
for the client contract) and take turns round robin among the clients
with a request waiting.

- `DmaReadMux`: the reader returns data in request order, so the mux notes
  which client asked, in a FIFO, and routes each read's DWs (up to the one
  flagged ``last``) back to the client at the FIFO's head. Requests wait
  while the FIFO is full.
- `DmaWriteMux`: a write is a request plus its DWs; the mux grants a client
  and keeps the grant until that write's ``last`` DW has passed, so writes
  never interleave. ``busy`` is shared: a client waiting for its own writes
  to leave also waits for writes another client queued before them, which
  only errs on the safe side.
"""
from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .dma import DmaReadSignature, DmaWriteSignature

__all__ = ["DmaReadMux", "DmaWriteMux"]

READS_IN_FLIGHT = 16       # client reads accepted and not yet fully returned


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


class DmaReadMux(wiring.Component):
    """Ports:
        clients: In(DmaReadSignature()).array(n), one per client (requests in, data out).
        out:     Out(DmaReadSignature()), to the DMA reader.
    """

    def __init__(self, n):
        self.n = n
        super().__init__({
            "clients": In(DmaReadSignature()).array(n),
            "out": Out(DmaReadSignature()),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.n
        m.submodules.owners = owners = SyncFIFOBuffered(width=max(1, (n - 1).bit_length()),
                                                        depth=READS_IN_FLIGHT)
        waiting = Signal(n)
        m.d.comb += waiting.eq(Cat(client.req.valid for client in self.clients))
        last = Signal(range(n))
        pick, any_ = _round_robin(m, waiting, last, "rd")

        for index, client in enumerate(self.clients):
            with m.If(pick == index):
                m.d.comb += [
                    self.out.req.valid.eq(client.req.valid & owners.w_rdy),
                    self.out.req.payload.eq(client.req.payload),
                    client.req.ready.eq(self.out.req.ready & owners.w_rdy),
                ]
        m.d.comb += [owners.w_data.eq(pick),
                     owners.w_en.eq(self.out.req.valid & self.out.req.ready)]
        with m.If(self.out.req.valid & self.out.req.ready):
            m.d.sync += last.eq(pick)

        # data back to the oldest read's client
        for index, client in enumerate(self.clients):
            here = owners.r_rdy & (owners.r_data == index)
            m.d.comb += [client.data.valid.eq(self.out.data.valid & here),
                         client.data.payload.eq(self.out.data.payload)]
            with m.If(here):
                m.d.comb += self.out.data.ready.eq(client.data.ready)
        m.d.comb += owners.r_en.eq(self.out.data.valid & self.out.data.ready
                                   & self.out.data.payload.last)
        return m


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


