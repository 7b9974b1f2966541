"""The CLI's jobs that run inside the simulator: the demo and the config-space dump.

Each writes its result as JSON (or text) to the file named by VNF_OUT; the
CLI prints it. Driven by sim/cli.py, not collected by pytest.
"""
import json
import os

import cocotb
from cocotb.utils import get_sim_time

from driver.virtio_net import VirtioNet
from hdl import spec
from sim.tb import TB


def _out(text):
    with open(os.environ["VNF_OUT"], "w") as f:
        f.write(text)


@cocotb.test()
async def demo(dut):
    """Enumerate, probe with the driver, report what the device says."""
    tb = TB(dut)
    f = await tb.init()
    enumerated_ns = get_sim_time("ns")
    net = VirtioNet(tb.transport)
    await net.probe()
    probed_ns = get_sim_time("ns")
    bars = []
    for index in range(6):
        if f.bar_size[index]:
            bars.append({"index": index, "address": f"{f.bar_addr[index]:#x}",
                         "size": f.bar_size[index],
                         "type": "mem64" if f.bar[index] & spec.PciBar.MEM_TYPE_64 else "mem32"})
    summary = net.summary()
    result = {
        "device": {
            "bdf": str(f.pcie_id),
            "vendor": f"{f.vendor_id:04x}",
            "device": f"{f.device_id:04x}",
            "class": f"{f.class_code:06x}",
            "bars": bars,
            "msix_vectors": len(f.msi_vectors),
        },
        "device_features": summary["device_features"],
        "features": summary["negotiated_features"],
        "mac": summary["mac"],
        "mtu": summary["mtu"],
        "queue_pairs": summary["curr_queue_pairs"],
        "max_queue_pairs": summary["max_queue_pairs"],
        "queues": [{"index": index, "size": size} for index, size in summary["queues"].items()],
        "link_up": summary["link_up"],
        "status": [s.name for s in spec.VirtioStatus if await net.pci.get_status() & s],
        "sim_time_ns": {"reset_and_enumeration": enumerated_ns,
                        "probe_to_driver_ok": probed_ns - enumerated_ns},
    }
    await net.remove()
    _out(json.dumps(result))


@cocotb.test()
async def config_dump(dut):
    """Read the whole 256-byte config space with config read TLPs, in `lspci -xxx` text."""
    tb = TB(dut)
    f = await tb.init()
    data = bytearray()
    for offset in range(0, spec.PCI_CFG_SPACE_SIZE, 4):
        data += (await tb.transport.config_read(offset, 4)).to_bytes(4, "little")
    bdf = f"{f.pcie_id.bus:02x}:{f.pcie_id.device:02x}.{f.pcie_id.function:x}"
    lines = [f"{bdf} Ethernet controller: virtio-net-fpga (simulated)"]
    for row in range(0, len(data), 16):
        lines.append(f"{row:02x}: " + " ".join(f"{b:02x}" for b in data[row:row + 16]))
    _out("\n".join(lines) + "\n\n")
