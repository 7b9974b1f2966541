"""DMA writer: bus-master memory writes to host memory (PCIe Base 4.0 sections
2.2.2, 2.2.4.1, 2.2.5, 2.2.7).

A client's write (``addr``, ``length``) and its source-aligned DWs become
MWr TLPs. The DWs go through a `BytePacker` behind ``addr & 3`` pad bytes, so
each byte comes out on its address lane; the TLPs split at Max_Payload_Size
boundaries (which are also 4 KiB boundaries never crossed).

    client.req ──> split ──> MWr header ─┐
    client.data ─> pad + keep ─> BytePacker ─┴─> tlp
"""
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .. import spec
from ..lib.byte_packer import BytePacker, keep_mask
from ..lib.bytes import BYTES_PER_BEAT
from .dma import MAX_DMA_LENGTH, DmaWriteSignature
from .tlp import DwordStreamSignature
from .tlp_header import (HEADER_INDEX_BITS, LANE_BITS, MAX_LENGTH_DW, HeaderDw, RequestHeader,
                         byte_enables, ceil_dw, chunk_bytes)

__all__ = ["DmaWriter"]

_LANES = BYTES_PER_BEAT
# MPS codes above 4096 bytes are reserved (section 7.5.3.4)
_MAX_PAYLOAD_BYTES = spec.pcie_size_bytes(spec.PCIE_MAX_SIZE_CODE)


class DmaWriter(wiring.Component):
    """Bus-master writes, one at a time.

    Ports:
        client:       In(DmaWriteSignature()): ``client.req`` in, then
                      ceil(length / 4) source-aligned DWs on ``client.data``
                      (the first byte in bits 7:0 of the first DW; bytes past
                      ``length`` in the last DW are ignored; its ``last`` and
                      ``error`` fields are not looked at: the writer counts).
                      ``client.busy`` out: high from the cycle after a request
                      is taken until its last TLP DW has been taken by ``tlp``.
        tlp:          Out(DwordStreamSignature), MWr TLPs to a TX arbiter input
                      (three-DW header below 4 GiB, four-DW above, section 2.2.4.1).
        requester_id: In(16), this function's ID for the headers.
        mps:          In(3), Device Control Max_Payload_Size code
                      (bytes = 128 << code, section 7.5.3.4).
        bus_master:   In(1), Command.BUS_MASTER: no TLP starts while 0.

    The data may be offered before or after the request; the writer takes
    it once the request is in. A write of length 0 is taken and dropped.

    TLPs: each ends at a ``128 << mps`` boundary or at the write's end, so
    none is larger than MPS or crosses 4 KiB (sections 2.2.2, 2.2.7). First
    and Last DW BEs per section 2.2.5 (a one-DW TLP has Last BE 0 and First
    BE covering its bytes). Tag 0, TC 0, no attributes.

    Throughput: one payload DW a cycle inside a TLP; each TLP costs its
    header (three or four DWs) and one cycle, each write two or three more
    cycles. A TLP's header waits until its first payload DW is at hand, but
    not for the whole payload: if the client's DWs then come with gaps, the
    TLP's payload has the same gaps, and the TX arbiter stays granted to the
    writer meanwhile. A client should supply a write's DWs one a cycle once
    it has begun (from a RAM, say).
    """

    def __init__(self):
        super().__init__({
            "client": In(DmaWriteSignature()),
            "tlp": Out(DwordStreamSignature),
            "requester_id": In(16),
            "mps": In(spec.PCIE_SIZE_CODE_BITS),
            "bus_master": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        req, tlp = self.client.req, self.tlp
        data_in = self.client.data
        m.submodules.packer = packer = BytePacker()

        addr = Signal(64)                           # the next TLP's first byte
        left = Signal(range(MAX_DMA_LENGTH + 1))    # bytes not yet sent as TLPs
        start = Signal(req.payload.shape())         # the request, as taken

        # --- feed the packer: addr & 3 pad bytes, then the client's DWs ------
        feeding = Signal()
        pad = Signal()                              # the pad beat is still to go in
        dws_left = Signal(range(ceil_dw(MAX_DMA_LENGTH) + 1))
        pad_lanes = start.addr[:LANE_BITS]
        end_lane = Signal(LANE_BITS)
        m.d.comb += end_lane.eq(start.length - 1)   # lane of the write's last byte, source-aligned
        pad_keep = Signal(_LANES)
        with m.Switch(pad_lanes):
            for lanes in range(1, _LANES):
                with m.Case(lanes):
                    m.d.comb += pad_keep.eq(keep_mask(0, lanes - 1))
        last_keep = Signal(_LANES)
        with m.Switch(end_lane):
            for lane in range(_LANES):
                with m.Case(lane):
                    m.d.comb += last_keep.eq(keep_mask(0, lane))
        final_dw = dws_left == 1
        with m.If(pad):
            m.d.comb += [
                packer.i.valid.eq(1),
                packer.i.payload.data.eq(0),
                packer.i.payload.keep.eq(pad_keep),
            ]
        with m.Else():
            m.d.comb += [
                packer.i.valid.eq(feeding & data_in.valid),
                packer.i.payload.data.eq(data_in.payload.data),
                packer.i.payload.keep.eq(Mux(final_dw, last_keep, keep_mask(0, _LANES - 1))),
                packer.i.payload.last.eq(final_dw),
                data_in.ready.eq(feeding & packer.i.ready),
            ]
        with m.If(packer.i.valid & packer.i.ready):
            with m.If(pad):
                m.d.sync += pad.eq(0)
            with m.Else():
                m.d.sync += dws_left.eq(dws_left - 1)
                with m.If(final_dw):
                    m.d.sync += feeding.eq(0)

        # --- MWr TLPs --------------------------------------------------------
        # the next TLP's size, fixed before its header goes out
        tlp_len = Signal(range(_MAX_PAYLOAD_BYTES + 1))
        next_len = chunk_bytes(m, addr, left, self.mps, _MAX_PAYLOAD_BYTES)
        lo = addr[:LANE_BITS]
        end = Signal(range(_MAX_PAYLOAD_BYTES + _LANES))
        m.d.comb += end.eq(lo + tlp_len)
        length_dw = Signal(range(MAX_LENGTH_DW + 1))
        m.d.comb += length_dw.eq(ceil_dw(end))
        tlp_end_lane = Signal(LANE_BITS)
        m.d.comb += tlp_end_lane.eq(end - 1)
        first_be, last_be = byte_enables(m, lo, tlp_end_lane, length_dw == 1)
        header = RequestHeader(m, with_data=True, addr=addr, length_dw=length_dw,
                               requester_id=self.requester_id, tag=0,
                               first_be=first_be, last_be=last_be)
        index = Signal(HEADER_INDEX_BITS)
        sent_dw = Signal(range(MAX_LENGTH_DW + 1))
        last_of_write = left == tlp_len

        with m.FSM(name="write") as fsm:
            with m.State("IDLE"):
                m.d.comb += req.ready.eq(1)
                with m.If(req.valid):
                    m.d.sync += [
                        start.eq(req.payload),
                        addr.eq(req.payload.addr),
                        left.eq(req.payload.length),
                        dws_left.eq(ceil_dw(req.payload.length)),
                    ]
                    with m.If(req.payload.length != 0):
                        m.d.sync += [
                            feeding.eq(1),
                            pad.eq(req.payload.addr[:LANE_BITS] != 0),
                        ]
                        m.next = "WAIT_DATA"
            with m.State("WAIT_DATA"):
                # the header waits for the first payload DW to be at hand
                with m.If(self.bus_master & packer.o.valid):
                    m.d.sync += [index.eq(HeaderDw.DW0), tlp_len.eq(next_len)]
                    m.next = "SEND_HEADER"
            with m.State("SEND_HEADER"):
                m.d.comb += [
                    tlp.valid.eq(1),
                    tlp.payload.data.eq(header.dw(index)),
                    tlp.payload.first.eq(index == HeaderDw.DW0),
                ]
                with m.If(tlp.ready):
                    m.d.sync += index.eq(header.next_index(index))
                    with m.If(header.is_last(index)):
                        m.d.sync += sent_dw.eq(0)
                        m.next = "SEND_PAYLOAD"
            with m.State("SEND_PAYLOAD"):
                tlp_done = sent_dw == length_dw - 1
                m.d.comb += [
                    tlp.valid.eq(packer.o.valid),
                    tlp.payload.data.eq(packer.o.payload.data),
                    tlp.payload.last.eq(tlp_done),
                    packer.o.ready.eq(tlp.ready),
                ]
                with m.If(tlp.valid & tlp.ready):
                    m.d.sync += sent_dw.eq(sent_dw + 1)
                    with m.If(tlp_done):
                        m.d.sync += [addr.eq(addr + tlp_len), left.eq(left - tlp_len)]
                        with m.If(last_of_write):
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "WAIT_DATA"
        m.d.comb += self.client.busy.eq(~fsm.ongoing("IDLE"))
        return m
