"""`virtio-net-fpga bench`: the limits arithmetic, and one small point run
through the simulator (JSON shape, figures consistent with each other; no
timing goals are asserted)."""
import json
import math

import pytest

from sim import bench
from sim.cli import main


def test_line_rate():
    assert bench.line_rate_pps(64) == pytest.approx(1.488e6, rel=1e-3)
    assert bench.line_rate_pps(1518) == pytest.approx(81.27e3, rel=1e-3)


def test_link_limits_match_the_design_figures():
    """TX data in 64-byte completions ~76% efficient, RX in 128-byte writes ~86%."""
    gen1 = bench.LINKS["gen1x1"]
    assert gen1.bytes_per_s == 250e6 and bench.LINKS["gen2x1"].bytes_per_s == 500e6
    n = bench.dma_frame_bytes(1518)
    assert n / bench.tx_link_bytes(1518) == pytest.approx(0.76, abs=0.01)
    assert (n + 12) / bench.rx_link_bytes(1518) == pytest.approx(0.86, abs=0.01)
    # a 64-byte frame (60 bytes without FCS): one CplD, or one MWr of header + frame
    assert bench.tx_link_bytes(64) == 60 + 20
    assert bench.rx_link_bytes(64) == 72 + 20
    assert bench.link_limit_pps(gen1, "tx", 64) == pytest.approx(250e6 / 80)


def test_flow_ports_cover_every_queue():
    """One flow per pair, each steered to its own receive queue; one pair keeps
    the bench's historical flow (source port 9)."""
    assert bench.flow_ports(1) == [bench.FIRST_SPORT]
    for pairs in (2, 3, 4):
        ports = bench.flow_ports(pairs)
        assert len(set(ports)) == pairs
        assert [bench.rx_queue_of(port, pairs) for port in ports] == list(range(pairs))


def test_pairs_option_and_table():
    with pytest.raises(SystemExit):
        main(["bench", "--pairs", "0"])
    with pytest.raises(SystemExit):
        main(["bench", "--pairs", "1,5"])
    row = {"link": "gen2x1", "direction": "tx", "frame_bytes": 64, "queue_pairs": 4, "gbps": 0.3,
           "mpps": 0.6, "link_limit_pct": 10.0, "line_rate_pct": 40.0, "dma_tlps_per_packet": 5.5}
    head, _, line = bench.format_table([row]).splitlines()
    assert head.split()[:4] == ["link", "dir", "pairs", "frame"]
    assert line.split()[:4] == ["gen2x1", "tx", "4", "64"]


QUICK_POINT = ["--links", "gen2x1", "--directions", "tx", "--sizes", "64",
               "--packets", "32", "--warmup", "16"]


@pytest.mark.system
def test_bench_json_is_consistent(capsys):
    assert main(["bench", "--json", *QUICK_POINT]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"results", "sim_cycles_per_s", "link_model", "latency"} <= set(out)
    assert out["sim_cycles_per_s"] > 0
    (row,) = out["results"]
    assert {"link": "gen2x1", "direction": "tx", "frame_bytes": 64, "queue_pairs": 1}.items() \
        <= row.items()
    for key in ("gbps", "mpps", "link_limit_pct", "dma_tlps_per_packet"):
        assert isinstance(row[key], float), key
    assert row["mpps"] > 0
    assert math.isclose(row["gbps"], row["mpps"] * 64 * 8 / 1000, rel_tol=1e-4)
    assert 0 < row["link_limit_pct"] <= 100
    limit_mpps = bench.link_limit_pps(bench.LINKS["gen2x1"], "tx", 64) / 1e6
    assert math.isclose(row["link_limit_pct"], 100 * row["mpps"] / limit_mpps, rel_tol=1e-2)
    assert math.isclose(row["line_rate_pct"], 100 * row["mpps"] / 1.488, rel_tol=1e-2)
    # every TX frame needs at least a descriptor read, its completion and the frame's read
    assert row["dma_tlps_per_packet"] >= 3
    assert row["frame_errors"] == 0
    kinds = {item["what"] for item in out["latency"]}
    assert "wire_to_interrupt" in kinds and kinds & {"doorbell_to_wire", "publish_to_wire"}
    assert all(item["ns"] > 0 for item in out["latency"])


@pytest.mark.system
def test_bench_two_pairs_json_is_consistent(capsys):
    """A tiny point with two pairs in use, both directions: each queue carries
    its flow, in order, and the per-queue counts add up to the window."""
    assert main(["bench", "--json", "--links", "gen2x1", "--directions", "both", "--sizes", "64",
                 "--packets", "32", "--warmup", "16", "--pairs", "2", "--no-latency"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["queue_pairs"] == [2] and out["latency"] == []
    (row,) = out["results"]
    assert {"link": "gen2x1", "direction": "both", "frame_bytes": 64, "queue_pairs": 2}.items() \
        <= row.items()
    assert row["frame_errors"] == 0
    for d in ("tx", "rx"):
        per_queue = row[f"{d}_queue_packets"]
        assert len(per_queue) == 2 and all(n > 0 for n in per_queue), (d, per_queue)
        assert row[f"{d}_mpps"] > 0
    assert sum(row["tx_queue_packets"]) + sum(row["rx_queue_packets"]) == row["packets"]
    assert math.isclose(row["mpps"], row["tx_mpps"] + row["rx_mpps"], rel_tol=1e-4)
    assert 0 <= row["rx_device_drops"] <= row["rx_offered"]
