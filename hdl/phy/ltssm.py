"""The Link Training and Status State Machine (PCIe Base 4.0 section 4.2.6),
Gen1 (2.5 GT/s), one lane, either port role.

States implemented (figure 4-23 and sections 4.2.6.1 to 4.2.6.5)::

    Detect.Quiet -> Detect.Active -> Polling.Active -> Polling.Configuration
    -> Configuration.Linkwidth.Start -> .Linkwidth.Accept -> .Lanenum.Wait
    -> .Lanenum.Accept -> .Complete -> .Idle -> L0
    L0 -> Recovery.RcvrLock -> Recovery.RcvrCfg -> Recovery.Idle -> L0
    Recovery.RcvrLock/RcvrCfg -> Hot Reset -> Detect.Quiet
    any timeout -> Detect.Quiet

Link and lane numbers (section 4.2.6.3, x1 only): the downstream port (root
side) proposes its link number in Configuration.Linkwidth.Start with the lane
number PAD; the upstream port (our endpoint), which sends PAD/PAD, takes the
link number it receives twice in a row and echoes it (Linkwidth.Start ->
Linkwidth.Accept); the downstream port then proposes lane 0
(Linkwidth.Accept), the upstream port takes and echoes it (Linkwidth.Accept ->
Lanenum.Wait); the downstream port then needs two consecutive TS1s carrying
the agreed numbers in Lanenum.Wait and again in Lanenum.Accept, the upstream
port two consecutive TS2s with them in each (the downstream port sends TS2s
from Configuration.Complete on); both need eight TS2s (with 16 sent after
the first received one) in Configuration.Complete.

Simplified or left out (said plainly):

* Hot Reset (section 4.2.6.11) is minimal: a port directed by ``hot_reset``
  (a downstream port's Secondary Bus Reset) goes L0 -> Recovery.RcvrLock ->
  Hot Reset, sends TS1s with the Hot Reset bit for 2 ms, then Detect; a port
  that receives two consecutive such TS1s in Recovery.RcvrLock/RcvrCfg goes
  to Hot Reset, drops LinkUp (the DLL's DL_Down is the reset an upstream
  port acts on) and goes to Detect 2 ms after they stop. Not from
  Configuration, no Hot Reset propagation.
* Polling.Compliance, Loopback, Disabled, L0s, L1, L2 are not implemented.
  A TS with the Disable Link or Loopback training control bits is treated
  like any other TS; we never set those bits.
* Timeouts all lead to Detect.Quiet (the spec sends some to Polling.Compliance
  or Configuration, and Configuration.Idle / Recovery.Idle to Recovery while
  idle_to_rlock_transitioned < FFh).
* Recovery.RcvrCfg does not go to Configuration on TS1s with other link or
  lane numbers; there is no speed change (Gen1 only), so no
  directed_speed_change handling.
* L0 goes to Recovery on: the DLL's ``retrain``, a received TS1/TS2, an EIOS
  (we have no L0s/L1 to go to), or electrical idle / loss of symbol lock for
  ``eidle_cycles`` cycles (section 4.2.4.3's inference, simplified).
  Optionally (``recover_on_framing_error``) on a framing error as well; by
  default a framing error is only reported, as a Receiver Error (8b/10b).
* We do not send EIOS before electrical idle.
* Detect.Active does one receiver detection and goes back to Detect.Quiet
  if nobody answers.

Timeouts are parameters in ``pcie`` clock cycles (125 MHz); the defaults are
the spec's values.
"""
import enum

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .framing import TxMode
from .ordered_sets import TsFields, TsInfo, TsKind
from .pipe import PIPE_CLK_HZ, RxStatus
from .symbols import DataRate, TrainingControl

__all__ = ["PortRole", "LtssmState", "LtssmTimeouts", "Ltssm"]


class PortRole(enum.Enum):
    DOWNSTREAM = "downstream"   # root port / switch downstream port: proposes numbers
    UPSTREAM = "upstream"       # endpoint: echoes them


class LtssmState(enum.IntEnum):
    """LTSSM states in the spec's words (section 4.2.5/4.2.6)."""
    DETECT_QUIET = 0            # Detect.Quiet
    DETECT_ACTIVE = 1           # Detect.Active
    POLLING_ACTIVE = 2          # Polling.Active
    POLLING_CONFIGURATION = 3   # Polling.Configuration
    CONFIG_LINKWIDTH_START = 4  # Configuration.Linkwidth.Start
    CONFIG_LINKWIDTH_ACCEPT = 5  # Configuration.Linkwidth.Accept
    CONFIG_LANENUM_WAIT = 6     # Configuration.Lanenum.Wait
    CONFIG_LANENUM_ACCEPT = 7   # Configuration.Lanenum.Accept
    CONFIG_COMPLETE = 8         # Configuration.Complete
    CONFIG_IDLE = 9             # Configuration.Idle
    L0 = 10                     # L0
    RECOVERY_RCVRLOCK = 11      # Recovery.RcvrLock
    RECOVERY_RCVRCFG = 12       # Recovery.RcvrCfg
    RECOVERY_IDLE = 13          # Recovery.Idle
    HOT_RESET = 14              # Hot Reset

    @property
    def spec_name(self):
        return _SPEC_NAMES[self]


_SPEC_NAMES = {
    LtssmState.DETECT_QUIET: "Detect.Quiet",
    LtssmState.DETECT_ACTIVE: "Detect.Active",
    LtssmState.POLLING_ACTIVE: "Polling.Active",
    LtssmState.POLLING_CONFIGURATION: "Polling.Configuration",
    LtssmState.CONFIG_LINKWIDTH_START: "Configuration.Linkwidth.Start",
    LtssmState.CONFIG_LINKWIDTH_ACCEPT: "Configuration.Linkwidth.Accept",
    LtssmState.CONFIG_LANENUM_WAIT: "Configuration.Lanenum.Wait",
    LtssmState.CONFIG_LANENUM_ACCEPT: "Configuration.Lanenum.Accept",
    LtssmState.CONFIG_COMPLETE: "Configuration.Complete",
    LtssmState.CONFIG_IDLE: "Configuration.Idle",
    LtssmState.L0: "L0",
    LtssmState.RECOVERY_RCVRLOCK: "Recovery.RcvrLock",
    LtssmState.RECOVERY_RCVRCFG: "Recovery.RcvrCfg",
    LtssmState.RECOVERY_IDLE: "Recovery.Idle",
    LtssmState.HOT_RESET: "Hot Reset",
}


def _ms(ms):
    return PIPE_CLK_HZ * ms // 1000


class LtssmTimeouts:
    """The LTSSM's timers in cycles; defaults are the spec's (section 4.2.6)
    at 125 MHz. Tests shrink them."""

    def __init__(self, *, t12ms=_ms(12), t24ms=_ms(24), t48ms=_ms(48), t2ms=_ms(2),
                 polling_ts1=1024, eidle_cycles=8):
        self.t12ms = t12ms              # Detect.Quiet
        self.t24ms = t24ms              # Polling.Active, Linkwidth.Start, RcvrLock
        self.t48ms = t48ms              # Polling.Configuration, RcvrCfg
        self.t2ms = t2ms                # the other Configuration states, *.Idle
        self.polling_ts1 = polling_ts1  # TS1s sent in Polling.Active (4.2.6.2.1)
        self.eidle_cycles = eidle_cycles


class Ltssm(wiring.Component):
    """Inputs: PIPE status (``rx_elec_idle``, ``rx_valid``, ``phy_status``,
    ``rx_status``), received TSs (``ts_valid``/``ts``), ``eios``, idle
    watch (``idle_any``/``idle_ok``), what went out (``ts_sent``,
    ``idle_sent``), ``retrain``, ``hot_reset`` (directed Hot Reset, held
    until the state is Hot Reset) and ``framing_error``.
    Outputs: ``tx_mode``/``tx_fields`` for the transmitter, ``tx_detect_rx``
    and ``rx_polarity`` for PIPE, ``rx_enable`` (packets may arrive),
    ``link_up`` (LinkUp, section 4.2.6), ``state``.
    """

    rx_elec_idle: In(1)
    rx_valid: In(1)
    phy_status: In(1)
    rx_status: In(RxStatus)
    ts_valid: In(1)
    ts: In(TsInfo)
    eios: In(1)
    idle_any: In(1)
    idle_ok: In(1)
    ts_sent: In(1)
    idle_sent: In(1)
    retrain: In(1)
    hot_reset: In(1)
    framing_error: In(1)

    tx_mode: Out(TxMode)
    tx_fields: Out(TsFields)
    tx_detect_rx: Out(1)
    rx_polarity: Out(1)
    rx_enable: Out(1)
    link_up: Out(1)
    state: Out(LtssmState)

    def __init__(self, role, *, timeouts=None, link_number=0, n_fts=255,
                 recover_on_framing_error=False):
        self.role = PortRole(role)
        self.timeouts = timeouts or LtssmTimeouts()
        self.link_number = link_number
        self.n_fts = n_fts
        self.recover_on_framing_error = recover_on_framing_error
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        t = self.timeouts
        S = LtssmState
        dsp = self.role is PortRole.DOWNSTREAM
        state = self.state

        timer = Signal(range(max(t.t12ms, t.t24ms, t.t48ms, t.t2ms) + 1))
        count = Signal(range(16))        # consecutive matching TSs received
        sent = Signal(range(max(t.polling_ts1, 16) + 1))  # TSs / idle cycles sent
        seen = Signal()                  # one matching TS2 / idle symbol received
        eidle = Signal(range(t.eidle_cycles + 1))
        link = Signal(8)                 # link number in use
        lane = Signal(8)                 # lane number in use
        link_pad = Signal()
        lane_pad = Signal()

        m.d.comb += [
            self.tx_fields.link.eq(link), self.tx_fields.link_pad.eq(link_pad),
            self.tx_fields.lane.eq(lane), self.tx_fields.lane_pad.eq(lane_pad),
            self.tx_fields.n_fts.eq(self.n_fts),
            self.tx_fields.rate.eq(DataRate.GEN1_2_5GT),
            self.tx_fields.control.eq(Mux(state == S.HOT_RESET, TrainingControl.HOT_RESET, 0)),
        ]

        hot_resets = Signal(range(3))    # consecutive TS1s with Hot Reset set
        directed = Signal()              # in Hot Reset because we were told to
        m.d.sync += timer.eq(timer + 1)

        def goto(new):
            m.d.sync += [state.eq(new), timer.eq(0), count.eq(0), sent.eq(0), seen.eq(0),
                         hot_resets.eq(0)]
            if new == S.DETECT_QUIET:
                m.d.sync += [self.link_up.eq(0), self.rx_polarity.eq(0)]

        def timeout(limit, to=S.DETECT_QUIET):
            with m.If(timer >= limit - 1):
                goto(to)

        fields = self.ts.fields
        good_ts = self.ts_valid & ~self.ts.inverted
        numbers_match = (~fields.link_pad & (fields.link == link) &
                         ~fields.lane_pad & (fields.lane == lane))

        def count_ts(match):
            """Consecutive received TSs that satisfy `match`."""
            with m.If(self.ts_valid):
                m.d.sync += count.eq(Mux(good_ts & match, Mux(count == 15, 15, count + 1), 0))

        sent_max = max(t.polling_ts1, 16)

        def count_sent(pulse):
            with m.If(pulse & (sent != sent_max)):
                m.d.sync += sent.eq(sent + 1)

        def sent_after_seen(received, pulse):
            """Count what we send (TSs, or idle cycles) once one matching TS2
            or idle symbol has been received."""
            with m.If(received):
                m.d.sync += seen.eq(1)
            with m.If(seen):
                count_sent(pulse)

        hot_reset_ts1 = good_ts & (self.ts.kind == TsKind.TS1) & \
            fields.control[0] & numbers_match

        def hot_reset_check():
            """Recovery.RcvrLock/RcvrCfg -> Hot Reset if directed, or on two
            consecutive TS1s with the Hot Reset bit (sections 4.2.6.4.1,
            4.2.6.4.4)."""
            with m.If(self.ts_valid):
                m.d.sync += hot_resets.eq(Mux(hot_reset_ts1, Mux(hot_resets == 2, 2,
                                                                 hot_resets + 1), 0))
            with m.If(self.hot_reset | (hot_resets == 2)):
                goto(S.HOT_RESET)
                m.d.sync += directed.eq(self.hot_reset)

        def pads(link_is_pad, lane_is_pad):
            m.d.sync += [link_pad.eq(link_is_pad), lane_pad.eq(lane_is_pad)]

        with m.Switch(state):
            # Section 4.2.6.1.1: transmitter in electrical idle; leave after
            # 12 ms or when the receiver leaves electrical idle.
            with m.Case(S.DETECT_QUIET):
                m.d.comb += self.tx_mode.eq(TxMode.ELEC_IDLE)
                m.d.sync += [link.eq(self.link_number if dsp else 0), lane.eq(0)]
                pads(1, 1)
                with m.If((timer >= t.t12ms - 1) | ~self.rx_elec_idle):
                    goto(S.DETECT_ACTIVE)

            # Section 4.2.6.1.2: receiver detection through PIPE.
            with m.Case(S.DETECT_ACTIVE):
                m.d.comb += self.tx_mode.eq(TxMode.ELEC_IDLE)
                m.d.comb += self.tx_detect_rx.eq(1)   # until phy_status answers
                with m.If(self.phy_status):
                    with m.If(self.rx_status == RxStatus.RECEIVER_DETECTED):
                        goto(S.POLLING_ACTIVE)
                    with m.Else():
                        goto(S.DETECT_QUIET)

            # Section 4.2.6.2.1: TS1 with PAD link and lane; 1024 sent and 8
            # consecutive TS1/TS2 with PAD/PAD received. Inverted identifiers:
            # invert the lane (4.2.4.4).
            with m.Case(S.POLLING_ACTIVE):
                m.d.comb += self.tx_mode.eq(TxMode.TS1)
                count_ts(fields.link_pad & fields.lane_pad)
                count_sent(self.ts_sent)
                with m.If(self.ts_valid & self.ts.inverted):
                    m.d.sync += self.rx_polarity.eq(1)
                with m.If((count >= 8) & (sent >= t.polling_ts1)):
                    goto(S.POLLING_CONFIGURATION)
                with m.Else():
                    timeout(t.t24ms)

            # Section 4.2.6.2.3: TS2 PAD/PAD; 8 consecutive TS2 received and
            # 16 sent after the first one received.
            with m.Case(S.POLLING_CONFIGURATION):
                m.d.comb += self.tx_mode.eq(TxMode.TS2)
                polling_ts2 = (self.ts.kind == TsKind.TS2) & fields.link_pad & fields.lane_pad
                count_ts(polling_ts2)
                sent_after_seen(good_ts & polling_ts2, self.ts_sent)
                with m.If((count >= 8) & (sent >= 16)):
                    goto(S.CONFIG_LINKWIDTH_START)
                with m.Else():
                    timeout(t.t48ms)

            # Section 4.2.6.3.1.
            with m.Case(S.CONFIG_LINKWIDTH_START):
                m.d.comb += self.tx_mode.eq(TxMode.TS1)
                if dsp:
                    pads(0, 1)     # propose our link number, lane PAD
                    count_ts((self.ts.kind == TsKind.TS1) & ~fields.link_pad &
                             (fields.link == link) & fields.lane_pad)
                else:
                    pads(1, 1)     # PAD/PAD until the downstream port proposes
                    same = ~fields.link_pad & fields.lane_pad & (fields.link == link)
                    with m.If(good_ts & ~fields.link_pad & fields.lane_pad &
                              (self.ts.kind == TsKind.TS1)):
                        m.d.sync += [link.eq(fields.link),
                                     count.eq(Mux(same & (count != 0), count + 1, 1))]
                    with m.Elif(self.ts_valid):
                        m.d.sync += count.eq(0)
                with m.If(count >= 2):
                    goto(S.CONFIG_LINKWIDTH_ACCEPT)
                with m.Else():
                    timeout(t.t24ms)

            # Section 4.2.6.3.2.
            with m.Case(S.CONFIG_LINKWIDTH_ACCEPT):
                m.d.comb += self.tx_mode.eq(TxMode.TS1)
                if dsp:
                    # Propose lane numbers (lane 0) and wait for them back.
                    m.d.sync += lane.eq(0)
                    pads(0, 0)
                    goto(S.CONFIG_LANENUM_WAIT)
                else:
                    pads(0, 1)     # echo the link number, lane still PAD
                    same = ~fields.link_pad & (fields.link == link) & ~fields.lane_pad & \
                        (fields.lane == lane)
                    with m.If(good_ts & ~fields.link_pad & (fields.link == link) &
                              ~fields.lane_pad):
                        m.d.sync += [lane.eq(fields.lane),
                                     count.eq(Mux(same & (count != 0), count + 1, 1))]
                    with m.Elif(self.ts_valid):
                        m.d.sync += count.eq(0)
                    with m.If(count >= 2):
                        pads(0, 0)
                        goto(S.CONFIG_LANENUM_WAIT)
                    with m.Else():
                        timeout(t.t2ms)

            # Sections 4.2.6.3.4 (Lanenum.Wait), 4.2.6.3.3 (Lanenum.Accept):
            # the downstream port moves on two consecutive TS1s carrying the
            # numbers it sends, in each state; the upstream port (which
            # already echoes them) on two consecutive TS2s with them, that
            # is, once the downstream port is in Configuration.Complete.
            with m.Case(S.CONFIG_LANENUM_WAIT, S.CONFIG_LANENUM_ACCEPT):
                m.d.comb += self.tx_mode.eq(TxMode.TS1)
                count_ts(numbers_match &
                         (self.ts.kind == (TsKind.TS1 if dsp else TsKind.TS2)))
                with m.If(count >= 2):
                    with m.If(state == S.CONFIG_LANENUM_WAIT):
                        goto(S.CONFIG_LANENUM_ACCEPT)
                    with m.Else():
                        goto(S.CONFIG_COMPLETE)
                with m.Else():
                    timeout(t.t2ms)

            # Section 4.2.6.3.5 (and 4.2.6.4.4 for Recovery.RcvrCfg): TS2 with
            # the numbers; 8 consecutive TS2 received, 16 sent after one.
            with m.Case(S.CONFIG_COMPLETE, S.RECOVERY_RCVRCFG):
                m.d.comb += self.tx_mode.eq(TxMode.TS2)
                match_ts2 = (self.ts.kind == TsKind.TS2) & numbers_match
                count_ts(match_ts2)
                sent_after_seen(good_ts & match_ts2, self.ts_sent)
                with m.If((count >= 8) & (sent >= 16)):
                    with m.If(state == S.CONFIG_COMPLETE):
                        goto(S.CONFIG_IDLE)
                    with m.Else():
                        goto(S.RECOVERY_IDLE)
                with m.Elif(state == S.CONFIG_COMPLETE):
                    timeout(t.t2ms)
                with m.Else():
                    timeout(t.t48ms)
                    hot_reset_check()

            # Sections 4.2.6.3.6 and 4.2.6.4.5: logical idle; 8 consecutive
            # idle symbols received and 16 sent after the first received one.
            # LinkUp = 1b in Configuration.Idle.
            with m.Case(S.CONFIG_IDLE, S.RECOVERY_IDLE):
                m.d.comb += [self.tx_mode.eq(TxMode.IDLE), self.rx_enable.eq(1)]
                m.d.sync += self.link_up.eq(1)
                sent_after_seen(self.idle_any, self.idle_sent)
                with m.If(self.idle_ok & (sent >= 8)):
                    goto(S.L0)
                with m.Else():
                    timeout(t.t2ms)

            # Section 4.2.6.5.
            with m.Case(S.L0):
                m.d.comb += [self.tx_mode.eq(TxMode.L0), self.rx_enable.eq(1)]
                with m.If(self.rx_elec_idle | ~self.rx_valid):
                    m.d.sync += eidle.eq(eidle + 1)
                with m.Else():
                    m.d.sync += eidle.eq(0)
                leave = (self.retrain | self.hot_reset | good_ts | self.eios |
                         (eidle == t.eidle_cycles))
                if self.recover_on_framing_error:
                    leave = leave | self.framing_error
                with m.If(leave):
                    m.d.sync += eidle.eq(0)
                    goto(S.RECOVERY_RCVRLOCK)

            # Section 4.2.6.4.1: TS1 with our numbers; 8 consecutive TS1/TS2
            # with matching link and lane numbers.
            with m.Case(S.RECOVERY_RCVRLOCK):
                m.d.comb += self.tx_mode.eq(TxMode.TS1)
                count_ts(numbers_match)
                with m.If(count >= 8):
                    goto(S.RECOVERY_RCVRCFG)
                with m.Else():
                    timeout(t.t24ms)
                hot_reset_check()

            # Section 4.2.6.11: LinkUp = 0b; TS1s with the Hot Reset bit and
            # our numbers. Directed: for 2 ms, then Detect. Not directed (the
            # far end asked): until 2 ms after the last such TS1s came in.
            with m.Case(S.HOT_RESET):
                m.d.comb += self.tx_mode.eq(TxMode.TS1)
                m.d.sync += self.link_up.eq(0)
                with m.If(~directed & hot_reset_ts1):
                    m.d.sync += timer.eq(0)
                timeout(t.t2ms)
        return m
