"""The TLP transmit side of the data link layer (PCIe Base 4.0 section 3.6.2).

TLPs from the core are written whole into the replay buffer (store and
forward: the physical layer must never wait in the middle of a packet, and a
TLP must stay there until acknowledged anyway). A TLP enters only when its
flow control credits (2.6.1.2, `CreditGate`) and room in the buffer are both
there; it then owns the next sequence number.

In the buffer a TLP is kept as it goes on the wire: each DW's first byte in
bits 7:0, so header DWs (big-endian values in the core's stream) are
byte-swapped on the way in and payload DWs are not. An ECRC digest (TD set)
is treated like payload (its bytes as on the wire); the core never sets TD.

Sending (3.6.2.1) prepends the 2-byte Sequence Number field (4 reserved bits,
then the 12-bit number, most significant byte first) and appends the LCRC,
computed 16 bits a cycle as the beats go out, for first transmissions and
replays alike.

Counters and timers of 3.6.2.1:

- NEXT_TRANSMIT_SEQ (``next_seq``): the number of the next TLP sent for the
  first time; ACKD_SEQ (``ackd_seq``): the last one acknowledged.
- An Ack or Nak whose AckNak_Seq_Num is outside ACKD_SEQ ..
  NEXT_TRANSMIT_SEQ - 1 is a DLLP protocol error and is ignored
  (3.6.2.1, "Ack/Nak DLLP ... Sequence Number ... does not correspond to an
  unacknowledged TLP"). Otherwise the TLPs up to it are purged; a Nak then
  replays every TLP left, oldest first.
- REPLAY_TIMER: runs while TLPs are unacknowledged; started when a TLP (or
  replayed TLP) has been sent if not running, restarted when an Ack/Nak
  makes forward progress, stopped when everything is acknowledged. On expiry
  the whole buffer is replayed.
- REPLAY_NUM: counts replays without forward progress; rolling over from
  11b to 00b pulses ``retrain`` (the physical layer should go to Recovery).
  Simplification: the replay is not held until retraining ends.

``replay_timeout`` is in cycles. The REPLAY_TIMER limit table of 3.6.2.1
(2.5 GT/s, x1) gives, as we read it, 711 symbol times for a 128-byte
Max_Payload_Size and 1248 for 256 bytes; at two symbols a cycle the default,
624 cycles, is the 256-byte value. A timer that fires early only costs
needless replays (the receiver drops the duplicates).
"""
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..pcie.tlp import TlpStreamSignature
from ..phy.link_packet import LinkPacketSignature, PacketKind
from .dllp import SEQ_BITS
from .flow_control import CreditCheckSignature, tlp_credit_type, tlp_data_credits
from .lcrc import Lcrc

__all__ = ["AckNak", "TlpTransmitter", "byteswap32", "seq_field", "REPLAY_TIMEOUT"]

REPLAY_TIMEOUT = 1248 // 2
SEQ_MOD = 1 << SEQ_BITS
SEQ_HALF = SEQ_MOD // 2
_MAX_TLP_DWS = 4 + 1024 + 1      # 4DW header, 1024 DW payload, digest

#: A received Ack or Nak DLLP, decoded.
AckNak = data.StructLayout({
    "nak": unsigned(1),
    "seq": unsigned(SEQ_BITS),
})


def byteswap32(value):
    """A header DW's 32-bit value <-> its bytes in wire order (byte 0 in bits 7:0)."""
    return Cat(value[24:32], value[16:24], value[8:16], value[0:8])


def seq_field(seq):
    """The first link beat of a TLP: the Sequence Number field, byte 0 =
    {0000b, seq[11:8]} in bits 7:0, byte 1 = seq[7:0] (3.6.2.1)."""
    return Cat(seq[8:12], Const(0, 4), seq[0:8])


def _seq_diff(a, b):
    """(a - b) mod 4096."""
    return (a - b)[:SEQ_BITS]


class TlpTransmitter(wiring.Component):
    """Replay buffer, sequence numbers, LCRC, Ack/Nak and replay (3.6.2).

    Parameters: ``replay_dws`` (power of two) DWs of replay buffer; ``slots``
    (power of two) TLPs it can hold at most; ``replay_timeout`` cycles.

    Ports (``sync``):
        tlp:     In(TlpStreamSignature()), TLPs from the core.
        tx:      Out(LinkPacketSignature()), TLPs framed for the link (kind TLP).
        ack:     In(stream(AckNak), always ready), Acks and Naks received.
        credit:  Out(CreditCheckSignature), to `CreditGate`.
        enable:  In(1), DL_Active: take new TLPs from the core.
        retrain: Out(1), registered pulse: REPLAY_NUM rolled over (a
                 correctable error, REPLAY_NUM Rollover, 6.2).
        timed_out: Out(1), registered pulse: REPLAY_TIMER expired (a
                 correctable error, Replay Timer Timeout, 6.2).
        idle:    Out(1), every TLP taken is acknowledged.
    """

    def __init__(self, *, replay_dws=1024, slots=32, replay_timeout=REPLAY_TIMEOUT):
        for name, value in (("replay_dws", replay_dws), ("slots", slots)):
            if value & (value - 1):
                raise ValueError(f"{name} {value}: a power of two")
        if slots > SEQ_HALF:
            raise ValueError(f"slots {slots}: at most {SEQ_HALF}")
        self.replay_dws = replay_dws
        self.slots = slots
        self.replay_timeout = replay_timeout
        super().__init__({
            "tlp": In(TlpStreamSignature()),
            "tx": Out(LinkPacketSignature()),
            "ack": In(stream.Signature(AckNak, always_ready=True)),
            "credit": Out(CreditCheckSignature),
            "enable": In(1),
            "retrain": Out(1),
            "timed_out": Out(1),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        depth = self.replay_dws
        addr_bits = (depth - 1).bit_length()
        length_bits = _MAX_TLP_DWS.bit_length()

        m.submodules.buffer = buffer = Memory(shape=32, depth=depth, init=[])
        wr = buffer.write_port()
        rd = buffer.read_port(domain="sync")

        slot_layout = data.StructLayout({"start": unsigned(addr_bits),
                                         "length": unsigned(length_bits)})
        slots = Array(Signal(slot_layout, name=f"slot{i}") for i in range(self.slots))

        next_seq = Signal(SEQ_BITS)                        # NEXT_TRANSMIT_SEQ
        ackd_seq = Signal(SEQ_BITS, init=SEQ_MOD - 1)      # ACKD_SEQ
        oldest = Signal(SEQ_BITS)                          # ACKD_SEQ + 1, registered (timing)
        stored_seq = Signal(SEQ_BITS)                      # number the next stored TLP gets
        m.d.comb += self.idle.eq(_seq_diff(stored_seq, ackd_seq) == 1)

        # --- the writer: core -> replay buffer ---------------------------------
        hdr0 = Signal(32)
        wstart = Signal(addr_bits)          # where the TLP being written starts
        wptr = Signal(addr_bits)
        dw_index = Signal(length_bits)
        lane = Signal()
        four_dw = hdr0[29]
        with_data = hdr0[30]
        payload_dws = Mux(with_data, Mux(hdr0[0:10] == 0, 1024, hdr0[0:10]), 0)
        total_dws = Signal(length_bits)
        m.d.comb += total_dws.eq(3 + four_dw + payload_dws + hdr0[15])   # TD: digest

        tail = Signal(addr_bits)            # start of the oldest TLP kept
        m.d.comb += tail.eq(slots[oldest % self.slots].start)
        stored_count = _seq_diff(stored_seq, oldest)
        free = Signal(addr_bits + 1)
        m.d.sync += free.eq(Mux(stored_count == 0, depth, (tail - wstart)[:addr_bits]))
        room = Signal()
        m.d.sync += room.eq((free >= total_dws) & (stored_count < self.slots))

        # registered (ready in Wait_For_Credit): the credits a TLP needs and
        # the gate's check in one cycle were the pcie domain's longest path
        m.d.sync += [
            self.credit.request.fc_type.eq(tlp_credit_type(hdr0)),
            self.credit.request.data.eq(tlp_data_credits(hdr0)),
        ]
        beat = self.tlp.payload
        with m.FSM(name="writer"):
            with m.State("Idle"):
                with m.If(self.tlp.valid & ~beat.first):
                    m.d.comb += self.tlp.ready.eq(1)      # the rest of a TLP cut by link down
                with m.Elif(self.tlp.valid & self.enable):
                    m.d.sync += hdr0.eq(beat.data[0:32])
                    m.next = "Size"
            with m.State("Size"):
                m.next = "Wait_For_Credit"                # total_dws, the credit request settle
            with m.State("Wait_For_Credit"):
                with m.If(self.credit.grant & room):
                    m.d.comb += self.credit.consume.eq(1)
                    m.d.sync += [dw_index.eq(0), lane.eq(0), wptr.eq(wstart)]
                    m.next = "Store"
            with m.State("Store"):
                dw = Mux(lane, beat.data[32:64], beat.data[0:32])
                beat_done = lane | ~beat.keep[1]
                m.d.comb += [
                    wr.addr.eq(wptr),
                    wr.data.eq(Mux(dw_index < 3 + four_dw, byteswap32(dw), dw)),
                    wr.en.eq(self.tlp.valid),
                    self.tlp.ready.eq(beat_done),
                ]
                with m.If(self.tlp.valid):
                    m.d.sync += [wptr.eq(wptr + 1), dw_index.eq(dw_index + 1),
                                 lane.eq(~beat_done)]
                    with m.If(beat_done & beat.last):
                        # commit: the TLP is now whole and owns stored_seq
                        slot = slots[stored_seq % self.slots]
                        m.d.sync += [
                            slot.start.eq(wstart),
                            slot.length.eq(dw_index + 1),
                            stored_seq.eq(stored_seq + 1),
                            wstart.eq(wptr + 1),
                        ]
                        m.next = "Idle"

        # --- Ack/Nak processing (3.6.2.1) ----------------------------------------
        replay_request = Signal()
        replay_num = Signal(2)                             # REPLAY_NUM
        timer = Signal(range(self.replay_timeout + 1))     # REPLAY_TIMER
        timer_running = Signal()
        start_replay = Signal()          # replay begins now (sender)
        sent_one = Signal()              # a TLP's last beat went out (sender)

        # An Ack/Nak is checked as it arrives (`held_ok`, `held_forward`) and
        # applied a cycle or more later: it waits in `held` while the sender
        # ends a TLP (LCRC_Low, LCRC_High), so that ACKD_SEQ holds still
        # while the sender works out which TLP to replay next over those two
        # cycles. Both halves are short paths (timing). DLLPs are three beats
        # long: the next one cannot come before this one is applied, so the
        # ACKD_SEQ it was checked against is still current when it applies.
        last_sent = Signal(SEQ_BITS, init=SEQ_MOD - 1)    # NEXT_TRANSMIT_SEQ - 1
        held = Signal(AckNak)
        held_valid = Signal()
        held_forward = Signal(SEQ_BITS)  # TLPs it acknowledges
        held_ok = Signal()               # it names a TLP sent and not yet acknowledged, or ACKD_SEQ
        ending = Signal()                # the sender is in LCRC_Low or LCRC_High
        apply = held_valid & ~ending
        with m.If(self.ack.valid):
            arriving = self.ack.payload
            m.d.sync += [held.eq(arriving), held_valid.eq(1),
                         held_forward.eq(_seq_diff(arriving.seq, ackd_seq)),
                         held_ok.eq(_seq_diff(arriving.seq, ackd_seq)
                                    <= _seq_diff(last_sent, ackd_seq))]
        with m.Elif(apply):
            m.d.sync += held_valid.eq(0)
        ack = held
        unacknowledged = last_sent != ackd_seq             # TLPs sent, unacknowledged
        ack_ok = apply & held_ok
        progress = ack_ok & (held_forward != 0)
        timeout = timer_running & (timer == self.replay_timeout)
        new_replay = (ack_ok & ack.nak) | timeout

        with m.If(progress):
            m.d.sync += [ackd_seq.eq(ack.seq), oldest.eq((ack.seq + 1)[:SEQ_BITS])]
        m.d.sync += self.retrain.eq(0)  # a registered pulse (timing: it goes to the LTSSM)
        m.d.sync += self.timed_out.eq(timeout)          # registered: error reporting only
        with m.If(new_replay):
            m.d.sync += [replay_request.eq(1),
                         replay_num.eq(Mux(progress, 0, replay_num) + 1)]
            # 3.6.2.1: REPLAY_NUM rolls over from 11b to 00b: retrain the link
            m.d.sync += self.retrain.eq(~progress & (replay_num == 3))
        with m.Elif(progress):
            m.d.sync += replay_num.eq(0)
        with m.Elif(start_replay):
            m.d.sync += replay_request.eq(0)

        with m.If(new_replay | start_replay):
            m.d.sync += [timer.eq(0), timer_running.eq(0)]
        with m.Elif(progress):
            # restart while TLPs stay unacknowledged, else stop
            m.d.sync += [timer.eq(0), timer_running.eq(ack.seq != last_sent)]
        with m.Elif(sent_one & ~timer_running):
            m.d.sync += [timer.eq(0), timer_running.eq(1)]
        with m.Elif(timer_running):
            m.d.sync += timer.eq(timer + 1)

        # --- the sender: replay buffer -> link ------------------------------------
        m.submodules.lcrc = lcrc = Lcrc(16)
        cur_seq = Signal(SEQ_BITS)
        replaying = Signal()
        replay_end = Signal(SEQ_BITS)
        following = Signal(SEQ_BITS)     # the TLP to send after it in a replay
        # the buffer address of the DW after the one being sent, registered: no
        # adder between the link's ready and the read address
        ptr_next = Signal(addr_bits)
        remaining = Signal(length_bits)
        cur_slot = Signal(slot_layout)
        accepted = self.tx.valid & self.tx.ready
        out = self.tx.payload
        m.d.comb += [
            out.kind.eq(PacketKind.TLP),
            rd.en.eq(0),
            lcrc.data.eq(out.data),
            lcrc.en.eq(0),
            lcrc.clear.eq(0),
        ]
        with m.FSM(name="sender"):
            with m.State("Idle"):
                m.d.comb += lcrc.clear.eq(1)
                with m.If(replay_request):
                    m.d.comb += start_replay.eq(1)
                    with m.If(unacknowledged):
                        m.d.sync += [cur_seq.eq(oldest), replaying.eq(1),
                                     replay_end.eq(next_seq)]
                        m.next = "Load"
                with m.Elif(next_seq != stored_seq):
                    m.d.sync += [cur_seq.eq(next_seq), replaying.eq(0)]
                    m.next = "Load"
            with m.State("Load"):
                m.d.comb += lcrc.clear.eq(1)
                m.d.sync += cur_slot.eq(slots[cur_seq % self.slots])
                m.next = "Fetch"
            with m.State("Fetch"):
                m.d.comb += [lcrc.clear.eq(1), rd.addr.eq(cur_slot.start), rd.en.eq(1)]
                m.d.sync += [ptr_next.eq(cur_slot.start + 1), remaining.eq(cur_slot.length)]
                m.next = "Sequence_Number"
            with m.State("Sequence_Number"):
                m.d.comb += [self.tx.valid.eq(1), out.first.eq(1),
                             out.data.eq(seq_field(cur_seq)), lcrc.en.eq(accepted)]
                with m.If(accepted):
                    m.next = "Data_Low"
            with m.State("Data_Low"):
                m.d.comb += [self.tx.valid.eq(1), out.data.eq(rd.data[0:16]),
                             lcrc.en.eq(accepted)]
                with m.If(accepted):
                    m.next = "Data_High"
            with m.State("Data_High"):
                m.d.comb += [self.tx.valid.eq(1), out.data.eq(rd.data[16:32]),
                             lcrc.en.eq(accepted)]
                with m.If(accepted):
                    m.d.sync += [remaining.eq(remaining - 1), ptr_next.eq(ptr_next + 1)]
                    m.d.comb += [rd.addr.eq(ptr_next), rd.en.eq(1)]
                    with m.If(remaining == 1):
                        m.next = "LCRC_Low"
                    with m.Else():
                        m.next = "Data_Low"
            with m.State("LCRC_Low"):
                m.d.comb += [self.tx.valid.eq(1), out.data.eq(lcrc.crc[0:16]), ending.eq(1)]
                # skip TLPs an Ack purged during the replay (decided a cycle
                # ahead; ACKD_SEQ holds still until the TLP has ended)
                purged = _seq_diff(ackd_seq, cur_seq) < SEQ_HALF
                m.d.sync += following.eq(Mux(purged, oldest, (cur_seq + 1)[:SEQ_BITS]))
                with m.If(accepted):
                    m.next = "LCRC_High"
            with m.State("LCRC_High"):
                m.d.comb += [self.tx.valid.eq(1), out.data.eq(lcrc.crc[16:32]),
                             out.last.eq(1), ending.eq(1)]
                with m.If(accepted):
                    m.d.comb += sent_one.eq(1)
                    after = following
                    with m.If(~replaying):
                        m.d.sync += [next_seq.eq(next_seq + 1), last_sent.eq(next_seq)]
                        m.next = "Idle"
                    with m.Elif(replay_request | (after == replay_end)):
                        m.d.sync += replaying.eq(0)
                        m.next = "Idle"
                    with m.Else():
                        m.d.sync += cur_seq.eq(after)
                        m.next = "Load"
        return m
