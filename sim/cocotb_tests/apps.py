"""The CLI's jobs that run inside the simulator: the demo and the config-space dump.

Each writes its result as JSON (or text) to the file named by VNF_OUT; the
CLI prints it. Driven by sim/cli.py, not collected by pytest.
"""
import json
import math
import os

import cocotb
from cocotb.triggers import Timer
from cocotb.utils import get_sim_time

from driver.virtio_net import VirtioNet, format_mac
from hdl import spec
from sim.responder import UDP_ECHO_PORT, Host, PingTimeout, WirePeer
from sim.tb import TB

# The demo's two hosts: the guest (the driver's side, MAC from the device) and
# a peer on the wire side of the device.
GUEST_IP = "10.0.0.1"
PEER_IP = "10.0.0.2"
PEER_MAC = "02:00:00:00:00:02"
GUEST_PING_IDENT = 0x7601          # echo identifiers, as ping takes its pid
PEER_PING_IDENT = 0x7602
IP_ICMP_HEADERS = 20 + 8
# Simulated time to wait for any one answer: the slowest (a 1514-byte echo
# both ways) takes about 15 µs. One microsecond idles in about 4.5 ms of wall time.
REPLY_TIMEOUT_NS = 250_000
# Test only: requests the wire peer leaves unanswered (sim.responder.Host's
# ``ignore``, comma-separated: "arp", "echo", "echo:<seq>"), to see the demo fail.
PEER_IGNORE_ENV = "VNF_DEMO_PEER_IGNORE"
POLL_NS = 200                      # the guest looks at every receive queue this often
FLOWS_PER_PAIR = 4                 # UDP echo flows per queue pair: enough to reach every queue
FLOW_BASE_PORT = 20000


class DemoError(AssertionError):
    """The demo's traffic did not go as it should (a reply missing or wrong)."""


def _out(text):
    with open(os.environ["VNF_OUT"], "w") as f:
        f.write(text)


def _now_ns():
    return round(get_sim_time("ps")) / 1000


def ping_sizes(mtu):
    """ICMP payload sizes of the guest's pings (ping -s): the default, small,
    middling, and the largest that fits the MTU."""
    return [56, 8, 300, 1000, mtu - IP_ICMP_HEADERS]


def ping_payload(size, seq):
    return bytes((seq + i) & 0xff for i in range(size))


class GuestStack:
    """The guest's side of the exchange: a `Host` fed by the driver.

    ``receive_until`` polls the driver (waiting on its receive interrupt),
    hands each frame to the host and transmits its answers, until ``done()``
    returns something other than None.
    """

    def __init__(self, net, ip):
        self.net = net
        self.host = Host("guest", format_mac(net.mac), ip)

    async def send(self, frame):
        # the transmit queue by flow (select_queue), as Linux picks it
        await self.net.send(frame, timeout_ns=REPLY_TIMEOUT_NS)

    async def receive_any(self, timeout_ns):
        """Frames from every receive queue in use: the device steers flows
        over them. Polls every POLL_NS until something came or the time is up."""
        end = _now_ns() + timeout_ns
        while True:
            frames = []
            for pair in range(self.net.curr_queue_pairs):
                await self.net.poll(pair)
                frames += self.net.take_received(pair)
            if frames or _now_ns() >= end:
                return frames
            await Timer(POLL_NS, "ns")

    async def receive_until(self, done, what):
        deadline = _now_ns() + REPLY_TIMEOUT_NS
        while (result := done()) is None:
            left = deadline - _now_ns()
            if left <= 0:
                raise PingTimeout(f"guest: {what}: no answer in {REPLY_TIMEOUT_NS / 1000:g} µs "
                                  "(simulated)")
            for frame in await self.receive_any(math.ceil(left)):
                for answer in self.host.handle(frame):
                    await self.send(answer)
        return result


async def exchange(net, peer, guest, traffic, failures):
    """ARP, the guest's pings, the peer's ping. Fills in ``traffic`` as it
    goes; appends what went wrong to ``failures``."""
    arp = {"who_has": PEER_IP, "tell": GUEST_IP, "is_at": None, "rtt_ns": None}
    sizes = ping_sizes(net.mtu)
    ping = {"src": GUEST_IP, "dst": PEER_IP, "sent": 0, "received": 0, "sizes": sizes,
            "rtt_ns": []}
    peer_ping = {"src": PEER_IP, "dst": GUEST_IP, "sent": 0, "received": 0, "sizes": [56],
                 "rtt_ns": []}
    traffic.update({"guest": {"ip": GUEST_IP, "mac": guest.host.mac},
                    "peer": {"ip": PEER_IP, "mac": peer.mac},
                    "arp": arp, "ping": ping, "peer_ping": peer_ping})

    # the guest resolves the peer
    started = _now_ns()
    await guest.send(guest.host.arp_request(PEER_IP))
    try:
        arp["is_at"] = await guest.receive_until(lambda: guest.host.arp_cache.get(PEER_IP),
                                                 f"ARP who-has {PEER_IP}")
        arp["rtt_ns"] = round(_now_ns() - started, 3)
    except PingTimeout as err:
        failures.append(str(err))
        return

    # the guest pings the peer
    for seq, size in enumerate(sizes, 1):
        payload = ping_payload(size, seq)
        started = _now_ns()
        await guest.send(guest.host.echo_request(PEER_IP, GUEST_PING_IDENT, seq, payload))
        ping["sent"] += 1
        try:
            reply = await guest.receive_until(
                lambda seq=seq, payload=payload: guest.host.check_echo_reply(
                    PEER_IP, GUEST_PING_IDENT, seq, payload),
                f"ping {PEER_IP} seq {seq} ({size} bytes)")
        except (PingTimeout, ValueError) as err:
            failures.append(str(err))
            continue
        ping["received"] += 1
        ping["rtt_ns"].append(round(reply.time_ns - started, 3))

    # the peer pings the guest: traffic that starts on the wire side
    async def peer_pings(payload):
        try:            # a task's exception would end the test at once: return it instead
            rtt_ns, _ = await peer.ping(GUEST_IP, PEER_PING_IDENT, 1, payload, REPLY_TIMEOUT_NS)
            return rtt_ns, None
        except (PingTimeout, ValueError) as err:
            return None, err

    task = cocotb.start_soon(peer_pings(ping_payload(56, 1)))
    peer_ping["sent"] += 1
    try:
        await guest.receive_until(lambda: guest.host.counters["echo_replies_sent"] or None,
                                  f"echo request from {PEER_IP}")
    except PingTimeout as err:
        failures.append(str(err))
    rtt_ns, err = await task
    if err is not None:
        failures.append(str(err))
    else:
        peer_ping["received"] += 1
        peer_ping["rtt_ns"].append(rtt_ns)

    # UDP echo flows (one source port each): flows spread over the transmit
    # queues by the driver's select_queue and over the receive queues by the
    # device's steering, so every queue pair carries traffic
    flows = {"dst": f"{PEER_IP}:{UDP_ECHO_PORT}", "sent": 0, "received": 0}
    traffic["udp_echo"] = flows
    expected = {}
    for n in range(FLOWS_PER_PAIR * net.curr_queue_pairs):
        port = FLOW_BASE_PORT + n
        payload = f"flow {n}".encode() * 4
        expected[(PEER_IP, UDP_ECHO_PORT, port)] = payload
        await guest.send(guest.host.udp_datagram(PEER_IP, port, UDP_ECHO_PORT, payload))
        flows["sent"] += 1
    try:
        await guest.receive_until(
            lambda: True if all(k in guest.host.udp_replies for k in expected) else None,
            f"UDP echo from {PEER_IP}")
    except PingTimeout as err:
        failures.append(str(err))
    flows["received"] = sum(guest.host.udp_replies.get(k) == v for k, v in expected.items())
    if flows["received"] != flows["sent"]:
        failures.append(f"UDP echo: {flows['received']} of {flows['sent']} answers came back intact")


async def queue_counters(net):
    """Per queue pair: the driver's counters (TX from the pair's transmitq, RX
    from its receiveq) and the drops of driver and device together."""
    for pair in range(net.curr_queue_pairs):   # count the transmits the device completed
        await net.poll_tx(pair)
    stats = net.stats()
    device = await net.device_stats()
    queues = []
    for pair, (rx, tx) in enumerate(zip(stats.rx_queues, stats.tx_queues)):
        device_drops = (device.queues[spec.rx_queue_index(pair)].drops
                        + device.queues[spec.tx_queue_index(pair)].drops)
        queues.append({"index": pair, "tx_packets": tx.packets, "tx_bytes": tx.bytes,
                       "rx_packets": rx.packets, "rx_bytes": rx.bytes,
                       "drops": rx.drops + tx.drops + device_drops})
    return queues, device.drops


@cocotb.test()
async def demo(dut):
    """Enumerate, probe with the driver, report what the device says; then ARP
    and ping between the guest and a peer on the wire, captured in a pcap."""
    tb = TB(dut)
    f = await tb.init()
    enumerated_ns = get_sim_time("ns")
    net = VirtioNet(tb.transport, ring_start_index=tb.params.ring_start_index)
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
        "virtqueues": [{"index": index, "size": size} for index, size in summary["queues"].items()],
        "link_up": summary["link_up"],
        "status": [s.name for s in spec.VirtioStatus if await net.pci.get_status() & s],
        "sim_time_ns": {"reset_and_enumeration": enumerated_ns,
                        "probe_to_driver_ok": probed_ns - enumerated_ns},
    }

    await net.open()
    opened_ns = get_sim_time("ns")
    ignore = {item.strip() for item in os.environ.get(PEER_IGNORE_ENV, "").split(",") if item.strip()}
    peer = WirePeer(tb.wire_source, tb.wire_sink, PEER_MAC, PEER_IP, ignore=ignore).start()
    guest = GuestStack(net, GUEST_IP)
    failures, traffic = [], {}
    try:
        await exchange(net, peer, guest, traffic, failures)
    except Exception as err:            # the driver or a model gave up: report it, then fail
        failures.append(f"{type(err).__name__}: {err}")
    peer.stop()
    result["sim_time_ns"]["traffic"] = get_sim_time("ns") - opened_ns
    result["queues"], result["device_drops"] = await queue_counters(net)
    traffic["wire_frames"] = {"to_device": tb.wire_source.frames_sent,
                              "from_device": tb.wire_sink.count}
    traffic["peer_counters"] = dict(peer.counters)
    traffic["guest_counters"] = dict(guest.host.counters)
    failures += peer.errors + guest.host.errors
    try:
        tb.check_memory()
    except AssertionError as err:
        failures.append(f"host memory: {err}")
    result["traffic"] = traffic
    await net.remove()
    tb.pcap.close()
    result["pcap"] = str(tb.pcap.path.resolve()) if tb.pcap.frames else None
    if failures:
        result["errors"] = failures
    _out(json.dumps(result))
    if failures:
        raise DemoError("; ".join(failures))


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
