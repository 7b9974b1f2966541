"""The ECP5-5G DCU (SERDES + PCS) as a PCIe Gen1 x1 PHY behind a PIPE port.

`Ecp5PcieSerdes` instantiates ``EXTREFB`` (the DCU's dedicated reference clock
input) and ``DCUA`` (DCU0, channel 0) on the raw pads of the Versa's PCIe edge
(`boards.versa.request_pcie_pads`) and serves the soft physical layer
(`hdl/phy`) through `hdl.phy.pipe.PipeSignature`: 16-bit PIPE, two symbols per
cycle of the ``pcie`` clock (125 MHz).

References: Lattice TN1261 "ECP5 and ECP5-5G SERDES/PCS Usage Guide" (cited
by section title, as the section numbers moved between revisions); the DCUA
port/parameter names are those of yosys' ``cells_bb.v`` and prjtrellis. No
register-level DCU documentation is public: the analogue (CMU, DCO, TX driver)
values below are the ones Lattice's own IP generator (Clarity Designer/ASBGen,
PCS module in "PCIE" mode, 2.5 Gb/s, 100 MHz reference; one generated netlist
of it is public, in 8-bit mode) writes, and the gearing settings those of the
open designs that run the DCU with 1:2 gearing on hardware (whitequark's
Yumewatari, in PCIe mode; LUNA and LiteICLink at 5 Gb/s). Each group of
`DCU_PARAMETERS` says what it is for and where its values come from.

What the DCU does and does not do here
--------------------------------------
Done by the hard PCS (PCIe mode, "PCIE" protocol): 8b/10b encode/decode, comma
(K28.5) word alignment with its link state machine (LSM), 1:2 gearing (16 bits
at 125 MHz on the fabric side), receiver detection, transmitter electrical
idle, receive polarity inversion, loss-of-signal detection.

Clock tolerance compensation is **not** done by the DCU: its CTC FIFO is
bypassed (``CH0_CTC_BYPASS``) and `hdl.phy.elastic_buffer.ElasticBuffer`
moves the received words from the recovered clock to ``pcie``, adding or
removing SKP symbols. The DCU does have a CTC FIFO with SKP match registers and
``FFS_SKP_ADDED``/``FFS_SKP_DELETED`` flags, but whether it adds and removes
single SKPs of PCIe SKP ordered sets correctly with 1:2 gearing could not be
confirmed from public material: the one public PCIe-mode netlist from Lattice's
generator has it bypassed, and so do all the open designs. The soft buffer is
simulated (tests/test_phy_elastic_buffer.py) and independent of the DCU.

Clocking (TN1261 "SERDES/PCS Clocking")
---------------------------------------
* REFCLK (100 MHz from the slot) -> EXTREFB -> ``D_REFCLKI`` (TX PLL) and
  ``CH0_RX_REFCLK`` (CDR reference). TX PLL x25 = 2.5 GHz bit clock.
* ``CH0_FF_TX_PCLK`` (TX PLL / 20, 125 MHz in 1:2 gearing), through a DCCA
  global buffer, is the ``pcie`` domain's clock (`Ecp5PcieSerdes.cd_pcie`)
  and goes back to ``CH0_FF_TXI_CLK`` (the TX FIFO's write clock): the fabric
  writes the TX bus on the DCU's own clock.
* ``CH0_FF_RX_PCLK`` (recovered clock / 20, 125 MHz), through a DCCA, clocks
  a local receive domain ``pcie_rx`` and goes back to ``CH0_FF_RXI_CLK`` (the
  RX FIFO's read clock). The elastic buffer is the only crossing from it to
  ``pcie``.
* The reference clock and both DCU clock outputs are constrained with
  ``platform.add_clock_constraint`` on the nets between the DCU and the
  DCCAs, which have no other name; nextpnr derives the domains' constraints
  through the DCCAs. (Constraining the domain's clock signal instead fails
  silently: it has aliases, nextpnr keeps one name per net, and an unmatched
  ``FREQUENCY NET`` leaves the net at nextpnr's 12 MHz default.)

Reset sequencing (TN1261 "Reset Sequence")
------------------------------------------
Timings from the reset sequence logic ("RSL") Lattice's generator adds to a
PCS module. Runs in ``ctrl_domain`` (a free-running fabric clock, ``sync`` by default),
because the DCU's own clocks stop when it is reset or unlocked:

1. power-up: ``D_FFC_MACRO_RST``, ``D_FFC_DUAL_RST``, ``D_FFC_TRST``, the TX
   and RX PCS lane resets and ``CH0_FFC_RRST`` asserted for `RESET_PULSE_S`;
2. TX: macro, dual and TX SERDES resets released; the TX PCS (``CH0_FFC_LANE_TX_RST``)
   stays in reset until the TX PLL reports lock (``D_FFS_PLOL`` low, and the
   TX clock measured at 125 MHz +-1.6% by `ClockMonitor`, as Lattice's
   generated cores check it; see ``pll_lock``) without interruption for
   `TX_SETTLE_S`. If the PLL has not locked after
   `TX_PLL_TIMEOUT_S`, ``D_FFC_TRST`` is pulsed and the wait restarts (the
   generated RSL waits 5 ms before that pulse too). Once
   released, ``tx_ready`` is 1 and the ``pcie`` domain leaves reset (a
   `ResetSynchronizer`); a later loss of lock puts both back into reset;
3. RX (once step 1 is over): the RX PCS (``CH0_FFC_LANE_RX_RST``) stays in
   reset until the CDR is locked (``CH0_FFS_RLOL`` low) and there is a signal
   (``CH0_FFS_RLOS`` low) without interruption for `RX_SETTLE_S`. If the CDR
   stays unlocked while a signal is present for `RX_CDR_TIMEOUT_S`,
   ``CH0_FFC_RRST`` is pulsed. Once released, ``rx_ready`` is 1 and the
   local ``pcie_rx`` domain (the receive path and the elastic buffer's write
   side) leaves reset. Loss of lock or of signal (debounced, `DEBOUNCE`
   cycles) resets the receive path again.

Loss of signal does *not* reset ``pcie``: electrical idle on the receiver is a
normal PCIe state (Detect, and the LTSSM's timeouts must keep running through
it), so it only shows as ``rx_elec_idle`` and, through the receive path's
reset, ``rx_valid`` low. Only the TX PLL's lock gates ``pcie``.

To hold everything in reset (PERST#, or a board reset), wrap the component in
``ResetInserter({ctrl_domain: ...})``: the sequencer starts over from step 1.

Receiver detection (TN1261 "PCI Express Receiver Detection")
----------------------------------------------------------------
PIPE ``tx_detect_rx`` (with ``tx_elec_idle`` held) runs the DCU's sequence in
the ``pcie`` domain: wait `DETECT_SETUP_CYCLES` (TN1261: >= 120 ns in
electrical idle), raise ``pcie_det_en``, wait again (>= 120 ns), pulse
``pcie_ct`` for `DETECT_CT_CYCLES` (TN1261: 4 byte clocks), wait for
``pcie_done`` to fall and rise again (or `DETECT_TIMEOUT_CYCLES`), then sample
``pcie_con``: ``phy_status`` pulses for one cycle with ``rx_status`` =
RECEIVER_DETECTED if a receiver was found, OK if not. The MAC then drops
``tx_detect_rx``; the sequence runs once per rising edge.

Receive status
--------------
``rx_status`` per cycle, highest priority first: the receiver-detection result
(with ``phy_status``); elastic-buffer overflow/underflow; DECODE_ERROR if either
symbol had one; DISPARITY_ERROR; SKP_ADDED/SKP_REMOVED from the elastic buffer.
In PCIe mode the PCS puts a 3-bit PIPE-style status on bits 11:9 of each
received symbol (the generator's netlist names them ``rxstatus``); only its
decode (4) and disparity (7) codes are taken. Yumewatari, reading bits 9 and
10 as disparity and code-violation flags in PCIe mode, found them constant (1
and 0) on hardware, so a decode error is also inferred from the decoder's
substitute for an invalid code group, K14.7 (``0x1EE``), which is not a valid
PCIe K symbol.
"""
import math

from amaranth.hdl import Cat, ClockDomain, Const, DomainRenamer, Instance, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.cdc import FFSynchronizer, ResetSynchronizer
from amaranth.lib.wiring import In, Out

from hdl.phy.elastic_buffer import ElasticBuffer
from hdl.phy.pipe import PIPE_CLK_HZ, SYMBOLS_PER_CYCLE, PipeSignature, RxStatus

from .versa import PCIE_REFCLK_HZ


__all__ = ["DCU_PARAMETERS", "Ecp5PcieSerdes", "ResetSequencer", "ClockMonitor", "ReceiverDetect",
           "PCIE_DOMAIN", "PCIE_RX_DOMAIN", "LINE_RATE_HZ"]


PCIE_DOMAIN = "pcie"
#: Local domain of the recovered receive clock.
PCIE_RX_DOMAIN = "pcie_rx"
LINE_RATE_HZ = 2.5e9

#: DCU/channel location on the LFE5UM5G-45F: the Versa's edge is on DCU0 CH0.
DCU_LOC = "DCU0"
DCU_CHANNEL = "CH0"
DCU_BEL = "X42/Y71/DCU"
EXTREF_LOC = "EXTREF0"

#: Bits per symbol on the DCU's 24-bit fabric buses (12 per symbol, 2 symbols).
BUS_BITS_PER_SYMBOL = 12
#: K14.7 with the K flag: what the 8b/10b decoder puts out for an invalid code group.
DECODER_ERROR_SYMBOL = 0x1EE


# The DCUA parameters, by group. Channel parameters are written for channel 0
# ("CH0_"). Values are the strings the primitive takes ("0bXXX", "0dN", "0xN").
DCU_PARAMETERS = {
    # --- DCU power (TN1261 "Power Down Control") ----------------------------------
    # Macro, TX PLL and the input buffers powered up. D_IB_PWDNB is not in
    # TN1261; every working configuration sets it (Yumewatari: needed for RX).
    "D_MACROPDB": "0b1",
    "D_IB_PWDNB": "0b1",
    "D_TXPLL_PWDNB": "0b1",

    # --- DCU TX PLL / reference clock (TN1261 "SERDES/PCS Clocking", "TX PLL") ----
    # 100 MHz x 25 = 2.5 GHz (D_REFCK_MODE 0b100 is the x25 multiplier, which
    # exists only for a 100 MHz reference), VCO output undivided
    # (D_TX_VCO_CK_DIV /1): 2.5 Gb/s. The bit clock comes from this DCU's own
    # PLL, not the neighbour DCU's (BITCLK_LOCAL/SYNC_LOCAL on, *_ND off).
    # D_PLL_LOL_SET/D_CDR_LOL_SET: the lock detectors' thresholds as the
    # generator sets them for PCIe.
    "D_REFCK_MODE": "0b100",
    "D_TX_VCO_CK_DIV": "0b000",
    "D_TX_MAX_RATE": "2.5",
    "D_BITCLK_LOCAL_EN": "0b1",
    "D_BITCLK_ND_EN": "0b0",
    "D_BITCLK_FROM_ND_EN": "0b0",
    "D_SYNC_LOCAL_EN": "0b1",
    "D_SYNC_ND_EN": "0b0",
    "D_PLL_LOL_SET": "0b01",
    "D_CDR_LOL_SET": "0b00",
    "D_XGE_MODE": "0b0",
    "D_BUS8BIT_SEL": "0b0",

    # --- DCU analogue tuning: undocumented (not in TN1261) --------------------------
    # TX PLL charge pump/VCO (CMUSET*), bias and loop settings: the values
    # Lattice's generator writes for 2.5 Gb/s PCIe with a 100 MHz reference.
    "D_CMUSETBIASI": "0b00",
    "D_CMUSETI4CPP": "0d3",
    "D_CMUSETI4CPZ": "0d3",
    "D_CMUSETI4VCO": "0b00",
    "D_CMUSETICP4P": "0b01",
    "D_CMUSETICP4Z": "0b101",
    "D_CMUSETINITVCT": "0b00",
    "D_CMUSETISCL4VCO": "0b000",
    "D_CMUSETP1GM": "0b000",
    "D_CMUSETP2AGM": "0b000",
    "D_CMUSETZGM": "0b000",
    "D_SETIRPOLY_AUX": "0b00",
    "D_SETICONST_AUX": "0b00",
    "D_SETIRPOLY_CH": "0b00",
    "D_SETICONST_CH": "0b00",
    "D_SETPLLRC": "0d1",
    "D_RG_EN": "0b0",
    "D_RG_SET": "0b00",
    "D_REQ_ISET": "0b000",
    "D_PD_ISET": "0b00",
    "D_ISETLOS": "0d0",
    "D_DCO_CALIB_TIME_SEL": "0b00",

    # --- CTC FIFO watermarks (TN1261 "Clock Tolerance Compensation") ---------------
    # Unused (the CTC is bypassed below); the generator's defaults.
    "D_LOW_MARK": "0d4",
    "D_HIGH_MARK": "0d12",

    # --- Channel protocol (TN1261 "PCI Express Mode") ------------------------------
    # PCIe mode: the PCS adds receiver detection, electrical idle and the
    # PIPE-style rxstatus bits. Not user-configured 8b/10b (UC_MODE), not
    # SRIO, no static polarity inversion (rx_polarity drives
    # CH0_FFC_SB_INV_RX at run time), no PRBS, no GbE autonegotiation.
    "CH0_PROTOCOL": "PCIE",
    "CH0_PCIE_MODE": "0b1",
    "CH0_UC_MODE": "0b0",
    "CH0_RIO_MODE": "0b0",
    "CH0_WA_MODE": "0b0",
    "CH0_INVERT_RX": "0b0",
    "CH0_INVERT_TX": "0b0",
    "CH0_PRBS_SELECTION": "0b0",
    "CH0_PRBS_LOCK": "0b0",
    "CH0_PRBS_ENABLE": "0b0",
    "CH0_GE_AN_ENABLE": "0b0",
    # Static electrical-idle enable off: idle is driven at run time
    # (CH0_FFC_EI_EN and the per-symbol bit of the TX bus).
    "CH0_PCIE_EI_EN": "0b0",
    # Receiver-detection timing select: the generator's default.
    "CH0_PCS_DET_TIME_SEL": "0b00",

    # --- Gearing and fabric clocks (TN1261 "FPGA Interface Clocks", "Gearing") ------
    # 1:2 gearing both ways: 16 bits (2 symbols) per 125 MHz cycle. The
    # half-rate ("H") fabric clocks are enabled, the full-rate (250 MHz)
    # ones disabled. The RX FIFO is written on the recovered clock
    # (SEL_SD_RX_CLK).
    "CH0_TX_GEAR_MODE": "0b1",
    "CH0_RX_GEAR_MODE": "0b1",
    "CH0_TX_GEAR_BYPASS": "0b0",
    "CH0_RX_GEAR_BYPASS": "0b0",
    "CH0_FF_TX_H_CLK_EN": "0b1",
    "CH0_FF_TX_F_CLK_DIS": "0b1",
    "CH0_FF_RX_H_CLK_EN": "0b1",
    "CH0_FF_RX_F_CLK_DIS": "0b1",
    "CH0_SEL_SD_RX_CLK": "0b1",
    "CH0_RATE_MODE_TX": "0b0",
    "CH0_RATE_MODE_RX": "0b0",
    "CH0_TX_DIV11_SEL": "0b0",
    "CH0_RX_DIV11_SEL": "0b0",

    # --- 8b/10b and word alignment (TN1261 "8b10b Encoder/Decoder", "Word Alignment",
    # "Link State Machine") ----------------------------------------------------------
    # Encoder, decoder, word aligner and LSM in use. The aligner compares all
    # 10 bits with K28.5 of either running disparity (0x17C = 0011111010 as
    # sent, 0x283 its complement).
    "CH0_ENC_BYPASS": "0b0",
    "CH0_DEC_BYPASS": "0b0",
    "CH0_SB_BYPASS": "0b0",
    "CH0_RX_SB_BYPASS": "0b0",
    "CH0_WA_BYPASS": "0b0",
    "CH0_LSM_DISABLE": "0b0",
    "CH0_ENABLE_CG_ALIGN": "0b1",
    "CH0_UDF_COMMA_MASK": "0x3ff",
    "CH0_UDF_COMMA_A": "0x283",
    "CH0_UDF_COMMA_B": "0x17C",

    # --- Clock tolerance compensation (TN1261 "Clock Tolerance Compensation") --------
    # Bypassed (see the module docstring; `ElasticBuffer` does it). The match
    # pattern is still set to the PCIe SKP ordered set, COM SKP SKP SKP
    # (0x1BC = K28.5, 0x11C = K28.0), four-character match, as the generator does.
    "CH0_CTC_BYPASS": "0b1",
    "CH0_MATCH_2_ENABLE": "0b0",
    "CH0_MATCH_4_ENABLE": "0b1",
    "CH0_MIN_IPG_CNT": "0b11",
    "CH0_CC_MATCH_1": "0x1BC",
    "CH0_CC_MATCH_2": "0x11C",
    "CH0_CC_MATCH_3": "0x11C",
    "CH0_CC_MATCH_4": "0x11C",

    # --- RX analogue front end (TN1261 "Receiver", "Equalizer") -----------------------
    # 50 ohm termination (0d22, the generator's value for it), common mode
    # from the termination (AC-coupled lane), equaliser on at the generator's
    # PCIe level and pole (RX_RATE_SEL 0d8).
    "CH0_RPWDNB": "0b1",
    "CH0_RTERM_RX": "0d22",
    "CH0_RXTERM_CM": "0b11",
    "CH0_RXIN_CM": "0b11",
    "CH0_REQ_EN": "0b1",
    "CH0_REQ_LVL_SET": "0b00",
    "CH0_RX_RATE_SEL": "0d8",
    "CH0_LEQ_OFFSET_SEL": "0b0",
    "CH0_LEQ_OFFSET_TRIM": "0b000",
    "CH0_RCV_DCC_EN": "0b0",

    # --- CDR (TN1261 "Clock and Data Recovery") ----------------------------------
    # 2.5 Gb/s, DCO undivided; the phase detector is disabled on loss of
    # signal (PDEN_SEL), so the CDR holds the reference frequency through
    # electrical idle; automatic frequency acquisition and calibration on.
    # The DCO* tuning values are undocumented: the generator's for PCIe.
    "CH0_CDR_MAX_RATE": "2.5",
    "CH0_RX_DCO_CK_DIV": "0b000",
    "CH0_PDEN_SEL": "0b1",
    "CH0_AUTO_FACQ_EN": "0b1",
    "CH0_AUTO_CALIB_EN": "0b1",
    "CH0_CALIB_CK_MODE": "0b0",
    "CH0_BAND_THRESHOLD": "0d0",
    "CH0_REG_BAND_OFFSET": "0d0",
    "CH0_REG_BAND_SEL": "0d0",
    "CH0_REG_IDAC_SEL": "0d0",
    "CH0_REG_IDAC_EN": "0b0",
    "CH0_CDR_CNT4SEL": "0b00",
    "CH0_CDR_CNT8SEL": "0b00",
    "CH0_DCOATDCFG": "0b00",
    "CH0_DCOATDDLY": "0b00",
    "CH0_DCOBYPSATD": "0b1",
    "CH0_DCOCALDIV": "0b001",
    "CH0_DCOCTLGI": "0b010",
    "CH0_DCODISBDAVOID": "0b0",
    "CH0_DCOFLTDAC": "0b01",
    "CH0_DCOFTNRG": "0b111",
    "CH0_DCOIOSTUNE": "0b000",
    "CH0_DCOITUNE": "0b00",
    "CH0_DCOITUNE4LSB": "0b111",
    "CH0_DCOIUPDNX2": "0b1",
    "CH0_DCONUOFLSB": "0b101",
    "CH0_DCOSCALEI": "0b00",
    "CH0_DCOSTARTVAL": "0b000",
    "CH0_DCOSTEP": "0b00",

    # --- Loss of signal (TN1261 "Loss of Signal Detector") -------------------------
    # LOS detector on, reported on CH0_FFS_RLOS (rx_los_low); threshold and
    # equaliser setting the generator's ("TBD" values in TN1261's table).
    "CH0_RX_LOS_EN": "0b1",
    "CH0_RLOS_SEL": "0b1",
    "CH0_RX_LOS_LVL": "0b100",
    "CH0_RX_LOS_CEQ": "0b11",
    "CH0_RX_LOS_HYST_EN": "0b0",

    # --- TX driver (TN1261 "Transmitter") ---------------------------------------
    # 50 ohm termination (0d19), 1000 mV differential amplitude (PCIe Gen1:
    # 800-1200 mV), de-emphasis off as the generator sets it for PCIe,
    # driver slices 0, 2, 3, 4 on main data.
    "CH0_TPWDNB": "0b1",
    "CH0_RTERM_TX": "0d19",
    "CH0_TX_CM_SEL": "0b00",
    "CH0_TXAMPLITUDE": "0d1000",
    "CH0_TXDEPRE": "DISABLED",
    "CH0_TXDEPOST": "DISABLED",
    "CH0_TDRV_PRE_EN": "0b0",
    "CH0_TDRV_POST_EN": "0b0",
    "CH0_TX_PRE_SIGN": "0b0",
    "CH0_TX_POST_SIGN": "0b0",
    "CH0_TDRV_DAT_SEL": "0b00",
    "CH0_TDRV_SLICE0_SEL": "0b01",
    "CH0_TDRV_SLICE0_CUR": "0b011",
    "CH0_TDRV_SLICE1_SEL": "0b00",
    "CH0_TDRV_SLICE1_CUR": "0b000",
    "CH0_TDRV_SLICE2_SEL": "0b01",
    "CH0_TDRV_SLICE2_CUR": "0b11",
    "CH0_TDRV_SLICE3_SEL": "0b01",
    "CH0_TDRV_SLICE3_CUR": "0b11",
    "CH0_TDRV_SLICE4_SEL": "0b01",
    "CH0_TDRV_SLICE4_CUR": "0b11",
    "CH0_TDRV_SLICE5_SEL": "0b00",
    "CH0_TDRV_SLICE5_CUR": "0b00",

    # --- Low-speed (out-of-band) paths: unused ---------------------------------------
    "CH0_LDR_RX2CORE_SEL": "0b0",
    "CH0_LDR_CORE2TX_SEL": "0b0",
}


def _cycles(seconds, hz):
    return max(1, round(seconds * hz))


class ResetSequencer(wiring.Component):
    """The DCU's reset sequence (see the module docstring), in the ``sync``
    domain of its own (rename it with `DomainRenamer`).

    Inputs ``pll_lol``, ``cdr_lol``, ``rx_los`` are the DCU's raw status
    outputs (synchronised here). Outputs are registered (glitch-free: they
    drive the DCU's asynchronous reset pins and reset synchronisers); the
    resets are asserted from configuration on.
    """

    pll_lol: In(1)
    cdr_lol: In(1)
    rx_los: In(1)
    macro_rst: Out(1, init=1)
    dual_rst: Out(1, init=1)
    tx_serdes_rst: Out(1, init=1)
    tx_pcs_rst: Out(1, init=1)
    rx_serdes_rst: Out(1, init=1)
    rx_pcs_rst: Out(1, init=1)
    tx_ready: Out(1)
    rx_ready: Out(1)
    pll_locked: Out(1)
    cdr_locked: Out(1)
    rx_signal: Out(1)

    #: Reset pulse width (Lattice's RSL uses 4 reference clocks; longer is safe).
    RESET_PULSE_S = 1e-6
    #: TX PLL lock held this long before the TX PCS leaves reset.
    TX_SETTLE_S = 10e-6
    #: TX PLL not locked this long: pulse the TX SERDES reset (RSL: 5 ms).
    TX_PLL_TIMEOUT_S = 5e-3
    #: CDR locked and signal present this long before the RX PCS leaves reset
    #: (RSL: 256 000 reference clocks = 2.56 ms).
    RX_SETTLE_S = 2.56e-3
    #: CDR unlocked with a signal this long: pulse the RX SERDES reset (RSL: 4.6 ms).
    RX_CDR_TIMEOUT_S = 4.6e-3
    #: Cycles an unlock or loss of signal must last to reset a ready path.
    DEBOUNCE = 16

    def __init__(self, clk_hz):
        self.clk_hz = clk_hz
        self.reset_cycles = _cycles(self.RESET_PULSE_S, clk_hz)
        self.tx_settle_cycles = _cycles(self.TX_SETTLE_S, clk_hz)
        self.tx_timeout_cycles = _cycles(self.TX_PLL_TIMEOUT_S, clk_hz)
        self.rx_settle_cycles = _cycles(self.RX_SETTLE_S, clk_hz)
        self.rx_timeout_cycles = _cycles(self.RX_CDR_TIMEOUT_S, clk_hz)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        # The FSMs drive these; each output is a register of its namesake.
        names = ("macro_rst", "dual_rst", "tx_serdes_rst", "tx_pcs_rst", "rx_serdes_rst",
                 "rx_pcs_rst", "tx_ready", "rx_ready")
        c = {name: Signal(name=f"{name}_next") for name in names}
        m.d.sync += [getattr(self, name).eq(c[name]) for name in names]
        pll_lol, cdr_lol, rx_los = Signal(init=1), Signal(init=1), Signal(init=1)
        m.submodules.pll_lol_sync = FFSynchronizer(self.pll_lol, pll_lol, init=1)
        m.submodules.cdr_lol_sync = FFSynchronizer(self.cdr_lol, cdr_lol, init=1)
        m.submodules.rx_los_sync = FFSynchronizer(self.rx_los, rx_los, init=1)
        m.d.comb += [
            self.pll_locked.eq(~pll_lol),
            self.cdr_locked.eq(~cdr_lol),
            self.rx_signal.eq(~rx_los),
        ]
        rx_bad = cdr_lol | rx_los

        longest = max(self.reset_cycles, self.tx_settle_cycles, self.tx_timeout_cycles)
        tx_timer = Signal(range(longest + 1))
        tx_settle = Signal(range(self.tx_settle_cycles + 1))
        tx_lost = Signal(range(self.DEBOUNCE + 1))
        powered = Signal()

        with m.FSM(name="tx"):
            with m.State("POWER_UP"):
                m.d.comb += [
                    c["macro_rst"].eq(1), c["dual_rst"].eq(1), c["tx_serdes_rst"].eq(1),
                    c["tx_pcs_rst"].eq(1),
                ]
                m.d.sync += tx_timer.eq(tx_timer + 1)
                with m.If(tx_timer == self.reset_cycles):
                    m.d.sync += [tx_timer.eq(0), tx_settle.eq(0), powered.eq(1)]
                    m.next = "PLL_WAIT"
            with m.State("PLL_WAIT"):
                m.d.comb += c["tx_pcs_rst"].eq(1)
                m.d.sync += tx_timer.eq(tx_timer + 1)
                with m.If(pll_lol):
                    m.d.sync += tx_settle.eq(0)
                with m.Else():
                    m.d.sync += tx_settle.eq(tx_settle + 1)
                with m.If(~pll_lol & (tx_settle == self.tx_settle_cycles)):
                    m.d.sync += tx_lost.eq(0)
                    m.next = "READY"
                with m.Elif(tx_timer == self.tx_timeout_cycles):
                    m.d.sync += tx_timer.eq(0)
                    m.next = "PLL_RESET"
            with m.State("PLL_RESET"):
                m.d.comb += [c["tx_serdes_rst"].eq(1), c["tx_pcs_rst"].eq(1)]
                m.d.sync += tx_timer.eq(tx_timer + 1)
                with m.If(tx_timer == self.reset_cycles):
                    m.d.sync += [tx_timer.eq(0), tx_settle.eq(0)]
                    m.next = "PLL_WAIT"
            with m.State("READY"):
                m.d.comb += c["tx_ready"].eq(1)
                with m.If(pll_lol):
                    m.d.sync += tx_lost.eq(tx_lost + 1)
                with m.Else():
                    m.d.sync += tx_lost.eq(0)
                with m.If(tx_lost == self.DEBOUNCE):
                    m.d.sync += [tx_timer.eq(0), tx_settle.eq(0)]
                    m.next = "PLL_WAIT"

        longest = max(self.reset_cycles, self.rx_timeout_cycles)
        rx_timer = Signal(range(longest + 1))
        rx_settle = Signal(range(self.rx_settle_cycles + 1))
        rx_lost = Signal(range(self.DEBOUNCE + 1))
        with m.FSM(name="rx"):
            with m.State("POWER_UP"):
                m.d.comb += [c["rx_serdes_rst"].eq(1), c["rx_pcs_rst"].eq(1)]
                with m.If(powered):
                    m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += c["rx_pcs_rst"].eq(1)
                with m.If(rx_bad):
                    m.d.sync += rx_settle.eq(0)
                with m.Else():
                    m.d.sync += rx_settle.eq(rx_settle + 1)
                # the CDR timeout runs only while a signal is present but unlocked
                with m.If(cdr_lol & ~rx_los):
                    m.d.sync += rx_timer.eq(rx_timer + 1)
                with m.Else():
                    m.d.sync += rx_timer.eq(0)
                with m.If(~rx_bad & (rx_settle == self.rx_settle_cycles)):
                    m.d.sync += rx_lost.eq(0)
                    m.next = "READY"
                with m.Elif(rx_timer == self.rx_timeout_cycles):
                    m.d.sync += rx_timer.eq(0)
                    m.next = "CDR_RESET"
            with m.State("CDR_RESET"):
                m.d.comb += [c["rx_serdes_rst"].eq(1), c["rx_pcs_rst"].eq(1)]
                m.d.sync += rx_timer.eq(rx_timer + 1)
                with m.If(rx_timer == self.reset_cycles):
                    m.d.sync += [rx_timer.eq(0), rx_settle.eq(0)]
                    m.next = "WAIT"
            with m.State("READY"):
                m.d.comb += c["rx_ready"].eq(1)
                with m.If(rx_bad):
                    m.d.sync += rx_lost.eq(rx_lost + 1)
                with m.Else():
                    m.d.sync += rx_lost.eq(0)
                with m.If(rx_lost == self.DEBOUNCE):
                    m.d.sync += [rx_timer.eq(0), rx_settle.eq(0)]
                    m.next = "WAIT"
        return m


class ClockMonitor(wiring.Component):
    """Checks that the clock of domain ``mon`` runs at ``expected_hz``, from the
    ``sync`` domain (``clk_hz``): a soft lock detector for the TX PLL.

    Lattice's generated PCS modules do not take the TX PLL's lock from
    ``D_FFS_PLOL``: they add a soft "SERDES lock logic" (SLL) that compares the
    DCU's transmit clock with the reference, and feed that to their reset
    sequence. This is the same idea, made simple: a counter in ``mon`` toggles
    a bit every ``2**DIVIDER_BITS`` cycles; ``sync`` counts its edges over a
    window that should hold `WINDOW_EDGES` of them. ``ok`` (registered, updated
    once a window) is 1 if the count was within `TOLERANCE` (plus one edge of
    quantisation). A stopped clock gives no edges, so ``ok`` = 0. The window is
    about 65 us at 100 MHz.
    """

    ok: Out(1)

    DIVIDER_BITS = 5
    WINDOW_EDGES = 256
    #: Relative frequency error accepted: far above the clocks' ppm tolerances,
    #: far below what an unlocked PLL runs at.
    TOLERANCE = 1 / 64

    def __init__(self, clk_hz, expected_hz):
        self.window_cycles = round(self.WINDOW_EDGES * 2 ** self.DIVIDER_BITS * clk_hz
                                   / expected_hz)
        expected = self.window_cycles * expected_hz / clk_hz / 2 ** self.DIVIDER_BITS
        self.min_edges = math.floor(expected * (1 - self.TOLERANCE)) - 1
        self.max_edges = math.ceil(expected * (1 + self.TOLERANCE)) + 1
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        divider = Signal(self.DIVIDER_BITS + 1)
        m.d.mon += divider.eq(divider + 1)
        toggle = Signal()
        m.submodules.toggle_sync = FFSynchronizer(divider[-1], toggle)
        toggle_prev = Signal()
        m.d.sync += toggle_prev.eq(toggle)
        timer = Signal(range(self.window_cycles))
        edges = Signal(range(self.max_edges + 2))
        m.d.sync += timer.eq(timer + 1)
        with m.If(timer == self.window_cycles - 1):
            m.d.sync += [
                timer.eq(0),
                edges.eq(0),
                self.ok.eq((edges >= self.min_edges) & (edges <= self.max_edges)),
            ]
        with m.Elif((toggle != toggle_prev) & (edges <= self.max_edges)):
            m.d.sync += edges.eq(edges + 1)
        return m


class ReceiverDetect(wiring.Component):
    """PIPE receiver detection on the DCU's ``pcie_det_en``/``pcie_ct``/
    ``pcie_done``/``pcie_con`` (see the module docstring). ``sync`` domain
    (the ``pcie`` clock); ``done``/``con`` are the DCU's raw outputs."""

    start: In(1)            # PIPE tx_detect_rx
    det_en: Out(1)
    ct: Out(1)
    done: In(1)
    con: In(1)
    phy_status: Out(1)
    detected: Out(1)        # valid with phy_status

    #: >= 120 ns in electrical idle before pcie_det_en, and again before pcie_ct.
    DETECT_SETUP_CYCLES = 32            # 256 ns at 125 MHz
    #: pcie_ct high for 4 byte clocks (16 ns at 250 MHz): 4 cycles is twice that.
    DETECT_CT_CYCLES = 4
    #: Give up waiting for pcie_done after this long (no receiver reported).
    DETECT_TIMEOUT_CYCLES = 12500       # 100 us

    def elaborate(self, platform):
        m = Module()
        # det_en and ct go to the DCU: registered, so that no state decoding glitch
        # reaches it
        det_en, ct = Signal(), Signal()
        m.d.sync += [self.det_en.eq(det_en), self.ct.eq(ct)]
        done, con = Signal(init=1), Signal()
        m.submodules.done_sync = FFSynchronizer(self.done, done, init=1)
        m.submodules.con_sync = FFSynchronizer(self.con, con)
        start_prev = Signal()
        m.d.sync += start_prev.eq(self.start)
        timer = Signal(range(self.DETECT_TIMEOUT_CYCLES + 1))

        with m.FSM():
            with m.State("IDLE"):
                m.d.sync += timer.eq(0)
                with m.If(self.start & ~start_prev):
                    m.next = "SETUP"
            with m.State("SETUP"):
                m.d.sync += timer.eq(timer + 1)
                with m.If(timer == self.DETECT_SETUP_CYCLES):
                    m.d.sync += timer.eq(0)
                    m.next = "ENABLE"
            with m.State("ENABLE"):
                m.d.comb += det_en.eq(1)
                m.d.sync += timer.eq(timer + 1)
                with m.If(timer == self.DETECT_SETUP_CYCLES):
                    m.d.sync += timer.eq(0)
                    m.next = "STROBE"
            with m.State("STROBE"):
                m.d.comb += [det_en.eq(1), ct.eq(1)]
                m.d.sync += timer.eq(timer + 1)
                with m.If(timer == self.DETECT_CT_CYCLES):
                    m.d.sync += timer.eq(0)
                    m.next = "WAIT_DONE_LOW"
            with m.State("WAIT_DONE_LOW"):
                m.d.comb += det_en.eq(1)
                m.d.sync += timer.eq(timer + 1)
                with m.If(~done):
                    m.next = "WAIT_DONE_HIGH"
                with m.Elif(timer == self.DETECT_TIMEOUT_CYCLES):
                    m.next = "REPORT"
            with m.State("WAIT_DONE_HIGH"):
                m.d.comb += det_en.eq(1)
                m.d.sync += timer.eq(timer + 1)
                with m.If(done | (timer == self.DETECT_TIMEOUT_CYCLES)):
                    m.next = "REPORT"
            with m.State("REPORT"):
                m.d.comb += [
                    self.phy_status.eq(1),
                    self.detected.eq(done & con),
                ]
                m.next = "IDLE"
        return m


class Ecp5PcieSerdes(wiring.Component):
    """ECP5 DCU0 channel 0 in PCIe mode, serving the PHY through PIPE.

    Parameters
    ----------
    lane, refclk :
        The raw pads from `boards.versa.request_pcie_pads` (``lane.tx``,
        ``lane.rx`` differential; ``refclk`` differential). ``lane.perst`` is
        left to the integrator.
    ctrl_clk_hz : float
        Frequency of ``ctrl_domain``, which times the reset sequence.
    ctrl_domain : str
        A free-running fabric clock domain (default ``sync``).
    pll_lock : str
        Where the reset sequence takes the TX PLL's lock from: ``"dcu"``, the
        DCU's ``D_FFS_PLOL``; ``"monitor"``, a `ClockMonitor` of the TX clock
        (what Lattice's generated cores do); ``"both"`` (default), locked only
        if both say so. ``D_FFS_PLOL`` works in LiteICLink's and LUNA's DCU
        designs on hardware; if bring-up finds it stuck, use ``"monitor"``.

    Ports
    -----
    pipe : In(PipeSignature())
        PIPE, ``pcie`` domain: `cd_pcie`, which this component creates and
        drives (125 MHz from the DCU's TX clock, reset until the TX path is
        ready) and the design adds where it uses it
        (``m.domains.pcie = serdes.cd_pcie``; Amaranth 0.6 no longer lets a
        domain defined in a submodule be used by its parents).
    tx_ready, rx_ready, pll_locked, cdr_locked, rx_signal, rx_aligned : Out(1)
        Status, ``ctrl_domain``: reset sequence done for TX (the ``pcie``
        domain runs) / RX (the receive path runs); TX PLL locked (as
        ``pll_lock`` says); CDR locked;
        no loss of signal; the PCS's link state machine is word-aligned.
    """

    def __init__(self, lane, refclk, *, ctrl_clk_hz, ctrl_domain="sync", pll_lock="both"):
        if pll_lock not in ("both", "dcu", "monitor"):
            raise ValueError(f"pll_lock must be 'both', 'dcu' or 'monitor', not {pll_lock!r}")
        self.pll_lock = pll_lock
        self._lane = lane
        self._refclk = refclk
        self.ctrl_clk_hz = ctrl_clk_hz
        self.ctrl_domain = ctrl_domain
        #: The ``pcie`` clock domain (125 MHz, the DCU's transmit clock), driven by
        #: this component. Add it to the design where it is used, e.g. in the
        #: top: ``m.domains.pcie = serdes.cd_pcie``.
        self.cd_pcie = ClockDomain(PCIE_DOMAIN)
        #: Clock frequencies of the domains this component creates (Hz).
        self.clock_frequencies = {PCIE_DOMAIN: PIPE_CLK_HZ, PCIE_RX_DOMAIN: PIPE_CLK_HZ}
        #: Kept wires on the clock of the local receive domain, by domain, relative
        #: to this component's hierarchy (prefix the submodule name), for build
        #: reports that map nextpnr's clock nets to domains.
        self.clock_nets = {PCIE_RX_DOMAIN: "pcie_rx_clock"}
        super().__init__({
            "pipe": In(PipeSignature()),
            "tx_ready": Out(1),
            "rx_ready": Out(1),
            "pll_locked": Out(1),
            "cdr_locked": Out(1),
            "rx_signal": Out(1),
            "rx_aligned": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        pipe = self.pipe

        refclk = Signal(name="pcie_refclk")
        tx_pclk = Signal(name="pcie_tx_pclk")
        rx_pclk = Signal(name="pcie_rx_pclk")
        if platform is not None:
            platform.add_clock_constraint(refclk, PCIE_REFCLK_HZ)
            platform.add_clock_constraint(tx_pclk, PIPE_CLK_HZ)
            platform.add_clock_constraint(rx_pclk, PIPE_CLK_HZ)

        # --- clock domains -------------------------------------------------------------
        # ``pcie`` is defined by the integrator (m.domains.pcie = serdes.cd_pcie);
        # its clock and reset are driven here.
        cd_pcie = self.cd_pcie
        m.domains.pcie_rx = cd_rx = ClockDomain(PCIE_RX_DOMAIN, local=True)
        # Each DCU clock output drives a global clock buffer (DCCA) of its own, so
        # the net between the two has one name, the constrained one: a domain's
        # clock signal gets aliases (the domain's own name, probes in the top)
        # and nextpnr keeps only one of them, which might not be the
        # constrained one. nextpnr carries the constraint through the DCCA.
        for name, source, domain in (("tx_clk_buf", tx_pclk, cd_pcie),
                                     ("rx_clk_buf", rx_pclk, cd_rx)):
            m.submodules[name] = Instance("DCCA", i_CLKI=source, i_CE=Const(1),
                                          o_CLKO=domain.clk)
        # a kept name on the local receive clock, for build reports (`clock_nets`)
        rx_clock = Signal(name=self.clock_nets[PCIE_RX_DOMAIN], attrs={"keep": 1})
        m.d.comb += rx_clock.eq(cd_rx.clk)

        # --- reset sequence ----------------------------------------------------------------
        m.submodules.sequencer = seq = DomainRenamer(self.ctrl_domain)(
            ResetSequencer(self.ctrl_clk_hz))
        pll_lol = Signal()
        if self.pll_lock in ("both", "monitor"):
            # a reset-less domain on the TX clock, for the frequency check
            m.domains.pcie_txmon = cd_mon = ClockDomain("pcie_txmon", local=True,
                                                        reset_less=True)
            m.d.comb += cd_mon.clk.eq(cd_pcie.clk)
            m.submodules.tx_clock_monitor = monitor = DomainRenamer(
                {"sync": self.ctrl_domain, "mon": "pcie_txmon"})(
                ClockMonitor(self.ctrl_clk_hz, PIPE_CLK_HZ))
            dcu_lol = pll_lol if self.pll_lock == "both" else Const(0)
            m.d.comb += seq.pll_lol.eq(dcu_lol | ~monitor.ok)
        else:
            m.d.comb += seq.pll_lol.eq(pll_lol)
        m.submodules.pcie_reset = ResetSynchronizer(~seq.tx_ready, domain=PCIE_DOMAIN)
        m.submodules.pcie_rx_reset = ResetSynchronizer(~seq.rx_ready, domain=PCIE_RX_DOMAIN)
        lsm_sync = Signal()
        m.d.comb += [
            self.tx_ready.eq(seq.tx_ready),
            self.rx_ready.eq(seq.rx_ready),
            self.pll_locked.eq(seq.pll_locked),
            self.cdr_locked.eq(seq.cdr_locked),
            self.rx_signal.eq(seq.rx_signal),
        ]

        # --- transmit: PIPE -> DCU TX bus, registered ---------------------------------------
        tx_bus = Signal(BUS_BITS_PER_SYMBOL * SYMBOLS_PER_CYCLE)
        tx_idle = Signal(init=1)
        rx_invert = Signal()
        for i in range(SYMBOLS_PER_CYCLE):
            base = BUS_BITS_PER_SYMBOL * i
            m.d.pcie += [
                tx_bus[base:base + 8].eq(pipe.tx_data[8 * i:8 * i + 8]),
                tx_bus[base + 8].eq(pipe.tx_datak[i]),
                # bits 9/10 (force disparity, disparity value) stay 0
                tx_bus[base + 11].eq(pipe.tx_elec_idle),   # per-symbol electrical idle
            ]
        m.d.pcie += [tx_idle.eq(pipe.tx_elec_idle), rx_invert.eq(pipe.rx_polarity)]

        # --- receiver detection ---------------------------------------------------------------
        m.submodules.detect = detect = DomainRenamer(PCIE_DOMAIN)(ReceiverDetect())
        m.d.comb += detect.start.eq(pipe.tx_detect_rx & pipe.tx_elec_idle)

        # --- receive: DCU RX bus -> elastic buffer -> PIPE ------------------------------------
        rx_bus = Signal(BUS_BITS_PER_SYMBOL * SYMBOLS_PER_CYCLE)
        rx_data = Signal(8 * SYMBOLS_PER_CYCLE)
        rx_datak = Signal(SYMBOLS_PER_CYCLE)
        rx_status = Signal(3)
        rx_valid = Signal()
        lsm_rx = Signal()
        m.submodules.lsm_rx_sync = FFSynchronizer(lsm_sync, lsm_rx, o_domain=PCIE_RX_DOMAIN)
        m.submodules.lsm_ctrl_sync = FFSynchronizer(lsm_sync, self.rx_aligned,
                                                    o_domain=self.ctrl_domain)
        decode_errors, disparity_errors = [], []
        for i in range(SYMBOLS_PER_CYCLE):
            base = BUS_BITS_PER_SYMBOL * i
            symbol = rx_bus[base:base + 9]
            status = rx_bus[base + 9:base + 12]
            m.d.pcie_rx += [
                rx_data[8 * i:8 * i + 8].eq(rx_bus[base:base + 8]),
                rx_datak[i].eq(rx_bus[base + 8]),
            ]
            decode_errors.append((status == RxStatus.DECODE_ERROR) |
                                 (symbol == DECODER_ERROR_SYMBOL))
            disparity_errors.append(status == RxStatus.DISPARITY_ERROR)
        decode_error = Cat(*decode_errors).any()
        disparity_error = Cat(*disparity_errors).any()
        with m.If(decode_error):
            m.d.pcie_rx += rx_status.eq(RxStatus.DECODE_ERROR)
        with m.Elif(disparity_error):
            m.d.pcie_rx += rx_status.eq(RxStatus.DISPARITY_ERROR)
        with m.Else():
            m.d.pcie_rx += rx_status.eq(RxStatus.OK)
        m.d.pcie_rx += rx_valid.eq(lsm_rx)

        m.submodules.elastic_buffer = eb = ElasticBuffer(
            w_domain=PCIE_RX_DOMAIN, r_domain=PCIE_DOMAIN)
        m.d.comb += [
            eb.w_data.eq(rx_data),
            eb.w_datak.eq(rx_datak),
            eb.w_status.eq(rx_status),
            eb.w_valid.eq(rx_valid),
        ]

        rx_los = Signal()
        rx_elec_idle = Signal(init=1)
        m.submodules.rx_los_sync = FFSynchronizer(rx_los, rx_elec_idle, init=1,
                                                  o_domain=PCIE_DOMAIN)
        m.d.comb += [
            pipe.rx_data.eq(eb.r_data),
            pipe.rx_datak.eq(eb.r_datak),
            pipe.rx_valid.eq(eb.r_valid),
            pipe.rx_elec_idle.eq(rx_elec_idle),
            pipe.phy_status.eq(detect.phy_status),
        ]
        with m.If(detect.phy_status):
            with m.If(detect.detected):
                m.d.comb += pipe.rx_status.eq(RxStatus.RECEIVER_DETECTED)
            with m.Else():
                m.d.comb += pipe.rx_status.eq(RxStatus.OK)
        with m.Else():
            m.d.comb += pipe.rx_status.eq(eb.r_status)

        # --- the primitives --------------------------------------------------------------------
        m.submodules.extref = Instance(
            "EXTREFB",
            # TN1261 "Reference Clock": powered, 100 ohm differential termination on chip
            # (the Versa's REFCLK pair is AC-coupled from the edge connector).
            p_REFCK_PWDNB="0b1",
            p_REFCK_RTERM="0b1",
            p_REFCK_DCBIAS_EN="0b0",
            i_REFCLKP=self._refclk.p,
            i_REFCLKN=self._refclk.n,
            o_REFCLKO=refclk,
            a_LOC=EXTREF_LOC,
        )

        cdr_lol = Signal()
        det_en, ct, done, con = detect.det_en, detect.ct, Signal(), Signal()
        m.d.comb += [
            seq.cdr_lol.eq(cdr_lol), seq.rx_los.eq(rx_los),
            detect.done.eq(done), detect.con.eq(con),
        ]
        ports = {
            # power and resets (TN1261 "Reset and Power-Down Control")
            "i_D_FFC_MACROPDB": Const(1),
            "i_D_FFC_MACRO_RST": seq.macro_rst,
            "i_D_FFC_DUAL_RST": seq.dual_rst,
            "i_D_FFC_TRST": seq.tx_serdes_rst,
            "i_CH0_FFC_TXPWDNB": Const(1),
            "i_CH0_FFC_RXPWDNB": Const(1),
            "i_CH0_FFC_LANE_TX_RST": seq.tx_pcs_rst,
            "i_CH0_FFC_LANE_RX_RST": seq.rx_pcs_rst,
            "i_CH0_FFC_RRST": seq.rx_serdes_rst,
            # clocks
            "i_D_REFCLKI": refclk,
            "i_CH0_RX_REFCLK": refclk,
            "o_CH0_FF_TX_PCLK": tx_pclk,
            "i_CH0_FF_TXI_CLK": cd_pcie.clk,
            "o_CH0_FF_RX_PCLK": rx_pclk,
            "i_CH0_FF_RXI_CLK": cd_rx.clk,
            # status
            "o_D_FFS_PLOL": pll_lol,
            "o_CH0_FFS_RLOL": cdr_lol,
            "o_CH0_FFS_RLOS": rx_los,
            "o_CH0_FFS_LS_SYNC_STATUS": lsm_sync,
            # PCIe controls (TN1261 "PCI Express Mode"): electrical idle, receiver
            # detection, polarity; the LSM always allowed to align.
            "i_CH0_FFC_EI_EN": tx_idle,
            "i_CH0_FFC_PCIE_DET_EN": det_en,
            "i_CH0_FFC_PCIE_CT": ct,
            "o_CH0_FFS_PCIE_DONE": done,
            "o_CH0_FFS_PCIE_CON": con,
            "i_CH0_FFC_SB_INV_RX": rx_invert,
            "i_CH0_FFC_SIGNAL_DETECT": Const(1),
            "i_CH0_FFC_ENABLE_CGALIGN": Const(0),
            "i_CH0_FFC_FB_LOOPBACK": Const(0),
            # serial pads
            "i_CH0_HDINP": self._lane.rx.p,
            "i_CH0_HDINN": self._lane.rx.n,
            "o_CH0_HDOUTP": self._lane.tx.p,
            "o_CH0_HDOUTN": self._lane.tx.n,
        }
        ports.update({f"i_CH0_FF_TX_D_{n}": tx_bus[n] for n in range(len(tx_bus))})
        ports.update({f"o_CH0_FF_RX_D_{n}": rx_bus[n] for n in range(len(rx_bus))})
        m.submodules.dcu = Instance(
            "DCUA",
            **{f"p_{name}": value for name, value in DCU_PARAMETERS.items()},
            **ports,
            a_LOC=DCU_LOC,
            a_CHAN=DCU_CHANNEL,
            a_BEL=DCU_BEL,
        )
        return m
