"""`EthernetMac`: the core's frame streams on one side, GMII on the other,
with the clock-domain crossings between them.

Three clock domains (all resets released together; see docs/architecture.md):

- ``sync``: the core's clock (80 MHz on the board). ``tx``, ``rx``, the event
  pulses and the counters.
- ``eth_tx``: 125 MHz, GMII transmit (`MacTx`, `BeatsToOctets`).
- ``eth_rx``: the PHY's receive clock, 125 MHz (`MacRx`, `OctetsToBeats`).

Transmit (``sync`` -> ``eth_tx``)::

    tx (32-bit beats) -> AsyncFIFO (beats, a longest frame) -> BeatsToOctets -> MacTx -> gmii_tx
                      -> AsyncFIFO (one token per whole frame)   -> MacTx.frame_ready

A frame starts on the wire only once all of it is in the beat FIFO: its
token is written one core cycle after its last beat, so the last beat's write
pointer has reached ``eth_tx`` no later than the token. The GMII cannot wait
for data, and this way a core that pauses in the middle of a frame cannot
make the MAC underrun. It costs one frame of latency and a beat FIFO as long
as ``max_frame`` (512 x 35 bits, one ECP5 DP16KD, for 1518 octets).

Receive (``eth_rx`` -> ``sync``)::

    gmii_rx -> MacRx -> OctetsToBeats -> AsyncFIFO (beats + abort) -> rx, rx_abort

The receive side is cut-through: a frame's last beat carries ``rx_abort``
when the frame is bad (`MacRx`). The core's RX `PacketFifo` takes such a frame
back when ``rx_abort`` reaches its ``w_abort`` together with that beat.

Events (frames sent, underruns, frames received, drops by reason) cross into
``sync`` through `PulseCrossing` and feed `EventCounters`.
"""
import enum

from amaranth.hdl import Cat, DomainRenamer, Module, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.fifo import AsyncFIFO
from amaranth.lib.wiring import In, Out

from ..lib.bytes import BYTES_PER_BEAT, ByteStreamSignature
from .cdc import PulseCrossing
from .counters import COUNTER_BITS, EventCounters
from .frame import MAX_FRAME_LENGTH, OCTET_BITS
from .gmii import ETH_RX_DOMAIN, ETH_TX_DOMAIN, GmiiRxSignature, GmiiTxSignature
from .mac_rx import MacRx, RxDrop
from .mac_tx import MacTx
from .width import BeatsToOctets, OctetsToBeats, RxBeat

__all__ = ["MacCounter", "EthernetMac"]

CORE_DOMAIN = "sync"
#: Whole frames the transmit FIFO can announce at once.
TX_FRAME_TOKENS = 16
#: Receive beats in flight to the core; the core reads one a cycle, faster
#: than the wire fills them (one every four Ethernet cycles).
RX_FIFO_BEATS = 32

# A transmit beat in the FIFO: dense, so ``keep`` is stored as its octet count
# minus one, and a beat fits a 36-bit block RAM word.
_TxFifoBeat = data.StructLayout({
    "data": unsigned(OCTET_BITS * BYTES_PER_BEAT),
    "extra": unsigned(2),           # octets in the beat, minus one
    "last": unsigned(1),
})


class MacCounter(enum.IntEnum):
    """Index into ``EthernetMac.counters``."""
    TX_FRAMES = 0
    TX_UNDERRUNS = 1
    RX_FRAMES = 2
    RX_DROP_RX_ERROR = 3
    RX_DROP_TOO_LONG = 4
    RX_DROP_RUNT = 5
    RX_DROP_FCS = 6
    RX_DROP_OVERFLOW = 7
    RX_DROP_NO_SFD = 8


#: The counter of each `RxDrop` reason.
RX_DROP_COUNTER = {reason: MacCounter[f"RX_DROP_{reason.name}"] for reason in RxDrop}


def _beats(octets):
    return -(-octets // BYTES_PER_BEAT)


class EthernetMac(wiring.Component):
    """1 Gb/s full-duplex Ethernet MAC (IEEE 802.3 Clauses 3, 4; GMII, Clause 35).

    Ports, with their clock domains:
        tx:          In(ByteStreamSignature), sync: frames to send, dense, no FCS,
                     1 to ``max_frame`` octets (the core sends 14 or more).
        rx:          Out(ByteStreamSignature), sync: received frames, dense, no
                     FCS. The core may hold ``ready`` low; the FIFO then fills
                     and frames are dropped (``OVERFLOW``), never cut in two.
        rx_abort:    Out(1), sync: with ``rx``'s last beat, the frame is bad and
                     must be thrown away (PacketFifo ``w_abort``).
        gmii_tx:     Out(GmiiTxSignature), eth_tx: to `Rgmii`.
        gmii_rx:     In(GmiiRxSignature), eth_rx: from `Rgmii`.
        tx_sent:     Out(1), sync pulse: a frame went out whole.
        tx_underrun: Out(1), sync pulse: a frame was cut short with tx_er.
        rx_frame:    Out(1), sync pulse: a good frame was received.
        rx_drop:     Out(len(RxDrop)), sync one-hot pulse: a received frame was
                     dropped, and why.
        counters:    Out(ArrayLayout(32, len(MacCounter))), sync: the pulses
                     counted, indexed by `MacCounter`; they wrap.

    ``max_frame``: longest frame, octets without the FCS, both ways.
    """

    def __init__(self, *, max_frame=MAX_FRAME_LENGTH):
        self.max_frame = max_frame
        self.tx_fifo_beats = 1 << (_beats(max_frame) - 1).bit_length()
        super().__init__({
            "tx": In(ByteStreamSignature),
            "rx": Out(ByteStreamSignature),
            "rx_abort": Out(1),
            "gmii_tx": Out(GmiiTxSignature),
            "gmii_rx": In(GmiiRxSignature),
            "tx_sent": Out(1),
            "tx_underrun": Out(1),
            "rx_frame": Out(1),
            "rx_drop": Out(len(RxDrop)),
            "counters": Out(data.ArrayLayout(COUNTER_BITS, len(MacCounter))),
        })

    def elaborate(self, platform):
        m = Module()
        self._transmit(m)
        self._receive(m)
        self._events(m)
        return m

    def _transmit(self, m):
        m.submodules.tx_fifo = fifo = AsyncFIFO(
            width=_TxFifoBeat.size, depth=self.tx_fifo_beats,
            w_domain=CORE_DOMAIN, r_domain=ETH_TX_DOMAIN)
        m.submodules.tx_tokens = tokens = AsyncFIFO(
            width=1, depth=TX_FRAME_TOKENS, w_domain=CORE_DOMAIN, r_domain=ETH_TX_DOMAIN)
        m.submodules.tx_split = split = DomainRenamer(ETH_TX_DOMAIN)(BeatsToOctets())
        m.submodules.mac_tx = mac_tx = DomainRenamer(ETH_TX_DOMAIN)(MacTx())
        self._mac_tx = mac_tx

        # sync: beats in; a token one cycle after each frame's last beat.
        beat = self.tx.payload
        token_due = Signal()
        # the last beat waits for room for its token (and for the token before it)
        m.d.comb += self.tx.ready.eq(fifo.w_rdy & (~beat.last | (tokens.w_rdy & ~token_due)))
        stored = _TxFifoBeat(fifo.w_data)
        m.d.comb += [
            stored.data.eq(beat.data),
            stored.extra.eq(beat.keep[1] + beat.keep[2] + beat.keep[3]),
            stored.last.eq(beat.last),
            fifo.w_en.eq(self.tx.valid & self.tx.ready),
            tokens.w_en.eq(token_due),
        ]
        m.d.sync += token_due.eq(self.tx.valid & self.tx.ready & beat.last)

        # eth_tx: beats out, split into octets, sent once the whole frame is in.
        out = _TxFifoBeat(fifo.r_data)
        m.d.comb += [
            split.i.valid.eq(fifo.r_rdy),
            split.i.payload.data.eq(out.data),
            split.i.payload.keep.eq(Cat(*(out.extra >= n for n in range(BYTES_PER_BEAT)))),
            split.i.payload.last.eq(out.last),
            fifo.r_en.eq(split.i.ready),
            mac_tx.frame_ready.eq(tokens.r_rdy),
            tokens.r_en.eq(mac_tx.frame_start),
        ]
        wiring.connect(m, split.o, mac_tx.i)
        wiring.connect(m, mac_tx.gmii, wiring.flipped(self.gmii_tx))

    def _receive(self, m):
        m.submodules.mac_rx = mac_rx = DomainRenamer(ETH_RX_DOMAIN)(
            MacRx(max_length=self.max_frame))
        m.submodules.rx_gather = gather = DomainRenamer(ETH_RX_DOMAIN)(OctetsToBeats())
        m.submodules.rx_fifo = fifo = AsyncFIFO(
            width=RxBeat.size, depth=RX_FIFO_BEATS, w_domain=ETH_RX_DOMAIN, r_domain=CORE_DOMAIN)
        self._mac_rx = mac_rx

        wiring.connect(m, wiring.flipped(self.gmii_rx), mac_rx.gmii)
        wiring.connect(m, mac_rx.o, gather.i)
        m.d.comb += [
            fifo.w_data.eq(gather.o.payload),
            fifo.w_en.eq(gather.o.valid),
            gather.o.ready.eq(fifo.w_rdy),
        ]
        beat = RxBeat(fifo.r_data)
        m.d.comb += [
            self.rx.valid.eq(fifo.r_rdy),
            self.rx.payload.data.eq(beat.data),
            self.rx.payload.keep.eq(beat.keep),
            self.rx.payload.last.eq(beat.last),
            self.rx_abort.eq(beat.last & beat.abort),
            fifo.r_en.eq(self.rx.ready),
        ]

    def _events(self, m):
        mac_tx, mac_rx = self._mac_tx, self._mac_rx
        m.submodules.tx_events = tx_events = PulseCrossing(
            2, i_domain=ETH_TX_DOMAIN, o_domain=CORE_DOMAIN)
        m.submodules.rx_events = rx_events = PulseCrossing(
            1 + len(RxDrop), i_domain=ETH_RX_DOMAIN, o_domain=CORE_DOMAIN)
        m.d.comb += [
            tx_events.i.eq(Cat(mac_tx.sent, mac_tx.underrun)),
            Cat(self.tx_sent, self.tx_underrun).eq(tx_events.o),
            rx_events.i.eq(Cat(mac_rx.frame_ok, mac_rx.drop)),
            Cat(self.rx_frame, self.rx_drop).eq(rx_events.o),
        ]

        m.submodules.counters = counters = EventCounters(len(MacCounter))
        events = {
            MacCounter.TX_FRAMES: self.tx_sent,
            MacCounter.TX_UNDERRUNS: self.tx_underrun,
            MacCounter.RX_FRAMES: self.rx_frame,
            **{RX_DROP_COUNTER[reason]: self.rx_drop[reason] for reason in RxDrop},
        }
        assert sorted(events) == list(MacCounter)
        m.d.comb += counters.events.eq(Cat(*(events[index] for index in MacCounter)))
        m.d.comb += self.counters.eq(counters.counts)
