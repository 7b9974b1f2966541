"""Run an Amaranth-simulator testbench against a component."""
from amaranth.sim import Simulator

CLOCK_PERIOD = 8e-9


def simulate(dut, testbench, *, vcd=None):
    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    sim.add_testbench(testbench)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()


def beats(frame):
    """Dense 32-bit beats of a frame, byte 0 in bits 7:0 (hdl/lib/bytes.py):
    [(data, keep, last)]."""
    return [(int.from_bytes(frame[pos:pos + 4].ljust(4, b"\0"), "little"),
             (1 << len(frame[pos:pos + 4])) - 1, pos + 4 >= len(frame))
            for pos in range(0, len(frame), 4)]
