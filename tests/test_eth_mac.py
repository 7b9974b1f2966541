"""EthernetMac + Rgmii in loopback, in the Amaranth simulator with three clocks:
the core at the board's core clock (`boards.top.SYNC_CLK_HZ`, 70 MHz), eth_tx
at 125 MHz, and RXC looped back from the pins a quarter cycle late (the PHY's
RGMII delay).

Frames are built with scapy. The wire side is checked against independent
references: zlib for the FCS, the 802.3 constants spelled out here for the
preamble, SFD, padding and gap. Bad frames are injected at the GMII, in front
of the RGMII pins, so they cross the pins and the receive clock domain too.
"""
import random
import zlib

from amaranth.hdl import (ClockDomain, ClockSignal, Elaboratable, Module, Mux, ResetSignal,
                          Signal)
from amaranth.lib import wiring
from amaranth.sim import Simulator
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from boards.top import SYNC_CLK_HZ
from hdl.eth.gmii import GmiiTxSignature
from hdl.eth.mac import EthernetMac, MacCounter
from hdl.eth.mac_rx import RxDrop
from hdl.eth.mac_tx import MacTx
from hdl.eth.rgmii import Rgmii, RgmiiSimPads, add_rx_domain
from tests.amaranth_sim import beats

CORE_PERIOD = 1 / SYNC_CLK_HZ  # the board's core clock
ETH_PERIOD = 8e-9           # 125 MHz
RX_DELAY = ETH_PERIOD / 4   # RXC a quarter cycle after the data

# IEEE 802.3, written out independently of hdl/eth/frame.py
PREAMBLE = bytes([0x55] * 7)
SFD = 0xD5
MIN_DATA = 60               # 64-octet minimum frame, less the FCS
IFG = 12
MAX_FRAME = 1518            # the core's default max_frame, no FCS
RX_RESET_CYCLES = 4         # eth_rx's reset synchroniser
SHORTEST_GAP = 1            # idle octets between injected bursts, at the least

MAC_A = "02:00:5e:10:00:01"
MAC_B = "52:54:00:12:34:56"
EXPERIMENTAL_TYPE = 0x88B5  # IEEE 802 local experimental ethertype


def fcs(frame):
    return zlib.crc32(frame).to_bytes(4, "little")


def padded(frame):
    return frame.ljust(MIN_DATA, b"\0")



def scapy_frames(rng):
    """ARP, IPv4 UDP/TCP/ICMP, IPv6, VLAN; 14 to 1514 octets (1518 tagged), no FCS."""
    def data(n):
        return Raw(rng.randbytes(n))

    v4 = dict(src="10.0.0.2", dst="10.0.0.1")
    frames = [
        Ether(dst="ff:ff:ff:ff:ff:ff", src=MAC_B) / ARP(hwsrc=MAC_B, psrc="10.0.0.2",
                                                        pdst="10.0.0.1"),
        Ether(dst=MAC_A, src=MAC_B) / IP(**v4) / UDP(sport=5000, dport=53) / data(30),
        Ether(dst=MAC_A, src=MAC_B) / IP(**v4) / TCP(sport=40000, dport=80, flags="S"),
        Ether(dst=MAC_A, src=MAC_B) / IP(**v4) / ICMP() / data(56),
        Ether(dst=MAC_A, src=MAC_B) / IPv6(src="fe80::2", dst="fe80::1") / UDP() / data(100),
        Ether(dst=MAC_A, src=MAC_B) / Dot1Q(vlan=42) / IP(**v4) / UDP() / data(200),
        Ether(dst=MAC_A, src=MAC_B) / IP(**v4) / UDP() / data(1472),              # 1514
        Ether(dst=MAC_A, src=MAC_B) / IPv6(src="fe80::2", dst="fe80::1") / TCP() / data(1440),
        Ether(dst=MAC_A, src=MAC_B) / Dot1Q(vlan=7) / IP(**v4) / UDP() / data(1472),  # 1518
        Ether(dst=MAC_A, src=MAC_B, type=EXPERIMENTAL_TYPE),                        # 14
    ]
    frames += [Ether(dst=MAC_A, src=MAC_B, type=EXPERIMENTAL_TYPE) / data(n)
               for n in (1, 45, 46, 47, 49, 50, 51)]                                # 15..65
    frames += [Ether(dst=MAC_A, src=MAC_B, type=EXPERIMENTAL_TYPE) / data(rng.randint(0, 1500))
               for _ in range(3)]
    out = [bytes(frame) for frame in frames]
    assert min(map(len, out)) == 14 and max(map(len, out)) == MAX_FRAME
    rng.shuffle(out)
    return out


def wire_burst(frame_and_fcs, *, preamble=PREAMBLE, error_at=None):
    """GMII symbols (octet, tx_er) of one burst: preamble, SFD, frame, FCS."""
    octets = preamble + bytes([SFD]) + frame_and_fcs
    return [(octet, int(index == error_at)) for index, octet in enumerate(octets)]


class Loopback(Elaboratable):
    """EthernetMac -> Rgmii -> pins, looped -> Rgmii -> EthernetMac. While
    ``inject`` is set, the Rgmii transmits ``injected`` instead of the MAC."""

    def __init__(self):
        self.mac = EthernetMac(max_frame=MAX_FRAME)
        self.pads = RgmiiSimPads()
        self.rgmii = Rgmii(self.pads)
        self.inject = Signal()
        self.injected = GmiiTxSignature.create()
        self.wire = GmiiTxSignature.create()

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain()
        m.domains.eth_tx = ClockDomain()
        m.domains.phy = ClockDomain()
        m.submodules.mac = mac = self.mac
        m.submodules.rgmii = rgmii = self.rgmii
        add_rx_domain(m, rgmii, reset=ResetSignal("eth_tx"))
        for name in ("txd", "tx_en", "tx_er"):
            m.d.comb += getattr(self.wire, name).eq(
                Mux(self.inject, getattr(self.injected, name), getattr(mac.gmii_tx, name)))
        wiring.connect(m, self.wire, rgmii.gmii_tx)
        wiring.connect(m, rgmii.gmii_rx, mac.gmii_rx)
        pads = self.pads
        m.d.comb += [
            pads.rx_data.i.eq(pads.tx_data.o),
            pads.rx_ctl.i.eq(pads.tx_ctl.o),
            pads.rx_clk.i.eq(ClockSignal("phy")),
        ]
        return m


class Bench:
    """Drives the loopback and records what every side saw."""

    def __init__(self, *, seed=0, p_tx_valid=0.8):
        self.rng = random.Random(seed)
        self.top = Loopback()
        self.mac = self.top.mac
        self.p_tx_valid = p_tx_valid
        self.rx_ready = True
        self.received = []          # (octets, abort)
        self.bursts = []            # on the wire: {"start", "end", "octets", "errors", "injected"}
        self.pulses = {"tx_sent": 0, "tx_underrun": 0, "rx_frame": 0,
                       **{reason: 0 for reason in RxDrop}}
        self.counters = None

    @property
    def rx_outcomes(self):
        return self.pulses["rx_frame"] + sum(self.pulses[reason] for reason in RxDrop)

    async def send(self, ctx, frames):
        tx = self.mac.tx
        for frame in frames:
            for data, keep, last in beats(frame):
                while self.rng.random() > self.p_tx_valid:
                    await ctx.tick()
                ctx.set(tx.payload, {"data": data, "keep": keep, "last": last})
                ctx.set(tx.valid, 1)
                await ctx.tick().until(tx.ready)
                ctx.set(tx.valid, 0)

    async def inject(self, ctx, bursts):
        """Put bursts, (symbols, idle octets after them), on the GMII in place
        of the MAC."""
        injected = self.top.injected
        ctx.set(self.top.inject, 1)
        for burst, gap in bursts:
            for octet, error in burst:
                ctx.set(injected.txd, octet)
                ctx.set(injected.tx_en, 1)
                ctx.set(injected.tx_er, error)
                await ctx.tick("eth_tx")
            ctx.set(injected.tx_en, 0)
            ctx.set(injected.tx_er, 0)
            await ctx.tick("eth_tx").repeat(gap)
        ctx.set(self.top.inject, 0)

    async def wait_outcomes(self, ctx, count, *, timeout_cycles):
        for _ in range(timeout_cycles):
            if self.rx_outcomes >= count:
                break
            await ctx.tick()
        else:
            raise AssertionError(f"timed out: {self.rx_outcomes} of {count} frames came back")
        await ctx.tick().repeat(50)     # anything late would show up now

    async def _receiver(self, ctx):
        rx = self.mac.rx
        frame = bytearray()
        while True:
            ready = self.rx_ready
            ctx.set(rx.ready, ready)
            _, _, valid, payload, abort = await ctx.tick().sample(rx.valid, rx.payload,
                                                                  self.mac.rx_abort)
            if not (valid and ready):
                continue
            keep = payload.keep
            assert keep in (0b0001, 0b0011, 0b0111, 0b1111), "dense beats"
            assert payload.last or keep == 0b1111, "only a last beat may be short"
            frame += payload.data.to_bytes(4, "little")[:keep.bit_length()]
            if payload.last:
                self.received.append((bytes(frame), abort))
                frame = bytearray()

    async def _wire_monitor(self, ctx):
        wire = self.top.wire
        burst = None
        cycle = 0
        async for _, _, txd, en, er, injected in ctx.tick("eth_tx").sample(
                wire.txd, wire.tx_en, wire.tx_er, self.top.inject):
            if en and burst is None:
                burst = {"start": cycle, "octets": bytearray(), "errors": [],
                         "injected": injected}
            if en:
                burst["octets"].append(txd)
                burst["errors"].append(er)
            elif burst is not None:
                burst["end"] = cycle - 1
                self.bursts.append(burst)
                burst = None
            cycle += 1

    async def _pulse_monitor(self, ctx):
        mac = self.mac
        async for _, _, sent, underrun, frame, drop in ctx.tick().sample(
                mac.tx_sent, mac.tx_underrun, mac.rx_frame, mac.rx_drop):
            self.pulses["tx_sent"] += sent
            self.pulses["tx_underrun"] += underrun
            self.pulses["rx_frame"] += frame
            assert bin(drop).count("1") <= 1, "drop reasons are one-hot"
            for reason in RxDrop:
                self.pulses[reason] += drop >> reason & 1

    def run(self, main):
        async def testbench(ctx):
            await ctx.tick("eth_tx").repeat(RX_RESET_CYCLES)     # eth_rx leaves reset
            await main(ctx)
            self.counters = {counter: ctx.get(self.mac.counters[counter])
                             for counter in MacCounter}

        sim = Simulator(self.top)
        sim.add_clock(CORE_PERIOD, domain="sync")
        sim.add_clock(ETH_PERIOD, phase=ETH_PERIOD / 2, domain="eth_tx")
        sim.add_clock(ETH_PERIOD, phase=ETH_PERIOD / 2 + RX_DELAY, domain="phy")
        sim.add_testbench(testbench)
        sim.add_testbench(self._receiver, background=True)
        sim.add_process(self._wire_monitor)
        sim.add_process(self._pulse_monitor)
        sim.run()

    def check_counters(self, **expected):
        """Counters equal the pulses seen, and the pulses what the test expects
        (names of `MacCounter`; the rest must be 0)."""
        pulse_of = {MacCounter.TX_FRAMES: "tx_sent", MacCounter.TX_UNDERRUNS: "tx_underrun",
                    MacCounter.RX_FRAMES: "rx_frame",
                    **{MacCounter[f"RX_DROP_{reason.name}"]: reason for reason in RxDrop}}
        for counter in MacCounter:
            assert self.counters[counter] == self.pulses[pulse_of[counter]], counter.name
            assert self.counters[counter] == expected.get(counter.name, 0), counter.name

    def check_mac_bursts(self, frames):
        """Every burst the MAC sent: preamble, SFD, the frame padded to 60, its
        FCS (zlib), no tx_er; at least 12 idle octets between bursts."""
        sent = [burst for burst in self.bursts if not burst["injected"]]
        assert len(sent) == len(frames)
        for burst, frame in zip(sent, frames):
            octets = bytes(burst["octets"])
            assert octets[:7] == PREAMBLE, "seven preamble octets"
            assert octets[7] == SFD, "then the SFD"
            body, check = octets[8:-4], octets[-4:]
            assert body == padded(frame), f"{len(frame)}-octet frame sent as {len(body)}"
            assert check == fcs(body), "FCS"
            assert not any(burst["errors"])
        gaps = [b["start"] - a["end"] - 1 for a, b in zip(self.bursts, self.bursts[1:])
                if not (a["injected"] or b["injected"])]
        assert min(gaps) >= IFG, f"interframe gap {min(gaps)} octets"
        return gaps


def test_loopback_carries_scapy_frames():
    """Frames of every kind and size go out and come back byte for byte."""
    bench = Bench(seed=1)
    frames = scapy_frames(bench.rng)

    async def main(ctx):
        await bench.send(ctx, frames)
        octets = sum(len(padded(f)) + 24 for f in frames)
        await bench.wait_outcomes(ctx, len(frames), timeout_cycles=2 * octets)

    bench.run(main)
    gaps = bench.check_mac_bursts(frames)
    assert min(gaps) == IFG, "queued frames go out back to back, at line rate"
    assert bench.received == [(padded(f), 0) for f in frames]
    bench.check_counters(TX_FRAMES=len(frames), RX_FRAMES=len(frames))


def test_bad_frames_are_dropped_and_counted():
    """Bad FCS, rx_er, runts, too long, no SFD: each dropped and counted by
    reason; the good frames around them, from the MAC and injected, intact."""
    bench = Bench(seed=2)
    rng = bench.rng
    before, after = scapy_frames(rng)[:3], scapy_frames(rng)[:3]

    def frame(length):
        head = bytes(Ether(dst=MAC_A, src=MAC_B, type=EXPERIMENTAL_TYPE))
        return head + rng.randbytes(length - len(head))

    good = [frame(n) for n in (100, 60, MAX_FRAME, 64, 300, 80)]
    bad_fcs = frame(200)
    bad_data = frame(70)
    flipped = bytearray(bad_data)
    flipped[30] ^= 0x10
    with_error = frame(150)
    runt = frame(40)
    runt_63 = frame(59)
    too_long = frame(MAX_FRAME + 1)
    no_sfd = [(0x55, 0)] * 5 + [(0x00, 0)] * 20
    preamble_only = [(0x55, 0)] * 6
    tiny = [(0x55, 0)] * 7 + [(SFD, 0), (0xAB, 0), (0xCD, 0)]
    bursts = [
        (wire_burst(good[0] + fcs(good[0])), None),
        (wire_burst(bad_fcs + bytes(b ^ 0xFF for b in fcs(bad_fcs))), RxDrop.FCS),
        (wire_burst(good[1] + fcs(good[1])), None),                 # exactly 64 with FCS
        (wire_burst(with_error + fcs(with_error), error_at=8 + 77), RxDrop.RX_ERROR),
        (wire_burst(good[2] + fcs(good[2])), None),                 # longest accepted
        (wire_burst(runt + fcs(runt)), RxDrop.RUNT),
        (wire_burst(runt_63 + fcs(runt_63)), RxDrop.RUNT),          # 63 with FCS
        (tiny, RxDrop.RUNT),
        (wire_burst(good[3] + fcs(good[3]), preamble=PREAMBLE[:2]), None),  # short preamble
        (wire_burst(too_long + fcs(too_long)), RxDrop.TOO_LONG),
        (no_sfd, RxDrop.NO_SFD),
        (preamble_only, RxDrop.NO_SFD),
        (wire_burst(good[4] + fcs(good[4]), preamble=b""), None),   # no preamble at all
        (wire_burst(bytes(flipped) + fcs(bad_data)), RxDrop.FCS),
        (wire_burst(good[5] + fcs(good[5])), None),
    ]
    # the receiver must also cope with less than an IFG between bursts
    gaps = [IFG] * len(bursts)
    gaps[-2] = gaps[-3] = SHORTEST_GAP

    async def main(ctx):
        await bench.send(ctx, before)
        await bench.wait_outcomes(ctx, len(before), timeout_cycles=20_000)
        await bench.inject(ctx, [(burst, gap) for (burst, _), gap in zip(bursts, gaps)])
        await bench.send(ctx, after)
        await bench.wait_outcomes(ctx, len(before) + len(bursts) + len(after),
                                  timeout_cycles=20_000)

    bench.run(main)
    bench.check_mac_bursts(before + after)
    kept = [octets for octets, abort in bench.received if not abort]
    assert kept == [padded(f) for f in before] + good + [padded(f) for f in after]
    aborted = [octets for octets, abort in bench.received if abort]
    assert len(aborted) <= sum(reason is not None for _, reason in bursts)
    drops = {}
    for _, reason in bursts:
        if reason is not None:
            drops[f"RX_DROP_{reason.name}"] = drops.get(f"RX_DROP_{reason.name}", 0) + 1
    bench.check_counters(TX_FRAMES=len(before) + len(after),
                         RX_FRAMES=len(before) + len(good) + len(after), **drops)


def test_receive_overflow_drops_whole_frames():
    """The core stops taking frames: the receive FIFO fills, frames are dropped
    (OVERFLOW), none is merged with another or cut without an abort, and
    frames after the core resumes come through intact."""
    bench = Bench(seed=3)
    rng = bench.rng

    def frame(length):
        head = bytes(Ether(dst=MAC_A, src=MAC_B, type=EXPERIMENTAL_TYPE))
        return head + rng.randbytes(length - len(head))

    stalled = [frame(rng.randint(60, 400)) for _ in range(6)]
    later = [frame(rng.randint(60, 400)) for _ in range(3)]

    async def main(ctx):
        bench.rx_ready = False
        await bench.send(ctx, stalled)
        await bench.wait_outcomes(ctx, len(stalled), timeout_cycles=20_000)
        bench.rx_ready = True
        await ctx.tick().repeat(200)
        await bench.send(ctx, later)
        await bench.wait_outcomes(ctx, len(stalled) + len(later), timeout_cycles=20_000)

    bench.run(main)
    kept = [octets for octets, abort in bench.received if not abort]
    aborted = [octets for octets, abort in bench.received if abort]
    assert kept[-len(later):] == later
    assert all(octets in stalled for octets in kept[:-len(later)])
    assert aborted, "the frame cut by the overflow is closed with an abort"
    for octets in aborted:
        assert any(frame.startswith(octets[:-1]) for frame in stalled), "a prefix of one frame"
    overflowed = bench.pulses[RxDrop.OVERFLOW]
    assert overflowed >= 1
    assert overflowed + len(kept) == len(stalled) + len(later)
    bench.check_counters(TX_FRAMES=len(stalled) + len(later), RX_FRAMES=len(kept),
                         RX_DROP_OVERFLOW=overflowed)


def test_mac_tx_underrun_cuts_the_frame_with_tx_er():
    """MacTx alone, started before its source has the frame: when an octet is
    missing it sends tx_er, drops the rest, keeps the gap, then sends the
    next frame whole."""
    dut = MacTx()
    first = bytes(range(1, 21))
    second = bytes(range(100, 170))
    symbols = []
    pulses = {"underrun": 0, "sent": 0}

    async def source(ctx):
        for frame, stall_at in ((first, 10), (second, None)):
            for index, octet in enumerate(frame):
                if index == stall_at:
                    await ctx.tick().repeat(3)
                ctx.set(dut.i.payload, {"data": octet, "last": index == len(frame) - 1})
                ctx.set(dut.i.valid, 1)
                await ctx.tick().until(dut.i.ready)
                ctx.set(dut.i.valid, 0)
        await ctx.tick().repeat(200)

    async def monitor(ctx):
        async for _, _, txd, en, er, underrun, sent in ctx.tick().sample(
                dut.gmii.txd, dut.gmii.tx_en, dut.gmii.tx_er, dut.underrun, dut.sent):
            symbols.append((txd, en, er))
            pulses["underrun"] += underrun
            pulses["sent"] += sent

    sim = Simulator(dut)
    sim.add_clock(ETH_PERIOD)
    sim.add_testbench(source)
    sim.add_process(monitor)
    sim.run()

    bursts, current = [], None
    for index, (txd, en, er) in enumerate(symbols):
        if en:
            current = current or {"start": index, "octets": bytearray(), "errors": []}
            current["octets"].append(txd)
            current["errors"].append(er)
        elif current:
            current["end"] = index - 1
            bursts.append(current)
            current = None
    assert len(bursts) == 2
    cut, whole = bursts
    assert bytes(cut["octets"][:8]) == PREAMBLE + bytes([SFD])
    assert bytes(cut["octets"][8:-1]) == first[:10]
    assert cut["errors"] == [0] * (len(cut["errors"]) - 1) + [1], "tx_er on the last octet"
    assert bytes(whole["octets"]) == PREAMBLE + bytes([SFD]) + second + fcs(second)
    assert not any(whole["errors"])
    assert whole["start"] - cut["end"] - 1 >= IFG
    assert pulses == {"underrun": 1, "sent": 1}


def test_slow_core_does_not_make_the_mac_underrun():
    """The core feeds a frame far slower than the wire takes it: the MAC waits
    for the whole frame before its preamble, so nothing is cut."""
    bench = Bench(seed=4, p_tx_valid=0.05)
    frames = scapy_frames(bench.rng)[:4]

    async def main(ctx):
        await bench.send(ctx, frames)
        await bench.wait_outcomes(ctx, len(frames), timeout_cycles=20_000)

    bench.run(main)
    bench.check_mac_bursts(frames)
    assert bench.received == [(padded(f), 0) for f in frames]
    bench.check_counters(TX_FRAMES=len(frames), RX_FRAMES=len(frames))
