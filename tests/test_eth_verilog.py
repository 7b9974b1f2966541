"""Every Ethernet block converts to Verilog, and the MAC synthesises for the ECP5."""
import json
import subprocess

import pytest
from amaranth.back import rtlil, verilog

from hdl.eth.cdc import PulseCrossing
from hdl.eth.counters import EventCounters
from hdl.eth.crc import Crc32
from hdl.eth.mac import EthernetMac, MacCounter
from hdl.eth.mac_rx import MacRx
from hdl.eth.mac_tx import MacTx
from hdl.eth.rgmii import Rgmii, RgmiiSimPads
from hdl.eth.width import BeatsToOctets, OctetsToBeats

COMPONENTS = {
    "crc8": lambda: Crc32(8),
    "crc32": lambda: Crc32(32),
    "mac_tx": MacTx,
    "mac_rx": MacRx,
    "beats_to_octets": BeatsToOctets,
    "octets_to_beats": OctetsToBeats,
    "pulse_crossing": lambda: PulseCrossing(3, i_domain="eth_rx", o_domain="sync"),
    "event_counters": lambda: EventCounters(4),
    "rgmii_sim": lambda: Rgmii(RgmiiSimPads()),
    "ethernet_mac": EthernetMac,
}


@pytest.mark.parametrize("name", COMPONENTS)
def test_converts_to_verilog(name):
    text = verilog.convert(COMPONENTS[name](), name=name)
    assert f"module {name}" in text


def test_mac_synthesises_for_ecp5(tmp_path):
    """yosys synth_ecp5 of the MAC with its ports as I/O: the transmit FIFO (a
    longest frame) fits one DP16KD, and every counter bit survives."""
    from boards.build import toolchain_env

    (tmp_path / "mac.il").write_text(rtlil.convert(EthernetMac(), name="mac"))
    (tmp_path / "mac.ys").write_text("read_rtlil mac.il\nsynth_ecp5 -top mac\n"
                                     "tee -q -o stat.json stat -json\n")
    env = toolchain_env()
    subprocess.run([env["YOSYS"], "-q", "mac.ys"], cwd=tmp_path, env=env, check=True)
    cells = json.loads((tmp_path / "stat.json").read_text())["modules"]["\\mac"][
        "num_cells_by_type"]
    assert cells.get("DP16KD") == 1
    assert cells["TRELLIS_FF"] >= 32 * len(MacCounter)
    assert cells["LUT4"] > 0
