"""The PCIe data link layer (PCIe Base 4.0 chapter 3), VC0, one lane's worth
of 16-bit link beats a cycle.

    core tlp_tx -> TlpTransmitter (credits, replay buffer, seq, LCRC) -+
                   CreditAllocator (InitFC/UpdateFC) -+                 |
                   TlpReceiver (Ack/Nak) -------------+- DllpEncoder -- LinkPacketMux -> tx
    core tlp_rx <- TlpReceiver (LCRC, seq, buffer) <------------------- rx (kind TLP)
                   CreditGate, TlpTransmitter <- DllpDecoder <--------- rx (kind DLLP)

The Data Link Control and Management State Machine (3.2) with
flow control initialisation (3.4.2) as its DL_Init substates:

- DL_Inactive: the physical layer reports LinkUp = 0. Everything is reset
  (sequence numbers, replay buffer, credits): the whole layer is held in
  reset while ``link_up`` is low.
- FC_INIT1 (DL_Init): InitFC1 for P, NP and Cpl are sent over and over;
  the partner's InitFC1/InitFC2 values are recorded; when all three are
  (flag FI1), FC_INIT2.
- FC_INIT2 (DL_Init): InitFC2 for P, NP and Cpl over and over; TLPs are
  received already; an InitFC2 or UpdateFC or a TLP received (flag FI2)
  leads to DL_Active.
- DL_Active: ``dl_up``; TLPs are sent.

TLPs the core offers while the link is not DL_Active wait (``tlp_tx.ready``
stays low); they are not discarded.

Receive credits: P and NP as given; Completions infinite (an Endpoint's
must be, 2.6.1), with ``cpl_reserve_dws`` DWs and ``cpl_reserve_tlps`` TLPs of
the receive buffer kept for them: the core must not have more completion
data outstanding than that (the DMA reader: 8 reads of at most 256 bytes).
"""
from amaranth.hdl import Module, Mux, ResetInserter, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..pcie.tlp import TlpStreamSignature
from ..phy.link_packet import LinkPacketSignature, PacketKind
from .dllp import AckNakDllp, DllpDecoder, DllpEncoder, DllpType, FcDllp, FcKind
from .flow_control import CreditAllocator, CreditGate, FcPhase
from .link_mux import LinkPacketMux
from .receiver import ACK_LATENCY, TlpReceiver
from .transmitter import REPLAY_TIMEOUT, TlpTransmitter

__all__ = ["DataLink"]

_HDR_DWS = 4 + 1            # a 4-DW header and a digest per header credit
_DWS_PER_CREDIT = 4         # 16 bytes per data credit


class DataLink(wiring.Component):
    """The data link layer between the core's TLP streams and the physical layer.

    Ports (all in ``sync``; the board calls it ``pcie``, 125 MHz):
        tlp_tx:  In(TlpStreamSignature()), TLPs from the core (3.6.2).
        tlp_rx:  Out(TlpStreamSignature()), good TLPs to the core, in order,
                 once each (3.6.3).
        tx:      Out(LinkPacketSignature()), TLPs and DLLPs to the physical
                 layer (3.6.2.1 transmit priority).
        rx:      In(LinkPacketSignature()), TLPs and DLLPs from it (3.6.3,
                 3.6.2.2).
        link_up: In(1), the physical layer's LinkUp (3.2.1).
        dl_up:   Out(1), DL_Active (3.2).
        retrain: Out(1), pulse: REPLAY_NUM rolled over (3.6.2.1); the physical
                 layer should enter Recovery. Also the correctable error
                 REPLAY_NUM Rollover (6.2).
        bad_tlp, bad_dllp, replay_timer_timeout: Out(1), registered pulses: the
                 correctable errors Bad TLP (3.6.3.1), Bad DLLP (3.6.2.2) and
                 Replay Timer Timeout (3.6.2.1) of section 6.2's error list.

    Parameters: advertised credits ``p_hdr``, ``p_data``, ``np_hdr``,
    ``np_data``; ``cpl_reserve_dws``/``cpl_reserve_tlps`` (see above);
    ``replay_dws``/``replay_slots`` (replay buffer); timers in cycles:
    ``replay_timeout``, ``ack_latency``, ``update_period``.
    """

    def __init__(self, *, p_hdr=16, p_data=64, np_hdr=8, np_data=8,
                 cpl_reserve_dws=640, cpl_reserve_tlps=32,
                 replay_dws=1024, replay_slots=32, replay_timeout=REPLAY_TIMEOUT,
                 ack_latency=ACK_LATENCY, update_period=3750):
        self.credits = dict(p_hdr=p_hdr, p_data=p_data, np_hdr=np_hdr, np_data=np_data)
        needed = ((p_hdr + np_hdr) * _HDR_DWS + (p_data + np_data) * _DWS_PER_CREDIT
                  + cpl_reserve_dws + 1)                    # + the LCRC DW in passing
        self.rx_buffer_dws = 1 << (needed - 1).bit_length()
        self.rx_max_tlps = p_hdr + np_hdr + cpl_reserve_tlps
        self.replay = dict(replay_dws=replay_dws, slots=replay_slots,
                           replay_timeout=replay_timeout)
        self.ack_latency = ack_latency
        self.update_period = update_period
        super().__init__({
            "tlp_tx": In(TlpStreamSignature()),
            "tlp_rx": Out(TlpStreamSignature()),
            "tx": Out(LinkPacketSignature()),
            "rx": In(LinkPacketSignature()),
            "link_up": In(1),
            "dl_up": Out(1),
            "retrain": Out(1),
            "bad_tlp": Out(1),
            "bad_dllp": Out(1),
            "replay_timer_timeout": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        # DL_Inactive: LinkUp = 0 resets the whole layer (3.2.1)
        link = Module()
        m.submodules.link = ResetInserter({"sync": ~self.link_up})(link)

        link.submodules.transmitter = transmitter = TlpTransmitter(**self.replay)
        link.submodules.receiver = receiver = TlpReceiver(
            buffer_dws=self.rx_buffer_dws, max_tlps=self.rx_max_tlps,
            ack_latency=self.ack_latency)
        link.submodules.gate = gate = CreditGate()
        link.submodules.allocator = allocator = CreditAllocator(
            **self.credits, update_period=self.update_period)
        link.submodules.encoder = encoder = DllpEncoder()
        link.submodules.decoder = decoder = DllpDecoder()
        link.submodules.mux = mux = LinkPacketMux()

        # --- the core's side ----------------------------------------------------------
        wiring.connect(link, wiring.flipped(self.tlp_tx), transmitter.tlp)
        wiring.connect(link, receiver.tlp, wiring.flipped(self.tlp_rx))
        wiring.connect(link, transmitter.credit, gate.credit)
        wiring.connect(link, receiver.freed, allocator.freed)
        link.d.comb += [
            self.retrain.eq(transmitter.retrain),
            # correctable errors (6.2), each a registered pulse already
            self.bad_tlp.eq(receiver.bad_tlp),
            self.bad_dllp.eq(decoder.bad),
            self.replay_timer_timeout.eq(transmitter.timed_out),
        ]

        # --- the physical layer's side ------------------------------------------------
        wiring.connect(link, encoder.tx, mux.dllp)
        wiring.connect(link, transmitter.tx, mux.tlp)
        wiring.connect(link, mux.tx, wiring.flipped(self.tx))
        # receive: no back-pressure; each side sees its own kind of packet
        kind = self.rx.payload.kind
        link.d.comb += [
            self.rx.ready.eq(1),
            receiver.rx.payload.eq(self.rx.payload),
            receiver.rx.valid.eq(self.rx.valid & (kind == PacketKind.TLP)),
            decoder.rx.payload.eq(self.rx.payload),
            decoder.rx.valid.eq(self.rx.valid & (kind == PacketKind.DLLP)),
        ]

        # --- DLLPs to send: Ack/Nak first, then flow control (3.6.2.1) ------------------
        ack_nak = receiver.ack_nak
        with link.If(ack_nak.valid):
            out = AckNakDllp(encoder.dllp.payload)
            link.d.comb += [
                out.type.eq(Mux(ack_nak.payload.nak, DllpType.NAK, DllpType.ACK)),
                out.seq.eq(ack_nak.payload.seq),
                encoder.dllp.valid.eq(1),
                ack_nak.ready.eq(encoder.dllp.ready),
            ]
        with link.Else():
            link.d.comb += [
                encoder.dllp.payload.eq(allocator.dllp.payload),
                encoder.dllp.valid.eq(allocator.dllp.valid),
                allocator.dllp.ready.eq(encoder.dllp.ready),
            ]

        # --- DLLPs received --------------------------------------------------------------
        # registered first: the CRC check and the Ack's sequence arithmetic
        # in one cycle were the pcie domain's longest path
        received = Signal.like(decoder.dllp.payload)
        received_valid = Signal()
        link.d.sync += [received.eq(decoder.dllp.payload), received_valid.eq(decoder.dllp.valid)]
        as_ack = AckNakDllp(received)
        as_fc = FcDllp(received)
        is_ack_nak = (as_ack.type == DllpType.ACK) | (as_ack.type == DllpType.NAK)
        is_fc = ((as_fc.fc_kind != 0) & (as_fc.fc_type != 0b11)
                 & (as_fc.reserved == 0) & (as_fc.vc == 0))
        link.d.comb += [
            transmitter.ack.valid.eq(received_valid & is_ack_nak),
            transmitter.ack.payload.nak.eq(as_ack.type == DllpType.NAK),
            transmitter.ack.payload.seq.eq(as_ack.seq),
            gate.fc.valid.eq(received_valid & is_fc),
            gate.fc.payload.kind.eq(as_fc.fc_kind),
            gate.fc.payload.fc_type.eq(as_fc.fc_type),
            gate.fc.payload.hdr.eq(as_fc.hdr_fc),
            gate.fc.payload.data.eq(as_fc.data_fc),
        ]
        # FI2 (3.4.2): an InitFC2 or UpdateFC, or a TLP
        fi2 = ((gate.fc.valid & ((as_fc.fc_kind == FcKind.INIT_FC2)
                                 | (as_fc.fc_kind == FcKind.UPDATE_FC)))
               | receiver.got_tlp)

        # --- DLCMSM (3.2) with FC initialisation (3.4.2) ----------------------------------
        with link.FSM(name="dlcmsm"):
            with link.State("DL_Inactive"):
                link.next = "FC_INIT1"         # held here by reset while LinkUp = 0
            with link.State("FC_INIT1"):
                link.d.comb += allocator.phase.eq(FcPhase.FC_INIT1)
                with link.If(gate.init_done):
                    link.next = "FC_INIT2"
            with link.State("FC_INIT2"):
                link.d.comb += [allocator.phase.eq(FcPhase.FC_INIT2),
                                receiver.enable.eq(1)]
                with link.If(fi2):
                    link.next = "DL_Active"
            with link.State("DL_Active"):
                link.d.comb += [allocator.phase.eq(FcPhase.ACTIVE),
                                receiver.enable.eq(1),
                                transmitter.enable.eq(1)]
                link.d.sync += self.dl_up.eq(1)
        return m

