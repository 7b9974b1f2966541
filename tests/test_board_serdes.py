"""ECP5 DCU in PCIe mode (`boards.serdes`): simulation of its control logic and a
synthesis check of the SERDES on the Versa through yosys, nextpnr-ecp5 and ecppack.

The synthesis check builds a small design, `SerdesCheckTop`: `Ecp5PcieSerdes`
and a trivial PIPE user that runs receiver detection, then sends TS1-like
ordered sets with a SKP ordered set between them, and folds everything it
receives into a signature register; the SERDES's status goes to the LEDs so
synthesis keeps it all. It asserts a bitstream, every clock constrained and
met (``sync`` = clk100, ``pcie`` = the DCU's TX clock, ``pcie_rx`` = the
recovered clock), and one DCUA and one EXTREFB in the placed design.

Run it alone with ``python -m pytest tests/test_board_serdes.py``; the build
directory is ``build/serdes-check`` (measured: about 10 s, nextpnr the longest step).
"""
import json
import time
from pathlib import Path

from amaranth.hdl import Cat, ClockDomain, ClockSignal, Const, Elaboratable, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import FFSynchronizer
from amaranth.sim import Simulator

from boards.build import (_cell_counts, _clock_nets_by_bit, _parse_report, _run_step,
                          _tool_env_var, _tool_log, toolchain_env)
from boards.serdes import (DCU_PARAMETERS, PCIE_DOMAIN, PCIE_RX_DOMAIN, ClockMonitor,
                           Ecp5PcieSerdes, ReceiverDetect, ResetSequencer)
from boards.versa import CLK100_HZ, VersaPlatform, request_pcie_pads
from hdl.phy.pipe import PIPE_CLK_HZ, RxStatus
from hdl.phy.symbols import TS1_ID, DataRate, KSymbol


BUILD_DIR = Path(__file__).resolve().parent.parent / "build" / "serdes-check"
DESIGN_NAME = "top"
REQUIRED_MHZ = {"sync": CLK100_HZ / 1e6, PCIE_DOMAIN: PIPE_CLK_HZ / 1e6,
                PCIE_RX_DOMAIN: PIPE_CLK_HZ / 1e6}

COM, SKP, PAD = KSymbol.COM, KSymbol.SKP, KSymbol.PAD
#: A TS1 (PCIe Base 4.0 section 4.2.4.1: COM, link PAD, lane PAD, N_FTS, rate
#: Gen1, training control, 10 x D10.2) then a SKP ordered set, as (symbol,
#: is_k) pairs.
TS1_THEN_SKP = ([(COM, 1), (PAD, 1), (PAD, 1), (0xFF, 0), (DataRate.GEN1_2_5GT, 0), (0x00, 0)]
                + [(TS1_ID, 0)] * 10 + [(COM, 1), (SKP, 1), (SKP, 1), (SKP, 1)])


class SerdesCheckTop(Elaboratable):
    """`Ecp5PcieSerdes` and a trivial PIPE user on the Versa (see the module docstring).

    LEDs: 0 tx_ready, 1 rx_ready, 2 TX PLL locked, 3 CDR locked, 4 signal
    present, 5 word-aligned, 6 rx_valid, 7 XOR of the receive signature.
    Switch 0 drives ``rx_polarity``.
    """

    SIGNATURE_BITS = 32

    def __init__(self):
        self.clock_frequencies = {domain: mhz * 1e6 for domain, mhz in REQUIRED_MHZ.items()}
        self.clock_nets = {"sync": "sync_clock", PCIE_DOMAIN: "pcie_clock",
                           PCIE_RX_DOMAIN: "serdes.pcie_rx_clock"}

    def elaborate(self, platform):
        m = Module()
        lane, refclk = request_pcie_pads(platform)
        m.submodules.serdes = serdes = Ecp5PcieSerdes(lane, refclk, ctrl_clk_hz=CLK100_HZ)
        m.domains.pcie = serdes.cd_pcie
        pipe = serdes.pipe

        # --- transmit: detect a receiver, then TS1 + SKP forever --------------------
        words = [Cat(Const(a, 8), Const(b, 8)) for (a, _), (b, _) in
                 zip(TS1_THEN_SKP[0::2], TS1_THEN_SKP[1::2])]
        kflags = [Const(ka | kb << 1, 2) for (_, ka), (_, kb) in
                  zip(TS1_THEN_SKP[0::2], TS1_THEN_SKP[1::2])]
        index = Signal(range(len(words)))
        active = Signal()
        m.d.pcie += index.eq(index + 1)
        with m.If(index == len(words) - 1):
            m.d.pcie += index.eq(0)
        with m.Switch(index):
            for n, (word, k) in enumerate(zip(words, kflags)):
                with m.Case(n):
                    m.d.comb += [pipe.tx_data.eq(word), pipe.tx_datak.eq(k)]
        m.d.comb += [
            pipe.tx_elec_idle.eq(~active),
            pipe.tx_detect_rx.eq(~active),
        ]
        with m.If(pipe.phy_status & (pipe.rx_status == RxStatus.RECEIVER_DETECTED)):
            m.d.pcie += active.eq(1)

        switch = io.Buffer("i", platform.request("switch", 0, dir="-"))
        m.submodules.switch = switch
        m.submodules.polarity_sync = FFSynchronizer(switch.i, pipe.rx_polarity,
                                                    o_domain=PCIE_DOMAIN)

        # --- receive: everything into a signature register ---------------------------
        observed = Cat(pipe.rx_data, pipe.rx_datak, pipe.rx_status, pipe.rx_valid,
                       pipe.rx_elec_idle, pipe.phy_status)
        signature = Signal(self.SIGNATURE_BITS)
        m.d.pcie += signature.eq(Cat(signature[-1], signature[:-1]) ^ observed)

        leds = Signal(8)
        m.d.comb += leds[:6].eq(Cat(serdes.tx_ready, serdes.rx_ready, serdes.pll_locked,
                                    serdes.cdr_locked, serdes.rx_signal, serdes.rx_aligned))
        m.submodules.rx_valid_sync = FFSynchronizer(pipe.rx_valid, leds[6])
        m.submodules.signature_sync = FFSynchronizer(signature.xor(), leds[7])
        for n in range(8):
            m.submodules[f"led_{n}"] = led = io.Buffer("o", platform.request("led", n, dir="-"))
            m.d.comb += led.o.eq(leds[n])

        # named, kept aliases of the clocks, for the build report
        for domain in ("sync", PCIE_DOMAIN):
            probe = Signal(name=self.clock_nets[domain], attrs={"keep": 1})
            m.d.comb += probe.eq(ClockSignal(domain))
        return m


def build_serdes_check(out_dir=BUILD_DIR, progress=print):
    """Build `SerdesCheckTop` for the Versa into ``out_dir``; return the results
    (``fmax_mhz``, ``domains``, ``timing_met``, ``utilisation``, ``cells``,
    ``bitstream``, ``seconds``) also written to ``out_dir/result.json``."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    top = SerdesCheckTop()
    plan = VersaPlatform().build(
        top, name=DESIGN_NAME, do_build=False,
        nextpnr_opts=["--report", "report.json", "--timing-allow-fail"],
        script_after_synth="tee -q -o top.stat.json stat -json",
    )
    plan.extract(str(out))
    seconds = {"elaborate": round(time.monotonic() - start, 1)}
    env = toolchain_env()
    commands = json.loads((out / f"build_{DESIGN_NAME}.json").read_text())["commands"]
    for argv in commands:
        tool = argv[0]
        argv = [env.get(_tool_env_var(tool), tool), *argv[1:]]
        seconds[tool] = round(_run_step(argv, out, env, f"{tool}.log", progress,
                                        tool_log=_tool_log(argv)), 1)
    net_domains = _clock_nets_by_bit(out / f"{DESIGN_NAME}.json", DESIGN_NAME, top.clock_nets)
    fmax, nets, utilisation = _parse_report(out / "report.json", REQUIRED_MHZ, net_domains)
    domains = {domain: {"required_mhz": mhz, "fmax_mhz": fmax.get(domain),
                        "met": fmax.get(domain) is not None and fmax[domain] >= mhz,
                        "nets": nets.get(domain, [])}
               for domain, mhz in REQUIRED_MHZ.items()}
    seconds["total"] = round(time.monotonic() - start, 1)
    result = {
        "fmax_mhz": fmax,
        "domains": domains,
        "timing_met": all(entry["met"] for entry in domains.values()),
        "utilisation": utilisation,
        "cells": _cell_counts(out / "top.stat.json", DESIGN_NAME),
        "bitstream": str(out / f"{DESIGN_NAME}.bit"),
        "seconds": seconds,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# --- simulation of the control logic ----------------------------------------------


def test_dcu_parameters_are_for_pcie_gen1_with_gearing():
    p = DCU_PARAMETERS
    assert p["CH0_PROTOCOL"] == "PCIE" and p["CH0_PCIE_MODE"] == "0b1"
    assert p["D_REFCK_MODE"] == "0b100" and p["D_TX_MAX_RATE"] == "2.5"   # 100 MHz x 25
    assert p["CH0_CDR_MAX_RATE"] == "2.5"
    assert p["CH0_TX_GEAR_MODE"] == p["CH0_RX_GEAR_MODE"] == "0b1"
    assert p["CH0_ENC_BYPASS"] == p["CH0_DEC_BYPASS"] == p["CH0_WA_BYPASS"] == "0b0"
    assert p["CH0_UDF_COMMA_B"] == "0x17C" and p["CH0_UDF_COMMA_MASK"] == "0x3ff"
    assert p["CH0_CTC_BYPASS"] == "0b1"           # the soft elastic buffer does CTC


def test_reset_sequence():
    """Resets held at power-up; TX PCS released once the PLL has been locked
    for the settle time; RX PCS once the CDR is locked with a signal; a loss of
    signal takes the RX path (only) back into reset."""
    clk_hz = 4e6        # short timeouts (tens of thousands of cycles)
    seq = ResetSequencer(clk_hz)
    trace = []

    async def testbench(ctx):
        ctx.set(seq.pll_lol, 1)
        ctx.set(seq.cdr_lol, 1)
        ctx.set(seq.rx_los, 1)
        await ctx.tick().repeat(seq.reset_cycles - 1)
        assert ctx.get(seq.macro_rst) and ctx.get(seq.tx_serdes_rst) and ctx.get(seq.rx_pcs_rst)
        await ctx.tick().repeat(4)
        assert not ctx.get(seq.macro_rst) and not ctx.get(seq.tx_serdes_rst)
        assert ctx.get(seq.tx_pcs_rst) and not ctx.get(seq.tx_ready)
        ctx.set(seq.pll_lol, 0)
        await ctx.tick().repeat(seq.tx_settle_cycles + 4)
        assert ctx.get(seq.tx_ready) and not ctx.get(seq.tx_pcs_rst)
        assert ctx.get(seq.rx_pcs_rst) and not ctx.get(seq.rx_ready)
        ctx.set(seq.cdr_lol, 0)
        ctx.set(seq.rx_los, 0)
        await ctx.tick().repeat(seq.rx_settle_cycles + 4)
        assert ctx.get(seq.rx_ready) and not ctx.get(seq.rx_pcs_rst)
        # a glitch shorter than the debounce changes nothing
        ctx.set(seq.rx_los, 1)
        await ctx.tick().repeat(ResetSequencer.DEBOUNCE // 2)
        ctx.set(seq.rx_los, 0)
        await ctx.tick().repeat(ResetSequencer.DEBOUNCE)
        assert ctx.get(seq.rx_ready)
        # loss of signal: RX back in reset, TX untouched
        ctx.set(seq.rx_los, 1)
        await ctx.tick().repeat(ResetSequencer.DEBOUNCE + 4)
        assert ctx.get(seq.rx_pcs_rst) and not ctx.get(seq.rx_ready)
        assert ctx.get(seq.tx_ready)
        # loss of PLL lock: TX back in reset
        ctx.set(seq.pll_lol, 1)
        await ctx.tick().repeat(ResetSequencer.DEBOUNCE + 4)
        assert ctx.get(seq.tx_pcs_rst) and not ctx.get(seq.tx_ready)
        # the PLL never relocks: the TX SERDES reset is pulsed after the timeout
        for _ in range(seq.tx_timeout_cycles + 8):
            await ctx.tick()
            trace.append(ctx.get(seq.tx_serdes_rst))

    sim = Simulator(seq)
    sim.add_clock(1 / clk_hz)
    sim.add_testbench(testbench)
    sim.run()
    assert any(trace), "no TX SERDES reset pulse after the PLL lock timeout"


def _monitor_ok(mon_hz, *, windows=2):
    """``ok`` of a `ClockMonitor` (100 MHz, expecting 125 MHz) after ``windows``
    windows, with its monitored clock at ``mon_hz`` (None: stopped)."""
    mon = ClockMonitor(CLK100_HZ, PIPE_CLK_HZ)
    m = Module()
    m.domains.mon = ClockDomain(reset_less=True)
    m.submodules.mon = mon
    result = []

    async def testbench(ctx):
        await ctx.tick().repeat(windows * mon.window_cycles + 2)
        result.append(ctx.get(mon.ok))

    sim = Simulator(m)
    sim.add_clock(1 / CLK100_HZ)
    if mon_hz is not None:
        sim.add_clock(1 / mon_hz, domain="mon")
    sim.add_testbench(testbench)
    sim.run()
    return result[0]


def test_tx_clock_monitor():
    """The soft lock check accepts 125 MHz +-0.1%, refuses 5% off or a stopped clock."""
    assert _monitor_ok(PIPE_CLK_HZ)
    assert _monitor_ok(PIPE_CLK_HZ * 1.001) and _monitor_ok(PIPE_CLK_HZ * 0.999)
    assert not _monitor_ok(PIPE_CLK_HZ * 1.05)
    assert not _monitor_ok(PIPE_CLK_HZ * 0.95)
    assert not _monitor_ok(None)


def _run_detect(receiver_present):
    det = ReceiverDetect()
    seen = {}

    async def dcu(ctx):
        """The DCU's side: pcie_done falls after pcie_ct, rises some cycles later."""
        ctx.set(det.done, 1)
        async for clk_edge, rst, ct in ctx.tick().sample(det.ct):
            if ct:
                break
        await ctx.tick().repeat(10)
        ctx.set(det.done, 0)
        await ctx.tick().repeat(50)
        ctx.set(det.con, receiver_present)
        ctx.set(det.done, 1)

    async def mac(ctx):
        ctx.set(det.start, 1)
        for cycle in range(2000):
            await ctx.tick()
            if ctx.get(det.det_en):
                seen.setdefault("det_en", cycle)
            if ctx.get(det.phy_status):
                seen["phy_status"] = cycle
                seen["detected"] = ctx.get(det.detected)
                break
        ctx.set(det.start, 0)

    sim = Simulator(det)
    sim.add_clock(1 / PIPE_CLK_HZ)
    sim.add_process(dcu)
    sim.add_testbench(mac)
    sim.run()
    return seen


def test_receiver_detection():
    """det_en after the electrical-idle setup time; one phy_status pulse with the result."""
    for present in (1, 0):
        seen = _run_detect(present)
        assert seen["det_en"] >= ReceiverDetect.DETECT_SETUP_CYCLES
        assert "phy_status" in seen and seen["detected"] == present, seen


# --- the synthesis check --------------------------------------------------------


def test_serdes_synthesis_check():
    """The SERDES and a PIPE user place and route on the Versa: a bitstream,
    timing met for sync, pcie and pcie_rx, the DCU and its reference-clock
    input in the design."""
    result = build_serdes_check(progress=lambda _msg: None)
    assert Path(result["bitstream"]).stat().st_size > 0
    for domain, entry in result["domains"].items():
        assert entry["nets"], (domain, result["fmax_mhz"])
        assert entry["met"], (domain, entry)
    assert result["timing_met"]
    assert result["utilisation"]["DCUA"][0] == 1, result["utilisation"]
    assert result["utilisation"]["EXTREFB"][0] == 1, result["utilisation"]
    assert result["cells"]["DCUA"] == 1 and result["cells"]["EXTREFB"] == 1
    # every clock net nextpnr timed had the intended constraint, none the 12 MHz default
    report = json.loads((BUILD_DIR / "report.json").read_text())
    for domain, entry in result["domains"].items():
        for net in entry["nets"]:
            assert report["fmax"][net]["constraint"] == REQUIRED_MHZ[domain], (net, domain)
    log = (BUILD_DIR / "top.tim").read_text()
    assert "constraining clock net 'serdes.pcie_tx_pclk' to 125.00 MHz" in log
    assert "constraining clock net 'serdes.pcie_rx_pclk' to 125.00 MHz" in log
    assert log.count("Derived frequency constraint of 125.0 MHz") == 2   # through the DCCAs
    assert "12.00 MHz" not in log
