"""virtio-net-fpga: run the simulated device, dump its config space, build the board.

    virtio-net-fpga demo [--json] [--pairs N]     probe the simulated device
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


def cmd_demo(args):
    result = json.loads(run_sim_job(_params(args), "demo"))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    dev = result["device"]
    print(f"{dev['bdf']}  [{dev['vendor']}:{dev['device']}] class {dev['class']}  "
          f"Virtio 1.0 network device")
    for bar in dev["bars"]:
        print(f"  BAR{bar['index']}: {bar['type']} at {bar['address']}, {bar['size'] // 1024} KiB")
    print(f"  MSI-X: {dev['msix_vectors']} vectors")
    print(f"offered:    {' '.join(result['device_features'])}")
    print(f"negotiated: {' '.join(result['features'])}")
    print(f"MAC {result['mac']}  MTU {result['mtu']}  "
          f"queue pairs {result['queue_pairs']} of {result['max_queue_pairs']}  "
          f"link {'up' if result['link_up'] else 'down'}")
    queues = ", ".join(f"{q['index']} (size {q['size']})" for q in result["queues"])
    print(f"queues: {queues}")
    print(f"device status: {' | '.join(result['status'])}")
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

    demo = sub.add_parser("demo", help="enumerate and probe the simulated device")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.add_argument("--pairs", type=int, help="queue pairs to build the device with (default 4)")
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
