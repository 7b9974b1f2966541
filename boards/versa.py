"""Lattice ECP5-5G Versa (LFE5UM5G-45F-VERSA-EVN) platform with its PCIe edge.

amaranth-boards' `VersaECP55GPlatform` knows the LEDs, switches, UART, 100 MHz
oscillator, Ethernet PHYs and DDR3, but not the SERDES. This module adds:

``pcie_x1`` 0
    The x1 edge connector. ``tx``/``rx`` are the dedicated SERDES pads of DCU0
    channel 0 (HDTXP0/HDTXN0_D0CH0, HDRXP0/HDRXN0_D0CH0); ``perst`` is the
    slot's PERST# (active low, so the resource's ``perst`` reads 1 while the
    host holds the card in reset).
``pcie_refclk`` 0
    DCU0's dedicated reference clock input (REFCLKP_D0/REFCLKN_D0), fed with
    the slot's 100 MHz REFCLK.

SERDES pads are not general-purpose I/O: they have no IO_TYPE and no IB/OB
buffers, and only a DCUA/EXTREFB primitive may connect to them. Request them
raw (``dir="-"``, see `request_pcie_pads`) and wire the returned ports to the
primitive's pad pins; a buffered request would place an ordinary I/O buffer on
a SERDES pad, which nextpnr rejects.

Pin facts (ball names, caBGA381): the Versa-5G schematic routes the edge TX
pair to W4/W5, RX pair to Y5/Y6, REFCLK to Y11/Y12, PERST# to A6 (bank 0,
3.3 V). Other open projects' Versa platforms agree (cross-checked, not copied).
"""
from amaranth.build import Attrs, Clock, DiffPairs, PinsN, Resource, Subsignal
from amaranth_boards.versa_ecp5_5g import VersaECP55GPlatform


__all__ = [
    "PCIE_REFCLK_HZ", "CLK100_HZ",
    "PCIE_RESOURCE", "PCIE_REFCLK_RESOURCE",
    "VersaPlatform", "request_pcie_pads",
]


#: Board oscillator (resource ``clk100``), also the default ``sync`` clock.
CLK100_HZ = 100e6
#: PCIe Base spec REFCLK frequency (100 MHz +-300 ppm), as supplied by the slot.
PCIE_REFCLK_HZ = 100e6

PCIE_RESOURCE = "pcie_x1"
PCIE_REFCLK_RESOURCE = "pcie_refclk"

# Ball names of the SERDES pads (DCU0, channel 0) and of the slot's PERST#.
_PCIE_TX_P, _PCIE_TX_N = "W4", "W5"
_PCIE_RX_P, _PCIE_RX_N = "Y5", "Y6"
_PCIE_REFCLK_P, _PCIE_REFCLK_N = "Y11", "Y12"
_PCIE_PERST_N = "A6"


class VersaPlatform(VersaECP55GPlatform):
    """ECP5-5G Versa with the PCIe x1 lane and its reference clock as resources."""

    resources = [
        *VersaECP55GPlatform.resources,
        Resource(PCIE_RESOURCE, 0,
            Subsignal("tx", DiffPairs(_PCIE_TX_P, _PCIE_TX_N, dir="o")),
            Subsignal("rx", DiffPairs(_PCIE_RX_P, _PCIE_RX_N, dir="i")),
            Subsignal("perst", PinsN(_PCIE_PERST_N, dir="i"),
                      Attrs(IO_TYPE="LVCMOS33")),
        ),
        Resource(PCIE_REFCLK_RESOURCE, 0,
            DiffPairs(_PCIE_REFCLK_P, _PCIE_REFCLK_N, dir="i"),
            Clock(PCIE_REFCLK_HZ),
        ),
    ]


def request_pcie_pads(platform, number=0):
    """Request the PCIe lane and reference clock for a DCUA instance.

    Returns ``(lane, refclk)``. ``lane.tx``/``lane.rx``/``refclk`` are raw
    differential ports (``.p``/``.n`` IOPorts) for the DCUA's HDOUTP/HDOUTN,
    HDINP/HDINN and the EXTREFB's REFCLKP/REFCLKN; ``lane.perst`` is a raw
    port too, for an ``io.Buffer("i", ...)`` (1 = host holds PERST# asserted).
    """
    lane = platform.request(PCIE_RESOURCE, number, dir="-")
    refclk = platform.request(PCIE_REFCLK_RESOURCE, number, dir="-")
    return lane, refclk
