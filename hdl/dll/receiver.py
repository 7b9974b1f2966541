"""The TLP receive side of the data link layer (PCIe Base 4.0 section 3.6.3).

Link beats of TLPs arrive one a cycle with no back-pressure: the 2-byte
Sequence Number field, the TLP, the 4-byte LCRC. They are written into a ring
buffer as they come (one DW every two beats, header DWs byte-swapped back to
the core's big-endian values, payload and digest DWs kept as on the wire) and
checked when the packet ends (3.6.3.1):

- ``bad`` set (EDB or a framing error) with the LCRC complemented: a
  nullified TLP, discarded silently;
- otherwise ``bad``, a wrong LCRC or a malformed length: a bad TLP. It is
  discarded and, unless NAK_SCHEDULED is already set, a Nak is scheduled and
  NAK_SCHEDULED set;
- Sequence Number = NEXT_RCV_SEQ: the TLP is kept (its DWs become readable),
  NEXT_RCV_SEQ advances, NAK_SCHEDULED clears, and an Ack becomes due when the
  AckNak_LATENCY_TIMER expires (Acks are coalesced: one Ack acknowledges
  everything up to NEXT_RCV_SEQ - 1);
- an older Sequence Number ((NEXT_RCV_SEQ - seq) mod 4096 <= 2048): a
  duplicate (the transmitter replayed it): discarded, an Ack is scheduled at
  once;
- a newer one: a TLP was lost: discarded, Nak as for a bad TLP.

A discarded TLP is rolled back out of the buffer; the core only ever sees
good TLPs, in order, once. A TLP that does not fit in the buffer (only if the
partner ignores our credits) is discarded without Ack or Nak: the partner's
REPLAY_TIMER sends it again.

Ack and Nak carry NEXT_RCV_SEQ - 1 (3.6.3.1). ``ack_latency`` is in cycles;
the Ack transmission latency table of 3.6.3.1 (2.5 GT/s, x1) allows, as we
read it, 237 symbol times for a 128-byte Max_Payload_Size, so the default is
118 cycles (two symbols a cycle). A shorter latency only costs more Acks.

The core reads TLPs as `TlpStreamSignature` beats; when it holds ``ready``
low the buffer fills, which is what the advertised credits are for. When a
TLP has gone to the core its credits are reported on ``freed`` so that
UpdateFCs can return them (2.6.1.2).
"""
from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..pcie.tlp import TlpStreamSignature
from ..phy.link_packet import LinkPacketSignature
from .dllp import SEQ_BITS
from .flow_control import CreditRequest, tlp_credit_type, tlp_data_credits
from .lcrc import Lcrc
from .transmitter import SEQ_HALF, AckNak, byteswap32

__all__ = ["TlpReceiver", "ACK_LATENCY"]

ACK_LATENCY = 237 // 2
_MIN_TLP_DWS = 3
_LCRC_DWS = 1


class TlpReceiver(wiring.Component):
    """LCRC and sequence checks, Ack/Nak scheduling, receive buffer (3.6.3).

    Parameters: ``buffer_dws`` (power of two) DWs of receive buffer;
    ``max_tlps`` TLPs it can hold at once; ``ack_latency`` cycles.

    Ports (``sync``):
        rx:      In(LinkPacketSignature()), beats of TLPs (``ready`` unused).
        tlp:     Out(TlpStreamSignature()), good TLPs to the core.
        ack_nak: Out(stream(AckNak)), the Ack or Nak due, with NEXT_RCV_SEQ - 1.
        freed:   Out(stream(CreditRequest), always ready), a TLP has gone to
                 the core: its credits can be returned.
        enable:  In(1), the link layer takes TLPs (FC_INIT2 and DL_Active).
        got_tlp: Out(1), pulse: a TLP with a good LCRC arrived (sets FI2, 3.4.2).
        bad_tlp: Out(1), registered pulse: a Bad TLP (3.6.3.1; a correctable
                 error, 6.2): a wrong LCRC, ``bad`` without the nullified
                 LCRC, a malformed length, or a Sequence Number past
                 NEXT_RCV_SEQ (a lost TLP). Nullified TLPs and duplicates
                 are not errors.
    """

    def __init__(self, *, buffer_dws=2048, max_tlps=64, ack_latency=ACK_LATENCY):
        if buffer_dws & (buffer_dws - 1):
            raise ValueError(f"buffer_dws {buffer_dws}: a power of two")
        self.buffer_dws = buffer_dws
        self.max_tlps = max_tlps
        self.ack_latency = ack_latency
        super().__init__({
            "rx": In(LinkPacketSignature()),
            "tlp": Out(TlpStreamSignature()),
            "ack_nak": Out(stream.Signature(AckNak)),
            "freed": Out(stream.Signature(CreditRequest, always_ready=True)),
            "enable": In(1),
            "got_tlp": Out(1),
            "bad_tlp": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        depth = self.buffer_dws
        addr_bits = (depth - 1).bit_length()
        ptr_bits = addr_bits + 1                     # one more: full vs empty
        length_bits = ptr_bits

        m.submodules.buffer = buffer = Memory(shape=32, depth=depth, init=[])
        wr = buffer.write_port()
        rd = buffer.read_port(domain="sync")

        record = data.StructLayout({"length": unsigned(length_bits),
                                    "credits": CreditRequest})
        m.submodules.records = records = SyncFIFO(width=record.size, depth=self.max_tlps)

        next_rcv_seq = Signal(SEQ_BITS)      # NEXT_RCV_SEQ
        nak_scheduled = Signal()             # NAK_SCHEDULED

        # --- writing what arrives ------------------------------------------------
        m.submodules.lcrc = lcrc = Lcrc(16)
        beat = self.rx.payload
        m.d.comb += self.rx.ready.eq(1)
        seq = Signal(SEQ_BITS)
        low = Signal(16)                     # first half of a DW
        odd = Signal()                       # next data beat is a DW's second half
        dws = Signal(length_bits)            # DWs written for this packet
        dw0 = Signal(32)
        four_dw = Signal()
        overflow = Signal()
        wptr = Signal(ptr_bits)              # next DW written
        wcommit = Signal(ptr_bits)           # end of the TLPs kept
        rfree = Signal(ptr_bits)             # start of the TLPs not yet read out
        used = (wptr - rfree)[:ptr_bits]

        m.d.comb += [lcrc.data.eq(beat.data), lcrc.en.eq(self.rx.valid),
                     lcrc.start.eq(beat.first)]
        dw = Cat(low, beat.data)
        swap = (dws < 3) | ((dws == 3) & four_dw)
        with m.If(self.rx.valid):
            with m.If(beat.first):
                m.d.sync += [seq.eq(Cat(beat.data[8:16], beat.data[0:4])),
                             odd.eq(0), dws.eq(0), overflow.eq(0),
                             wptr.eq(wcommit)]     # drop a packet that never ended
            with m.Elif(~odd):
                m.d.sync += [low.eq(beat.data), odd.eq(1)]
            with m.Else():
                m.d.sync += [odd.eq(0), dws.eq(dws + 1)]
                with m.If(dws == 0):
                    m.d.sync += [dw0.eq(byteswap32(dw)), four_dw.eq(dw[5])]   # Fmt[0]
                with m.If(overflow | (used == depth)):
                    m.d.sync += overflow.eq(1)
                with m.Else():
                    m.d.comb += [wr.addr.eq(wptr[:addr_bits]), wr.en.eq(1),
                                 wr.data.eq(Mux(swap, byteswap32(dw), dw))]
                    m.d.sync += wptr.eq(wptr + 1)

        # --- the checks, the cycle after the last beat -------------------------
        ended = Signal()
        ended_bad = Signal()
        ended_split = Signal()          # the last beat left half a DW
        m.d.sync += ended.eq(self.rx.valid & beat.last & ~beat.first)
        with m.If(self.rx.valid & beat.last):
            m.d.sync += [ended_bad.eq(beat.bad), ended_split.eq(~odd)]

        ack_due = Signal()
        nak_due = Signal()
        ack_pending = Signal()               # TLPs accepted since the last Ack/Nak
        timer = Signal(range(self.ack_latency + 1))  # AckNak_LATENCY_TIMER
        accepted = Signal()
        schedule_nak = Signal()
        schedule_ack = Signal()

        # a whole number of DWs, at least a
        # 3-DW header and the LCRC
        malformed = ended_split | (dws < _MIN_TLP_DWS + _LCRC_DWS)
        good = ~ended_bad & lcrc.good & ~malformed
        in_sequence = seq == next_rcv_seq
        duplicate = (next_rcv_seq - seq)[:SEQ_BITS] <= SEQ_HALF
        written = record(records.w_data)
        m.d.comb += [written.length.eq(dws - _LCRC_DWS),
                     written.credits.fc_type.eq(tlp_credit_type(dw0)),
                     written.credits.data.eq(tlp_data_credits(dw0))]
        with m.If(ended):
            with m.If(~self.enable):
                pass                                         # DL_Inactive, FC_INIT1
            with m.Elif(ended_bad & lcrc.nullified):
                pass                                         # nullified: discard
            with m.Elif(~good):
                m.d.comb += schedule_nak.eq(1)
            with m.Elif(in_sequence):
                with m.If(~overflow & records.w_rdy):
                    m.d.comb += [accepted.eq(1), records.w_en.eq(1)]
            with m.Elif(duplicate):
                m.d.comb += schedule_ack.eq(1)
            with m.Else():
                m.d.comb += schedule_nak.eq(1)
            m.d.comb += self.got_tlp.eq(good & self.enable)
            with m.If(accepted):
                m.d.sync += [next_rcv_seq.eq(next_rcv_seq + 1), nak_scheduled.eq(0),
                             wptr.eq(wptr - _LCRC_DWS), wcommit.eq(wptr - _LCRC_DWS)]
            with m.Else():
                m.d.sync += wptr.eq(wcommit)             # roll the packet back
        # every TLP that asks for a Nak is a Bad TLP, whether or not a Nak
        # goes out (NAK_SCHEDULED); registered, off the check's path
        m.d.sync += self.bad_tlp.eq(schedule_nak)
        with m.If(schedule_nak & ~nak_scheduled):
            m.d.sync += [nak_scheduled.eq(1), nak_due.eq(1)]

        # --- Ack/Nak DLLPs ---------------------------------------------------------
        m.d.comb += [
            self.ack_nak.valid.eq(nak_due | (ack_due & ~nak_scheduled)),
            self.ack_nak.payload.nak.eq(nak_due),
            self.ack_nak.payload.seq.eq(next_rcv_seq - 1),
        ]
        sent = self.ack_nak.valid & self.ack_nak.ready
        expired = ack_pending & (timer == self.ack_latency)
        with m.If(sent):
            m.d.sync += [nak_due.eq(0), ack_due.eq(0)]
        with m.If(schedule_ack | (expired & ~sent)):
            m.d.sync += ack_due.eq(1)
        with m.If(accepted):
            m.d.sync += ack_pending.eq(1)
            with m.If(~ack_pending):
                m.d.sync += timer.eq(0)
        with m.Elif(sent):
            m.d.sync += [ack_pending.eq(0), timer.eq(0)]
        with m.Elif(ack_pending & ~expired):
            m.d.sync += timer.eq(timer + 1)

        # --- reading out to the core -----------------------------------------------
        current = Signal(record)
        rptr = Signal(ptr_bits)
        remaining = Signal(length_bits)
        first = Signal()
        out = self.tlp.payload
        m.d.comb += [rd.addr.eq(rptr[:addr_bits]), rd.en.eq(0),
                     self.freed.payload.eq(current.credits)]
        with m.FSM(name="reader"):
            with m.State("Idle"):
                with m.If(records.r_rdy):
                    m.d.comb += [records.r_en.eq(1), rd.en.eq(1)]
                    m.d.sync += [current.eq(records.r_data), rptr.eq(rptr + 1),
                                 remaining.eq(record(records.r_data).length), first.eq(1)]
                    m.next = "Low"
            with m.State("Low"):
                m.d.sync += [out.data[0:32].eq(rd.data), remaining.eq(remaining - 1)]
                with m.If(remaining == 1):
                    m.d.sync += [out.keep.eq(0b01), out.last.eq(1), out.first.eq(first)]
                    m.next = "Deliver"
                with m.Else():
                    m.d.comb += rd.en.eq(1)
                    m.d.sync += rptr.eq(rptr + 1)
                    m.next = "High"
            with m.State("High"):
                m.d.sync += [out.data[32:64].eq(rd.data), remaining.eq(remaining - 1),
                             out.keep.eq(0b11), out.last.eq(remaining == 1),
                             out.first.eq(first)]
                m.next = "Deliver"
            with m.State("Deliver"):
                m.d.comb += self.tlp.valid.eq(1)
                with m.If(self.tlp.ready):
                    m.d.sync += first.eq(0)
                    with m.If(out.last):
                        m.d.comb += self.freed.valid.eq(1)
                        m.d.sync += rfree.eq(rptr)
                        m.next = "Idle"
                    with m.Else():
                        m.d.comb += rd.en.eq(1)
                        m.d.sync += rptr.eq(rptr + 1)
                        m.next = "Low"
        return m
