"""Ordered sets: TS1/TS2 transmit words, and the receive side (COM alignment,
TS1/TS2 parsing, SKP and EIOS detection).

PCIe Base 4.0 section 4.2.4.1 (TS1/TS2, Tables 4-3 and 4-4: COM, link number,
lane number, N_FTS, data rate identifier, training control, ten TS
identifiers), 4.2.4.2 (EIOS: COM IDL IDL IDL), 4.2.7 (SKP ordered set: COM
and SKPs; a receiver must accept 1 to 5 SKPs since clock compensation adds
or removes them) and 4.2.4.4 (polarity inversion: a receiver that decodes the
TS identifiers as D21.5 / D26.5 must invert its lane).

The two-symbol receive word: a COM may land in either symbol slot of a cycle
(a x1 link is a stream of symbols; the SERDES cuts it in pairs where it
likes, and an added or removed SKP moves the cut). `OrderedSetRx` realigns the
stream on every COM so that the COM is in slot 0 and parses the aligned
words. Packets need no such alignment: `framing.Receiver` accepts STP/SDP in
either slot.
"""
import enum

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .pipe import SYMBOLS_PER_CYCLE
from .symbols import (KSymbol, TS1_ID, TS2_ID, TS1_ID_INVERTED, TS2_ID_INVERTED)

__all__ = ["TsKind", "TsFields", "TsInfo", "ts_word", "OrderedSetRx"]


class TsKind(enum.IntEnum):
    TS1 = 0
    TS2 = 1


#: The variable symbols of a TS1/TS2 (symbols 1..5, Table 4-3). A ``*_pad``
#: bit sends (or says we received) K23.7 PAD instead of the number.
TsFields = data.StructLayout({
    "link": unsigned(8),
    "link_pad": unsigned(1),
    "lane": unsigned(8),
    "lane_pad": unsigned(1),
    "n_fts": unsigned(8),
    "rate": unsigned(8),
    "control": unsigned(8),
})

#: A received TS: its fields, which one, and whether its identifiers came in
#: inverted (polarity, section 4.2.4.4).
TsInfo = data.StructLayout({
    "fields": TsFields,
    "kind": TsKind,
    "inverted": unsigned(1),
})

TS_WORDS = 16 // SYMBOLS_PER_CYCLE


def ts_word(index, kind, fields):
    """Word `index` (0..7) of a TS1/TS2 with `fields` (a TsFields view):
    (data[16], datak[2]) expressions, symbol 0 in the low byte."""
    ts_id = Mux(kind == TsKind.TS2, Const(TS2_ID, 8), Const(TS1_ID, 8))
    link = Mux(fields.link_pad, KSymbol.PAD, fields.link)
    lane = Mux(fields.lane_pad, KSymbol.PAD, fields.lane)
    words = Array([
        Cat(Const(KSymbol.COM, 8), link),               # symbols 0, 1
        Cat(lane, fields.n_fts),                        # 2, 3
        Cat(fields.rate, fields.control),               # 4, 5
    ] + [Cat(ts_id, ts_id)] * (TS_WORDS - 3))           # 6..15: identifiers
    ks = Array([Cat(Const(1, 1), fields.link_pad),
                Cat(fields.lane_pad, Const(0, 1))] + [Const(0, 2)] * (TS_WORDS - 2))
    return words[index], ks[index]


class OrderedSetRx(wiring.Component):
    """Receive side of the ordered sets, on the raw (not descrambled) PIPE
    stream. Two register stages: realign to COM, then parse.

    Outputs (one-cycle pulses): ``ts_valid`` with ``ts`` (a whole TS1/TS2 was
    received; ``ts.inverted`` = its identifiers were D21.5/D26.5), ``skp`` (a
    SKP ordered set began), ``eios`` (COM IDL IDL IDL).
    """

    data: In(8 * SYMBOLS_PER_CYCLE)
    datak: In(SYMBOLS_PER_CYCLE)
    valid: In(1)
    ts_valid: Out(1)
    ts: Out(TsInfo)
    skp: Out(1)
    eios: Out(1)

    def elaborate(self, platform):
        m = Module()

        # Stage 1: alignment. `offset` = 1 when the COM came in slot 1, then
        # the aligned word is (previous slot 1, this slot 0).
        offset = Signal()
        prev = Signal(8)
        prev_k = Signal()
        d0, d1 = self.data[0:8], self.data[8:16]
        k0, k1 = self.datak[0], self.datak[1]
        com0 = k0 & (d0 == KSymbol.COM)
        com1 = k1 & (d1 == KSymbol.COM)
        offset_now = Mux(com0, 0, Mux(com1, 1, offset))
        m.d.sync += [offset.eq(offset_now), prev.eq(d1), prev_k.eq(k1)]

        a0, a1 = Signal(8), Signal(8)
        ak0, ak1 = Signal(), Signal()
        avalid = Signal()
        m.d.sync += [
            a0.eq(Mux(offset_now, prev, d0)), ak0.eq(Mux(offset_now, prev_k, k0)),
            a1.eq(Mux(offset_now, d0, d1)), ak1.eq(Mux(offset_now, k0, k1)),
            avalid.eq(self.valid),
        ]

        # Stage 2: parse aligned words. `index` = which word of a TS comes
        # next (1..7); 0 = not inside a TS.
        index = Signal(range(TS_WORDS))
        fields = Signal(TsFields)
        ts_id = Signal(8)
        eios_next = Signal()
        m.d.sync += [self.ts_valid.eq(0), self.skp.eq(0), self.eios.eq(0),
                     eios_next.eq(0)]

        def is_k(k, d, sym):
            return k & (d == sym)

        ok_num0 = ~ak0 | is_k(ak0, a0, KSymbol.PAD)
        ok_num1 = ~ak1 | is_k(ak1, a1, KSymbol.PAD)
        id_now = Mux(index == 3, a0, ts_id)
        id_ok = ~ak0 & ~ak1 & (a0 == id_now) & (a1 == id_now)
        with m.If(~avalid):
            m.d.sync += index.eq(0)
        with m.Elif(is_k(ak0, a0, KSymbol.COM)):
            m.d.sync += index.eq(0)
            with m.If(is_k(ak1, a1, KSymbol.SKP)):
                m.d.sync += self.skp.eq(1)               # section 4.2.7
            with m.Elif(is_k(ak1, a1, KSymbol.IDL)):
                m.d.sync += eios_next.eq(1)              # section 4.2.4.2
            with m.Elif(ok_num1):
                m.d.sync += [index.eq(1), fields.link.eq(a1), fields.link_pad.eq(ak1)]
        with m.Elif(eios_next):
            with m.If(is_k(ak0, a0, KSymbol.IDL) & is_k(ak1, a1, KSymbol.IDL)):
                m.d.sync += self.eios.eq(1)
        with m.Elif(index == 1):
            m.d.sync += [fields.lane.eq(a0), fields.lane_pad.eq(ak0), fields.n_fts.eq(a1),
                         index.eq(Mux(ok_num0 & ~ak1, 2, 0))]
        with m.Elif(index == 2):
            m.d.sync += [fields.rate.eq(a0), fields.control.eq(a1),
                         index.eq(Mux(~ak0 & ~ak1, 3, 0))]
        with m.Elif(index != 0):
            m.d.sync += ts_id.eq(id_now)
            with m.If(~id_ok):
                m.d.sync += index.eq(0)
            with m.Elif(index == TS_WORDS - 1):
                m.d.sync += [
                    index.eq(0),
                    self.ts_valid.eq((ts_id == TS1_ID) | (ts_id == TS2_ID) |
                                     (ts_id == TS1_ID_INVERTED) | (ts_id == TS2_ID_INVERTED)),
                    self.ts.fields.eq(fields),
                    self.ts.kind.eq(Mux((ts_id == TS2_ID) | (ts_id == TS2_ID_INVERTED),
                                        TsKind.TS2, TsKind.TS1)),
                    self.ts.inverted.eq((ts_id == TS1_ID_INVERTED) |
                                        (ts_id == TS2_ID_INVERTED)),
                ]
            with m.Else():
                m.d.sync += index.eq(index + 1)
        return m
