"""Completer: serve configuration and memory requests (PCIe Base 4.0 section 2.2, 2.3).

Takes request TLPs one DW a transfer and turns them into register accesses:

    CfgRd0 / CfgWr0       -> config space bus; CplD / Cpl
      (the virtio PCI cfg access window's pci_cfg_data DW is served from the
       BAR instead, at the window's offset: virtio 1.2 section 4.1.4.9)
    MRd32/64 hitting BAR0 -> BAR bus, one DW at a time; CplD(s) split at
                             Max_Payload_Size boundaries, with byte count and
                             lower address per section 2.3.1.1
    MWr32/64 hitting BAR0 -> BAR bus with first/last byte enables; no reply
                             (poisoned, EP set: dropped, reported through
                             ``poisoned``; a poisoned CfgWr0 gets UR)
    anything else         -> a non-posted request gets an Unsupported Request
                             completion; a posted one is dropped; both set
                             Device Status.UR_DETECTED

Memory requests need Command.MEMORY_SPACE (section 7.5.1.1). The completer
learns its own bus/device/function from each type-0 config request's
completer ID (section 2.2.6.2), and puts it in its completions.
"""
from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .. import spec
from .register_bus import RegisterBusSignature
from .tlp import CompletionDw1, CompletionDw2, ConfigDw2, DwordStreamSignature, RequestDw1, TlpDw0

Fmt = spec.TlpFmt

__all__ = ["Completer"]

_FT = spec.TlpFmtType


def _type_of(fmt_type):
    return fmt_type & 0x1F


class Completer(wiring.Component):
    """Ports:
        req:     In(DwordStreamSignature), request TLPs.
        cpl:     Out(DwordStreamSignature), completion TLPs.
        cfg:     Out(RegisterBusSignature(6)), to the config space.
        bar:     Out(RegisterBusSignature(bar_addr_width)), to BAR0's registers;
                 read data is taken two cycles after r_stb (a RegisterBusRegister
                 sits between; a subordinate that holds r_data works either way).
        memory_enable: In(1), Command.MEMORY_SPACE.
        bar0:    In(64), BAR0's base address.
        mps:     In(3), Device Control's Max_Payload_Size field.
        window_bar, window_offset, window_length: In, the virtio PCI cfg window.
        ur_detected: Out(1), pulse per Unsupported Request.
        poisoned: Out(1), pulse per poisoned memory write dropped.
        completer_id: Out(16), this function's bus/device/function number.
    """

    def __init__(self, *, bar_size, window_data_dw):
        self.bar_size = bar_size
        self.bar_addr_width = (bar_size // 4 - 1).bit_length()
        self.window_data_dw = window_data_dw
        super().__init__({
            "req": In(DwordStreamSignature),
            "cpl": Out(DwordStreamSignature),
            "cfg": Out(RegisterBusSignature(6)),
            "bar": Out(RegisterBusSignature(self.bar_addr_width)),
            "memory_enable": In(1),
            "bar0": In(64),
            "mps": In(3),
            "window_bar": In(8),
            "window_offset": In(32),
            "window_length": In(32),
            "ur_detected": Out(1),
            "poisoned": Out(1),
            "completer_id": Out(16),
        })

    def elaborate(self, platform):
        m = Module()
        req, cpl = self.req, self.cpl

        dw0 = Signal(TlpDw0)
        dw1 = Signal(RequestDw1)
        dw2 = Signal(32)
        dw3 = Signal(32)
        seen_last = Signal()          # the request's last DW was taken
        my_id = Signal(16)            # bus/device/function, learnt from config requests
        m.d.comb += self.completer_id.eq(my_id)

        fmt_type = dw0.as_value()[24:32]
        is_4dw = (dw0.fmt == Fmt.DW4_DATA) | (dw0.fmt == Fmt.DW4_NODATA)
        length = Signal(11)           # DWs; 0 in the field means 1024
        m.d.comb += length.eq(Mux(dw0.length == 0, 1024, dw0.length))
        address = Signal(64)
        m.d.comb += address.eq(Mux(is_4dw, Cat(dw3, dw2), dw2))
        bar_mask = ~(self.bar_size - 1) & 0xFFFFFFFFFFFFFFFF
        hits_bar = self.memory_enable & ((address & bar_mask) == self.bar0)

        # Completion being built.
        cpl_status = Signal(3)
        cpl_has_data = Signal()
        cpl_length = Signal(11)       # DWs in this completion
        byte_count = Signal(13)       # bytes left, this completion's included
        lower_address = Signal(7)
        data_dw = Signal(32)          # the DW read for the completion's payload
        read_addr = Signal(62)        # DW address of the next BAR read
        dws_left = Signal(11)         # DWs of the request still to complete
        in_cpl = Signal(11)           # DWs still to send in this completion

        # Byte count and first byte of a read (section 2.3.1.1, table 2-39).
        first_be, last_be = dw1.first_be, dw1.last_be
        first_offset = Signal(2)
        with m.Switch(first_be):
            for be in range(16):
                with m.Case(be):
                    low = (be & -be).bit_length() - 1 if be else 0
                    m.d.comb += first_offset.eq(low)
        span_bytes = Signal(13)
        with m.If(length == 1):
            with m.Switch(first_be):
                for be in range(16):
                    with m.Case(be):
                        span = (be.bit_length() - ((be & -be).bit_length() - 1)) if be else 1
                        m.d.comb += span_bytes.eq(span)
        with m.Else():
            last_bytes = Signal(3)
            with m.Switch(last_be):
                for be in range(16):
                    with m.Case(be):
                        m.d.comb += last_bytes.eq(be.bit_length())
            m.d.comb += span_bytes.eq((length << 2) - first_offset - (4 - last_bytes))

        # Byte enables of the DW at hand: First DW BE, Last DW BE, all between.
        dw_be = Signal(4)
        m.d.comb += dw_be.eq(Mux(dws_left == length, first_be, Mux(dws_left == 1, last_be, 0b1111)))

        # DWs from a DW address to the next Max_Payload_Size boundary.
        mps_dw = Signal(11)
        m.d.comb += mps_dw.eq(32 << self.mps)
        to_boundary = Signal(11)
        m.d.comb += to_boundary.eq(mps_dw - (read_addr & (mps_dw - 1)))

        # The virtio PCI cfg window: BAR access on behalf of pci_cfg_data.
        window_shift = self.window_offset[:2]
        window_be = Signal(4)
        with m.Switch(self.window_length):
            with m.Case(1):
                m.d.comb += window_be.eq(0b0001 << window_shift)
            with m.Case(2):
                m.d.comb += window_be.eq(0b0011 << window_shift)
            with m.Case(4):
                m.d.comb += window_be.eq(0b1111)
        window_ok = (self.window_bar == 0) & (window_be != 0) & \
            (self.window_offset < self.bar_size) & \
            ((self.window_offset & (self.window_length - 1)) == 0)
        via_window = Signal()
        extended = ConfigDw2(dw2).register[6:] != 0

        m.d.comb += [
            self.cfg.addr.eq(dw2[2:8]),
            self.bar.addr.eq(read_addr),
        ]

        def take(state_next, dst=None):
            """Accept one request DW, store it, move on."""
            m.d.comb += req.ready.eq(1)
            with m.If(req.valid):
                if dst is not None:
                    m.d.sync += dst.eq(req.payload.data)
                m.d.sync += seen_last.eq(req.payload.last)
                m.next = state_next

        with m.FSM(name="completer"):
            with m.State("IDLE"):
                m.d.comb += req.ready.eq(1)
                with m.If(req.valid & req.payload.first):
                    m.d.sync += [dw0.eq(req.payload.data), seen_last.eq(req.payload.last)]
                    with m.If(~req.payload.last):
                        m.next = "HEADER_1"
                    with m.Else():
                        m.next = "MALFORMED"

            with m.State("HEADER_1"):
                with m.If(seen_last):
                    m.next = "MALFORMED"
                with m.Else():
                    take("HEADER_2", dw1)

            with m.State("HEADER_2"):
                with m.If(seen_last):
                    m.next = "MALFORMED"
                with m.Else():
                    m.d.comb += req.ready.eq(1)
                    with m.If(req.valid):
                        m.d.sync += [dw2.eq(req.payload.data), seen_last.eq(req.payload.last)]
                        with m.If(is_4dw):
                            with m.If(req.payload.last):
                                m.next = "MALFORMED"
                            with m.Else():
                                m.next = "HEADER_3"
                        with m.Else():
                            m.d.sync += dw3.eq(0)
                            m.next = "DECODE"

            with m.State("HEADER_3"):
                take("DECODE", dw3)

            with m.State("DECODE"):
                m.d.sync += [
                    cpl_status.eq(spec.CplStatus.SC),
                    lower_address.eq(0),
                    byte_count.eq(4),
                    cpl_length.eq(1),
                    dws_left.eq(length),
                ]
                with m.Switch(fmt_type):
                    with m.Case(_FT.CFGRD0, _FT.CFGWR0):
                        cfg = ConfigDw2(dw2)
                        m.d.sync += [
                            my_id.eq(cfg.completer_id),
                            via_window.eq(cfg.register == self.window_data_dw),
                            read_addr.eq(self.window_offset[2:]),
                        ]
                        with m.If((dw0.length != 1) | (fmt_type == _FT.CFGWR0) & dw0.ep):
                            # a poisoned config write is discarded with UR (section 2.7.2.2)
                            m.next = "UNSUPPORTED"
                        with m.Elif(fmt_type == _FT.CFGRD0):
                            m.d.sync += cpl_has_data.eq(1)
                            m.next = "CFG_READ"
                        with m.Else():
                            m.d.sync += cpl_has_data.eq(0)
                            m.next = "CFG_WRITE"
                    with m.Case(_FT.MRD32, _FT.MRD64):
                        with m.If(hits_bar):
                            m.d.sync += [
                                read_addr.eq(address[2:]),
                                byte_count.eq(span_bytes),
                                lower_address.eq(Cat(first_offset, address[2:7])),
                                cpl_has_data.eq(1),
                            ]
                            m.next = "MEM_READ_SPLIT"
                        with m.Else():
                            m.next = "UNSUPPORTED"
                    with m.Case(_FT.MWR32, _FT.MWR64):
                        with m.If(hits_bar & dw0.ep):
                            # poisoned data never reaches a register (section 2.7.2.2)
                            m.d.comb += self.poisoned.eq(1)
                            m.next = "DRAIN_THEN_IDLE"
                        with m.Elif(hits_bar):
                            m.d.sync += read_addr.eq(address[2:])
                            m.next = "MEM_WRITE"
                        with m.Else():
                            m.next = "UNSUPPORTED"
                    with m.Default():
                        m.next = "UNSUPPORTED"

            # --- configuration requests -----------------------------------
            with m.State("CFG_READ"):
                with m.If(via_window):
                    with m.If(window_ok):
                        m.d.comb += [self.bar.r_stb.eq(1), self.bar.be.eq(window_be)]
                    m.next = "CFG_READ_WINDOW_WAIT"
                with m.Else():
                    m.d.comb += [self.cfg.r_stb.eq(~extended), self.cfg.be.eq(first_be)]
                    m.next = "CFG_READ_DATA"

            with m.State("CFG_READ_DATA"):
                # extended config space (0x100 up) has no capabilities: reads 0
                m.d.sync += data_dw.eq(Mux(extended, 0, self.cfg.r_data))
                m.next = "DRAIN"

            with m.State("CFG_READ_WINDOW_WAIT"):
                m.next = "CFG_READ_WINDOW_DATA"        # BAR reads take two cycles

            with m.State("CFG_READ_WINDOW_DATA"):
                m.d.sync += data_dw.eq(Mux(window_ok, self.bar.r_data >> (window_shift * 8), 0))
                m.next = "DRAIN"

            with m.State("CFG_WRITE"):
                with m.If(seen_last):
                    m.next = "MALFORMED"
                with m.Else():
                    m.d.comb += req.ready.eq(1)
                    with m.If(req.valid):
                        m.d.sync += seen_last.eq(req.payload.last)
                        with m.If(via_window):
                            m.d.comb += [
                                self.bar.w_stb.eq(window_ok),
                                self.bar.be.eq(window_be),
                                self.bar.w_data.eq(req.payload.data << (window_shift * 8)),
                            ]
                        with m.Else():
                            m.d.comb += [
                                self.cfg.w_stb.eq(~extended),
                                self.cfg.be.eq(first_be),
                                self.cfg.w_data.eq(req.payload.data),
                            ]
                        m.next = "DRAIN"

            # --- memory reads ---------------------------------------------
            with m.State("MEM_READ_SPLIT"):
                chunk = Mux(dws_left < to_boundary, dws_left, to_boundary)
                m.d.sync += [cpl_length.eq(chunk), in_cpl.eq(chunk)]
                m.next = "DRAIN"

            with m.State("MEM_READ"):
                # byte enables reach the registers: a read-to-clear byte clears only if read
                m.d.comb += [self.bar.r_stb.eq(1), self.bar.be.eq(dw_be)]
                m.next = "MEM_READ_WAIT"

            with m.State("MEM_READ_WAIT"):
                m.next = "MEM_READ_DATA"               # BAR reads take two cycles

            with m.State("MEM_READ_DATA"):
                m.d.sync += [data_dw.eq(self.bar.r_data), read_addr.eq(read_addr + 1)]
                m.next = "SEND_DATA"

            # --- memory writes --------------------------------------------
            with m.State("MEM_WRITE"):
                with m.If(seen_last):
                    m.next = "IDLE"                    # fewer DWs than Length: stop here
                with m.Else():
                    m.d.comb += req.ready.eq(1)
                    with m.If(req.valid):
                        m.d.comb += [
                            self.bar.w_stb.eq(1),
                            self.bar.be.eq(dw_be),
                            self.bar.w_data.eq(req.payload.data),
                        ]
                        m.d.sync += [
                            read_addr.eq(read_addr + 1),
                            dws_left.eq(dws_left - 1),
                            seen_last.eq(req.payload.last),
                        ]
                        with m.If(dws_left == 1):
                            m.next = "DRAIN_THEN_IDLE"

            # --- errors ---------------------------------------------------
            with m.State("UNSUPPORTED"):
                m.d.comb += self.ur_detected.eq(1)
                m.d.sync += [cpl_status.eq(spec.CplStatus.UR), cpl_has_data.eq(0)]
                # Non-posted requests are the ones without data, and I/O and
                # config writes (section 2.2.9); memory writes and messages are posted.
                has_data = fmt_type[6]
                posted = (_type_of(fmt_type) == 0) & has_data | (dw0.type[3:5] == 0b10)
                with m.If(posted):
                    m.next = "DRAIN_THEN_IDLE"
                with m.Else():
                    m.next = "DRAIN"

            with m.State("MALFORMED"):
                # A TLP too short for its header: dropped (section 2.3.1).
                m.d.comb += self.ur_detected.eq(1)
                m.next = "DRAIN_THEN_IDLE"

            with m.State("DRAIN_THEN_IDLE"):
                m.d.comb += req.ready.eq(~seen_last)
                with m.If(seen_last | (req.valid & req.payload.last)):
                    m.next = "IDLE"

            # Take what is left of the request, then reply.
            with m.State("DRAIN"):
                m.d.comb += req.ready.eq(~seen_last)
                with m.If(seen_last | (req.valid & req.payload.last)):
                    m.next = "SEND_DW0"

            # --- completion out -------------------------------------------
            with m.State("SEND_DW0"):
                out0 = Signal(TlpDw0)
                m.d.comb += [
                    out0.fmt.eq(Mux(cpl_has_data, Fmt.DW3_DATA, Fmt.DW3_NODATA)),
                    out0.type.eq(_type_of(_FT.CPL)),
                    out0.tc.eq(dw0.tc),
                    out0.attr.eq(dw0.attr),
                    out0.attr2.eq(dw0.attr2),
                    out0.tag8.eq(dw0.tag8),          # 10-bit tags come back whole
                    out0.tag9.eq(dw0.tag9),
                    out0.length.eq(Mux(cpl_has_data, cpl_length, 0)),
                    cpl.valid.eq(1),
                    cpl.payload.data.eq(out0),
                    cpl.payload.first.eq(1),
                ]
                with m.If(cpl.ready):
                    m.next = "SEND_DW1"

            with m.State("SEND_DW1"):
                out1 = Signal(CompletionDw1)
                m.d.comb += [
                    out1.byte_count.eq(byte_count),         # 4096 wraps to 0 as the spec wants
                    out1.status.eq(cpl_status),
                    out1.completer_id.eq(my_id),
                    cpl.valid.eq(1),
                    cpl.payload.data.eq(out1),
                ]
                with m.If(cpl.ready):
                    m.next = "SEND_DW2"

            with m.State("SEND_DW2"):
                out2 = Signal(CompletionDw2)
                m.d.comb += [
                    out2.lower_address.eq(lower_address),
                    out2.tag.eq(dw1.tag),
                    out2.requester_id.eq(dw1.requester_id),
                    cpl.valid.eq(1),
                    cpl.payload.data.eq(out2),
                    cpl.payload.last.eq(~cpl_has_data),
                ]
                with m.If(cpl.ready):
                    with m.If(~cpl_has_data):
                        m.next = "IDLE"
                    with m.Elif(fmt_type[0:5] == _type_of(_FT.CFGRD0)):
                        m.next = "SEND_DATA"
                    with m.Else():
                        m.next = "MEM_READ"

            with m.State("SEND_DATA"):
                is_mem = _type_of(fmt_type) == _type_of(_FT.MRD32)
                end_of_cpl = ~is_mem | (in_cpl == 1)
                m.d.comb += [
                    cpl.valid.eq(1),
                    cpl.payload.data.eq(data_dw),
                    cpl.payload.last.eq(end_of_cpl),
                ]
                with m.If(cpl.ready):
                    m.d.sync += [in_cpl.eq(in_cpl - 1), dws_left.eq(dws_left - 1)]
                    with m.If(~is_mem):
                        m.next = "IDLE"
                    with m.Elif(in_cpl != 1):
                        m.next = "MEM_READ"
                    with m.Elif(dws_left == 1):
                        m.next = "IDLE"
                    with m.Else():
                        # next completion: bytes left drop by what this one carried
                        sent = (cpl_length << 2) - lower_address[0:2]
                        m.d.sync += [
                            byte_count.eq(byte_count - sent),
                            lower_address.eq(Cat(Const(0, 2), read_addr[0:5])),
                        ]
                        m.next = "MEM_READ_SPLIT"
        return m
