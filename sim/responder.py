"""A small IPv4 host for the demo: answers ARP and ICMP echo, and pings.

`Host` is the protocol logic alone, with no simulator in it: give it each
received Ethernet frame (`handle`), send what it returns. It answers ARP
requests for its address and ICMP echo requests sent to it, learns MAC
addresses from ARP, and keeps the echo replies it gets, for `ping`-like
callers. Every IPv4 header and ICMP message it takes is checked (version,
lengths, header checksum, ICMP checksum); a bad one is not answered but kept
in `errors`, so a missing reply points at it.

`WirePeer` is a `Host` on the testbench's wire side: it takes the frames the
device transmits (``tb.wire_sink``) and sends its own into the device
(``tb.wire_source``), padded to the Ethernet minimum as a MAC would. The demo
uses a `Host` on the guest side too, over the driver.

Frames are Ethernet II without FCS, as on the core's frame ports.
"""
import collections
import dataclasses

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.triggers import Event, SimTimeoutError, with_timeout
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import checksum

__all__ = ["BROADCAST", "ETH_ZLEN", "EchoReply", "Host", "PingTimeout", "WirePeer"]

BROADCAST = "ff:ff:ff:ff:ff:ff"
ETH_ZLEN = 60                    # shortest Ethernet frame without FCS; a MAC pads to it
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_HLEN = 14
IPPROTO_ICMP = 1
IPPROTO_UDP = 17
UDP_ECHO_PORT = 7                  # the echo service (RFC 862)
UDP_HEADER = 8
ICMP_ECHOREPLY = 0
ICMP_ECHO = 8
ARP_REQUEST = 1
ARP_REPLY = 2
DEFAULT_TTL = 64


class PingTimeout(TimeoutError):
    """No ARP or echo reply came in time."""


@dataclasses.dataclass(frozen=True)
class EchoReply:
    """An ICMP echo reply as received: who sent it, its fields, when (simulated ns)."""
    src: str
    ident: int
    seq: int
    payload: bytes
    ttl: int
    time_ns: float


def _now_ps():
    return round(get_sim_time("ps"))


def _now_ns():
    return _now_ps() / 1000


class Host:
    """An IPv4 host's ARP and ICMP echo, over Ethernet frames (bytes in, bytes out).

    ``arp_cache``: IP -> MAC learnt from ARP requests and replies.
    ``echo_replies``: (src, ident, seq) -> `EchoReply`, the replies received.
    ``udp_replies``: (src, src port, dst port) -> payload, the UDP echo
    service's answers received (it answers datagrams to port 7 itself).
    ``counters``: what was received, answered and ignored. ``errors``:
    frames that failed a check, described.

    ``ignore`` (for tests of whoever relies on the answers): requests left
    unanswered on purpose: "arp" (every ARP request), "echo" (every echo
    request), "echo:<seq>" (echo requests with that sequence number).
    """

    def __init__(self, name, mac, ip, *, clock=_now_ns, ignore=()):
        unknown = {item for item in ignore
                   if item not in ("arp", "echo") and not item.startswith("echo:")}
        if unknown:
            raise ValueError(f"{name}: cannot ignore {', '.join(sorted(unknown))}")
        self.ignore = set(ignore)
        self.name = name
        self.mac = mac.lower()
        self.ip = ip
        self.clock = clock
        self.arp_cache = {}
        self.echo_replies = {}
        self.udp_replies = {}
        self.counters = collections.Counter()
        self.errors = []

    # --- frames this host originates -----------------------------------------------------

    def arp_request(self, ip):
        """An ARP who-has ``ip`` from this host, broadcast."""
        return bytes(Ether(dst=BROADCAST, src=self.mac, type=ETH_P_ARP)
                     / ARP(op=ARP_REQUEST, hwsrc=self.mac, psrc=self.ip,
                           hwdst="00:00:00:00:00:00", pdst=ip))

    def echo_request(self, ip, ident, seq, payload, *, ttl=DEFAULT_TTL):
        """An ICMP echo request to ``ip``, whose MAC must be in the ARP cache."""
        mac = self.arp_cache.get(ip)
        if mac is None:
            raise KeyError(f"{self.name}: no ARP entry for {ip}")
        return bytes(Ether(dst=mac, src=self.mac, type=ETH_P_IP)
                     / IP(src=self.ip, dst=ip, ttl=ttl, id=seq, flags="DF")
                     / ICMP(type=ICMP_ECHO, code=0, id=ident, seq=seq) / Raw(payload))

    # --- receiving -------------------------------------------------------------------------

    def handle(self, frame):
        """Take one received frame; return the frames to send in answer (a list)."""
        frame = bytes(frame)
        self.counters["frames"] += 1
        if len(frame) < ETH_HLEN:
            return self._error(f"runt frame of {len(frame)} bytes")
        eth = Ether(frame)
        if eth.dst.lower() not in (self.mac, BROADCAST):
            self.counters["not_for_us"] += 1
            return []
        if eth.type == ETH_P_ARP:
            return self._arp(eth)
        if eth.type == ETH_P_IP:
            return self._ipv4(eth, frame[ETH_HLEN:])
        self.counters["ignored"] += 1
        return []

    def _error(self, message):
        self.counters["errors"] += 1
        self.errors.append(f"{self.name}: {message}")
        return []

    def _arp(self, eth):
        if ARP not in eth:
            return self._error("truncated ARP packet")
        arp = eth[ARP]
        if arp.hwtype != 1 or arp.ptype != ETH_P_IP or arp.hwlen != 6 or arp.plen != 4:
            return self._error(f"ARP for hardware {arp.hwtype}, protocol {arp.ptype:#06x}")
        if arp.op == ARP_REQUEST:
            self.counters["arp_requests"] += 1
            if arp.pdst != self.ip:
                return []
            if "arp" in self.ignore:
                self.counters["ignored_on_purpose"] += 1
                return []
            self.arp_cache[arp.psrc] = arp.hwsrc.lower()       # as Linux does for a request to it
            self.counters["arp_replies_sent"] += 1
            return [bytes(Ether(dst=arp.hwsrc, src=self.mac, type=ETH_P_ARP)
                          / ARP(op=ARP_REPLY, hwsrc=self.mac, psrc=self.ip,
                                hwdst=arp.hwsrc, pdst=arp.psrc))]
        if arp.op == ARP_REPLY:
            self.counters["arp_replies"] += 1
            if arp.pdst == self.ip:
                self.arp_cache[arp.psrc] = arp.hwsrc.lower()
            return []
        return self._error(f"ARP opcode {arp.op}")

    def _ipv4(self, eth, packet):
        """Check the IPv4 header and ICMP message in ``packet`` (bytes after the
        Ethernet header, padding included), then answer or record it."""
        if len(packet) < 20:
            return self._error(f"IPv4 packet of {len(packet)} bytes")
        version, ihl = packet[0] >> 4, (packet[0] & 0xf) * 4
        total = int.from_bytes(packet[2:4], "big")
        if version != 4 or ihl < 20 or total < ihl or total > len(packet):
            return self._error(f"bad IPv4 header (version {version}, header {ihl} bytes, "
                               f"total length {total} of {len(packet)} bytes)")
        if checksum(packet[:ihl]) != 0:
            return self._error(f"IPv4 header checksum {packet[10:12].hex()} is wrong")
        packet = packet[:total]                                  # without Ethernet padding
        ip = IP(packet)
        if ip.dst != self.ip:
            self.counters["not_for_us"] += 1
            return []
        if ip.frag or ip.flags.MF:
            return self._error("IPv4 fragment (not reassembled)")
        if ip.proto == IPPROTO_UDP:
            return self._udp(eth, ip, packet[ihl:])
        if ip.proto != IPPROTO_ICMP:
            self.counters["ignored"] += 1
            return []
        message = packet[ihl:]
        if len(message) < 8:
            return self._error(f"ICMP message of {len(message)} bytes")
        if checksum(message) != 0:
            return self._error(f"ICMP checksum {message[2:4].hex()} is wrong")
        icmp_type, code = message[0], message[1]
        ident, seq = int.from_bytes(message[4:6], "big"), int.from_bytes(message[6:8], "big")
        payload = message[8:]
        if icmp_type == ICMP_ECHO and code == 0:
            self.counters["echo_requests"] += 1
            if "echo" in self.ignore or f"echo:{seq}" in self.ignore:
                self.counters["ignored_on_purpose"] += 1
                return []
            mac = eth.src.lower()
            self.counters["echo_replies_sent"] += 1
            return [bytes(Ether(dst=mac, src=self.mac, type=ETH_P_IP)
                          / IP(src=self.ip, dst=ip.src, ttl=DEFAULT_TTL, id=ip.id, flags="DF")
                          / ICMP(type=ICMP_ECHOREPLY, code=0, id=ident, seq=seq) / Raw(payload))]
        if icmp_type == ICMP_ECHOREPLY and code == 0:
            self.counters["echo_replies"] += 1
            key = (ip.src, ident, seq)
            if key in self.echo_replies:
                return self._error(f"duplicate echo reply from {ip.src} id {ident} seq {seq}")
            self.echo_replies[key] = EchoReply(ip.src, ident, seq, payload, ip.ttl, self.clock())
            return []
        self.counters["ignored"] += 1
        return []

    def udp_datagram(self, ip, sport, dport, payload):
        """A UDP datagram to ``ip`` (whose MAC must be in the ARP cache)."""
        return bytes(Ether(dst=self.arp_cache[ip], src=self.mac, type=ETH_P_IP)
                     / IP(src=self.ip, dst=ip, ttl=DEFAULT_TTL, flags="DF")
                     / UDP(sport=sport, dport=dport) / Raw(payload))

    def _udp(self, eth, ip, segment):
        """Answer the echo service (port 7) by sending the payload back;
        keep what comes from another host's echo service."""
        if len(segment) < UDP_HEADER or int.from_bytes(segment[4:6], "big") != len(segment):
            return self._error(f"UDP datagram of {len(segment)} bytes with length "
                               f"{int.from_bytes(segment[4:6], 'big') if len(segment) >= 6 else '?'}")
        udp = UDP(segment)
        payload = bytes(udp.payload)
        if udp.dport == UDP_ECHO_PORT:
            self.counters["udp_echo_requests"] += 1
            return [bytes(Ether(dst=eth.src.lower(), src=self.mac, type=ETH_P_IP)
                          / IP(src=self.ip, dst=ip.src, ttl=DEFAULT_TTL, flags="DF")
                          / UDP(sport=UDP_ECHO_PORT, dport=udp.sport) / Raw(payload))]
        if udp.sport == UDP_ECHO_PORT:
            self.counters["udp_echo_replies"] += 1
            self.udp_replies[(ip.src, udp.sport, udp.dport)] = payload
            return []
        self.counters["ignored"] += 1
        return []

    def check_echo_reply(self, ip, ident, seq, payload):
        """The reply to echo request (ident, seq) sent to ``ip`` with ``payload``,
        or None if none came; ValueError if its payload differs."""
        reply = self.echo_replies.get((ip, ident, seq))
        if reply is not None and reply.payload != payload:
            raise ValueError(f"{self.name}: echo reply from {ip} id {ident} seq {seq} carries "
                             f"{len(reply.payload)} bytes that differ from the "
                             f"{len(payload)} sent")
        return reply


class WirePeer(Host):
    """A `Host` on the wire side of the testbench.

    ``start()`` runs a task that takes every frame from ``sink`` (the device's
    wire_tx) and answers it through ``source`` (the device's wire_rx). `resolve`
    and `ping` send requests and wait for the answers in simulated time.
    """

    def __init__(self, source, sink, mac, ip, *, name="peer", ignore=()):
        super().__init__(name, mac, ip, ignore=ignore)
        self.source = source
        self.sink = sink
        self.sent = 0
        self._task = None
        self._changed = Event()

    def start(self):
        if self._task is None:
            self._task = cocotb.start_soon(self._run())
        return self

    def stop(self):
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def send(self, frame):
        """Queue ``frame`` for the device, padded to ETH_ZLEN."""
        frame = bytes(frame)
        self.sent += 1
        self.source.send_nowait(frame.ljust(ETH_ZLEN, b"\0"))

    async def _run(self):
        while True:
            frame = await self.sink.recv()
            for answer in self.handle(frame):
                self.send(answer)
            self._changed.set()

    async def _wait_until(self, done, timeout_ns, what):
        deadline = _now_ps() + round(timeout_ns * 1000)
        while (result := done()) is None:
            left = deadline - _now_ps()
            if left <= 0:
                raise PingTimeout(f"{self.name}: {what}: no answer in {timeout_ns / 1000:g} µs "
                                  "(simulated)")
            self._changed.clear()
            try:
                await with_timeout(self._changed.wait(), left, "ps")
            except SimTimeoutError:
                pass
        return result

    async def resolve(self, ip, timeout_ns):
        """The MAC of ``ip``: from the cache, else by ARP."""
        if ip not in self.arp_cache:
            self.send(self.arp_request(ip))
            await self._wait_until(lambda: self.arp_cache.get(ip), timeout_ns,
                                   f"ARP who-has {ip}")
        return self.arp_cache[ip]

    async def ping(self, ip, ident, seq, payload, timeout_ns):
        """Send one echo request to ``ip``; return (rtt in ns, `EchoReply`).
        PingTimeout if no reply comes; ValueError if its payload is not ours."""
        await self.resolve(ip, timeout_ns)
        sent_ns = _now_ns()
        self.send(self.echo_request(ip, ident, seq, payload))
        reply = await self._wait_until(lambda: self.check_echo_reply(ip, ident, seq, payload),
                                       timeout_ns, f"ping {ip} id {ident} seq {seq}")
        return round(reply.time_ns - sent_ns, 3), reply
