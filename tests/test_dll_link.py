"""The data link layer (PCIe Base 4.0 chapter 3): two `DataLink`s back to back.

A `LinkChannel` model joins each transmitter to the other side's receiver with
a few cycles of latency, gaps between packets (the PHY's ``ready`` low), and
can drop or corrupt chosen packets. The testbench plays both cores: it sends
real TLPs (MWr, MRd, CplD; 3- and 4-DW headers) and checks that each arrives
byte for byte, in order, exactly once.
"""
import random

from amaranth.hdl import Cat, Elaboratable, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hdl import spec
from hdl.dll.data_link import DataLink
from hdl.dll.dllp import SEQ_BITS, DllpType, FcKind
from hdl.dll.lcrc import LCRC
from hdl.dll.receiver import TlpReceiver
from hdl.dll.transmitter import TlpTransmitter
from hdl.phy.link_packet import LinkPacketSignature, PacketKind
from tests.amaranth_sim import CLOCK_PERIOD

# --- TLPs -----------------------------------------------------------------------------


class Tlp:
    """A TLP as the core sees it: header DWs (spec values), payload DWs (little-endian)."""

    def __init__(self, header, payload=()):
        self.header = list(header)
        self.payload = list(payload)

    @property
    def dws(self):
        return self.header + self.payload

    def wire(self):
        """Its bytes on the link (3.6.2.1): header big-endian, payload as is."""
        return (b"".join(dw.to_bytes(4, "big") for dw in self.header)
                + b"".join(dw.to_bytes(4, "little") for dw in self.payload))

    def __eq__(self, other):
        return self.dws == other.dws

    def __repr__(self):
        return f"Tlp({[hex(dw) for dw in self.header]}, {len(self.payload)} DWs)"


def _dw0(fmt_type, length):
    return fmt_type << 24 | (length & 0x3FF)


def mwr(rng, address, ndws, requester=0x0100, tag=0):
    wide = address >= 1 << 32
    fmt_type = spec.TlpFmtType.MWR64 if wide else spec.TlpFmtType.MWR32
    header = [_dw0(fmt_type, ndws), requester << 16 | tag << 8 | (0xF if ndws > 1 else 0) << 4 | 0xF]
    header += [address >> 32, address & 0xFFFFFFFC] if wide else [address & 0xFFFFFFFC]
    return Tlp(header, [rng.getrandbits(32) for _ in range(ndws)])


def mrd(address, ndws, requester=0x0100, tag=0):
    wide = address >= 1 << 32
    fmt_type = spec.TlpFmtType.MRD64 if wide else spec.TlpFmtType.MRD32
    header = [_dw0(fmt_type, ndws), requester << 16 | tag << 8 | (0xF if ndws > 1 else 0) << 4 | 0xF]
    header += [address >> 32, address & 0xFFFFFFFC] if wide else [address & 0xFFFFFFFC]
    return Tlp(header)


def cpld(rng, ndws, tag, completer=0x0100, requester=0x0000):
    header = [_dw0(spec.TlpFmtType.CPLD, ndws), completer << 16 | (4 * ndws) & 0xFFF,
              requester << 16 | tag << 8]
    return Tlp(header, [rng.getrandbits(32) for _ in range(ndws)])


def random_tlps(rng, count, max_dws=32):
    tlps = []
    for tag in range(count):
        choice = rng.randrange(5)
        address = rng.getrandbits(64 if rng.random() < 0.4 else 32) & ~3
        ndws = rng.randrange(1, max_dws + 1)
        if choice in (0, 1):
            tlps.append(mwr(rng, address, ndws, tag=tag))
        elif choice == 2:
            tlps.append(mrd(address, ndws, tag=tag))
        else:
            tlps.append(cpld(rng, ndws, tag=tag & 0xFF))
    return tlps


def tlp_beats(tlp):
    dws = tlp.dws
    beats = []
    for pos in range(0, len(dws), 2):
        pair = dws[pos:pos + 2]
        beats.append({"data": pair[0] | (pair[1] << 32 if len(pair) > 1 else 0),
                      "keep": 0b11 if len(pair) > 1 else 0b01,
                      "first": pos == 0, "last": pos + 2 >= len(dws)})
    return beats


async def wait_for(ctx, condition, *exprs):
    """Tick until ``condition`` holds at a clock edge; the sampled ``exprs``.
    (A plain loop: background testbenches may be cut off in the middle, and
    an open ``until()`` generator then warns.)"""
    while True:
        _, _, *values, done = await ctx.tick().sample(*exprs, condition)
        if done:
            return values


async def send_tlps(ctx, port, tlps, gaps=None):
    for tlp in tlps:
        for beat in tlp_beats(tlp):
            ctx.set(port.valid, 1)
            ctx.set(port.payload, beat)
            await wait_for(ctx, port.ready)
            ctx.set(port.valid, 0)
            if gaps and gaps.random() < 0.1:
                await ctx.tick()
    ctx.set(port.valid, 0)


# --- the channel -----------------------------------------------------------------------


class LinkChannel(wiring.Component):
    """One direction of the link: a transmitter's beats to the other receiver.

    ``latency`` cycles of delay. Between packets the transmit side's ``ready``
    goes low now and then (the PHY sending SKPs). Faults, for the next packets
    that match (kind, and for DLLPs the type byte): drop ``drop_n`` of them,
    flip a bit in ``corrupt_n`` packets of kind ``corrupt_kind`` (TLPs
    unless set; ``drop_n`` and ``corrupt_n`` are totals to reach, compared
    with ``dropped`` and ``corrupted``). With ``seq_only`` set, TLP faults
    hit only TLPs whose Sequence Number is ``seq``.
    Counters: TLPs, Naks and UpdateFCs that got through, packets dropped and
    corrupted; ``watched``: TLPs numbered ``watch_seq`` that got through;
    ``last_seq``: the number of the last TLP that did.
    """

    def __init__(self, latency=6):
        self.latency = latency
        super().__init__({
            "tx": In(LinkPacketSignature()),
            "rx": Out(LinkPacketSignature()),
            "drop_n": In(8), "drop_kind": In(PacketKind), "drop_type": In(8),
            "corrupt_n": In(8), "corrupt_kind": In(PacketKind),
            "seq_only": In(1), "seq": In(SEQ_BITS), "watch_seq": In(SEQ_BITS),
            "dropped": Out(8), "corrupted": Out(8),
            "tlps": Out(16), "naks": Out(16), "update_fcs": Out(16),
            "watched": Out(8), "last_seq": Out(SEQ_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        lfsr = Signal(8, init=0x5A)
        m.d.sync += lfsr.eq(Cat(lfsr[7] ^ lfsr[5] ^ lfsr[4] ^ lfsr[3], lfsr[:7]))
        in_packet = Signal()
        dropping = Signal()
        corrupting = Signal()
        beat_no = Signal(8)
        m.d.comb += self.tx.ready.eq(in_packet | lfsr[0] | lfsr[1])
        take = self.tx.valid & self.tx.ready
        beat = self.tx.payload

        stages = [(Signal(len(self.rx.payload.as_value()), name=f"data{i}"), Signal(name=f"valid{i}"))
                  for i in range(self.latency)]
        passed = Signal.like(beat.as_value())
        m.d.comb += passed.eq(beat.as_value())
        drop_now = Signal()
        corrupt_now = Signal()
        with m.If(take):
            m.d.sync += [in_packet.eq(~beat.last), beat_no.eq(beat_no + 1)]
            with m.If(beat.first):
                m.d.sync += beat_no.eq(1)
                is_tlp = beat.kind == PacketKind.TLP
                tlp_seq = Cat(beat.data[8:16], beat.data[0:4])     # 3.6.2.1
                seq_ok = ~self.seq_only | (tlp_seq == self.seq)
                matches = ((beat.kind == self.drop_kind)
                           & Mux(is_tlp, seq_ok, beat.data[0:8] == self.drop_type))
                m.d.comb += drop_now.eq(matches & (self.dropped != self.drop_n))
                m.d.comb += corrupt_now.eq(~drop_now & (beat.kind == self.corrupt_kind)
                                           & (~is_tlp | seq_ok)
                                           & (self.corrupted != self.corrupt_n))
                with m.If(~drop_now & is_tlp):
                    m.d.sync += self.last_seq.eq(tlp_seq)
                    with m.If(tlp_seq == self.watch_seq):
                        m.d.sync += self.watched.eq(self.watched + 1)
                m.d.sync += [dropping.eq(drop_now & ~beat.last), corrupting.eq(corrupt_now)]
                with m.If(drop_now):
                    m.d.sync += self.dropped.eq(self.dropped + 1)
                with m.If(corrupt_now):
                    m.d.sync += self.corrupted.eq(self.corrupted + 1)
                with m.If(~drop_now & (beat.kind == PacketKind.TLP)):
                    m.d.sync += self.tlps.eq(self.tlps + 1)
                with m.If(~drop_now & (beat.kind == PacketKind.DLLP)
                          & (beat.data[0:8] == DllpType.NAK)):
                    m.d.sync += self.naks.eq(self.naks + 1)
                with m.If(~drop_now & (beat.kind == PacketKind.DLLP)
                          & (beat.data[6:8] == FcKind.UPDATE_FC)):
                    m.d.sync += self.update_fcs.eq(self.update_fcs + 1)
            with m.If(beat.last):
                m.d.sync += [dropping.eq(0), corrupting.eq(0)]
            # a bit of a TLP's header (its fourth beat), of a DLLP's body (second)
            with m.If(corrupting & (beat_no == Mux(beat.kind == PacketKind.TLP, 3, 1))):
                m.d.comb += passed.eq(beat.as_value() ^ 0x4)
        data, valid = stages[0]
        m.d.sync += [data.eq(passed), valid.eq(take & ~drop_now & ~dropping)]
        for (d0, v0), (d1, v1) in zip(stages, stages[1:]):
            m.d.sync += [d1.eq(d0), v1.eq(v0)]
        data, valid = stages[-1]
        m.d.comb += [self.rx.payload.eq(data), self.rx.valid.eq(valid)]
        return m


class Pair(Elaboratable):
    def __init__(self, a_params, b_params):
        self.a = DataLink(**a_params)
        self.b = DataLink(**b_params)
        self.ab = LinkChannel()
        self.ba = LinkChannel()

    def elaborate(self, platform):
        m = Module()
        m.submodules.a, m.submodules.b = self.a, self.b
        m.submodules.ab, m.submodules.ba = self.ab, self.ba
        wiring.connect(m, self.a.tx, self.ab.tx)
        wiring.connect(m, self.ab.rx, self.b.rx)
        wiring.connect(m, self.b.tx, self.ba.tx)
        wiring.connect(m, self.ba.rx, self.a.rx)
        return m


FAST = dict(replay_timeout=300, ack_latency=30, update_period=400,
            replay_dws=512, replay_slots=16, cpl_reserve_dws=128, cpl_reserve_tlps=8)


def run_pair(testbenches, a_params=None, b_params=None):
    """Run ``testbenches`` (functions of (ctx, pair)) over a fresh Pair; the
    simulation ends when the first of them (the control) returns (it bounds
    every wait)."""
    pair = Pair({**FAST, **(a_params or {})}, {**FAST, **(b_params or {})})
    sim = Simulator(pair)
    sim.add_clock(CLOCK_PERIOD)
    control, *others = testbenches

    async def main(ctx):
        await control(ctx, pair)

    sim.add_testbench(main)
    def bind(bench):
        async def bound(ctx):
            await bench(ctx, pair)
        return bound

    for other in others:
        sim.add_testbench(bind(other), background=True)

    sim.run()
    return pair


async def link_up(ctx, pair, limit=400):
    ctx.set(pair.a.link_up, 1)
    ctx.set(pair.b.link_up, 1)
    for cycle in range(limit):
        await ctx.tick()
        if ctx.get(pair.a.dl_up) and ctx.get(pair.b.dl_up):
            return cycle
    raise AssertionError("DL_Active not reached")


class Traffic:
    """Cores on both sides: send lists of TLPs, collect what arrives."""

    def __init__(self, a_to_b, b_to_a, seed=0):
        self.sent = {"a": a_to_b, "b": b_to_a}
        self.got = {"a": [], "b": []}          # received by a, by b
        self.hold = {"a": False, "b": False}    # core holds tlp_rx.ready low
        self.rng = random.Random(seed)

    def benches(self):
        def source(name):
            async def bench(ctx, pair):
                await wait_for(ctx, getattr(pair, name).dl_up)
                await send_tlps(ctx, getattr(pair, name).tlp_tx, self.sent[name],
                                random.Random(hash(name)))
            return bench

        def sink(name):
            async def bench(ctx, pair):
                port = getattr(pair, name).tlp_rx
                dws = []
                while True:
                    ready = not self.hold[name] and self.rng.random() < 0.8
                    ctx.set(port.ready, ready)
                    _, _, beat, valid = await ctx.tick().sample(port.payload, port.valid)
                    if valid and ready:
                        assert beat.first == (dws == [])
                        dws.append(beat.data & 0xFFFFFFFF)
                        if beat.keep & 2:
                            dws.append(beat.data >> 32)
                        if beat.last:
                            self.got[name].append(dws)
                            dws = []
            return bench

        return [source("a"), source("b"), sink("a"), sink("b")]

    def done(self):
        return (len(self.got["b"]) >= len(self.sent["a"])
                and len(self.got["a"]) >= len(self.sent["b"]))

    def check(self):
        assert self.got["b"] == [t.dws for t in self.sent["a"]]
        assert self.got["a"] == [t.dws for t in self.sent["b"]]


async def until(ctx, condition, limit, what):
    for _ in range(limit):
        if condition():
            return
        await ctx.tick()
    raise AssertionError(f"timed out waiting for {what}")


# --- tests -----------------------------------------------------------------------------


def test_transmitter_wire_format():
    """Sequence Number field, header DWs big-endian, payload as in memory,
    LCRC from the bit-serial model (3.6.2.1), one packet per TLP."""
    rng = random.Random(10)
    tlps = [mwr(rng, 0x1000, 3), mrd(0x1_2345_6780, 8), cpld(rng, 2, tag=7),
            mwr(rng, 0x2_0000_0000, 1)]
    dut = TlpTransmitter(replay_dws=256, slots=8, replay_timeout=10_000)
    packets = []

    async def source(ctx):
        ctx.set(dut.credit.grant, 1)
        ctx.set(dut.enable, 1)
        await send_tlps(ctx, dut.tlp, tlps)

    async def sink(ctx):
        ctx.set(dut.tx.ready, 1)
        for _ in tlps:
            octets = b""
            while True:
                beat, = await ctx.tick().sample(dut.tx.payload).until(dut.tx.valid)
                assert beat.kind == PacketKind.TLP
                assert beat.first == (octets == b"")
                octets += beat.data.to_bytes(2, "little")
                if beat.last:
                    break
            packets.append(octets)

    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    sim.add_testbench(source, background=True)
    sim.add_testbench(sink)
    sim.run()
    for seq, (tlp, packet) in enumerate(zip(tlps, packets)):
        body = seq.to_bytes(2, "big") + tlp.wire()
        assert packet == body + LCRC.crc(body), seq


def test_transmitter_ack_nak_rules():
    """3.6.2.1: an Ack for a TLP not yet sent is ignored; an Ack purges up to
    its number; a Nak purges and replays the rest, oldest first; the
    REPLAY_TIMER replays what stays unacknowledged; the last Ack empties the
    replay buffer."""
    rng = random.Random(17)
    tlps = [mwr(rng, 0x40 * n, 2) for n in range(3)]
    dut = TlpTransmitter(replay_dws=256, slots=8, replay_timeout=400)
    sent = []                                # sequence numbers, in order

    async def ack(ctx, nak, seq):
        ctx.set(dut.ack.valid, 1)
        ctx.set(dut.ack.payload, {"nak": nak, "seq": seq})
        await ctx.tick()
        ctx.set(dut.ack.valid, 0)
        await ctx.tick().repeat(80)          # a replay of two TLPs is done by then

    async def drive(ctx):
        ctx.set(dut.credit.grant, 1)
        ctx.set(dut.enable, 1)
        await send_tlps(ctx, dut.tlp, tlps)
        await ctx.tick().repeat(60)
        assert sent == [0, 1, 2] and not ctx.get(dut.idle)
        await ack(ctx, 0, 7)                 # not sent yet: a DLLP protocol error, ignored
        await ack(ctx, 1, 4000)              # before ACKD_SEQ: ignored
        assert sent == [0, 1, 2]
        await ack(ctx, 0, 0)                 # purges TLP 0
        await ack(ctx, 1, 0)                 # replay 1, 2
        assert sent == [0, 1, 2, 1, 2]
        await ctx.tick().repeat(400)         # REPLAY_TIMER: 1, 2 again
        assert sent == [0, 1, 2, 1, 2, 1, 2]
        await ack(ctx, 0, 2)
        assert ctx.get(dut.idle)
        await ctx.tick().repeat(500)         # nothing left to replay
        assert sent == [0, 1, 2, 1, 2, 1, 2]

    async def collect(ctx):
        ctx.set(dut.tx.ready, 1)
        while True:
            _, _, beat, valid = await ctx.tick().sample(dut.tx.payload, dut.tx.valid)
            if valid and beat.first:
                sent.append((beat.data & 0xF) << 8 | beat.data >> 8)

    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    sim.add_testbench(drive)
    sim.add_testbench(collect, background=True)
    sim.run()


def test_receiver_rules():
    """3.6.3.1 on packets built here from the spec (not by our transmitter):
    good -> delivered, Ack after the AckNak_LATENCY_TIMER; nullified (EDB and
    inverted LCRC) -> silently dropped; bad LCRC -> Nak (once while
    NAK_SCHEDULED); duplicate -> Ack at once, dropped; gap -> Nak."""
    rng = random.Random(16)
    tlps = [mwr(rng, 0x1000, 5), cpld(rng, 3, tag=1), mrd(0x1_0000_0000, 2)]
    dut = TlpReceiver(buffer_dws=256, max_tlps=8, ack_latency=20)
    delivered, acks = [], []

    def packet(seq, tlp, fault=None):
        body = bytearray(seq.to_bytes(2, "big") + tlp.wire())
        crc = bytearray(LCRC.crc(bytes(body)))
        if fault == "nullified":
            crc = bytearray(b ^ 0xFF for b in crc)
        if fault == "lcrc":
            body[5] ^= 0x20
        octets = bytes(body + crc)
        return [{"data": int.from_bytes(octets[pos:pos + 2], "little"), "kind": PacketKind.TLP,
                 "first": pos == 0, "last": pos + 2 == len(octets),
                 "bad": fault == "nullified" and pos + 2 == len(octets)}
                for pos in range(0, len(octets), 2)]

    steps = [  # (seq, tlp, fault), expected Ack/Nak (nak, seq) or None
        ((0, tlps[0], None), (0, 0)),
        ((1, tlps[1], "nullified"), None),
        ((1, tlps[1], "lcrc"), (1, 0)),
        ((1, tlps[1], None), (0, 1)),
        ((0, tlps[0], None), (0, 1)),           # duplicate
        ((5, tlps[2], None), (1, 1)),           # 2, 3, 4 lost
        ((3, tlps[2], None), None),             # NAK_SCHEDULED: no second Nak
        ((2, tlps[2], None), (0, 2)),
    ]

    async def drive(ctx):
        ctx.set(dut.enable, 1)
        for (seq, tlp, fault), expected in steps:
            for beat in packet(seq, tlp, fault):
                ctx.set(dut.rx.valid, 1)
                ctx.set(dut.rx.payload, beat)
                await ctx.tick()
            ctx.set(dut.rx.valid, 0)
            before = len(acks)
            await ctx.tick().repeat(60)
            assert acks[before:] == ([expected] if expected else []), (seq, fault)
        assert delivered == [t.dws for t in tlps]

    async def collect(ctx):
        ctx.set(dut.ack_nak.ready, 1)
        ctx.set(dut.tlp.ready, 1)
        dws = []
        while True:
            _, _, beat, valid, ack, ack_valid = await ctx.tick().sample(
                dut.tlp.payload, dut.tlp.valid, dut.ack_nak.payload, dut.ack_nak.valid)
            if ack_valid:
                acks.append((ack.nak, ack.seq))
            if valid:
                dws += [beat.data & 0xFFFFFFFF] + ([beat.data >> 32] if beat.keep & 2 else [])
                if beat.last:
                    delivered.append(dws)
                    dws = []

    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    sim.add_testbench(drive)
    sim.add_testbench(collect, background=True)
    sim.run()


def test_link_init_and_traffic_both_ways():
    """LinkUp -> InitFC1/InitFC2 -> DL_Active on both sides; 40 random TLPs
    each way at once, each arriving exactly once, in order, byte for byte.
    Then LinkUp drops (DL_Inactive resets everything) and comes back: the
    link initialises again and still carries TLPs."""
    rng = random.Random(11)
    rounds = [(random_tlps(rng, 40), random_tlps(rng, 40)),
              (random_tlps(rng, 6), random_tlps(rng, 6))]
    traffic = Traffic(*rounds[0], seed=1)

    async def control(ctx, pair):
        for _ in range(20):                  # no LinkUp: DL_Inactive, nothing sent
            await ctx.tick()
            assert not ctx.get(pair.a.tx.valid) and not ctx.get(pair.a.dl_up)
        cycles = await link_up(ctx, pair)
        assert cycles < 200
        await until(ctx, traffic.done, 20000, "traffic")
        traffic.check()
        assert ctx.get(pair.ab.tlps) == 40 and ctx.get(pair.ba.tlps) == 40   # no replay
        ctx.set(pair.a.link_up, 0)
        ctx.set(pair.b.link_up, 0)
        await ctx.tick().repeat(5)
        assert not ctx.get(pair.a.dl_up) and not ctx.get(pair.b.dl_up)
        await ctx.tick().repeat(30)          # the channels drain
        traffic.sent = dict(zip("ab", rounds[1]))
        traffic.got = {"a": [], "b": []}
        await link_up(ctx, pair)
        await until(ctx, traffic.done, 10000, "traffic after link down")
        traffic.check()

    def source(name, index):
        async def bench(ctx, pair):
            link = getattr(pair, name)
            for tlps in (rounds[0][index], rounds[1][index]):
                await wait_for(ctx, link.dl_up)
                await send_tlps(ctx, link.tlp_tx, tlps)
                await wait_for(ctx, ~link.link_up)
        return bench

    sinks = traffic.benches()[2:]
    run_pair([control, source("a", 0), source("b", 1), *sinks])


def _faulty_run(setup, check, count=12, **params):
    rng = random.Random(12)
    traffic = Traffic(random_tlps(rng, count, max_dws=16), random_tlps(rng, 4, max_dws=8))

    async def control(ctx, pair):
        setup(ctx, pair)
        await link_up(ctx, pair)
        await until(ctx, traffic.done, 20000, "traffic")
        await ctx.tick().repeat(100)          # nothing more arrives
        traffic.check()
        check(ctx, pair)

    run_pair([control, *traffic.benches()], **params)


def test_corrupted_tlp_is_naked_and_replayed():
    def setup(ctx, pair):
        ctx.set(pair.ab.corrupt_n, 2)

    def check(ctx, pair):
        assert ctx.get(pair.ab.corrupted) == 2
        assert ctx.get(pair.ba.naks) >= 1            # 3.6.3.1: bad LCRC -> Nak
        assert ctx.get(pair.ab.tlps) > 12            # replayed

    _faulty_run(setup, check)


def test_dropped_tlp_is_recovered():
    """A lost TLP: the next one is out of sequence (Nak), or, for the last
    one, the REPLAY_TIMER replays it."""
    def setup(ctx, pair):
        ctx.set(pair.ab.drop_kind, PacketKind.TLP)
        ctx.set(pair.ab.drop_n, 1)
        ctx.set(pair.ba.drop_kind, PacketKind.TLP)
        ctx.set(pair.ba.drop_n, 1)

    def check(ctx, pair):
        assert ctx.get(pair.ab.dropped) == 1 and ctx.get(pair.ba.dropped) == 1
        assert ctx.get(pair.ba.naks) >= 1

    _faulty_run(setup, check)


def test_dropped_acks_are_recovered():
    """Lost Acks: a later Ack covers them, or the replay brings duplicates
    that the receiver discards (and Acks)."""
    def setup(ctx, pair):
        ctx.set(pair.ba.drop_kind, PacketKind.DLLP)
        ctx.set(pair.ba.drop_type, DllpType.ACK)
        ctx.set(pair.ba.drop_n, 10)

    def check(ctx, pair):
        assert ctx.get(pair.ba.dropped) == 10
        assert ctx.get(pair.ab.tlps) > 12            # the REPLAY_TIMER replayed: duplicates

    _faulty_run(setup, check)


def test_credits_stall_and_resume():
    """A advertises 3 P headers and 4 P data credits; its core holds
    tlp_rx.ready low. B may send only two 32-byte MWrs (2 data credits
    each, 2.6.1.2); when A's core reads again, UpdateFCs let the rest go."""
    rng = random.Random(13)
    writes = [mwr(rng, 0x100 * n, 8) for n in range(8)]
    traffic = Traffic([], writes)

    async def control(ctx, pair):
        traffic.hold["a"] = True
        await link_up(ctx, pair)
        updates = ctx.get(pair.ab.update_fcs)
        await ctx.tick().repeat(3000)
        assert ctx.get(pair.ba.tlps) == 2        # none beyond the credits
        assert traffic.got["a"] == []
        # 2.6.1.2: UpdateFCs keep coming every update_period, credits or not
        assert ctx.get(pair.ab.update_fcs) - updates >= 3000 // FAST["update_period"]
        traffic.hold["a"] = False
        await until(ctx, traffic.done, 20000, "traffic")
        traffic.check()

    run_pair([control, *traffic.benches()],
             a_params=dict(p_hdr=3, p_data=4, np_hdr=2, np_data=2))


def test_replay_num_rollover_requests_retrain():
    """Every TLP lost: the REPLAY_TIMER replays, REPLAY_NUM counts 1, 2, 3,
    then rolls over: ``retrain`` pulses (3.6.2.1). When the link heals the TLP
    is delivered once."""
    rng = random.Random(14)
    traffic = Traffic([mwr(rng, 0x40, 4)], [])
    retrains = []

    async def watch(ctx, pair):
        while True:
            _, _, pulse = await ctx.tick().sample(pair.a.retrain)
            if pulse:
                retrains.append(ctx.get(pair.ab.dropped))

    async def control(ctx, pair):
        ctx.set(pair.ab.drop_kind, PacketKind.TLP)
        ctx.set(pair.ab.drop_n, 5)
        await link_up(ctx, pair)
        await until(ctx, lambda: ctx.get(pair.ab.dropped) == 5, 5000, "replays")
        await until(ctx, traffic.done, 5000, "delivery")
        traffic.check()
        assert retrains == [4]                   # the fourth replay rolled REPLAY_NUM over

    run_pair([control, watch, *traffic.benches()])


def test_lone_corrupted_tlp_is_naked():
    """A bad LCRC alone, no later TLP to show a gap: the receiver's Nak
    (3.6.3.1) brings the replay well before the REPLAY_TIMER would."""
    rng = random.Random(15)
    traffic = Traffic([mwr(rng, 0x80, 16)], [])

    async def control(ctx, pair):
        ctx.set(pair.ab.corrupt_n, 1)
        await link_up(ctx, pair)
        for cycle in range(2000):
            if traffic.done():
                break
            await ctx.tick()
        traffic.check()
        assert ctx.get(pair.ab.corrupted) == 1 and ctx.get(pair.ba.naks) == 1
        assert cycle < FAST["replay_timeout"] - 50, cycle

    run_pair([control, *traffic.benches()])


def test_many_faults_both_ways(seed=18):
    """Corrupted, dropped TLPs and dropped Acks in both directions at once,
    with traffic both ways: still each TLP once, in order."""
    rng = random.Random(seed)
    traffic = Traffic(random_tlps(rng, 30), random_tlps(rng, 30), seed=seed)

    async def control(ctx, pair):
        for channel in (pair.ab, pair.ba):
            ctx.set(channel.corrupt_n, 3)
            ctx.set(channel.drop_kind, PacketKind.TLP)
            ctx.set(channel.drop_n, 3)
        await link_up(ctx, pair)
        await until(ctx, lambda: ctx.get(pair.ab.dropped) == 3 and ctx.get(pair.ba.dropped) == 3,
                    20000, "TLP drops")
        for channel in (pair.ab, pair.ba):     # now lose Acks
            ctx.set(channel.drop_kind, PacketKind.DLLP)
            ctx.set(channel.drop_type, DllpType.ACK)
            ctx.set(channel.drop_n, 3 + 7)
        await until(ctx, traffic.done, 30000, "traffic")
        await ctx.tick().repeat(200)
        traffic.check()
        assert ctx.get(pair.ab.corrupted) == 3 and ctx.get(pair.ba.corrupted) == 3

    run_pair([control, *traffic.benches()])


ERROR_PORTS = ("bad_tlp", "bad_dllp", "replay_timer_timeout", "retrain")


def test_correctable_errors_are_reported():
    """Each correctable error of section 6.2 the data link layer detects
    pulses its port once per event, on the side that detects it: Bad TLP
    (corrupted TLPs, and the TLPs after them out of sequence), Bad DLLP (a
    DLLP CRC error), Replay Timer Timeout (Acks lost). A clean link reports
    nothing."""
    rng = random.Random(20)
    rounds = [(random_tlps(rng, 6, max_dws=8), random_tlps(rng, 6, max_dws=8)),
              (random_tlps(rng, 12, max_dws=8), random_tlps(rng, 12, max_dws=8))]
    traffic = Traffic(*rounds[0], seed=20)
    counts = {(side, name): 0 for side in "ab" for name in ERROR_PORTS}
    dllps_corrupted, tlps_corrupted, acks_lost = 3, 2, 10
    second_round = []

    async def watch(ctx, pair):
        ports = [getattr(getattr(pair, side), name) for side, name in counts]
        while True:
            _, _, *values = await ctx.tick().sample(*ports)
            for key, value in zip(counts, values):
                counts[key] += value

    async def control(ctx, pair):
        await link_up(ctx, pair)
        await until(ctx, traffic.done, 20000, "clean traffic")
        traffic.check()
        assert not any(counts.values()), counts
        # faults: b -> a DLLPs corrupted, a -> b TLPs corrupted, a's Acks lost
        ctx.set(pair.ba.corrupt_kind, PacketKind.DLLP)
        ctx.set(pair.ba.corrupt_n, dllps_corrupted)
        ctx.set(pair.ab.corrupt_n, tlps_corrupted)
        ctx.set(pair.ab.drop_kind, PacketKind.DLLP)
        ctx.set(pair.ab.drop_type, DllpType.ACK)
        ctx.set(pair.ab.drop_n, acks_lost)
        traffic.sent = dict(zip("ab", rounds[1]))
        traffic.got = {"a": [], "b": []}
        second_round.append(True)
        await until(ctx, traffic.done, 30000, "traffic with faults")
        await ctx.tick().repeat(500)
        traffic.check()
        assert ctx.get(pair.ba.corrupted) == dllps_corrupted
        assert ctx.get(pair.ab.corrupted) == tlps_corrupted
        assert ctx.get(pair.ab.dropped) == acks_lost
        assert counts["a", "bad_dllp"] == dllps_corrupted, counts
        # the corrupted TLPs and those behind them, out of sequence (3.6.3.1)
        assert counts["b", "bad_tlp"] > tlps_corrupted, counts
        assert counts["b", "replay_timer_timeout"] >= 1, counts
        assert counts["b", "bad_dllp"] == counts["a", "bad_tlp"] == 0, counts

    def source(name, index):
        async def bench(ctx, pair):
            link = getattr(pair, name)
            await wait_for(ctx, link.dl_up)
            await send_tlps(ctx, link.tlp_tx, rounds[0][index])
            while not second_round:
                await ctx.tick()
            await send_tlps(ctx, link.tlp_tx, rounds[1][index])
        return bench

    run_pair([control, watch, source("a", 0), source("b", 1), *traffic.benches()[2:]])


# --- sequence numbers past 4095 ---------------------------------------------------------

SEQ_MOD = 1 << SEQ_BITS
WRAP_TLPS = SEQ_MOD + 200


def numbered_tlps(rng, count):
    """``count`` small TLPs of each credit type in turn (MWr P, MRd NP, CplD Cpl),
    tagged and addressed by their index, so a lost, repeated or reordered one
    shows."""
    tlps = []
    for n in range(count):
        kind = n % 3
        if kind == 0:
            tlps.append(mwr(rng, 4 * n, 1, tag=n & 0xFF))
        elif kind == 1:
            tlps.append(mrd(4 * n, 1, tag=n & 0xFF))
        else:
            tlps.append(cpld(rng, 1, tag=n & 0xFF, requester=n & 0xFFFF))
    return tlps


def test_sequence_numbers_wrap_with_faults():
    """More than 4096 TLPs each way: NEXT_TRANSMIT_SEQ, ACKD_SEQ and
    NEXT_RCV_SEQ wrap from 4095 to 0 (12 bits, 3.6.2.1 and 3.6.3.1) while
    replays cross the wrap:

    - a -> b: TLP 4094 corrupted: b Naks 4093, a replays 4094, 4095, 0, ...;
    - b -> a: TLP 0 lost: a sees 1 out of sequence, Naks 4095, b replays 0, 1, ...;
    - a's Acks to b lost while b's numbers wrap: b's REPLAY_TIMER replays
      TLPs on both sides of the wrap and a drops them as duplicates.

    Every TLP arrives once, in order, byte for byte."""
    rng = random.Random(19)
    traffic = Traffic(numbered_tlps(rng, WRAP_TLPS), numbered_tlps(rng, WRAP_TLPS), seed=19)
    acks_lost = 12

    async def control(ctx, pair):
        ab, ba = pair.ab, pair.ba
        for channel in (ab, ba):
            ctx.set(channel.seq_only, 1)
        ctx.set(ab.seq, SEQ_MOD - 2)
        ctx.set(ab.corrupt_n, 1)
        ctx.set(ab.watch_seq, 0)
        ctx.set(ba.seq, 0)
        ctx.set(ba.drop_kind, PacketKind.TLP)
        ctx.set(ba.drop_n, 1)
        ctx.set(ba.watch_seq, 1)
        await link_up(ctx, pair)
        # b's numbers come close to the wrap: lose a's next Acks
        await until(ctx, lambda: ctx.get(ba.last_seq) >= SEQ_MOD - 12, 200_000, "b near the wrap")
        ctx.set(ab.drop_kind, PacketKind.DLLP)
        ctx.set(ab.drop_type, DllpType.ACK)
        ctx.set(ab.drop_n, acks_lost)
        await until(ctx, traffic.done, 200_000, "traffic")
        await ctx.tick().repeat(200)          # nothing more arrives
        traffic.check()
        assert ctx.get(ab.corrupted) == 1 and ctx.get(ba.dropped) == 1
        assert ctx.get(ab.dropped) == acks_lost
        assert ctx.get(ba.naks) >= 1 and ctx.get(ab.naks) >= 1
        # the replays crossed the wrap: a sent TLP 0 again after the Nak; b
        # sent TLP 1 after the Nak and again when its REPLAY_TIMER fired
        assert ctx.get(ab.watched) >= 2 and ctx.get(ba.watched) >= 3
        assert ctx.get(ab.tlps) > WRAP_TLPS and ctx.get(ba.tlps) > WRAP_TLPS
        assert ctx.get(pair.a.dl_up) and ctx.get(pair.b.dl_up)

    run_pair([control, *traffic.benches()])
