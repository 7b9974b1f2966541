"""virtio-net-fpga: run the simulated device, dump its config space, build the board.

    virtio-net-fpga demo [--json] [--pairs N] [--out DIR]
                                                  probe the simulated device, ARP and ping
                                                  a peer on the wire; capture in DIR
    virtio-net-fpga lspci -o FILE [--pairs N]     config space in `lspci -xxx` form
    virtio-net-fpga build [--json] [--out DIR]    bitstream for the ECP5 Versa

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
    return build_main(argv)


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
    build.set_defaults(func=cmd_build)

    args = parser.parse_args(argv)
    if getattr(args, "pairs", None) is not None and not 1 <= args.pairs <= MAX_QUEUE_PAIRS:
        parser.error(f"--pairs must be 1 to {MAX_QUEUE_PAIRS} (the MSI-X table fills one 4 KiB page)")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
