"""FrameHeadParser: the fields it reports match scapy's dissection of the frame,
whatever the frame's length, tag, headers, and the stream's gaps and stalls."""
import random
import socket

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from hdl.net.rx_parse import FrameHeadParser
from tests.amaranth_sim import beats, simulate

ETH_HLEN, TAG_LEN, IPV4_HLEN, IPV6_HLEN, PORTS_LEN = 14, 4, 20, 40, 4
MAX_FRAME = 1518


# --- driving a byte stream ------------------------------------------------------


async def drive_frames(ctx, tap, frames, rng, *, p_idle=0.3, p_stall=0.3, tail=8):
    """Put ``frames`` on a tapped stream: idle cycles (valid low, garbage payload)
    and stalls (valid high, ready low) at random; probabilities 0 give back to
    back beats."""
    for frame in frames:
        for data, keep, last in beats(frame):
            while rng.random() < p_idle:
                ctx.set(tap.valid, 0)
                ctx.set(tap.ready, rng.random() < 0.5)
                ctx.set(tap.payload, {"data": rng.getrandbits(32), "keep": rng.getrandbits(4),
                                      "last": rng.getrandbits(1)})
                await ctx.tick()
            ctx.set(tap.payload, {"data": data, "keep": keep, "last": last})
            ctx.set(tap.valid, 1)
            while rng.random() < p_stall:
                ctx.set(tap.ready, 0)
                await ctx.tick()
            ctx.set(tap.ready, 1)
            await ctx.tick()
    ctx.set(tap.valid, 0)
    for _ in range(tail):
        await ctx.tick()


# --- frames and what scapy says about them --------------------------------------

def mac_int(text):
    return int.from_bytes(bytes.fromhex(text.replace(":", "")), "little")


def ip_int(text, family):
    return int.from_bytes(socket.inet_pton(family, text), "little")


def random_mac(rng, group=None):
    first = rng.getrandbits(8)
    if group is not None:
        first = (first & 0xFE) | group
    return ":".join(f"{b:02x}" for b in [first] + [rng.getrandbits(8) for _ in range(5)])


def random_ipv4(rng):
    return socket.inet_ntop(socket.AF_INET, rng.randbytes(4))


def random_ipv6(rng):
    return socket.inet_ntop(socket.AF_INET6, rng.randbytes(16))


def random_packet(rng):
    """A random scapy frame of one of many kinds."""
    ether = Ether(dst=random_mac(rng, rng.choice([None, 0, 1])), src=random_mac(rng, 0))
    payload = Raw(rng.randbytes(rng.choice([0, rng.randint(0, 64), rng.randint(0, 1400)])))
    sport, dport = rng.getrandbits(16), rng.getrandbits(16)
    ip = IP(src=random_ipv4(rng), dst=random_ipv4(rng), ttl=rng.randint(1, 255))
    ip6 = IPv6(src=random_ipv6(rng), dst=random_ipv6(rng))
    l4 = rng.choice([TCP, UDP])(sport=sport, dport=dport)
    kind = rng.choice(["ip", "ip", "ip-options", "ip-fragment", "ip-icmp", "ip6", "ip6",
                       "ip6-icmp", "ip6-frag", "arp", "other", "bad-version"])
    if kind == "ip":
        l3 = ip / l4 / payload
    elif kind == "ip-options":
        ip.options = [rng.randbytes(4 * rng.randint(1, 10))]   # IHL 6..15
        l3 = ip / l4 / payload
    elif kind == "ip-fragment":
        if rng.random() < 0.5:
            ip.flags = "MF"
        else:
            ip.frag = rng.randint(1, 0x1FFF)
        l3 = ip / l4 / payload
    elif kind == "ip-icmp":
        l3 = ip / ICMP() / payload
    elif kind == "ip6":
        l3 = ip6 / l4 / payload
    elif kind == "ip6-icmp":
        l3 = ip6 / ICMPv6EchoRequest() / payload
    elif kind == "ip6-frag":
        l3 = ip6 / IPv6ExtHdrFragment() / UDP(sport=sport, dport=dport) / payload
    elif kind == "arp":
        l3 = ARP(psrc=random_ipv4(rng), pdst=random_ipv4(rng))
        ether.dst = "ff:ff:ff:ff:ff:ff"
    elif kind == "other":
        ether.type = rng.choice([0x88CC, 0x88E5, 0x0806, 0x9000, rng.getrandbits(16)])
        l3 = payload
    else:   # an IPv4 or IPv6 EtherType, but the version nibble disagrees
        ether.type = rng.choice([0x0800, 0x86DD])
        first = rng.choice([0x65, 0x45 if ether.type == 0x86DD else 0x60, 0x41, 0x43, 0x00])
        l3 = Raw(bytes([first]) + rng.randbytes(rng.randint(39, 80)))
    if rng.random() < 0.35:
        return ether / Dot1Q(vlan=rng.getrandbits(12), prio=rng.getrandbits(3)) / l3
    return ether / l3


def frame_bytes(packet, rng):
    """The packet's bytes cut or padded to a random length (14..1518)."""
    full = bytes(packet)[:MAX_FRAME]
    roll = rng.random()
    if roll < 0.45:            # cut: near the fields read
        n = rng.randint(ETH_HLEN, min(len(full), 80))
    elif roll < 0.6:           # padded, as a MAC pads short frames
        n = rng.randint(len(full), max(len(full), min(MAX_FRAME, 128)))
    else:
        n = len(full)
    return full[:n].ljust(n, b"\0")


def expected_head(packet, n):
    """What the parser should report for the first n bytes of ``packet``: the
    flags from the length, the values from scapy's dissection of the whole
    packet's bytes, layer by layer as a receiver would read them."""
    raw = bytes(packet)
    zero = {"eth": 0, "vlan": 0, "is_ipv4": 0, "is_ipv6": 0, "has_l4": 0, "is_tcp": 0,
            "is_udp": 0}
    if n < ETH_HLEN:
        return zero
    ether_type = int.from_bytes(raw[12:14], "big")   # scapy calls <= 1500 a length (Dot3)
    out = dict(zero, eth=1, dst_mac=mac_int(Ether(raw).dst), ethertype=ether_type)
    l3_offset = ETH_HLEN
    if ether_type == 0x8100:
        l3_offset = ETH_HLEN + TAG_LEN
        if n < l3_offset:
            return out                       # the tag is cut: untagged, type 0x8100
        tag = Dot1Q(raw[ETH_HLEN:])
        out.update(vlan=1, vid=tag.vlan, ethertype=tag.type)

    def ports(l4, l4_end):
        if n >= l4_end and isinstance(l4, (TCP, UDP)):
            tcp = isinstance(l4, TCP)
            out.update(has_l4=1, is_tcp=int(tcp), is_udp=int(not tcp),
                       src_port=l4.sport, dst_port=l4.dport)

    if out["ethertype"] == 0x0800 and n >= l3_offset + IPV4_HLEN:
        l3 = IP(raw[l3_offset:])
        if l3.version == 4 and l3.ihl >= 5:
            out.update(is_ipv4=1, src_ip=ip_int(l3.src, socket.AF_INET),
                       dst_ip=ip_int(l3.dst, socket.AF_INET))
            if not (l3.flags.MF or l3.frag) and l3.proto in (6, 17):
                ports(l3.payload, l3_offset + 4 * l3.ihl + PORTS_LEN)
    if out["ethertype"] == 0x86DD and n >= l3_offset + IPV6_HLEN:
        l3 = IPv6(raw[l3_offset:])
        if l3.version == 6:
            out.update(is_ipv6=1, src_ip=ip_int(l3.src, socket.AF_INET6),
                       dst_ip=ip_int(l3.dst, socket.AF_INET6))
            if l3.nh in (6, 17):
                ports(l3.payload, l3_offset + IPV6_HLEN + PORTS_LEN)
    return out


def expected_tuple(packet, n, head):
    """The Toeplitz input words the parser should emit: (index, ports, data)."""
    words = []
    raw = bytes(packet)[:n]
    if not (head.get("is_ipv4") or head.get("is_ipv6")):
        return None                          # not checked
    l3_offset = ETH_HLEN + TAG_LEN * head["vlan"]
    if head["is_ipv4"]:
        addr_offset, addr_words = l3_offset + 12, 2
        l4_offset = l3_offset + 4 * (raw[l3_offset] & 0xF)
    else:
        addr_offset, addr_words = l3_offset + 8, 8
        l4_offset = l3_offset + IPV6_HLEN
    for index in range(addr_words):
        pos = addr_offset + 4 * index
        words.append((index, 0, int.from_bytes(raw[pos:pos + 4], "little")))
    if len(raw) >= l4_offset + PORTS_LEN:
        words.append((addr_words, 1, int.from_bytes(raw[l4_offset:l4_offset + 4], "little")))
    return words


def head_dict(payload, expected):
    """The parser's head, restricted to the fields ``expected`` names."""
    return {name: int(getattr(payload, name)) for name in expected}


# --- tests ------------------------------------------------------------------------

def run_parser(packets_and_lengths, rng, **drive):
    dut = FrameHeadParser()
    frames = [frame for _, frame in packets_and_lengths]
    heads, tuples = [], []
    current = []

    async def testbench(ctx):
        await drive_frames(ctx, dut.tap, frames, rng, **drive)

    async def monitor(ctx):
        nonlocal current
        async for _, _, hv, head, tv, ti, tp, td in ctx.tick().sample(
                dut.head.valid, dut.head.payload, dut.tuple.valid, dut.tuple.index,
                dut.tuple.ports, dut.tuple.data):
            if tv:
                current.append((ti, tp, td))
            if hv:
                heads.append({name: int(getattr(head, name)) for name in (
                    "dst_mac", "eth", "vlan", "vid", "ethertype", "is_ipv4", "is_ipv6",
                    "src_ip", "dst_ip", "has_l4", "is_tcp", "is_udp", "src_port", "dst_port")})
                tuples.append(current)
                current = []

    from amaranth.sim import Simulator
    from tests.amaranth_sim import CLOCK_PERIOD
    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    sim.add_testbench(testbench)
    sim.add_process(monitor)
    sim.run()
    return heads, tuples


def check(cases, heads, tuples):
    assert len(heads) == len(cases), "one head per frame"
    for number, ((packet, frame), head, words) in enumerate(zip(cases, heads, tuples)):
        want = expected_head(packet, len(frame))
        got = {name: head[name] for name in want}
        assert got == want, f"frame {number} ({len(frame)} bytes): {packet.summary()}"
        want_words = expected_tuple(packet, len(frame), want)
        if want_words is not None:
            assert words == want_words, f"frame {number}: Toeplitz input words"


def test_random_frames_match_scapy():
    rng = random.Random(11)
    cases = []
    for _ in range(600):
        packet = random_packet(rng)
        cases.append((packet, frame_bytes(packet, rng)))
    heads, tuples = run_parser(cases, rng)
    check(cases, heads, tuples)
    kinds = [expected_head(p, len(f)) for p, f in cases]
    # the mix covers every flag
    for flag in ("vlan", "is_ipv4", "is_ipv6", "is_tcp", "is_udp"):
        assert any(k.get(flag) for k in kinds), flag
    assert any(k.get("is_ipv4") and not k.get("has_l4") for k in kinds)


def test_back_to_back_frames():
    """valid and ready always high: the parser keeps up with every beat."""
    rng = random.Random(12)
    cases = []
    for _ in range(300):
        packet = random_packet(rng)
        cases.append((packet, frame_bytes(packet, rng)))
    heads, tuples = run_parser(cases, rng, p_idle=0, p_stall=0)
    check(cases, heads, tuples)


def test_every_cut_of_tagged_tcp_and_ipv6():
    """Cut at every length from 1 byte to past the ports: flags appear exactly
    when their bytes are in."""
    rng = random.Random(13)
    packets = [
        Ether(dst="01:00:5e:00:00:01", src="02:00:00:00:00:01") / Dot1Q(vlan=0xABC) / IP(src="10.1.2.3", dst="10.4.5.6",
                                                              options=[b"\x01" * 8])
        / TCP(sport=1234, dport=80),
        Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / IPv6(src="2001:db8::1", dst="fe80::2") / UDP(sport=53, dport=5353),
    ]
    cases = []
    for packet in packets:
        full = bytes(packet)
        for n in range(1, len(full) + 2):
            cases.append((packet, full[:n].ljust(n, b"\0")))
    heads, tuples = run_parser(cases, rng)
    check(cases, heads, tuples)     # below 14 bytes: every flag 0
