"""Framing: link packets onto the lane and back (PCIe Base 4.0 section 4.2.1.2,
"Framing and Application of Symbols to Lanes" for 8b/10b; section 4.2.2 in
Base 2.x), logical idle and SKP ordered set scheduling (section 4.2.7).

Transmit (`Transmitter`): what the LTSSM asks for (`TxMode`): electrical
idle, TS1 or TS2 ordered sets back to back, logical idle (D0.0, scrambled;
section 4.2.1.2, "Logical Idle"), or in L0 link packets framed STP ... END
(TLP) or SDP ... END (DLLP) with logical idle between them. A SKP ordered set
(COM SKP SKP SKP) is scheduled every `skp_interval` cycles and goes out at
the next boundary between packets or ordered sets (section 4.2.7: scheduled
every 1180 to 1538 symbol times, never inside a packet or an ordered set;
those that fall due during a long packet are sent back to back after it, up
to three owed).

The start symbol goes in slot 0 of a cycle: STP, byte 0 | byte 1, byte 2 |
... | last byte, END. Link packets have an even byte count, so every packet
and every ordered set we send starts in slot 0.

Receive (`Receiver`), on the descrambled stream: a packet may start in either
slot (the far end sends a symbol stream, and SKP clock compensation moves the
cut), and is delivered in 2-byte beats. Framing errors (the rules of section
4.2.1.2 for 8b/10b: END/EDB not after an even number of bytes, a K symbol
inside a packet, STP/SDP followed by a K symbol, END/EDB outside a packet)
pulse ``framing_error``; a packet they hit ends with ``bad``. An 8b/10b
decode or disparity error (``error``) inside a packet, or EDB, or losing
symbol lock inside it, also ends it with ``bad``. For 8b/10b a framing error
is a Receiver Error (section 4.2.1.2; reported to the data link layer,
section 3.6.3.1 / 7.8.5); the LTSSM may optionally go to Recovery on it.

Receive also watches for logical idle: ``idle_any`` (an idle data symbol
this cycle) and ``idle_ok`` (eight consecutive idle data symbols), for
Configuration.Idle and Recovery.Idle (sections 4.2.6.3.6, 4.2.6.4.5).
"""
import enum

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .link_packet import LinkPacketSignature, PacketKind
from .ordered_sets import TS_WORDS, TsFields, TsKind, ts_word
from .pipe import SYMBOLS_PER_CYCLE
from .symbols import IDLE_DATA, KSymbol

__all__ = ["TxMode", "Transmitter", "Receiver", "SKP_INTERVAL_CYCLES"]

#: 1180 symbol times (the short end of section 4.2.7's window), in cycles.
SKP_INTERVAL_CYCLES = 1180 // SYMBOLS_PER_CYCLE


class TxMode(enum.IntEnum):
    ELEC_IDLE = 0   # transmitter in electrical idle (Detect)
    TS1 = 1         # TS1 ordered sets back to back
    TS2 = 2
    IDLE = 3        # logical idle (Configuration.Idle, Recovery.Idle)
    L0 = 4          # link packets, logical idle between them


class _Sending(enum.IntEnum):
    NOTHING = 0     # at a boundary: choose what to start this cycle
    TS = 1
    SKP = 2
    PACKET = 3
    PACKET_END = 4


class Transmitter(wiring.Component):
    """Chooses two symbols a cycle (registered). ``enable`` says which data
    symbols to scramble (all but TS contents). ``ts_sent`` pulses as the last
    word of a TS goes out; ``idle_sent`` when two logical idle symbols do."""

    mode: In(TxMode)
    ts_fields: In(TsFields)
    tx: In(LinkPacketSignature())
    data: Out(8 * SYMBOLS_PER_CYCLE)
    datak: Out(SYMBOLS_PER_CYCLE)
    enable: Out(SYMBOLS_PER_CYCLE)
    elec_idle: Out(1, init=1)
    ts_sent: Out(1)
    idle_sent: Out(1)
    skp_sent: Out(1)

    def __init__(self, *, skp_interval=SKP_INTERVAL_CYCLES):
        self._skp_interval = skp_interval
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        sending = Signal(_Sending)
        index = Signal(range(TS_WORDS))
        ts_kind = Signal(TsKind)
        fields = Signal(TsFields)
        carry = Signal(8)
        skp_timer = Signal(range(self._skp_interval + 1))
        skp_owed = Signal(range(4))     # scheduled and not yet sent
        skp_due = Signal()
        skp_start = Signal()
        m.d.comb += skp_due.eq(skp_owed != 0)

        # SKP scheduling (section 4.2.7): the timer runs whenever we transmit;
        # SKP ordered sets that fall due inside a packet are owed and sent
        # back to back at the next boundary.
        expired = Signal()
        with m.If(self.mode == TxMode.ELEC_IDLE):
            m.d.sync += [skp_timer.eq(0), skp_owed.eq(0)]
        with m.Else():
            m.d.comb += expired.eq(skp_timer == self._skp_interval - 1)
            m.d.sync += skp_timer.eq(Mux(expired, 0, skp_timer + 1))
            with m.If(expired & ~skp_start & (skp_owed != 3)):
                m.d.sync += skp_owed.eq(skp_owed + 1)
            with m.Elif(~expired & skp_start):
                m.d.sync += skp_owed.eq(skp_owed - 1)

        word, wordk = Signal(16), Signal(2)
        enable = Signal(2)
        elec_idle = Signal()
        beat = self.tx.payload
        start_symbol = Mux(beat.kind == PacketKind.DLLP, KSymbol.SDP, KSymbol.STP)
        ts_mode_kind = Mux(self.mode == TxMode.TS2, TsKind.TS2, TsKind.TS1)
        m.d.sync += [self.ts_sent.eq(0), self.idle_sent.eq(0), self.skp_sent.eq(0)]

        def idle():
            m.d.comb += [word.eq(Cat(Const(IDLE_DATA, 8), Const(IDLE_DATA, 8))),
                         wordk.eq(0), enable.eq(0b11)]
            m.d.sync += self.idle_sent.eq(1)

        with m.Switch(sending):
            with m.Case(_Sending.NOTHING):
                with m.If(self.mode == TxMode.ELEC_IDLE):
                    m.d.comb += elec_idle.eq(1)
                with m.Elif(skp_due):
                    m.d.comb += [word.eq(Cat(Const(KSymbol.COM, 8), Const(KSymbol.SKP, 8))),
                                 wordk.eq(0b11)]
                    m.d.comb += skp_start.eq(1)
                    m.d.sync += [sending.eq(_Sending.SKP), self.skp_sent.eq(1)]
                with m.Elif((self.mode == TxMode.TS1) | (self.mode == TxMode.TS2)):
                    w, k = ts_word(0, ts_mode_kind, self.ts_fields)
                    m.d.comb += [word.eq(w), wordk.eq(k)]
                    m.d.sync += [sending.eq(_Sending.TS), index.eq(1),
                                 ts_kind.eq(ts_mode_kind), fields.eq(self.ts_fields)]
                with m.Elif((self.mode == TxMode.L0) & self.tx.valid):
                    # STP/SDP, byte 0; byte 1 waits for the next cycle.
                    m.d.comb += [self.tx.ready.eq(1),
                                 word.eq(Cat(start_symbol, beat.data[0:8])),
                                 wordk.eq(0b01), enable.eq(0b10)]
                    m.d.sync += [carry.eq(beat.data[8:16]),
                                 sending.eq(Mux(beat.last, _Sending.PACKET_END,
                                                _Sending.PACKET))]
                with m.Else():
                    idle()
            with m.Case(_Sending.SKP):
                m.d.comb += [word.eq(Cat(Const(KSymbol.SKP, 8), Const(KSymbol.SKP, 8))),
                             wordk.eq(0b11)]
                m.d.sync += sending.eq(_Sending.NOTHING)
            with m.Case(_Sending.TS):
                w, k = ts_word(index, ts_kind, fields)
                m.d.comb += [word.eq(w), wordk.eq(k)]   # TS data is not scrambled
                m.d.sync += index.eq(index + 1)
                with m.If(index == TS_WORDS - 1):
                    m.d.sync += [sending.eq(_Sending.NOTHING), self.ts_sent.eq(1)]
            with m.Case(_Sending.PACKET):
                with m.If(self.tx.valid):
                    m.d.comb += [self.tx.ready.eq(1),
                                 word.eq(Cat(carry, beat.data[0:8])),
                                 wordk.eq(0), enable.eq(0b11)]
                    m.d.sync += carry.eq(beat.data[8:16])
                    with m.If(beat.last):
                        m.d.sync += sending.eq(_Sending.PACKET_END)
                with m.Else():
                    # The DLL broke the contract (a gap inside a packet):
                    # nullify what went out with EDB (section 4.2.1.2).
                    m.d.comb += [word.eq(Cat(carry, Const(KSymbol.EDB, 8))),
                                 wordk.eq(0b10), enable.eq(0b01)]
                    m.d.sync += sending.eq(_Sending.NOTHING)
            with m.Case(_Sending.PACKET_END):
                m.d.comb += [word.eq(Cat(carry, Const(KSymbol.END, 8))),
                             wordk.eq(0b10), enable.eq(0b01)]
                m.d.sync += sending.eq(_Sending.NOTHING)

        m.d.sync += [self.data.eq(word), self.datak.eq(wordk), self.enable.eq(enable),
                     self.elec_idle.eq(elec_idle)]
        return m


class Receiver(wiring.Component):
    """Deframes the descrambled stream into link packets (one register stage
    plus, for packets whose start symbol came in slot 1, one beat held back
    to learn whether it is the last).

    Inputs: ``data``/``datak``/``valid`` (descrambled symbols), ``error``
    (8b/10b decode or disparity error, or elastic buffer over/underflow, in
    this cycle), ``enable`` (the LTSSM
    is in a state where packets may arrive). Outputs: ``rx`` (link packets,
    no back-pressure), ``framing_error`` pulse, ``idle_any``, ``idle_ok``.
    """

    data: In(8 * SYMBOLS_PER_CYCLE)
    datak: In(SYMBOLS_PER_CYCLE)
    valid: In(1)
    error: In(1)
    enable: In(1)
    rx: Out(LinkPacketSignature())
    framing_error: Out(1)
    idle_any: Out(1)
    idle_ok: Out(1)

    def elaborate(self, platform):
        m = Module()
        d0, d1 = self.data[0:8], self.data[8:16]
        k0, k1 = self.datak[0], self.datak[1]

        def is_k(k, d, *syms):
            hit = Const(0)
            for sym in syms:
                hit = hit | (d == sym)
            return k & hit

        start0 = is_k(k0, d0, KSymbol.STP, KSymbol.SDP)
        start1 = is_k(k1, d1, KSymbol.STP, KSymbol.SDP)
        end0 = is_k(k0, d0, KSymbol.END, KSymbol.EDB)
        end1 = is_k(k1, d1, KSymbol.END, KSymbol.EDB)
        edb0 = is_k(k0, d0, KSymbol.EDB)
        edb1 = is_k(k1, d1, KSymbol.EDB)
        kind0 = Mux(is_k(k0, d0, KSymbol.SDP), PacketKind.DLLP, PacketKind.TLP)
        kind1 = Mux(is_k(k1, d1, KSymbol.SDP), PacketKind.DLLP, PacketKind.TLP)

        in_packet = Signal()
        phase = Signal()          # slot of the start symbol
        kind = Signal(PacketKind)
        first = Signal()
        bad = Signal()            # an error seen so far in this packet
        carry = Signal(8)         # phase 0: the byte waiting for its pair
        held = Signal(16)         # phase 1: the beat held back
        held_valid = Signal()
        out = self.rx.payload
        m.d.sync += [self.rx.valid.eq(0), self.framing_error.eq(0)]

        def emit(beat, last, is_bad):
            m.d.sync += [self.rx.valid.eq(1), out.data.eq(beat), out.kind.eq(kind),
                         out.first.eq(first), out.last.eq(last),
                         out.bad.eq(Mux(last, is_bad, 0)), first.eq(0)]

        def begin(slot, new_kind, carry_byte=None):
            m.d.sync += [in_packet.eq(1), phase.eq(slot), kind.eq(new_kind), first.eq(1),
                         bad.eq(self.error), held_valid.eq(0)]
            if carry_byte is not None:
                m.d.sync += carry.eq(carry_byte)

        with m.If(~self.valid | ~self.enable):
            with m.If(in_packet):                        # lost symbol lock inside a packet
                emit(held, 1, 1)
                m.d.sync += in_packet.eq(0)
        with m.Elif(~in_packet):
            with m.If(start0):
                with m.If(k1):
                    m.d.sync += self.framing_error.eq(1)
                with m.Else():
                    begin(0, kind0, d1)
            with m.Elif(start1):
                begin(1, kind1)
            with m.Elif(end0 | end1):
                m.d.sync += self.framing_error.eq(1)
        with m.Elif(phase == 0):
            beat = Cat(carry, d0)
            with m.If(~k0 & ~k1):
                emit(beat, 0, 0)
                m.d.sync += [carry.eq(d1), bad.eq(bad | self.error)]
            with m.Elif(~k0 & end1):
                emit(beat, 1, bad | self.error | edb1)
                m.d.sync += in_packet.eq(0)
            with m.Else():
                emit(beat, 1, 1)
                m.d.sync += [in_packet.eq(0), self.framing_error.eq(1)]
        with m.Else():
            with m.If(~k0 & ~k1):
                with m.If(held_valid):
                    emit(held, 0, 0)
                m.d.sync += [held.eq(self.data), held_valid.eq(1), bad.eq(bad | self.error)]
            with m.Elif(end0 & held_valid):
                emit(held, 1, bad | self.error | edb0)
                m.d.sync += in_packet.eq(0)
                with m.If(start1):                       # back to back, next in slot 1
                    begin(1, kind1)
            with m.Else():
                emit(held, 1, 1)
                m.d.sync += [in_packet.eq(0), self.framing_error.eq(1)]

        # Logical idle watch (D0.0 after descrambling).
        idle0 = self.valid & ~k0 & (d0 == IDLE_DATA)
        idle1 = self.valid & ~k1 & (d1 == IDLE_DATA)
        run = Signal(range(9))
        with m.If(idle0 & idle1):
            m.d.sync += run.eq(Mux(run >= 6, 8, run + 2))
        with m.Elif(idle1):
            m.d.sync += run.eq(1)
        with m.Else():
            m.d.sync += run.eq(0)
        m.d.comb += self.idle_ok.eq(run == 8)
        m.d.sync += self.idle_any.eq(idle0 | idle1)
        return m
