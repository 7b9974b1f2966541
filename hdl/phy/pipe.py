"""The PHY Interface for PCI Express (PIPE) as this project uses it.

The soft physical layer (`hdl/phy`) sits above a PIPE-like port; below it is
the SERDES: on the board the ECP5 DCU in PCIe mode (`boards/serdes.py`, which
does 8b/10b, comma alignment and the analogue parts), in simulation a model of
a lane joining two ports. Gen1 x1 (2.5 GT/s) with 16-bit gearing: two symbols
per ``pcie`` clock at 125 MHz. Symbol 0 (bits 7:0, ``datak`` bit 0) goes on
the wire first.

Signals follow the PIPE specification's names (lower case)::

    tx_data[16]      symbols to send, symbol 0 in bits 7:0
    tx_datak[2]      per symbol: 1 = K (control) symbol
    tx_elec_idle     1 = transmitter in electrical idle (data ignored)
    tx_detect_rx     1 = run receiver detection (while in electrical idle)
    rx_data[16]      received symbols, symbol 0 (earlier) in bits 7:0
    rx_datak[2]      per symbol: 1 = K symbol
    rx_valid         1 = symbol lock: rx_data/rx_datak carry symbols
    rx_elec_idle     1 = receiver sees electrical idle
    rx_status[3]     RxStatus (PIPE): 0 ok, 3 receiver detected (with
                     phy_status, after tx_detect_rx), 4 8b/10b decode error,
                     7 disparity error, 1/2 SKP added/removed, 5/6 elastic
                     buffer overflow/underflow
    phy_status       pulse: receiver detection finished (result in rx_status)

The lane polarity (``rx_polarity``) belongs to PIPE too; the LTSSM sets it in
Polling.Active when it sees inverted TS1s (section 4.2.4.4).
"""
import enum

from amaranth.hdl import unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SYMBOLS_PER_CYCLE", "PIPE_CLK_HZ", "RxStatus", "PipeSignature"]

#: Symbols per ``pcie`` clock (16-bit PIPE at Gen1).
SYMBOLS_PER_CYCLE = 2
#: 2.5 GT/s / 10 bits per symbol / 2 symbols per cycle.
PIPE_CLK_HZ = 125_000_000


class RxStatus(enum.IntEnum):
    """PIPE RxStatus encodings."""
    OK = 0
    SKP_ADDED = 1
    SKP_REMOVED = 2
    RECEIVER_DETECTED = 3
    DECODE_ERROR = 4
    EB_OVERFLOW = 5
    EB_UNDERFLOW = 6
    DISPARITY_ERROR = 7


class PipeSignature(wiring.Signature):
    """PIPE, from the MAC's (our physical layer's) side: tx out, rx in."""

    def __init__(self):
        super().__init__({
            "tx_data": Out(8 * SYMBOLS_PER_CYCLE),
            "tx_datak": Out(SYMBOLS_PER_CYCLE),
            "tx_elec_idle": Out(1, init=1),
            "tx_detect_rx": Out(1),
            "rx_polarity": Out(1),
            "rx_data": In(8 * SYMBOLS_PER_CYCLE),
            "rx_datak": In(SYMBOLS_PER_CYCLE),
            "rx_valid": In(1),
            "rx_elec_idle": In(1),
            "rx_status": In(unsigned(3)),
            "phy_status": In(1),
        })
