"""Receive MAC: GMII octets in, frames out (IEEE 802.3 Clauses 3, 4 and 35).

For each burst of ``rx_dv`` (Clause 35.2.2.7, a frame from the PHY):

1. skip the preamble and find the SFD (Clause 4.2.9, 3.2.2). The PHY may
   shorten the preamble (Clause 35.2.3.2.2), so any number of 0x55 octets,
   none included, may come before the 0xD5. Any other octet first: the burst
   is not a frame (``NO_SFD``);
2. pass on the frame's octets without the FCS: the last four octets of a
   burst are only known to be the FCS when ``rx_dv`` falls, so octets leave
   through a five-octet delay line, and the octet left at the head of the
   line when ``rx_dv`` falls goes out with ``last``;
3. check the frame (Clause 4.2.4.2.2, 4.2.9) and drop it, with one pulse on
   ``drop`` saying why (`RxDrop`), or count it good with ``frame_ok``.
   Exactly one of the two pulses for every burst.

Delivery is cut-through with an abort flag: octets go out while the frame
arrives, and a frame's last beat carries ``abort`` = 1 when the frame turned
out bad. The core's RX `PacketFifo` stores frames whole and takes back a frame
whose last beat comes with ``w_abort``, so a bad frame never reaches the
driver; no second frame buffer is needed here. A burst that ends before any
octet went out (fewer than 5 octets after the SFD, or no SFD) delivers
nothing at all.

Drop reasons, in priority order when several apply:

``RX_ERROR``  ``rx_er`` with ``rx_dv`` somewhere in the burst (Clause 35.2.2.8).
``TOO_LONG``  more than ``max_length`` + 4 octets after the SFD (Clause 4.2.4.2.2,
              frameTooLong). The rest of the frame is not passed on.
``RUNT``      fewer than minFrameSize, 64 octets with the FCS (Clause 4.2.4.2.2:
              fragments are discarded).
``FCS``       the CRC over the frame and its FCS is not the residue (Clause
              3.2.9, 4.2.4.2.2 frameCheckError).
``OVERFLOW``  the consumer (``o.ready``) was not ready when an octet had to go;
              the wire cannot wait, so the frame is lost.
``NO_SFD``    a burst without an SFD after the preamble.
"""
import enum

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .crc import Crc32
from .frame import (FCS_LENGTH, MAX_FRAME_LENGTH, MIN_FRAME_LENGTH, OCTET_BITS, PREAMBLE_OCTET,
                    RxOctetStreamSignature, SFD_OCTET)
from .gmii import GmiiRxSignature

__all__ = ["RxDrop", "MacRx"]

#: Octets held back: the FCS, plus the octet that gets ``last``.
DELAY_OCTETS = FCS_LENGTH + 1
_COUNT_BITS = 16


class RxDrop(enum.IntEnum):
    """Why a received burst was dropped (bit index on ``drop``)."""
    RX_ERROR = 0
    TOO_LONG = 1
    RUNT = 2
    FCS = 3
    OVERFLOW = 4
    NO_SFD = 5


class _State(enum.Enum):
    IDLE = 0        # rx_dv low
    PREAMBLE = 1    # in a burst, before the SFD
    FRAME = 2       # after the SFD
    NO_SFD = 3      # a burst that is not a frame: wait for its end


class MacRx(wiring.Component):
    """GMII receiver, clocked by its ``sync`` domain (`EthernetMac` renames it
    to ``eth_rx``, the PHY's receive clock).

    Ports:
        gmii:     In(GmiiRxSignature): rxd, rx_dv, rx_er (registered on entry).
        o:        Out(RxOctetStreamSignature), frames without preamble or FCS; the
                  last beat's ``abort`` = 1 takes the frame back. Registered.
                  Octets come at most one a cycle; see ``OVERFLOW`` for ``ready``.
        frame_ok: Out(1), pulse: a good frame ended (its last beat is out or about
                  to go out with ``abort`` = 0).
        drop:     Out(len(RxDrop)), one-hot pulse: a burst was dropped, and why.

    ``max_length``: longest frame accepted, octets without the FCS.
    """

    def __init__(self, *, max_length=MAX_FRAME_LENGTH):
        if not MIN_FRAME_LENGTH - FCS_LENGTH <= max_length < (1 << _COUNT_BITS) - FCS_LENGTH:
            raise ValueError(f"max_length {max_length} out of range")
        self.max_length = max_length
        super().__init__({
            "gmii": In(GmiiRxSignature),
            "o": Out(RxOctetStreamSignature),
            "frame_ok": Out(1),
            "drop": Out(len(RxDrop)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = Crc32(OCTET_BITS)

        rxd = Signal(OCTET_BITS)
        dv = Signal()
        er = Signal()
        m.d.sync += [rxd.eq(self.gmii.rxd), dv.eq(self.gmii.rx_dv), er.eq(self.gmii.rx_er)]

        state = Signal(_State)
        burst_error = Signal()           # rx_er seen in this burst
        count = Signal(_COUNT_BITS)      # octets after the SFD, FCS included (stops when too long)
        too_long = Signal()
        overflow = Signal()              # an octet could not go out
        discard = Signal()               # pass nothing more of this frame on
        delivered = Signal()             # some octet of this frame went out
        line = [Signal(OCTET_BITS, name=f"line{n}") for n in range(DELAY_OCTETS)]
        fill = Signal(range(DELAY_OCTETS + 1))
        full = fill == DELAY_OCTETS
        oldest = line[-1]

        m.d.comb += [
            crc.data.eq(rxd),
            crc.en.eq((state == _State.FRAME) & dv),
            crc.clear.eq(state != _State.FRAME),
        ]
        with m.If(dv):
            m.d.sync += burst_error.eq(burst_error | er)

        # Output register; a frame's last beat may have to wait for it.
        end_pending = Signal()
        pending_abort = Signal()
        pending_data = Signal(OCTET_BITS)
        slot_free = ~self.o.valid | self.o.ready
        load_pending = end_pending & slot_free
        slot_for_frame = slot_free & ~end_pending
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(load_pending):
            m.d.sync += [
                self.o.valid.eq(1),
                self.o.payload.data.eq(pending_data),
                self.o.payload.last.eq(1),
                self.o.payload.abort.eq(pending_abort),
                end_pending.eq(0),
            ]

        def drop(reason):
            return self.drop.eq(1 << reason)

        def start_frame():
            # A frame that starts while the last one's end still waits cannot
            # go out without running into it: it is lost whole.
            return [state.eq(_State.FRAME), count.eq(0), fill.eq(0), too_long.eq(0),
                    delivered.eq(0), overflow.eq(end_pending), discard.eq(end_pending)]

        def search(octet):
            with m.If(octet == SFD_OCTET):
                m.d.sync += start_frame()
            with m.Elif(octet == PREAMBLE_OCTET):
                m.d.sync += state.eq(_State.PREAMBLE)
            with m.Else():
                m.d.sync += state.eq(_State.NO_SFD)

        with m.Switch(state):
            with m.Case(_State.IDLE):
                m.d.sync += burst_error.eq(er & dv)
                with m.If(dv):
                    search(rxd)

            with m.Case(_State.PREAMBLE, _State.NO_SFD):
                with m.If(~dv):
                    m.d.comb += drop(RxDrop.NO_SFD)
                    m.d.sync += state.eq(_State.IDLE)
                with m.Elif(state == _State.PREAMBLE):
                    search(rxd)

            with m.Case(_State.FRAME):
                with m.If(dv):
                    m.d.sync += [line[0].eq(rxd), *(line[n].eq(line[n - 1])
                                                    for n in range(1, DELAY_OCTETS))]
                    with m.If(~full):
                        m.d.sync += fill.eq(fill + 1)
                    with m.If(~too_long):
                        m.d.sync += count.eq(count + 1)
                        with m.If(count == self.max_length + FCS_LENGTH):
                            m.d.sync += [too_long.eq(1), discard.eq(1)]
                    with m.If(full & ~discard):
                        with m.If(slot_for_frame):
                            m.d.sync += [
                                self.o.valid.eq(1),
                                self.o.payload.data.eq(oldest),
                                self.o.payload.last.eq(0),
                                self.o.payload.abort.eq(0),
                                delivered.eq(1),
                            ]
                        with m.Else():
                            m.d.sync += [overflow.eq(1), discard.eq(1)]

                with m.Else():      # end of the burst: judge the frame
                    m.d.sync += state.eq(_State.IDLE)
                    reason = Signal(len(RxDrop))
                    with m.If(burst_error):
                        m.d.comb += reason.eq(1 << RxDrop.RX_ERROR)
                    with m.Elif(too_long):
                        m.d.comb += reason.eq(1 << RxDrop.TOO_LONG)
                    with m.Elif(count < MIN_FRAME_LENGTH):
                        m.d.comb += reason.eq(1 << RxDrop.RUNT)
                    with m.Elif(~crc.match):
                        m.d.comb += reason.eq(1 << RxDrop.FCS)
                    with m.Elif(overflow):
                        m.d.comb += reason.eq(1 << RxDrop.OVERFLOW)
                    m.d.comb += [self.drop.eq(reason), self.frame_ok.eq(reason == 0)]
                    # The octet at the head of the line is the frame's last. It
                    # must go out if the frame is still being passed on, or to
                    # close what already went out.
                    with m.If(full & (delivered | ~discard)):
                        with m.If(slot_for_frame):
                            m.d.sync += [
                                self.o.valid.eq(1),
                                self.o.payload.data.eq(oldest),
                                self.o.payload.last.eq(1),
                                self.o.payload.abort.eq(reason != 0),
                            ]
                        with m.Else():      # it goes out when the consumer takes the last beat
                            m.d.sync += [
                                end_pending.eq(1),
                                pending_data.eq(oldest),
                                pending_abort.eq(reason != 0),
                            ]
        return m
