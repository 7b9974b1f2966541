"""The physical layer's logical sub-block (PCIe Base 4.0 section 4.2), Gen1 x1,
above a PIPE port.

Transmit: `framing.Transmitter` (ordered sets, link packets, logical idle,
SKP scheduling) -> `scrambler.Scrambler` -> PIPE tx. Receive: PIPE rx ->
`ordered_sets.OrderedSetRx` (raw stream: TS1/TS2, SKP, EIOS) and
`scrambler.Descrambler` -> `framing.Receiver` (link packets). `ltssm.Ltssm`
drives both.
"""
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .framing import SKP_INTERVAL_CYCLES, Receiver, Transmitter
from .link_packet import LinkPacketSignature
from .ltssm import Ltssm, LtssmState, LtssmTimeouts, PortRole
from .ordered_sets import OrderedSetRx
from .pipe import PipeSignature, RxStatus
from .scrambler import Descrambler, Scrambler

__all__ = ["PhysicalLayer", "PortRole", "LtssmState", "LtssmTimeouts"]


class PhysicalLayer(wiring.Component):
    """PCIe physical layer, logical sub-block, for one lane at 2.5 GT/s.

    Ports (one clock domain, ``sync``; the board renames it ``pcie``, 125 MHz):

    * ``pipe`` (Out, `PipeSignature`): to the SERDES (section 4.2.1 symbols,
      8b/10b done below us).
    * ``tx`` (In, `LinkPacketSignature`): link packets from the data link
      layer, framed STP/SDP ... END (section 4.2.1.2); taken only in L0.
    * ``rx`` (Out, `LinkPacketSignature`): received link packets, no
      back-pressure; ``bad`` on the last beat for EDB or an error in it.
    * ``link_up`` (Out): LinkUp (section 4.2.6: set in Configuration.Idle,
      cleared in Detect); the data link layer's DL_Down/DL_Up follows it.
    * ``retrain`` (In): pulse from the data link layer: L0 -> Recovery
      (section 4.2.6.5).
    * ``hot_reset`` (In): directed Hot Reset (section 4.2.6.11), for the
      downstream port role (Secondary Bus Reset); hold it until ``state`` is
      ``HOT_RESET``. An upstream port leaves it at 0: it follows the far
      end's Hot Reset on its own and drops ``link_up``. Added beside the
      contract's ports.
    * ``state`` (Out, `LtssmState`): the LTSSM state, for debug and LEDs.
    * ``receiver_error`` (Out): pulse on a framing error, an 8b/10b decode
      or disparity error or an elastic buffer over/underflow (a Receiver Error for the DLL to report, section
      4.2.1.2; Correctable Error Status, section 7.8.5). Added beside the contract's ports.

    Parameters: ``role`` (`PortRole`: ``UPSTREAM`` for our endpoint,
    ``DOWNSTREAM`` for a root port), ``timeouts`` (`LtssmTimeouts`),
    ``link_number`` (proposed by a downstream port), ``n_fts``,
    ``skp_interval`` (cycles), ``recover_on_framing_error``.
    """

    pipe: Out(PipeSignature())
    tx: In(LinkPacketSignature())
    rx: Out(LinkPacketSignature())
    link_up: Out(1)
    retrain: In(1)
    hot_reset: In(1)
    state: Out(LtssmState)
    receiver_error: Out(1)

    def __init__(self, role=PortRole.UPSTREAM, *, timeouts=None, link_number=0, n_fts=255,
                 skp_interval=SKP_INTERVAL_CYCLES, recover_on_framing_error=False):
        self.role = PortRole(role)
        self.timeouts = timeouts or LtssmTimeouts()
        self.link_number = link_number
        self.n_fts = n_fts
        self.skp_interval = skp_interval
        self.recover_on_framing_error = recover_on_framing_error
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.transmitter = tx = Transmitter(skp_interval=self.skp_interval)
        m.submodules.scrambler = scrambler = Scrambler()
        m.submodules.ordered_sets = osrx = OrderedSetRx()
        m.submodules.descrambler = descrambler = Descrambler()
        m.submodules.receiver = rx = Receiver()
        m.submodules.ltssm = ltssm = Ltssm(
            self.role, timeouts=self.timeouts, link_number=self.link_number,
            n_fts=self.n_fts, recover_on_framing_error=self.recover_on_framing_error)
        pipe = self.pipe

        # Transmit.
        wiring.connect(m, wiring.flipped(self.tx), tx.tx)
        tx_elec_idle = Signal(init=1)   # in step with the scrambler's register
        m.d.sync += tx_elec_idle.eq(tx.elec_idle)
        m.d.comb += [
            tx.mode.eq(ltssm.tx_mode),
            tx.ts_fields.eq(ltssm.tx_fields),
            scrambler.data.eq(tx.data),
            scrambler.datak.eq(tx.datak),
            scrambler.enable.eq(tx.enable),
            pipe.tx_data.eq(scrambler.o_data),
            pipe.tx_datak.eq(scrambler.o_datak),
            pipe.tx_elec_idle.eq(tx_elec_idle),
            # PIPE: tx_detect_rx with the transmitter not idle means loopback,
            # so wait for the last ordered set to drain.
            pipe.tx_detect_rx.eq(ltssm.tx_detect_rx & tx_elec_idle),
            pipe.rx_polarity.eq(ltssm.rx_polarity),
        ]

        # Receive.
        symbol_error = Signal()
        # 8b/10b decode and disparity errors, and symbols lost or invented by
        # the elastic buffer (over/underflow), spoil a packet they hit.
        m.d.comb += symbol_error.eq(pipe.rx_valid & (
            (pipe.rx_status == RxStatus.DECODE_ERROR) |
            (pipe.rx_status == RxStatus.DISPARITY_ERROR) |
            (pipe.rx_status == RxStatus.EB_OVERFLOW) |
            (pipe.rx_status == RxStatus.EB_UNDERFLOW)))
        symbol_error_d = Signal()       # in step with the descrambler's register
        m.d.sync += symbol_error_d.eq(symbol_error)
        m.d.comb += [
            osrx.data.eq(pipe.rx_data),
            osrx.datak.eq(pipe.rx_datak),
            osrx.valid.eq(pipe.rx_valid),
            descrambler.data.eq(pipe.rx_data),
            descrambler.datak.eq(pipe.rx_datak),
            descrambler.valid.eq(pipe.rx_valid),
            rx.data.eq(descrambler.o_data),
            rx.datak.eq(descrambler.o_datak),
            rx.valid.eq(descrambler.o_valid),
            rx.error.eq(symbol_error_d),
            rx.enable.eq(ltssm.rx_enable),
        ]
        wiring.connect(m, rx.rx, wiring.flipped(self.rx))
        m.d.sync += self.receiver_error.eq(rx.framing_error | symbol_error_d)

        # LTSSM.
        m.d.comb += [
            ltssm.rx_elec_idle.eq(pipe.rx_elec_idle),
            ltssm.rx_valid.eq(pipe.rx_valid),
            ltssm.phy_status.eq(pipe.phy_status),
            ltssm.rx_status.eq(pipe.rx_status),
            ltssm.ts_valid.eq(osrx.ts_valid),
            ltssm.ts.eq(osrx.ts),
            ltssm.eios.eq(osrx.eios),
            ltssm.idle_any.eq(rx.idle_any),
            ltssm.idle_ok.eq(rx.idle_ok),
            ltssm.ts_sent.eq(tx.ts_sent),
            ltssm.idle_sent.eq(tx.idle_sent),
            ltssm.retrain.eq(self.retrain),
            ltssm.hot_reset.eq(self.hot_reset),
            ltssm.framing_error.eq(rx.framing_error),
            self.link_up.eq(ltssm.link_up),
            self.state.eq(ltssm.state),
        ]
        return m
