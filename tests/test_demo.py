"""`virtio-net-fpga demo` on the default simulated device: probe, then ARP and
ping with a peer on the wire side, captured in a pcap that tshark must
dissect without complaint."""
import contextlib
import io
import json
import shutil
import subprocess

import pytest

from hdl import spec
from hdl.top import CoreParams
from sim.cli import format_demo, main

pytestmark = pytest.mark.system

GUEST_PINGS = 5
PAIRS = CoreParams().queue_pairs
UDP_FLOWS = 4 * PAIRS              # sim/cocotb_tests/apps.py FLOWS_PER_PAIR
# frames each way: ARP request or reply, 5 echo requests or replies, 1 echo
# request or reply, a datagram or its echo per UDP flow
FRAMES_EACH_WAY = 1 + GUEST_PINGS + 1 + UDP_FLOWS
ETH_IP_UDP = 14 + 20 + 8
MIN_FRAME = 60                     # the peer pads what it sends to the Ethernet minimum
QUEUE_KEYS = {"index", "tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "drops"}
# pcapng direction flags, as tshark shows frame.packet_flags_direction
INBOUND, OUTBOUND = 1, 2          # into the device (wire_rx), out of it (wire_tx)
EXPERT_WARNING = 0x600000         # _ws.expert.severity: chat 0x200000, note 0x400000, warn, error 0x800000


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One run of `demo --json --out DIR`: (result, DIR)."""
    out = tmp_path_factory.mktemp("demo")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["demo", "--json", "--out", str(out)]) == 0
    return json.loads(stdout.getvalue()), out


def test_demo_json(demo):
    result, _ = demo
    params = CoreParams()
    assert result["device"]["vendor"] == "1af4" and result["device"]["device"] == "1041"
    assert result["device"]["bars"][0]["size"] == 0x8000
    assert "VERSION_1" in result["features"] and "MAC" in result["features"]
    assert result["mac"] == ":".join(f"{b:02x}" for b in params.mac)
    assert "MQ" in result["features"] and "CTRL_VQ" in result["features"]
    assert result["queue_pairs"] == result["max_queue_pairs"] == PAIRS   # all pairs asked for
    assert result["link_up"] is True
    assert result["status"] == ["ACKNOWLEDGE", "DRIVER", "DRIVER_OK", "FEATURES_OK"]
    assert len(result["virtqueues"]) == 2 * PAIRS + 1                  # and the control queue
    assert all(q["size"] == params.queue_size_max for q in result["virtqueues"])
    assert set(result["features"]) <= set(spec.feature_names(params.device_features))
    assert "errors" not in result


def test_demo_traffic(demo):
    result, out = demo
    traffic = result["traffic"]
    assert traffic["guest"]["mac"] == result["mac"]
    assert traffic["arp"]["who_has"] == traffic["peer"]["ip"]
    assert traffic["arp"]["is_at"] == traffic["peer"]["mac"]
    ping = traffic["ping"]
    assert ping["sent"] == ping["received"] == GUEST_PINGS == len(ping["rtt_ns"])
    assert max(ping["sizes"]) == result["mtu"] - 28            # one ping fills the MTU
    assert all(rtt > 0 for rtt in ping["rtt_ns"])
    assert traffic["peer_ping"]["sent"] == traffic["peer_ping"]["received"] == 1
    assert traffic["wire_frames"] == {"to_device": FRAMES_EACH_WAY, "from_device": FRAMES_EACH_WAY}

    udp = traffic["udp_echo"]
    assert udp["sent"] == udp["received"] == UDP_FLOWS

    queues = result["queues"]
    assert [q["index"] for q in queues] == list(range(result["queue_pairs"]))
    assert all(set(q) == QUEUE_KEYS for q in queues)
    # every pair carries traffic both ways: flows spread by select_queue (TX)
    # and by the device's steering (RX)
    assert all(q["tx_packets"] > 0 and q["rx_packets"] > 0 for q in queues), queues
    # ARP request, 5 echo requests, the echo reply to the peer, the datagrams;
    # and what came back
    assert sum(q["tx_packets"] for q in queues) == sum(q["rx_packets"] for q in queues) \
        == FRAMES_EACH_WAY
    ip_icmp = 20 + 8
    echo_bytes = sum(14 + ip_icmp + size for size in ping["sizes"]) + 14 + ip_icmp + 56
    udp_sizes = [ETH_IP_UDP + 4 * len(f"flow {n}") for n in range(UDP_FLOWS)]
    assert sum(q["tx_bytes"] for q in queues) == 42 + echo_bytes + sum(udp_sizes)   # unpadded
    assert sum(q["rx_bytes"] for q in queues) == MIN_FRAME + sum(
        max(MIN_FRAME, 14 + ip_icmp + size) for size in ping["sizes"]) + 14 + ip_icmp + 56 \
        + sum(max(MIN_FRAME, size) for size in udp_sizes)
    assert all(q["drops"] == 0 for q in queues)

    assert result["pcap"] == str((out / "wire.pcapng").resolve())
    assert json.loads((out / "demo.json").read_text())["queues"] == queues


def test_demo_human_output(demo):
    result, _ = demo
    text = format_demo(result)
    lines = text.splitlines()
    assert lines[0].startswith("01:00.0  [1af4:1041] class 020000")
    assert f"ARP who-has 10.0.0.2 tell 10.0.0.1 -> is-at {result['traffic']['peer']['mac']}" in text
    assert "ping 10.0.0.2 from 10.0.0.1: 5/5 replies" in text
    assert "ping 10.0.0.1 from 10.0.0.2: 1/1 replies" in text
    assert f"UDP echo 10.0.0.2:7: {UDP_FLOWS}/{UDP_FLOWS} flows answered" in text
    assert sum(line.startswith("queue pair ") for line in lines) == PAIRS
    assert lines[-1].startswith("capture: ") and f"wire.pcapng ({2 * FRAMES_EACH_WAY} frames)" in lines[-1]


def tshark_fields(pcap, fields):
    """One row per frame: the fields tshark dissects (IPv4 checksums checked)."""
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.fail("tshark is required to check the demo's capture (Debian: apt-get install tshark)")
    run = subprocess.run([tshark, "-r", str(pcap), "-n", "-o", "ip.check_checksum:TRUE",
                          "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a",
                          "-E", "aggregator=,"] + [arg for f in fields for arg in ("-e", f)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"tshark failed: {run.stderr}"
    return [dict(zip(fields, line.split("\t"))) for line in run.stdout.splitlines()]


def test_demo_pcap_dissects_cleanly(demo):
    """tshark reads the capture with no malformed frame, no expert warning or
    error (bad checksums among them), and finds ARP and ICMP echo, request
    and reply, in both directions."""
    result, _ = demo
    fields = ["frame.number", "frame.packet_flags_direction", "frame.protocols", "arp.opcode",
              "icmp.type", "ip.checksum.status", "icmp.checksum.status", "_ws.expert.severity",
              "_ws.expert.message", "_ws.malformed"]
    rows = tshark_fields(result["pcap"], fields)
    assert len(rows) == 2 * FRAMES_EACH_WAY
    problems = []
    seen = set()
    for row in rows:
        where = f"frame {row['frame.number']}"
        if row["_ws.malformed"]:
            problems.append(f"{where}: malformed: {row['_ws.expert.message']}")
        severities = [int(s) for s in row["_ws.expert.severity"].split(",") if s]
        if any(s >= EXPERT_WARNING for s in severities):
            problems.append(f"{where}: {row['_ws.expert.message']}")
        protocols = row["frame.protocols"].split(":")
        if "ip" in protocols and row["ip.checksum.status"] != "1":        # 1: good
            problems.append(f"{where}: IPv4 checksum status {row['ip.checksum.status']!r}")
        if "icmp" in protocols and row["icmp.checksum.status"] != "1":
            problems.append(f"{where}: ICMP checksum status {row['icmp.checksum.status']!r}")
        direction = int(row["frame.packet_flags_direction"], 0)
        if "arp" in protocols:
            seen.add((direction, "arp", int(row["arp.opcode"])))
        if "icmp" in protocols:
            seen.add((direction, "icmp", int(row["icmp.type"])))
        if "udp" in protocols:
            seen.add((direction, "udp"))
    assert not problems, "tshark: " + "; ".join(problems)
    assert seen == {
        (OUTBOUND, "arp", 1), (INBOUND, "arp", 2),          # the guest asks, the peer answers
        (OUTBOUND, "icmp", 8), (INBOUND, "icmp", 0),        # the guest pings the peer
        (INBOUND, "icmp", 8), (OUTBOUND, "icmp", 0),        # the peer pings the guest
        (OUTBOUND, "udp"), (INBOUND, "udp"),                # the UDP echo flows
    }


def test_demo_fails_loudly_without_a_reply(tmp_path, monkeypatch):
    """A ping the peer leaves unanswered makes the demo exit non-zero, naming it."""
    monkeypatch.setenv("VNF_DEMO_PEER_IGNORE", "echo:3")
    with pytest.raises(SystemExit) as failure:
        main(["demo", "--out", str(tmp_path)])
    message = str(failure.value.code)
    assert "demo failed" in message and "ping 10.0.0.2 seq 3" in message and "no answer" in message
    result = json.loads((tmp_path / "demo.json").read_text())
    assert result["traffic"]["ping"]["sent"] == GUEST_PINGS
    assert result["traffic"]["ping"]["received"] == GUEST_PINGS - 1
