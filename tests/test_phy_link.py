"""Two physical layers (downstream port and upstream port) joined by the lane
model `sim/pcie_lane.py`: link training to L0, link packets both ways,
errors, Recovery, a broken lane."""
import random

import pytest
from amaranth.hdl import Fragment, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hdl.phy.framing import SKP_INTERVAL_CYCLES
from hdl.phy.link_packet import PacketKind
from hdl.phy.phy import LtssmState, LtssmTimeouts, PhysicalLayer, PortRole
from hdl.phy.symbols import KSymbol
from sim.pcie_lane import PcieLane
from tests.amaranth_sim import CLOCK_PERIOD

S = LtssmState
#: Shrunk timers so that the tests run in seconds (the defaults are checked in
#: test_defaults_are_the_spec_values).
FAST = dict(t12ms=32, t24ms=1200, t48ms=2400, t2ms=300, polling_ts1=16)
LINK_NUMBER = 5

TRAINING = [S.DETECT_QUIET, S.DETECT_ACTIVE, S.POLLING_ACTIVE, S.POLLING_CONFIGURATION,
            S.CONFIG_LINKWIDTH_START, S.CONFIG_LINKWIDTH_ACCEPT, S.CONFIG_LANENUM_WAIT,
            S.CONFIG_LANENUM_ACCEPT, S.CONFIG_COMPLETE, S.CONFIG_IDLE, S.L0]
RECOVERY = [S.L0, S.RECOVERY_RCVRLOCK, S.RECOVERY_RCVRCFG, S.RECOVERY_IDLE, S.L0]


class Link:
    """The bench: ``dsp`` (root side, proposes link number 5), ``usp`` (our
    endpoint), ``lane``; and the testbench helpers."""

    def __init__(self, *, skp_interval=SKP_INTERVAL_CYCLES, timeouts=FAST, max_cycles=20_000,
                 phy_options=None, **lane):
        phy_options = phy_options or {}
        self.max_cycles = max_cycles
        self.dsp = PhysicalLayer(PortRole.DOWNSTREAM, timeouts=LtssmTimeouts(**timeouts),
                                 link_number=LINK_NUMBER, skp_interval=skp_interval,
                                 **phy_options)
        self.usp = PhysicalLayer(PortRole.UPSTREAM, timeouts=LtssmTimeouts(**timeouts),
                                 skp_interval=skp_interval, **phy_options)
        self.lane = PcieLane(**lane)
        self.m = m = Module()
        m.submodules.dsp = self.dsp
        m.submodules.usp = self.usp
        m.submodules.lane = self.lane
        wiring.connect(m, self.dsp.pipe, self.lane.a)
        wiring.connect(m, self.usp.pipe, self.lane.b)
        self.ports = {"dsp": self.dsp, "usp": self.usp}
        self.cycle = 0
        self.states = {"dsp": [], "usp": []}      # [(cycle, state)] on change
        self.link_up = {"dsp": [], "usp": []}     # [(cycle, value)] on change
        self.received = {"dsp": [], "usp": []}    # [(kind, bytes, bad)]
        self.receiver_errors = {"dsp": 0, "usp": 0}
        self.wire = {"dsp": [], "usp": []}        # symbols sent: [(cycle, byte, is_k)]
        self.com_slots = {"dsp": [0, 0], "usp": [0, 0]}  # COMs received per slot

    # -- monitors (background) --------------------------------------------

    async def _monitor(self, ctx):
        ports = list(self.ports.items())
        signals = []
        for _, p in ports:
            rx = p.rx.payload
            signals += [p.state, p.link_up, p.receiver_error, p.rx.valid, rx.data, rx.kind,
                        rx.first, rx.last, rx.bad, p.pipe.tx_data, p.pipe.tx_datak,
                        p.pipe.tx_elec_idle, p.pipe.rx_data, p.pipe.rx_datak, p.pipe.rx_valid]
        partial = {"dsp": None, "usp": None}
        async for sample in ctx.tick().sample(*signals):
            values = sample[2:]
            for index, (name, _) in enumerate(ports):
                (state, link_up, rx_error, valid, data, kind, first, last, bad,
                 tx_data, tx_datak, tx_idle, rx_data, rx_datak, rx_valid) = \
                    values[15 * index:15 * (index + 1)]
                state = S(state)
                if not self.states[name] or self.states[name][-1][1] != state:
                    self.states[name].append((self.cycle, state))
                if not self.link_up[name] or self.link_up[name][-1][1] != link_up:
                    self.link_up[name].append((self.cycle, link_up))
                self.receiver_errors[name] += rx_error
                if valid:
                    if first:
                        assert partial[name] is None, "first beat inside a packet"
                        partial[name] = (PacketKind(kind), bytearray())
                    assert partial[name] is not None, "beat outside a packet"
                    partial[name][1].extend(data.to_bytes(2, "little"))
                    if last:
                        self.received[name].append((partial[name][0], bytes(partial[name][1]),
                                                    bad))
                        partial[name] = None
                if not tx_idle:
                    for slot in range(2):
                        self.wire[name].append((self.cycle, tx_data >> 8 * slot & 0xFF,
                                                tx_datak >> slot & 1))
                if rx_valid:
                    for slot in range(2):
                        if rx_datak >> slot & 1 and rx_data >> 8 * slot & 0xFF == KSymbol.COM:
                            self.com_slots[name][slot] += 1
            self.cycle += 1
            assert self.cycle < self.max_cycles, "watchdog: the simulation ran too long"

    def run(self, *testbenches):
        sim = Simulator(self.m)
        sim.add_clock(CLOCK_PERIOD)
        sim.add_testbench(self._monitor, background=True)
        for testbench in testbenches:
            sim.add_testbench(testbench)
        sim.run()

    # -- helpers ------------------------------------------------------------

    def state_sequence(self, name, since=0):
        """The states from cycle `since` on (starting with the one it was in)."""
        before = [state for cycle, state in self.states[name] if cycle <= since]
        return before[-1:] + [state for cycle, state in self.states[name] if cycle > since]

    async def wait_l0(self, ctx, limit=3000):
        for _ in range(limit):
            if all(ctx.get(p.state) == S.L0 for p in self.ports.values()):
                return
            await ctx.tick()
        raise AssertionError(f"no L0 within {limit} cycles: "
                             f"{[s.spec_name for _, s in self.states['dsp']][-6:]} / "
                             f"{[s.spec_name for _, s in self.states['usp']][-6:]}")

    async def send(self, ctx, name, packets, rng=None, gap=0.0):
        """Offer `packets` [(kind, bytes)] on port `name`'s tx, as a DLL does:
        once the first beat is taken, one beat a cycle."""
        tx = self.ports[name].tx
        for kind, data in packets:
            while rng is not None and rng.random() < gap:
                await ctx.tick()
            beats = [data[i:i + 2] for i in range(0, len(data), 2)]
            for index, beat in enumerate(beats):
                ctx.set(tx.payload, {"data": int.from_bytes(beat, "little"), "kind": kind,
                                     "first": index == 0, "last": index == len(beats) - 1,
                                     "bad": 0})
                ctx.set(tx.valid, 1)
                if index:
                    assert ctx.get(tx.ready), "the PHY stalled inside a packet"
                    await ctx.tick()
                else:
                    await ctx.tick().until(tx.ready)
            ctx.set(tx.valid, 0)

    async def idle(self, ctx, cycles):
        for _ in range(cycles):
            await ctx.tick()


def random_packets(rng, count):
    """Link packets as the DLL makes them: 6-byte DLLPs and TLPs of an even
    number of bytes (sequence number + TLP + LCRC)."""
    out = []
    for _ in range(count):
        if rng.random() < 0.4:
            out.append((PacketKind.DLLP, rng.randbytes(6)))
        else:
            out.append((PacketKind.TLP, rng.randbytes(2 * rng.randint(9, 40))))
    return out


def names(states):
    return [s.spec_name for s in states]


# -----------------------------------------------------------------------------

def test_defaults_are_the_spec_values():
    phy = PhysicalLayer()
    Fragment.get(phy, None)
    t = phy.timeouts
    assert phy.role is PortRole.UPSTREAM
    assert t.t12ms == 1_500_000          # 12 ms at 125 MHz (Detect.Quiet)
    assert t.t24ms == 3_000_000          # 24 ms (Polling.Active, Recovery.RcvrLock, ...)
    assert t.t48ms == 6_000_000          # 48 ms (Polling.Configuration, Recovery.RcvrCfg)
    assert t.t2ms == 250_000             # 2 ms (Configuration.*, *.Idle)
    assert t.polling_ts1 == 1024         # TS1s sent in Polling.Active
    assert 1180 <= 2 * SKP_INTERVAL_CYCLES <= 1538   # SKP interval in symbol times


LANES = {
    "aligned": {},
    "com_in_slot1": {"shift_ab": True, "shift_ba": True},
    "com_in_slot1_one_way": {"shift_ab": True},
    "inverted": {"invert_ab": True, "invert_ba": True},
    "inverted_one_way_shifted": {"invert_ab": True, "shift_ab": True, "shift_ba": True},
}


@pytest.mark.parametrize("lane", LANES)
def test_training_reaches_l0(lane):
    options = LANES[lane]
    link = Link(**options)
    numbers = {"dsp": set(), "usp": set()}

    async def testbench(ctx):
        await link.wait_l0(ctx)
        await link.idle(ctx, 50)

    link.run(testbench)
    for name in ("dsp", "usp"):
        assert names(link.state_sequence(name)) == names(TRAINING), name
        # LinkUp rises in Configuration.Idle, not before.
        idle_at = next(c for c, s in link.states[name] if s == S.CONFIG_IDLE)
        assert [v for _, v in link.link_up[name]] == [0, 1]
        assert link.link_up[name][1][0] >= idle_at
        # Polling.Active lasted at least the TS1s it must send.
        polling = [c for c, s in link.states[name] if s in (S.POLLING_ACTIVE,
                                                             S.POLLING_CONFIGURATION)]
        assert polling[1] - polling[0] >= 8 * FAST["polling_ts1"]
        # TS link/lane numbers sent in Configuration.Complete: both sides
        # use the downstream port's link number, lane 0.
        complete = [c for c, s in link.states[name] if s == S.CONFIG_COMPLETE][0]
        idle = [c for c, s in link.states[name] if s == S.CONFIG_IDLE][0]
        wire = [w for w in link.wire[name] if complete + 4 <= w[0] < idle]
        for i, (_, byte, is_k) in enumerate(wire[:-2]):
            if is_k and byte == KSymbol.COM and wire[i + 1][1:] != (KSymbol.SKP, 1):
                numbers[name].add((wire[i + 1][1:], wire[i + 2][1:]))
    assert numbers["dsp"] == numbers["usp"] == {((LINK_NUMBER, 0), (0, 0))}
    # Where the lane shifts symbols, COMs arrive in slot 1 only.
    for name, direction in (("usp", "shift_ab"), ("dsp", "shift_ba")):
        slots = link.com_slots[name]
        if options.get(direction):
            assert slots[0] == 0 and slots[1] > 10
        else:
            assert slots[1] == 0 and slots[0] > 10


@pytest.mark.parametrize("lane", ["aligned", "inverted", "inverted_one_way_shifted"])
def test_polarity_inversion(lane):
    """A receiver whose lane is inverted sets rx_polarity in Polling.Active
    (section 4.2.4.4); the other does not."""
    options = LANES[lane]
    link = Link(**options)
    seen = {}

    async def testbench(ctx):
        await link.wait_l0(ctx)
        seen["usp"] = ctx.get(link.usp.pipe.rx_polarity)
        seen["dsp"] = ctx.get(link.dsp.pipe.rx_polarity)

    link.run(testbench)
    assert seen == {"usp": int(options.get("invert_ab", False)),
                    "dsp": int(options.get("invert_ba", False))}


def test_no_receiver_stays_in_detect():
    link = Link()

    async def testbench(ctx):
        ctx.set(link.lane.present, 0)
        await link.idle(ctx, 400)

    link.run(testbench)
    for name in ("dsp", "usp"):
        seq = link.state_sequence(name)
        assert set(seq) == {S.DETECT_QUIET, S.DETECT_ACTIVE} and len(seq) > 10


@pytest.mark.parametrize("lane", ["aligned", "com_in_slot1_one_way"])
def test_packets_cross_both_ways(lane):
    rng = random.Random(7)
    link = Link(skp_interval=40, **LANES[lane])
    sent = {"dsp": random_packets(rng, 60), "usp": random_packets(rng, 60)}
    # Some back to back (no gap), some spread out.
    done = {}

    async def sender(ctx, name, gap):
        await link.wait_l0(ctx)
        await link.send(ctx, name, sent[name], rng, gap)
        done[name] = True

    async def testbench(ctx):
        await link.wait_l0(ctx)
        start = link.cycle
        while len(done) < 2:
            await ctx.tick()
        await link.idle(ctx, 30)
        link.l0_span = (start, link.cycle)

    async def dsp_sender(ctx):
        await sender(ctx, "dsp", 0.0)

    async def usp_sender(ctx):
        await sender(ctx, "usp", 0.5)

    link.run(dsp_sender, usp_sender, testbench)

    assert [(k, d) for k, d, _ in link.received["usp"]] == sent["dsp"]
    assert [(k, d) for k, d, _ in link.received["dsp"]] == sent["usp"]
    assert not any(bad for _, _, bad in link.received["usp"] + link.received["dsp"])
    assert link.receiver_errors == {"dsp": 0, "usp": 0}
    # SKP ordered sets went out in L0 (and were taken out again, since the
    # packets arrived whole), spaced by the interval.
    start, end = link.l0_span
    for name in ("dsp", "usp"):
        wire = [w for w in link.wire[name] if start <= w[0] < end]
        skps = [c for i, (c, b, k) in enumerate(wire[:-1])
                if k and b == KSymbol.COM and wire[i + 1][1:] == (KSymbol.SKP, 1)]
        # one scheduled every 40 cycles; those due inside a packet follow it.
        assert (end - start) // 40 - 1 <= len(skps) <= (end - start) // 40 + 1
    assert link.state_sequence("dsp")[-1] == S.L0


@pytest.mark.parametrize("slot", [0, 1])
@pytest.mark.parametrize("lane", ["aligned", "com_in_slot1"])
def test_corrupted_symbol_gives_bad(lane, slot):
    rng = random.Random(11)
    link = Link(**LANES[lane])
    packets = [(PacketKind.TLP, rng.randbytes(40)) for _ in range(5)]

    async def sender(ctx):
        await link.wait_l0(ctx)
        await link.send(ctx, "dsp", packets)

    async def corrupter(ctx):
        # Corrupt a symbol in the middle of the third packet the downstream
        # port sends (the lane corrupts what is on its tx when asked).
        starts = 0
        while True:
            await ctx.tick()
            if ctx.get(link.dsp.pipe.tx_datak) & 1 and \
                    ctx.get(link.dsp.pipe.tx_data) & 0xFF == KSymbol.STP:
                starts += 1
                if starts == 3:
                    break
        await link.idle(ctx, 5)
        ctx.set(link.lane.corrupt_slot, slot)
        ctx.set(link.lane.corrupt_ab, 1)
        await ctx.tick()
        ctx.set(link.lane.corrupt_ab, 0)
        await link.idle(ctx, 100)

    link.run(sender, corrupter)
    received = link.received["usp"]
    assert [bad for _, _, bad in received] == [0, 0, 1, 0, 0]
    assert [d for _, d, bad in received if not bad] == [d for i, (_, d) in enumerate(packets)
                                                        if i != 2]
    assert link.receiver_errors["usp"] >= 1


@pytest.mark.parametrize("recover", [False, True])
def test_framing_error(recover):
    """A corrupted END is a framing error: the packet is bad, the receiver
    error is reported and, only if asked (``recover_on_framing_error``), the
    receiving port goes to Recovery and back to L0."""
    rng = random.Random(12)
    link = Link(phy_options={"recover_on_framing_error": recover})
    packets = [(PacketKind.TLP, rng.randbytes(20)) for _ in range(3)]
    marks = {}

    async def sender(ctx):
        await link.wait_l0(ctx)
        marks["l0"] = link.cycle
        await link.send(ctx, "dsp", packets)
        await link.idle(ctx, 100)
        await link.wait_l0(ctx)
        await link.send(ctx, "dsp", packets)
        await link.idle(ctx, 40)

    async def corrupter(ctx):
        # The second packet's END: STP, 20 bytes, END is 11 words; END is
        # symbol 1 of the 11th.
        starts = 0
        while starts < 2:
            await ctx.tick()
            if ctx.get(link.dsp.pipe.tx_datak) & 1 and \
                    ctx.get(link.dsp.pipe.tx_data) & 0xFF == KSymbol.STP:
                starts += 1
        await link.idle(ctx, 10)
        assert ctx.get(link.dsp.pipe.tx_datak) == 0b10
        ctx.set(link.lane.corrupt_slot, 1)
        ctx.set(link.lane.corrupt_ab, 1)
        await ctx.tick()
        ctx.set(link.lane.corrupt_ab, 0)

    link.run(sender, corrupter)
    received = link.received["usp"]
    assert [bad for _, _, bad in received[:2]] == [0, 1]
    assert received[-3:] == [(k, d, 0) for k, d in packets]     # after (any) Recovery
    # Without Recovery the third packet is received too; with it, the
    # receiver may stop taking packets while it is still on the wire (the DLL
    # replays lost TLPs).
    assert len(received) == 6 or recover
    assert link.receiver_errors["usp"] >= 1
    expected = RECOVERY if recover else [S.L0]
    assert names(link.state_sequence("usp", marks["l0"])) == names(expected)


@pytest.mark.parametrize("who", ["dsp", "usp"])
def test_retrain_goes_through_recovery(who):
    rng = random.Random(3)
    link = Link()
    before = {"dsp": random_packets(rng, 5), "usp": random_packets(rng, 5)}
    after = {"dsp": random_packets(rng, 5), "usp": random_packets(rng, 5)}
    marks = {}

    async def testbench(ctx):
        await link.wait_l0(ctx)
        await link.send(ctx, "dsp", before["dsp"])
        await link.send(ctx, "usp", before["usp"])
        await link.idle(ctx, 40)
        marks["retrain"] = link.cycle
        ctx.set(link.ports[who].retrain, 1)
        await ctx.tick()
        ctx.set(link.ports[who].retrain, 0)
        await link.idle(ctx, 20)
        await link.wait_l0(ctx)
        await link.send(ctx, "dsp", after["dsp"])
        await link.send(ctx, "usp", after["usp"])
        await link.idle(ctx, 60)

    link.run(testbench)
    for name in ("dsp", "usp"):
        assert names(link.state_sequence(name, marks["retrain"])) == names(RECOVERY), name
        assert [v for _, v in link.link_up[name]] == [0, 1]     # LinkUp held
    assert [(k, d, b) for k, d, b in link.received["usp"]] == \
        [(k, d, 0) for k, d in before["dsp"] + after["dsp"]]
    assert [(k, d, b) for k, d, b in link.received["dsp"]] == \
        [(k, d, 0) for k, d in before["usp"] + after["usp"]]


def test_hot_reset():
    """The downstream port, directed, takes both ends through Hot Reset to
    Detect (LinkUp drops), and the link trains again."""
    rng = random.Random(13)
    link = Link()
    after = {"dsp": random_packets(rng, 4), "usp": random_packets(rng, 4)}
    marks = {}

    async def testbench(ctx):
        await link.wait_l0(ctx)
        await link.idle(ctx, 20)
        marks["reset"] = link.cycle
        ctx.set(link.dsp.hot_reset, 1)
        while ctx.get(link.dsp.state) != S.HOT_RESET:
            await ctx.tick()
        ctx.set(link.dsp.hot_reset, 0)
        await link.idle(ctx, 50)
        await link.wait_l0(ctx)
        await link.send(ctx, "dsp", after["dsp"])
        await link.send(ctx, "usp", after["usp"])
        await link.idle(ctx, 60)

    link.run(testbench)
    for name in ("dsp", "usp"):
        seq = link.state_sequence(name, marks["reset"])
        assert names(seq) == names([S.L0, S.RECOVERY_RCVRLOCK, S.HOT_RESET] + TRAINING), name
        assert [v for _, v in link.link_up[name]] == [0, 1, 0, 1]
    # The directed port leaves after 2 ms; the other 2 ms after the last
    # Hot Reset TS1 reached it, so later.
    left = {name: [c for c, s in link.states[name] if s == S.DETECT_QUIET][-1]
            for name in ("dsp", "usp")}
    assert left["usp"] > left["dsp"]
    assert [(k, d, b) for k, d, b in link.received["usp"]] == [(k, d, 0) for k, d in after["dsp"]]
    assert [(k, d, b) for k, d, b in link.received["dsp"]] == [(k, d, 0) for k, d in after["usp"]]


@pytest.mark.parametrize("cycles,via", [(300, "recovery"), (2000, "detect")])
def test_broken_lane_leaves_l0_and_retrains(cycles, via):
    rng = random.Random(9)
    link = Link()
    after = {"dsp": random_packets(rng, 5), "usp": random_packets(rng, 5)}
    marks = {}

    async def testbench(ctx):
        await link.wait_l0(ctx)
        await link.idle(ctx, 20)
        marks["cut"] = link.cycle
        ctx.set(link.lane.cut, 1)
        await link.idle(ctx, cycles)
        assert all(ctx.get(p.state) != S.L0 for p in link.ports.values())
        ctx.set(link.lane.cut, 0)
        await link.wait_l0(ctx)
        await link.send(ctx, "dsp", after["dsp"])
        await link.send(ctx, "usp", after["usp"])
        await link.idle(ctx, 60)

    link.run(testbench)
    for name in ("dsp", "usp"):
        seq = link.state_sequence(name, marks["cut"])
        if via == "recovery":
            # Electrical idle in L0 -> Recovery; back to L0 when the lane returns.
            assert names(seq) == names(RECOVERY), name
            assert [v for _, v in link.link_up[name]] == [0, 1]
        else:
            # Recovery.RcvrLock times out (24 ms) -> Detect -> full training.
            assert names(seq) == names([S.L0, S.RECOVERY_RCVRLOCK] + TRAINING), name
            assert [v for _, v in link.link_up[name]] == [0, 1, 0, 1]
    assert [(k, d, b) for k, d, b in link.received["usp"]] == [(k, d, 0) for k, d in after["dsp"]]
    assert [(k, d, b) for k, d, b in link.received["dsp"]] == [(k, d, 0) for k, d in after["usp"]]
