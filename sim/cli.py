"""virtio-net-fpga: run the simulated device, dump its config space, build the board.

    virtio-net-fpga demo [--json] [--pairs N] [--out DIR]
                                                  probe the simulated device, ARP and ping
                                                  a peer on the wire; capture in DIR
    virtio-net-fpga lspci -o FILE [--pairs N]     config space in `lspci -xxx` form
    virtio-net-fpga build [--json] [--out DIR]    bitstream for the ECP5 Versa
    virtio-net-fpga build --blocks [--json]       the core's cells per block, largest first
    virtio-net-fpga bench [--json] [--quick] [--pairs 1,2,4]
                                                  throughput and latency in simulated time

Progress goes to stderr; results to stdout. The simulator's own log is kept
in build/<params>/<job>.log.
"""
import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from hdl.top import MAX_QUEUE_PAIRS, CoreParams

__all__ = ["main"]


def _progress(message):
    print(f"[virtio-net-fpga] {message}", file=sys.stderr, flush=True)


def _params(args):
    params = CoreParams()
    if getattr(args, "pairs", None) is not None:
        params = dataclasses.replace(params, queue_pairs=args.pairs)
    return params


def run_sim_job(params, job):
    """Run one cocotb job from sim.cocotb_tests.apps; return what it wrote."""
    from .build import build_dir, run_cocotb
    from .tests_results import failed_cases
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        log = build_dir(params) / f"{job}.log"
        started = time.monotonic()
        try:
            results = run_cocotb(params, "sim.cocotb_tests.apps", [job], env={"VNF_OUT": str(out)},
                                 progress=_progress, log_file=log)
        except SystemExit:
            results = None
        if results is None or failed_cases(results) or not out.exists():
            raise SystemExit(f"virtio-net-fpga: the simulated {job} failed; see {log}")
        _progress(f"{job} done in {time.monotonic() - started:.1f} s, build included (log: {log})")
        return out.read_text()


DEMO_OUT = Path("build") / "demo"    # the demo's result and capture, under the repository


def _shown_path(path):
    """``path`` relative to the working directory when it lies under it."""
    path = Path(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run_demo(params, out_dir):
    """Run the demo job; return its result (JSON). It writes ``out_dir``/demo.json
    and the capture of the wire, ``out_dir``/wire.pcapng."""
    from .build import ROOT, build_dir, run_cocotb
    from .tests_results import failed_cases
    out_dir = ROOT / DEMO_OUT if out_dir is None else Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    result_file = out_dir / "demo.json"
    for stale in (result_file, out_dir / "wire.pcapng"):
        stale.unlink(missing_ok=True)
    log = build_dir(params) / "demo.log"
    started = time.monotonic()
    try:
        results = run_cocotb(params, "sim.cocotb_tests.apps", ["demo"],
                             env={"VNF_OUT": str(result_file)}, progress=_progress, log_file=log)
    except SystemExit:
        results = None
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    if results is None or failed_cases(results) or not result or result.get("errors"):
        why = "; ".join(result.get("errors", [])) or "it stopped before writing a result"
        capture = f"; capture: {_shown_path(result['pcap'])}" if result.get("pcap") else ""
        raise SystemExit(f"virtio-net-fpga: the simulated demo failed: {why}\n"
                         f"  simulator log: {log}{capture}")
    _progress(f"demo done in {time.monotonic() - started:.1f} s, build included (log: {log})")
    return result


def _us(ns):
    return f"{ns / 1000:.1f}"


def format_demo(result):
    """The demo's result for people: the device, the traffic, the counters, the capture."""
    dev = result["device"]
    lines = [f"{dev['bdf']}  [{dev['vendor']}:{dev['device']}] class {dev['class']}  "
             f"Virtio 1.0 network device"]
    for bar in dev["bars"]:
        lines.append(f"  BAR{bar['index']}: {bar['type']} at {bar['address']}, "
                     f"{bar['size'] // 1024} KiB")
    lines.append(f"  MSI-X: {dev['msix_vectors']} vectors")
    lines.append(f"offered:    {' '.join(result['device_features'])}")
    lines.append(f"negotiated: {' '.join(result['features'])}")
    lines.append(f"MAC {result['mac']}  MTU {result['mtu']}  "
                 f"queue pairs {result['queue_pairs']} of {result['max_queue_pairs']}  "
                 f"link {'up' if result['link_up'] else 'down'}")
    vqs = ", ".join(f"{q['index']} (size {q['size']})" for q in result["virtqueues"])
    lines.append(f"virtqueues: {vqs}")
    lines.append(f"device status: {' | '.join(result['status'])}")

    traffic = result["traffic"]
    guest, peer, arp = traffic["guest"], traffic["peer"], traffic["arp"]
    lines.append(f"traffic (simulated time): guest {guest['ip']} ({guest['mac']}), "
                 f"peer {peer['ip']} ({peer['mac']}) on the wire side")
    answer = f"is-at {arp['is_at']} in {_us(arp['rtt_ns'])} µs" if arp["is_at"] else "no answer"
    lines.append(f"  ARP who-has {arp['who_has']} tell {arp['tell']} -> {answer}")
    for name, ping in (("ping", traffic["ping"]), ("peer_ping", traffic["peer_ping"])):
        text = (f"  ping {ping['dst']} from {ping['src']}: {ping['received']}/{ping['sent']} "
                f"replies ({', '.join(map(str, ping['sizes']))} bytes)")
        rtts = ping["rtt_ns"]
        if len(rtts) == 1:
            text += f", rtt {_us(rtts[0])} µs"
        elif rtts:
            text += (f", rtt min/avg/max {_us(min(rtts))}/{_us(sum(rtts) / len(rtts))}/"
                     f"{_us(max(rtts))} µs")
        lines.append(text)
    udp = traffic.get("udp_echo")
    if udp:
        lines.append(f"  UDP echo {udp['dst']}: {udp['received']}/{udp['sent']} flows answered "
                     f"(one source port each, spread over the queue pairs)")
    for q in result["queues"]:
        lines.append(f"queue pair {q['index']}: tx {q['tx_packets']} packets ({q['tx_bytes']} bytes), "
                     f"rx {q['rx_packets']} packets ({q['rx_bytes']} bytes), {q['drops']} drops")
    if result.get("pcap"):
        frames = traffic["wire_frames"]
        pcap = _shown_path(result["pcap"])
        lines.append(f"capture: {pcap} ({frames['from_device'] + frames['to_device']} frames); "
                     f"read it with: tshark -r {pcap}")
    return "\n".join(lines)


def cmd_demo(args):
    result = run_demo(_params(args), args.out)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_demo(result))
    return 0


def cmd_lspci(args):
    text = run_sim_job(_params(args), "config_dump")
    Path(args.output).write_text(text)
    _progress(f"wrote {args.output}; decode it with: lspci -vvv -nn -F {args.output}")
    return 0


def cmd_build(args):
    from boards.build import main as build_main
    argv = ["--out", args.out]
    if args.json:
        argv.append("--json")
    if args.pairs is not None:
        argv += ["--pairs", str(args.pairs)]
    if args.blocks:
        argv.append("--blocks")
    return build_main(argv)


def _csv(kind, allowed, convert=str):
    def parse(text):
        items = [convert(item) for item in text.split(",") if item]
        bad = [item for item in items if item not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"{kind} must be among {', '.join(map(str, allowed))}, not {text!r}")
        return items
    return parse


def _run_bench_link(params, config):
    """Run sim.cocotb_tests.bench for one link; echo its progress; return its JSON."""
    import threading
    from .build import build_dir, run_cocotb
    from .tests_results import failed_cases
    with tempfile.TemporaryDirectory() as tmp:
        out, progress_file = Path(tmp) / "out", Path(tmp) / "progress"
        progress_file.touch()
        log = build_dir(params) / f"bench_{config['link']}.log"
        done = threading.Event()

        def echo():
            with open(progress_file) as f:
                while True:
                    line = f.readline()
                    if line:
                        _progress(line.rstrip("\n"))
                    elif done.is_set():
                        return
                    else:
                        time.sleep(0.2)

        thread = threading.Thread(target=echo, daemon=True)
        thread.start()
        try:
            results = run_cocotb(params, "sim.cocotb_tests.bench", ["bench"], progress=_progress,
                                 env={"VNF_OUT": str(out), "VNF_PROGRESS": str(progress_file),
                                      "VNF_BENCH": json.dumps(config)}, log_file=log)
        except SystemExit:
            results = None
        finally:
            done.set()
            thread.join()
        if results is None or failed_cases(results) or not out.exists():
            raise SystemExit(f"virtio-net-fpga: the bench on {config['link']} failed; see {log}")
        return json.loads(out.read_text())


def cmd_bench(args):
    from . import bench
    packets = args.packets or (bench.QUICK_PACKETS if args.quick else bench.DEFAULT_PACKETS)
    warmup = args.warmup if args.warmup is not None else max(16, packets // 6)
    started = time.monotonic()
    runs = []
    for link in args.links:
        config = {"link": link, "read_latency_ns": args.read_latency_ns, "rx_load": args.rx_load,
                  "tx_ahead": args.tx_ahead,
                  "trace": str(Path(args.trace).resolve()) + f".{link}" if args.trace else None,
                  "points": [{"direction": d, "frame_bytes": size, "packets": packets, "warmup": warmup,
                              "queue_pairs": pairs}
                             for size in args.sizes for d in args.directions
                             for pairs in args.bench_pairs],
                  "latency": [] if args.no_latency else list(args.sizes)}
        _progress(f"{link}: {len(config['points'])} points of {packets} frames "
                  f"(+{warmup} warm-up), {'/'.join(map(str, args.bench_pairs))} queue pair(s), "
                  f"host read latency {args.read_latency_ns} ns")
        runs.append(_run_bench_link(_params(args), config))
    results = [bench.finish_result(raw) for run in runs for raw in run["points"]]
    latency = [item for run in runs for item in run["latency"]]
    cycles = sum(run["dut_cycles"] for run in runs)
    sim_wall = sum(run["wall_s"] for run in runs)
    out = {
        "results": results,
        "latency": latency,
        "sim_cycles_per_s": round(cycles / sim_wall, 1),
        "link_model": bench.LINK_MODEL,
        "host_read_latency_ns": args.read_latency_ns,
        "rx_load": args.rx_load,
        "tx_ahead": args.tx_ahead,
        "queue_pairs": args.bench_pairs,
        "host_rcb_bytes": bench.HOST_RCB,
        "mps_bytes": {run["link"]: 128 << (run["devctl"] >> 5 & 7) for run in runs},
        "mrrs_bytes": {run["link"]: 128 << (run["devctl"] >> 12 & 7) for run in runs},
        "tlp_tx_holds": {run["link"]: run["tlp_tx_holds"] for run in runs},
        "packets_per_point": packets,
        "warmup_packets": warmup,
        "wall_s": round(time.monotonic() - started, 1),
    }
    _progress(f"bench done in {out['wall_s']:.0f} s; simulation ran at "
              f"{out['sim_cycles_per_s']:.0f} DUT cycles/s")
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(bench.format_table(results))
    if latency:
        print()
        print(bench.format_latency(latency))
    print()
    print(f"simulation speed: {out['sim_cycles_per_s']:.0f} DUT cycles/s (wall clock)")
    print(f"link model: {out['link_model']}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="virtio-net-fpga", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="enumerate and probe the simulated device, then ARP and "
                                       "ping a peer on its wire side")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.add_argument("--pairs", type=int, help="queue pairs to build the device with (default 4)")
    demo.add_argument("--out", help="directory for demo.json and the capture wire.pcapng "
                                    f"(default: {DEMO_OUT} in the repository)")
    demo.set_defaults(func=cmd_demo)

    lspci = sub.add_parser("lspci", help="dump the simulated device's config space for lspci -F")
    lspci.add_argument("-o", "--output", required=True, help="file to write")
    lspci.add_argument("--pairs", type=int, help="queue pairs (default 4)")
    lspci.set_defaults(func=cmd_lspci)

    build = sub.add_parser("build", help="synthesise, place and route for the ECP5 Versa board")
    build.add_argument("--json", action="store_true", help="print one JSON object")
    build.add_argument("--out", default="build/versa", help="build directory (default: %(default)s)")
    build.add_argument("--pairs", type=int, help="queue pairs (default 4)")
    build.add_argument("--blocks", action="store_true",
                       help="no board build: the core's cells per block, largest first (about a minute)")
    build.set_defaults(func=cmd_build)

    from . import bench as bench_model
    bench = sub.add_parser("bench", help="throughput and latency, measured in simulated time")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--quick", action="store_true",
                       help=f"{bench_model.QUICK_PACKETS} frames a point instead of "
                            f"{bench_model.DEFAULT_PACKETS}")
    bench.add_argument("--links", type=_csv("links", list(bench_model.LINKS)),
                       default=list(bench_model.LINKS), help="default: %(default)s")
    bench.add_argument("--directions", type=_csv("directions", bench_model.DIRECTIONS),
                       default=list(bench_model.DIRECTIONS), help="default: %(default)s")
    bench.add_argument("--sizes", type=_csv("frame sizes", bench_model.FRAME_SIZES, int),
                       default=list(bench_model.FRAME_SIZES),
                       help="Ethernet frame sizes with FCS (default: %(default)s)")
    bench.add_argument("--packets", type=int, help="frames counted per point")
    bench.add_argument("--warmup", type=int, help="frames not counted at the start of a point")
    bench.add_argument("--read-latency-ns", type=int, default=bench_model.DEFAULT_READ_LATENCY_NS,
                       help="host memory read latency (default: %(default)s)")
    bench.add_argument("--rx-load", choices=["line", "port"], default="line",
                       help="RX frames back to back at 1 GbE line rate, or as fast as the "
                            "core's wire port takes them (32 bits a cycle) (default: %(default)s)")
    bench.add_argument("--trace", metavar="FILE",
                       help="write every DMA TLP (time, direction, kind, address, length, tag) "
                            "to FILE.<link>, one per line, for looking at what a point spends "
                            "its time on")
    bench.add_argument("--tx-ahead", type=int, default=64,
                       help="TX frames the driver keeps posted ahead of the wire, per transmit "
                            "queue (at most the ring size less 19; default: %(default)s)")
    bench.add_argument("--no-latency", action="store_true", help="skip the latency measurements")
    device_pairs = CoreParams().queue_pairs
    bench.add_argument("--pairs", dest="bench_pairs", metavar="N[,N...]",
                       type=_csv("queue pairs", list(range(1, device_pairs + 1)), int),
                       default=[1],
                       help="queue pairs in use for each point, e.g. 1,2,4 (one flow per pair; "
                            f"the device has {device_pairs}; default: 1)")
    bench.set_defaults(func=cmd_bench)

    args = parser.parse_args(argv)
    if getattr(args, "pairs", None) is not None and not 1 <= args.pairs <= MAX_QUEUE_PAIRS:
        parser.error(f"--pairs must be 1 to {MAX_QUEUE_PAIRS} (the MSI-X table fills one 4 KiB page)")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
