"""The GMII between the MAC and the RGMII block, and the MAC's clock domains.

IEEE 802.3 Clause 35 (GMII): one octet per cycle of a 125 MHz clock at
1000 Mb/s. Transmit (35.2.2.1-35.2.2.5): ``txd`` with ``tx_en`` (a frame,
preamble included) and ``tx_er`` (with ``tx_en``: make the PHY send an error
code, 35.2.2.5). Receive (35.2.2.6-35.2.2.8): ``rxd`` with ``rx_dv`` and
``rx_er`` (with ``rx_dv``: the PHY saw an error in the frame, 35.2.2.8).
Carrier sense, collision and carrier extension are half-duplex matters and
are not carried: the MAC is full duplex only.

Both signatures are written from the side that drives them: the MAC drives
`GmiiTxSignature` (``Out``), the RGMII block drives `GmiiRxSignature`.
"""
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from .frame import OCTET_BITS

__all__ = ["ETH_TX_DOMAIN", "ETH_RX_DOMAIN", "GMII_CLK_HZ",
           "GmiiTxSignature", "GmiiRxSignature"]

#: Transmit clock domain: GMII GTX_CLK, 125 MHz, from a PLL on the board.
ETH_TX_DOMAIN = "eth_tx"
#: Receive clock domain: the PHY's RX_CLK (RGMII RXC), 125 MHz at 1 Gb/s.
ETH_RX_DOMAIN = "eth_rx"
#: Clause 35.4.2.3: GTX_CLK is 125 MHz +- 100 ppm.
GMII_CLK_HZ = 125_000_000

GmiiTxSignature = wiring.Signature({
    "txd": Out(OCTET_BITS),
    "tx_en": Out(1),
    "tx_er": Out(1),
})

GmiiRxSignature = wiring.Signature({
    "rxd": Out(OCTET_BITS),
    "rx_dv": Out(1),
    "rx_er": Out(1),
})
