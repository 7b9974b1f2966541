"""`virtio-net-fpga lspci` output, decoded by the real lspci (pciutils)."""
import shutil
import subprocess

import pytest

from sim.cli import main

pytestmark = pytest.mark.system


def test_lspci_decodes_the_simulated_config_space(tmp_path):
    lspci = shutil.which("lspci")
    assert lspci, "lspci is missing: `make test` installs pciutils (apt-get install pciutils)"
    dump = tmp_path / "config.txt"
    assert main(["lspci", "-o", str(dump)]) == 0
    lines = dump.read_text().splitlines()
    rows = [line for line in lines[1:] if line]
    assert [row[:3] for row in rows] == [f"{n:02x}:" for n in range(0, 256, 16)]   # 256 bytes
    assert all(len(row.split()) == 17 for row in rows)
    decoded = subprocess.run([lspci, "-vvv", "-nn", "-F", str(dump)], capture_output=True,
                             text=True, check=True).stdout
    for expected in ("Virtio 1.0 network device [1af4:1041]", "VirtIO: CommonCfg", "VirtIO: Notify",
                     "VirtIO: ISR", "VirtIO: DeviceCfg", "MSI-X: Enable+ Count=9",
                     "Express (v2) Endpoint", "Region 0: Memory at", "(64-bit, non-prefetchable)"):
        assert expected in decoded, f"{expected!r} not in lspci's decoding:\n{decoded}"
    for mistake in ("<chain looped>", "<?>", "Len=0c"):
        assert mistake not in decoded, f"lspci reports {mistake!r}:\n{decoded}"
