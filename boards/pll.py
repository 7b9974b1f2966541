"""The ECP5 PLL (EHXPLLL) as one fixed-frequency clock generator.

ECP5 sysCLOCK PLL rules used here (Lattice TN1263): the output is
``f_in / CLKI_DIV * CLKFB_DIV`` with the feedback taken from CLKOP; the VCO
runs at ``f_out * CLKOP_DIV`` and must stay within 400-800 MHz; the phase
detector input ``f_in / CLKI_DIV`` at or above 10 MHz.
"""
from amaranth.hdl import Elaboratable, Instance, Module, Signal

__all__ = ["Ecp5Pll", "pll_dividers"]

VCO_MIN_HZ = 400e6
VCO_MAX_HZ = 800e6
VCO_MID_HZ = (VCO_MIN_HZ + VCO_MAX_HZ) / 2
PFD_MIN_HZ = 10e6
_DIV_MAX = 128


def pll_dividers(in_hz, out_hz):
    """(CLKI_DIV, CLKFB_DIV, CLKOP_DIV) giving exactly ``out_hz``; ValueError if none."""
    for clki in range(1, _DIV_MAX + 1):
        if in_hz / clki < PFD_MIN_HZ:
            break
        for clkfb in range(1, _DIV_MAX + 1):
            if in_hz * clkfb != out_hz * clki:
                continue
            fits = [d for d in range(1, _DIV_MAX + 1) if VCO_MIN_HZ <= out_hz * d <= VCO_MAX_HZ]
            if fits:        # the VCO nearest the middle of its range
                clkop = min(fits, key=lambda d: abs(out_hz * d - VCO_MID_HZ))
                return clki, clkfb, clkop
    raise ValueError(f"no EHXPLLL setting makes {out_hz / 1e6} MHz from {in_hz / 1e6} MHz")


class Ecp5Pll(Elaboratable):
    """Ports (attributes): ``clk_in`` (in), ``clk_out`` (out), ``locked`` (out)."""

    def __init__(self, in_hz, out_hz):
        self.in_hz, self.out_hz = in_hz, out_hz
        self.clki_div, self.clkfb_div, self.clkop_div = pll_dividers(in_hz, out_hz)
        self.clk_in = Signal()
        self.clk_out = Signal()
        self.locked = Signal()

    def elaborate(self, platform):
        m = Module()
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=str(self.in_hz / 1e6),
            a_FREQUENCY_PIN_CLKOP=str(self.out_hz / 1e6),
            p_CLKI_DIV=self.clki_div,
            p_CLKFB_DIV=self.clkfb_div,
            p_CLKOP_DIV=self.clkop_div,
            p_CLKOP_ENABLE="ENABLED",
            p_CLKOP_CPHASE=self.clkop_div - 1,
            p_CLKOP_FPHASE=0,
            p_FEEDBK_PATH="CLKOP",
            p_OUTDIVIDER_MUXA="DIVA",
            p_PLLRST_ENA="DISABLED",
            p_INTFB_WAKE="DISABLED",
            p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED",
            i_CLKI=self.clk_in,
            i_CLKFB=self.clk_out,
            i_RST=0,
            i_STDBY=0,
            i_PHASESEL0=0,
            i_PHASESEL1=0,
            i_PHASEDIR=0,
            i_PHASESTEP=0,
            i_PHASELOADREG=0,
            i_PLLWAKESYNC=0,
            i_ENCLKOP=0,
            o_CLKOP=self.clk_out,
            o_LOCK=self.locked,
        )
        return m
