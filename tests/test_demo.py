"""`virtio-net-fpga demo --json` on the default simulated device."""
import json

import pytest

from hdl import spec
from hdl.top import CoreParams
from sim.cli import main

pytestmark = pytest.mark.system


def test_demo_json(capsys):
    assert main(["demo", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    params = CoreParams()
    assert result["device"]["vendor"] == "1af4" and result["device"]["device"] == "1041"
    assert result["device"]["bars"][0]["size"] == 0x8000
    assert "VERSION_1" in result["features"] and "MAC" in result["features"]
    assert result["mac"] == ":".join(f"{b:02x}" for b in params.mac)
    assert result["queue_pairs"] == 1            # MQ is not offered yet
    assert result["link_up"] is True
    assert result["status"] == ["ACKNOWLEDGE", "DRIVER", "DRIVER_OK", "FEATURES_OK"]
    assert len(result["queues"]) == 2 and all(q["size"] == params.queue_size_max for q in result["queues"])
    assert set(result["features"]) <= set(spec.feature_names(params.device_features))
