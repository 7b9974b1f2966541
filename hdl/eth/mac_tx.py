"""Transmit MAC: frames in, GMII octets out (IEEE 802.3 Clauses 3, 4 and 35).

For each frame (Clause 4.2.3, TransmitFrame and its encapsulation):

1. preamble, seven 0x55 octets, and the SFD 0xD5 (Clause 4.2.5, 3.2.1-3.2.2);
2. the frame's octets as they come (destination address first);
3. pad octets (0x00) up to `MIN_DATA_LENGTH` = 60 octets (Clause 4.2.3.3,
   3.2.8: the frame with its FCS is at least minFrameSize, 64 octets);
4. the FCS, four octets (Clause 3.2.9, `Crc32`);
5. the interframe gap: ``tx_en`` low for at least `IFG_OCTETS` = 12 octet
   times (Clause 4.4.2 interFrameGap, 96 bit times) before the next preamble.

Full duplex only: no carrier sense, no collisions, no carrier extension
(Clause 4.2.3.2 deference reduces to the interframe gap).

Underrun: the GMII cannot wait, so if the source has no octet when one is due,
the MAC sends one octet with ``tx_er`` (Clause 35.2.2.5: the PHY then emits an
error that the receiver reports with ``rx_er``), drops ``tx_en`` and discards
the rest of the frame. `EthernetMac` releases a frame to the MAC only once
the whole frame has crossed into this domain, so it cannot happen there.
"""
import enum

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .crc import Crc32
from .frame import (FCS_LENGTH, IFG_OCTETS, MIN_DATA_LENGTH, OCTET_BITS, OctetStreamSignature,
                    PREAMBLE_LENGTH, PREAMBLE_OCTET, SFD_OCTET)
from .gmii import GmiiTxSignature

__all__ = ["MacTx"]

_COUNT_BITS = 16
PAD_OCTET = 0x00
#: Octet sent with ``tx_er`` on an underrun (any value: the PHY replaces it).
ERROR_OCTET = 0x00


class _State(enum.Enum):
    IDLE = 0        # tx_en low; may start a frame
    PREAMBLE = 1    # preamble octets, then the SFD
    DATA = 2        # the frame's own octets
    PAD = 3         # pad to the minimum length
    FCS = 4         # the four FCS octets
    DISCARD = 5     # after an underrun: swallow the rest of the frame
    IFG = 6         # interframe gap


class MacTx(wiring.Component):
    """GMII transmitter, clocked by its ``sync`` domain (`EthernetMac` renames
    it to ``eth_tx``, 125 MHz: one octet a cycle).

    Ports:
        i:           In(OctetStreamSignature), frames without FCS, at least 1 octet.
                     Taken one octet a cycle once the frame has started.
        frame_ready: In(1), init 1: a whole frame is waiting; a frame starts only
                     while it is high (tie high to start as soon as ``i`` is valid).
        frame_start: Out(1), pulse: a frame's preamble starts (its first octet is
                     taken later).
        gmii:        Out(GmiiTxSignature): txd, tx_en, tx_er, all registered.
        sent:        Out(1), pulse: a frame's last FCS octet went out.
        underrun:    Out(1), pulse: ``i`` ran dry inside a frame; the frame was cut
                     with ``tx_er``.
    """
    i: In(OctetStreamSignature)
    frame_ready: In(1, init=1)
    frame_start: Out(1)
    gmii: Out(GmiiTxSignature)
    sent: Out(1)
    underrun: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = Crc32(OCTET_BITS)

        state = Signal(_State)
        count = Signal(_COUNT_BITS)      # octets of the current phase so far
        txd = self.gmii.txd
        tx_en = self.gmii.tx_en
        tx_er = self.gmii.tx_er

        def send(octet):
            return [txd.eq(octet), tx_en.eq(1), tx_er.eq(0)]

        def send_data(octet):
            """An octet covered by the FCS."""
            m.d.comb += [crc.data.eq(octet), crc.en.eq(1)]
            return send(octet)

        idle = [txd.eq(0), tx_en.eq(0), tx_er.eq(0)]

        with m.Switch(state):
            with m.Case(_State.IDLE):
                m.d.comb += crc.clear.eq(1)
                m.d.sync += idle
                with m.If(self.i.valid & self.frame_ready):
                    m.d.comb += self.frame_start.eq(1)
                    m.d.sync += send(PREAMBLE_OCTET)
                    m.d.sync += [state.eq(_State.PREAMBLE), count.eq(1)]

            with m.Case(_State.PREAMBLE):
                m.d.sync += count.eq(count + 1)
                with m.If(count == PREAMBLE_LENGTH):
                    m.d.sync += send(SFD_OCTET)
                    m.d.sync += [state.eq(_State.DATA), count.eq(0)]
                with m.Else():
                    m.d.sync += send(PREAMBLE_OCTET)

            with m.Case(_State.DATA):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += send_data(self.i.payload.data)
                    m.d.sync += count.eq(count + 1)
                    with m.If(self.i.payload.last):
                        with m.If(count + 1 < MIN_DATA_LENGTH):
                            m.d.sync += state.eq(_State.PAD)
                        with m.Else():
                            m.d.sync += [state.eq(_State.FCS), count.eq(0)]
                with m.Else():
                    m.d.comb += self.underrun.eq(1)
                    m.d.sync += [txd.eq(ERROR_OCTET), tx_en.eq(1), tx_er.eq(1)]
                    m.d.sync += state.eq(_State.DISCARD)

            with m.Case(_State.PAD):
                m.d.sync += send_data(PAD_OCTET)
                m.d.sync += count.eq(count + 1)
                with m.If(count + 1 == MIN_DATA_LENGTH):
                    m.d.sync += [state.eq(_State.FCS), count.eq(0)]

            with m.Case(_State.FCS):
                m.d.sync += send(crc.crc.word_select(count[:2], OCTET_BITS))
                m.d.sync += count.eq(count + 1)
                with m.If(count == FCS_LENGTH - 1):
                    m.d.comb += self.sent.eq(1)
                    m.d.sync += [state.eq(_State.IFG), count.eq(0)]

            with m.Case(_State.DISCARD):
                m.d.sync += idle
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid & self.i.payload.last):
                    m.d.sync += [state.eq(_State.IFG), count.eq(0)]

            with m.Case(_State.IFG):
                # IFG_OCTETS octet times with tx_en low; the IDLE cycle that
                # follows already puts the next preamble octet out.
                m.d.sync += idle
                m.d.sync += count.eq(count + 1)
                with m.If(count == IFG_OCTETS - 1):
                    m.d.sync += state.eq(_State.IDLE)
        return m
