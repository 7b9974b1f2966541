"""Simulation: TLP codec, cocotb testbench and the runner glue."""
