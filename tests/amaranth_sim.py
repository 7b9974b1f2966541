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
