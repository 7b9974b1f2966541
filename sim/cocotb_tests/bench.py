"""`virtio-net-fpga bench`, the part that runs inside the simulator.

One cocotb test, `bench`, measures one link setting. $VNF_BENCH (JSON) says
which: ``{"link": "gen1x1", "read_latency_ns": 500, "points": [{"direction":
"tx", "frame_bytes": 64, "packets": 300, "warmup": 50, "queue_pairs": 1},
...], "latency": [64, 1518]}`` (``queue_pairs`` defaults to 1). The raw
figures go to $VNF_OUT as JSON; sim/bench.py turns them into the published
rows. Progress lines are appended to $VNF_PROGRESS (the CLI echoes them).
Driven by sim/cli.py, not collected by pytest.

Everything is measured in simulated time; the Python driver's own work
(copying frames, ring updates) costs no simulated time, only its MMIO
accesses (doorbells, statistics reads) do, as TLPs on the modelled link.

Set-up around the usual TB (sim/tb.py), all from outside its classes:

- the link: both ends' cocotbext-pcie SimPorts get the link speed and width
  and are connected again, so the model serialises every TLP and DLLP at
  that rate (see sim/bench.py for the model);
- the host: the root complex answers memory reads ``read_latency_ns`` late
  (a task per read: later TLPs are not held up) and splits completions at
  every 64-byte RCB boundary;
- back-pressure: cocotbext's port queue is unbounded, so the core could hand
  over TLPs faster than the link takes them and never feel the link. The
  bench drives the core's ``tlp_tx.ready`` low while `LINK_TX_QUEUE_TLPS`
  of its TLPs wait for the link (the data link layer's transmit buffer);
- counting: CoreDevice's ``sent`` and ``received`` lists become `TimedLog`s
  (a list that notes when each TLP was added), and both ports' transmitters
  note every TLP and DLLP they put on the link;
- wall time: CoreDevice's TLP monitor wakes every clock cycle; the bench
  swaps in a copy that sleeps while ``tlp_tx.valid`` is low
  (`_monitor_tx_sleeping`, same TLPs at the same times); the pcap recorder
  is switched off.

Method, per point (direction, frame size, queue pairs N):

- pairs: the driver puts N pairs in use (set_channels, VQ_PAIRS_SET) before
  the point, and 1 again before the latency measurements. Pair n carries one
  UDP flow (sim/bench.py flow_ports: the source port the device steers to
  receiveq n); frames carry a sequence number per flow.
- TX: one pump per active pair, each on its own transmitq with its own
  flow. Each keeps TX_AHEAD (64) frames of its flow posted ahead of the wire
  (TX_AHEAD per queue, not shared: N pumps have up to N * TX_AHEAD frames
  out): it
  posts with ``more`` (xmit_more, no kick) and kicks with the frame that
  reaches TX_AHEAD (or when the queue stops); start_xmit reclaims what the
  device used. 64 frames are eight of the engine's avail batches: the device
  never waits for the driver, and the drain after a point stays short. The
  wire sink is always ready (32 bits a cycle: 4 Gb/s, above 1 GbE). Counted:
  frames leaving on wire_tx, all flows together. Checked: within each flow
  the sequence numbers come in order, none lost or duplicated.
- RX: the wire source sends frames back to back at 1 GbE line rate (one
  every ``frame_bytes + 20`` byte times, `_line_rate_source`), or, with
  ``"rx_load": "port"``, as fast as the core's wire port takes them (a new
  frame is queued as each one ends). Frames take the N flows in turn. The
  driver runs NAPI on each active pair, one poller each (wait_and_poll:
  interrupt, poll with budget 64, refill). Counted: frames delivered to the
  driver, all queues together. Frames the device could not take are its
  drops (device_stats, read after the point). Checked: within each flow the
  sequence numbers only go up (drops skip some), and each frame arrives on
  its flow's receive queue.
- both: the two at once, as two tasks; each keeps going until both have
  their count.

Each flow's first ``warmup`` frames are not counted. The window runs from the
later flow's ``warmup``-th frame until both flows have ``warmup + packets``
frames; a flow that gets there first keeps going, so for "both" the window
covers only time when both flows ran. Rates are frames in the window over
its length. TLPs and link bytes are counted over the same
window and divided by the frames in it.

Latency, on an idle device, one frame: doorbell (the driver issues the
notify write) to the first beat on wire_tx; last beat on wire_rx to the
MSI-X message reaching the root complex.
"""
import bisect
import json
import os
import time

import cocotb
from cocotb.triggers import Event, ReadOnly, RisingEdge, Timer
from cocotb.utils import get_sim_time
from cocotbext.pcie.core.dllp import Dllp
from cocotbext.pcie.core.tlp import Tlp, TlpType
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from driver.virtio_net import NETDEV_TX_BUSY, VirtioNet
from sim import bench as model
from sim.build import CLOCK_PERIOD_NS
from sim.device import INJECT_TAG_BASE
from sim.device import _unpack_beat as unpack_tlp_beat
from sim.tb import TB
from sim.tlp_codec import beats_to_tlp

QUEUE_SIZE = 256
RX_VECTOR = 1                  # config is vector 0, queue i is vector i + 1
LINK_TX_QUEUE_TLPS = 4         # core TLPs that may wait for the link before tlp_tx.ready drops
STALL_NS = 500_000             # no progress for this long: the point failed
TX_AHEAD = 64                  # frames the TX driver keeps posted ahead of the wire
IDLE_NS = 5_000                # the device is idle once it sent no TLP for this long
QUIET_NS = 50_000              # an RX drain ends after this long without a frame
MSI_BASE = 0x8000_0000         # the root complex model's MSI region
SEQ_BYTES = 4                  # each frame ends with its sequence number
# Host memory for more than one pair: each pair's rings and buffers (256 receive
# buffers of 1536 bytes, up to 256 transmit buffers of 1664) take up to 0.8 MiB,
# and the TB's own region (sim/tb.py, 1 MiB) holds one pair's. The bigger region
# is aligned to its size (buddy allocator): buffers keep their offsets in a page.
BENCH_HOST_MEMORY_BYTES = 8 << 20
PCI_CAPABILITY_LIST = 0x34
PCI_CAP_ID_EXP = 0x10
PCI_EXP_DEVCTL = 0x08


def _now():
    return get_sim_time("ns")


# Fmt and Type, the first byte of a packed TLP (PCIe Base 4.0 section 2.2.1)
MRD32, MRD64, MWR32, MWR64, CPL, CPLD = 0x00, 0x20, 0x40, 0x60, 0x0A, 0x4A


def _is_msix(packed, data=None):
    """Whether a packed TLP is a MWr into the root complex's MSI region (with
    message ``data``, if given)."""
    if packed[0] == MWR32:
        addr, payload = int.from_bytes(packed[8:12], "big"), packed[12:16]
    elif packed[0] == MWR64:
        addr, payload = int.from_bytes(packed[8:16], "big"), packed[16:20]
    else:
        return False
    return (MSI_BASE <= addr < 2 * MSI_BASE
            and (data is None or int.from_bytes(payload, "little") == data))


class TimedLog(list):
    """A list that notes the simulated time (ns) each item was appended at."""

    def __init__(self, on_append=None):
        super().__init__()
        self.times = []
        self.on_append = on_append

    def append(self, item):
        super().append(item)
        self.times.append(_now())
        if self.on_append is not None:
            self.on_append(item)

    def between(self, t0, t1):
        """Items appended in (t0, t1]."""
        return self[bisect.bisect_right(self.times, t0):bisect.bisect_right(self.times, t1)]


class Progress:
    def __init__(self):
        path = os.environ.get("VNF_PROGRESS")
        self.file = open(path, "a") if path else None

    def __call__(self, message):
        if self.file:
            self.file.write(message + "\n")
            self.file.flush()

    def close(self):
        if self.file:
            self.file.close()


# --- the link, the host and the accounting ---------------------------------------------

def set_link(tb, link):
    """Give both ends of the DUT's link ``link``'s speed and width, and connect
    them again (cocotbext-pcie works out the trained link at connection)."""
    dev_port = tb.dev.upstream_port
    rp_port = dev_port.other
    for port in (dev_port, rp_port):
        port.max_link_speed = link.speed
        port.max_link_width = link.width
        port.other = None
    dev_port._connect(rp_port)
    expected_ns = 8 / (link.bytes_per_s * 8) * 1e9
    for port in (dev_port, rp_port):
        assert abs(port.symbol_period * 1e9 - expected_ns) < 1e-9, (port.symbol_period, expected_ns)
    return dev_port, rp_port


def add_read_latency(rc, latency_ns):
    """The root complex answers memory reads ``latency_ns`` after they arrive."""
    if not latency_ns:
        return
    for fmt_type in (TlpType.MEM_READ, TlpType.MEM_READ_64):
        handler = rc.rx_tlp_handler[fmt_type]

        async def later(tlp, handler=handler):
            await Timer(latency_ns, "ns")
            await handler(tlp)

        async def delayed(tlp, later=later):
            cocotb.start_soon(later(tlp))

        rc.register_rx_tlp_handler(fmt_type, delayed)


async def _monitor_tx_sleeping(dev, on_forward):
    """CoreDevice._monitor_tx (sim/device.py), the same but asleep while the
    core offers nothing: it waits for ``tlp_tx.valid`` to rise instead of
    waking every cycle. The bench swaps it in: it saves about a sixth of the
    wall time."""
    dut = dev.dut
    edge, settled = RisingEdge(dev.clk), ReadOnly()
    valid_rises = RisingEdge(dut.tlp_tx__valid)
    beats = []
    while True:
        await settled
        if dut.rst.value:
            beats = []
        elif dut.tlp_tx__valid.value:
            if dut.tlp_tx__ready.value:
                beat = unpack_tlp_beat(int(dut.tlp_tx__payload.value))
                if beat[2]:
                    beats = []
                beats.append(beat)
                if beat[3]:
                    packed = beats_to_tlp(beats)
                    beats = []
                    dev.sent.append(packed)
                    tlp = Tlp.unpack(packed)
                    if tlp.tag < INJECT_TAG_BASE:
                        on_forward()
                        cocotb.start_soon(dev.upstream_send(tlp))
        else:
            await valid_rises                # valid rises just after a clock edge
            continue
        await edge


def use_sleeping_monitor(dev, on_forward):
    """Replace CoreDevice's TLP monitor task (its second) by `_monitor_tx_sleeping`."""
    dev._tasks[1].cancel()
    dev._tasks[1] = cocotb.start_soon(_monitor_tx_sleeping(dev, on_forward))


class LinkAccounting:
    """Notes every TLP the core sends and receives (with times), every packet
    each port puts on the link, and holds the core's tlp_tx while
    LINK_TX_QUEUE_TLPS of its TLPs wait for the link."""

    def __init__(self, tb, dev_port, rp_port, queue_limit=LINK_TX_QUEUE_TLPS):
        self.dut = tb.dut
        self.limit = queue_limit
        self.waiting = 0
        self.changed = Event()
        tb.dev.sent = TimedLog()
        tb.dev.received = TimedLog()
        self.sent, self.received = tb.dev.sent, tb.dev.received
        self.up = TimedLog()      # (is_tlp, wire bytes) put on the link by the device's port
        self.down = TimedLog()    # the same for the root port
        self._instrument(dev_port, self.up, counts_core=True)
        self._instrument(rp_port, self.down, counts_core=False)
        self.holds = 0            # times tlp_tx.ready was taken away
        cocotb.start_soon(self._hold())
        use_sleeping_monitor(tb.dev, self._core_sent)

    def _core_sent(self):
        """The core handed over a TLP for the link."""
        self.waiting += 1
        if self.waiting >= self.limit:
            self.changed.set()

    def _instrument(self, port, log, counts_core):
        transmit = port.handle_tx

        async def handle_tx(pkt):
            is_tlp = not isinstance(pkt, Dllp)
            log.append((is_tlp, pkt.get_wire_size()))
            if counts_core and is_tlp:
                self.waiting -= 1
                if self.waiting < self.limit:
                    self.changed.set()
            await transmit(pkt)

        port.handle_tx = handle_tx

    async def _hold(self):
        dut, clk = self.dut, self.dut.clk
        ready = True
        while True:
            await self.changed.wait()
            self.changed.clear()
            await RisingEdge(clk)          # a phase where inputs may be written
            want = self.waiting < self.limit
            if want != ready:
                dut.tlp_tx__ready.value = int(want)
                ready = want
                self.holds += not want

    def window(self, t0, t1):
        """TLP counts by kind and link bytes by direction in (t0, t1]."""
        counts = dict.fromkeys(("mrd", "mwr", "msix", "cpld_in", "mmio_wr", "mmio_rd",
                                "cpl_out", "other"), 0)
        for packed in self.sent.between(t0, t1):
            fmt_type = packed[0]
            if fmt_type in (MRD32, MRD64):
                counts["mrd"] += 1
            elif fmt_type in (MWR32, MWR64):
                counts["msix" if _is_msix(packed) else "mwr"] += 1
            elif fmt_type in (CPL, CPLD):
                counts["cpl_out"] += 1
            else:
                counts["other"] += 1
        for tlp in self.received.between(t0, t1):
            if tlp.fmt_type in (TlpType.CPL, TlpType.CPL_DATA):
                counts["cpld_in"] += 1
            elif tlp.fmt_type in (TlpType.MEM_WRITE, TlpType.MEM_WRITE_64):
                counts["mmio_wr"] += 1
            elif tlp.fmt_type in (TlpType.MEM_READ, TlpType.MEM_READ_64):
                counts["mmio_rd"] += 1
            else:
                counts["other"] += 1
        link_bytes = {"up_tlp": 0, "up_dllp": 0, "down_tlp": 0, "down_dllp": 0}
        for name, log in (("up", self.up), ("down", self.down)):
            for is_tlp, size in log.between(t0, t1):
                link_bytes[f"{name}_{'tlp' if is_tlp else 'dllp'}"] += size
        return counts, link_bytes


# --- frames ----------------------------------------------------------------------------------

def frame_maker(frame_bytes, dst, sports=(model.FIRST_SPORT,)):
    """UDP frames of ``frame_bytes`` (FCS counted, not sent), one flow per
    source port in ``sports``, their last 4 bytes a sequence number: returns
    make(flow, seq) -> bytes, and flow_seq_of(frame) -> (flow, seq), or None
    for a frame that is none of them."""
    size = model.dma_frame_bytes(frame_bytes)
    templates = {}
    for flow, sport in enumerate(sports):
        headers = Ether(src="02:00:00:00:00:02", dst=dst) \
            / IP(src=model.FLOW_SRC_IP, dst=model.FLOW_DST_IP) \
            / UDP(sport=sport, dport=model.FLOW_DPORT, chksum=0)   # no checksum: the seq varies
        filler = (bytes(range(256)) * 6)[:size - len(headers)]
        template = bytes(headers / Raw(filler))[:-SEQ_BYTES]
        assert len(template) + SEQ_BYTES == size
        templates[template] = flow
    by_flow = list(templates)

    def make(flow, seq):
        return by_flow[flow] + seq.to_bytes(SEQ_BYTES, "big")

    def flow_seq_of(frame):
        flow = templates.get(bytes(frame[:-SEQ_BYTES])) if len(frame) == size else None
        if flow is None:
            return None
        return flow, int.from_bytes(frame[-SEQ_BYTES:], "big")

    return make, flow_seq_of


# --- the bench --------------------------------------------------------------------------------

class Bench:
    def __init__(self, tb, net, acct, link, progress, rx_load, tx_ahead=TX_AHEAD):
        self.tb, self.net, self.acct, self.link = tb, net, acct, link
        self.rx_load = rx_load
        self.tx_ahead = tx_ahead
        self.dut = tb.dut
        self.progress = progress
        self.tx_times = []          # wire_tx frames (time of the last beat)
        self.rx_times = []          # frames delivered to the driver
        self.on_tx = None
        self.on_rx = None
        self.on_source_frame = None
        tb.wire_sink.add_callback(lambda frame: self.on_tx and self.on_tx(frame))
        net.on_receive = lambda pair, frame: self.on_rx and self.on_rx(pair, frame)
        tb.wire_source.on_frame.append(lambda frame: self.on_source_frame and
                                       self.on_source_frame(frame))
        # no pcap for the bench: it would cost wall time for every frame
        tb.pcap.record = lambda *args, **kwargs: None

    async def _device_drops(self):
        stats = await self.net.device_stats()
        return sum(stats.drops.values())

    async def point(self, direction, frame_bytes, packets, warmup, pairs=1):
        """One measurement with ``pairs`` queue pairs in use; returns the raw
        figures (see sim/bench.py finish_result)."""
        tb, net = self.tb, self.net
        if net.curr_queue_pairs != pairs:
            await net.set_channels(pairs)
        sports = model.flow_ports(pairs)
        make, flow_seq_of = frame_maker(frame_bytes, net.mac.hex(":") if net.mac else
                                        "ff:ff:ff:ff:ff:ff", sports)
        target = warmup + packets
        tx_on = direction in ("tx", "both")
        rx_on = direction in ("rx", "both")
        tx_times, rx_times = [], []
        tx_flows, rx_queues = [], []        # per frame: its flow (its pair) / its receive queue
        tx_on_wire = [0] * pairs            # per flow
        errors = {"tx": 0, "rx": 0}
        expect = {"tx": [0] * pairs, "rx": [0] * pairs}
        stop = Event()
        wire_moved = [Event() for _ in range(pairs)]    # per flow: a frame left
        any_moved = Event()

        def check_stop():
            if not stop.is_set() and (not tx_on or len(tx_times) >= target) \
                    and (not rx_on or len(rx_times) >= target):
                stop.set()

        def on_tx(frame):
            got = flow_seq_of(frame)
            if got is None:
                errors["tx"] += 1
                flow = -1
            else:
                flow, seq = got
                if seq != expect["tx"][flow]:       # in order, none lost or duplicated
                    errors["tx"] += 1
                expect["tx"][flow] = seq + 1
                tx_on_wire[flow] += 1
                wire_moved[flow].set()
            tx_times.append(_now())
            tx_flows.append(flow)
            any_moved.set()
            check_stop()

        def on_rx(pair, frame):
            got = flow_seq_of(frame)
            if got is None:
                errors["rx"] += 1
            else:
                flow, seq = got
                # drops skip numbers; nothing goes back, and a flow keeps its queue
                if seq < expect["rx"][flow] or pair != flow:
                    errors["rx"] += 1
                expect["rx"][flow] = max(expect["rx"][flow], seq + 1)
            rx_times.append(_now())
            rx_queues.append(pair)
            check_stop()

        def source_frame(k):                # the k-th offered frame: the flows in turn
            return make(k % pairs, k // pairs)

        self.on_tx, self.on_rx = on_tx, on_rx
        drops_before = await self._device_drops() if rx_on else 0
        tasks = []
        posted = [0] * pairs
        offered = [0]
        if tx_on:
            for pair in range(pairs):
                tasks.append(cocotb.start_soon(
                    self._tx_pump(make, pair, posted, tx_on_wire, wire_moved[pair], stop)))
        if rx_on:
            if self.rx_load == "port":
                def on_source_frame(frame):         # the next frame as each one ends
                    if not stop.is_set():
                        tb.wire_source.send_nowait(source_frame(offered[0]))
                        offered[0] += 1
                self.on_source_frame = on_source_frame
                for _ in range(2):
                    tb.wire_source.send_nowait(source_frame(offered[0]))
                    offered[0] += 1
            else:
                tasks.append(cocotb.start_soon(
                    self._line_rate_source(source_frame, frame_bytes, offered, stop)))
            for pair in range(pairs):
                tasks.append(cocotb.start_soon(self._rx_napi(stop, pair)))

        # watchdog: progress or fail
        last = (0, _now())
        while not stop.is_set():
            await cocotb.triggers.First(stop.wait(), Timer(STALL_NS // 5, "ns"))
            done = len(tx_times) + len(rx_times)
            if done != last[0]:
                last = (done, _now())
            elif _now() - last[1] > STALL_NS:
                raise TimeoutError(f"{direction} {frame_bytes} ({pairs} pairs): no frame for "
                                   f"{STALL_NS} ns (tx {len(tx_times)}, rx {len(rx_times)}, "
                                   f"posted {posted})")

        # the window: from the later flow's warmup-th frame until the later
        # flow has its count (the other keeps going until then)
        flows = [times for times, on in ((tx_times, tx_on), (rx_times, rx_on)) if on]
        t_start = max(times[warmup] for times in flows)
        t_end = max(times[target - 1] for times in flows)
        assert t_end > t_start, (t_start, t_end)
        raw = {"link": self.link.name, "direction": direction, "frame_bytes": frame_bytes,
               "queue_pairs": net.curr_queue_pairs}
        window_packets = 0
        for name, times, queues, on in (("tx", tx_times, tx_flows, tx_on),
                                        ("rx", rx_times, rx_queues, rx_on)):
            if on:
                first = bisect.bisect_right(times, t_start)
                last_ = bisect.bisect_right(times, t_end)
                n = last_ - first
                per_queue = [0] * pairs
                for queue in queues[first:last_]:
                    if 0 <= queue < pairs:
                        per_queue[queue] += 1
                raw[name] = {"packets": n, "seconds": (t_end - t_start) * 1e-9,
                             "per_queue": per_queue}
                window_packets += n
        counts, link_bytes = self.acct.window(t_start, t_end)
        raw["window_packets"] = window_packets
        raw["tlps"] = counts
        raw["dma_tlps"] = counts["mrd"] + counts["mwr"] + counts["cpld_in"]
        raw["link_bytes"] = link_bytes
        seconds = (t_end - t_start) * 1e-9
        raw["link_busy_pct"] = {
            "up": round(100 * (link_bytes["up_tlp"] + link_bytes["up_dllp"])
                        / (self.link.bytes_per_s * seconds), 2),
            "down": round(100 * (link_bytes["down_tlp"] + link_bytes["down_dllp"])
                          / (self.link.bytes_per_s * seconds), 2)}

        # drain: everything posted leaves, everything offered is delivered or dropped
        for task in tasks:
            await task
        if tx_on:
            for pair in range(pairs):
                sq = net.sq[pair]
                while sq.vq.num_free < sq.vq.num:       # every buffer back
                    await net.wait_and_poll_tx(pair, timeout_ns=QUIET_NS)
            while len(tx_times) < sum(posted):      # the last may still be leaving the FIFO
                any_moved.clear()
                await cocotb.triggers.First(any_moved.wait(), Timer(QUIET_NS, "ns"))
                if not any_moved.is_set():
                    raise AssertionError(f"{sum(posted)} frames posted, {len(tx_times)} on the wire")
            errors["tx"] += sum(abs(p - e) for p, e in zip(posted, expect["tx"]))  # lost at the end
            raw["tx"]["posted"] = list(posted)
        if rx_on:
            self.on_source_frame = None
            await tb.wire_source.wait_idle()
            await self._rx_drain(pairs)
            drops = await self._device_drops() - drops_before
            raw["rx"].update(offered=offered[0], delivered=len(rx_times), device_drops=drops)
        raw["frame_errors"] = errors["tx"] + errors["rx"]
        self.on_tx = self.on_rx = None
        return raw

    async def _tx_pump(self, make, pair, posted, on_wire, wire_moved, stop):
        """Keep TX_AHEAD frames of flow ``pair`` posted on transmitq ``pair``
        ahead of the wire until ``stop``.

        Frames go in with ``more`` (xmit_more: no kick) but the one that
        reaches TX_AHEAD, which kicks; the driver also kicks when the queue
        stops. A stopped queue waits for its interrupt (wait_and_poll_tx).
        ``posted`` and ``on_wire`` are per flow; ``wire_moved`` is set when a
        frame of this flow leaves.
        """
        net, clk = self.net, self.dut.clk
        sq = net.sq[pair]
        while not stop.is_set():
            if sq.stopped:
                await net.wait_and_poll_tx(pair, timeout_ns=STALL_NS // 10)
                continue
            ahead = posted[pair] - on_wire[pair]
            if ahead >= self.tx_ahead:
                wire_moved.clear()
                await cocotb.triggers.First(wire_moved.wait(), stop.wait())
                continue
            status = await net.start_xmit(make(pair, posted[pair]), pair,
                                          more=ahead + 1 < self.tx_ahead)
            if status == NETDEV_TX_BUSY:       # the RX poll holds the queue for a moment
                await RisingEdge(clk)
                continue
            posted[pair] += 1
        if await sq.vq.kick_prepare():
            await sq.vq.notify()

    async def _line_rate_source(self, source_frame, frame_bytes, offered, stop):
        """Frames into wire_rx back to back at 1 GbE: one every (frame_bytes + 20)
        byte times of 8 ns (preamble, SFD and the minimum inter-frame gap).
        ``source_frame(k)`` is the k-th frame."""
        slot_ns = (frame_bytes + model.ETH_WIRE_OVERHEAD) * 8
        source = self.tb.wire_source
        start = _now()
        while not stop.is_set():
            source.send_nowait(source_frame(offered[0]))
            offered[0] += 1
            await Timer(start + offered[0] * slot_ns - _now(), "ns")

    async def _rx_napi(self, stop, pair):
        net = self.net
        while not stop.is_set():
            await net.wait_and_poll(pair, timeout_ns=STALL_NS // 10)

    async def _rx_drain(self, pairs=1):
        """Poll each active pair (one task each) until no frame came for QUIET_NS."""
        net = self.net

        async def drain(pair):
            while await net.wait_and_poll(pair, timeout_ns=QUIET_NS) or net.rq[pair].napi.scheduled:
                pass

        for task in [cocotb.start_soon(drain(pair)) for pair in range(pairs)]:
            await task

    async def _idle(self, quiet_ns=IDLE_NS):
        """Wait until the core has sent no TLP for ``quiet_ns``."""
        while True:
            times = self.acct.sent.times
            since = _now() - (times[-1] if times else 0)
            if since >= quiet_ns:
                return
            await Timer(quiet_ns - since, "ns")

    async def latency(self, frame_bytes):
        """Doorbell to wire (TX) and wire to MSI-X (RX) for one frame on an idle device."""
        tb, net, dut = self.tb, self.net, self.dut
        if net.curr_queue_pairs != 1:               # one pair: the frame's queue is queue 0
            await net.set_channels(1)
        await self._idle()
        make, _ = frame_maker(frame_bytes, net.mac.hex(":"))
        results = []

        # TX: the driver's notify write -> first beat taken on wire_tx
        sq = net.sq[0]
        notify_at = []
        transport = tb.transport
        mmio_write = type(transport).mmio_write

        async def watching_mmio_write(addr, size, value):
            if addr == sq.vq.notify_address:
                notify_at.append(_now())
            await mmio_write(transport, addr, size, value)

        transport.mmio_write = watching_mmio_write
        first_beat = []

        async def watch_wire_tx():
            await RisingEdge(dut.wire_tx__valid)
            await RisingEdge(dut.clk)               # the beat is taken at this edge
            first_beat.append(_now())

        watcher = cocotb.start_soon(watch_wire_tx())
        arrived = Event()
        self.on_tx = lambda frame: arrived.set()
        received_before = len(self.acct.received)
        published = _now()
        await net.send(make(0, 0))
        await arrived.wait()
        await watcher
        del transport.mmio_write
        self.on_tx = None
        doorbell_tlp = [t for tlp, t in zip(self.acct.received[received_before:],
                                            self.acct.received.times[received_before:])
                        if tlp.fmt_type in (TlpType.MEM_WRITE, TlpType.MEM_WRITE_64)]
        if notify_at:
            results.append({"link": self.link.name, "what": "doorbell_to_wire",
                            "frame_bytes": frame_bytes, "ns": first_beat[0] - notify_at[0]})
            results.append({"link": self.link.name, "what": "doorbell_tlp_to_wire",
                            "frame_bytes": frame_bytes, "ns": first_beat[0] - doorbell_tlp[0]})
        else:       # the device asked for no notification (it was still looking at the ring)
            results.append({"link": self.link.name, "what": "publish_to_wire",
                            "frame_bytes": frame_bytes, "ns": first_beat[0] - published})
        await net.poll_tx(0)

        # RX: last beat taken on wire_rx -> MSI-X message at the root complex
        await net.poll(0)                           # NAPI done: the RX interrupt is armed
        await self._idle()
        msix_at = []

        async def on_msix():
            msix_at.append(_now())

        vector = tb.function.msi_vectors[RX_VECTOR]
        vector.cb.append(on_msix)
        last_beat = []
        self.on_source_frame = lambda frame: last_beat.append(_now())
        sent_before = len(self.acct.sent)
        tb.wire_source.send_nowait(make(0, 1))
        got = []
        self.on_rx = lambda pair, frame: got.append(frame)
        while not got:
            if not await net.wait_and_poll(0, timeout_ns=STALL_NS):
                if not got:
                    raise TimeoutError("RX latency: the frame never arrived")
        vector.cb.remove(on_msix)
        self.on_source_frame = self.on_rx = None
        msix_tlp = [t for packed, t in zip(self.acct.sent[sent_before:],
                                           self.acct.sent.times[sent_before:])
                    if _is_msix(packed, vector.data)]
        results.append({"link": self.link.name, "what": "wire_to_interrupt", "frame_bytes": frame_bytes,
                        "ns": msix_at[0] - last_beat[0]})
        results.append({"link": self.link.name, "what": "wire_to_msix_tlp", "frame_bytes": frame_bytes,
                        "ns": msix_tlp[0] - last_beat[0]})
        return results


def _describe_sent(packed):
    """(kind, address, length in bytes, tag) of a TLP the core sent (packed bytes)."""
    fmt_type, dw_length = packed[0], int.from_bytes(packed[2:4], "big") & 0x3FF
    tag = packed[6]
    if fmt_type in (MRD32, MWR32):
        addr = int.from_bytes(packed[8:12], "big") & ~3
    elif fmt_type in (MRD64, MWR64):
        addr = int.from_bytes(packed[8:16], "big") & ~3
    else:
        return "cpl", 0, 4 * dw_length, tag
    if fmt_type in (MRD32, MRD64):
        return "mrd", addr, 4 * dw_length, tag
    return ("msix" if _is_msix(packed) else "mwr"), addr, 4 * dw_length, tag


def write_trace(path, acct):
    """Every TLP the core sent or received, in time order: ``time_ns dir kind
    address length tag`` (dir: up = core to host)."""
    lines = []
    for t, packed in zip(acct.sent.times, acct.sent):
        kind, addr, length, tag = _describe_sent(packed)
        lines.append((t, f"{t:12.1f} up   {kind:5} {addr:#012x} {length:5d} {tag:3d}"))
    for t, tlp in zip(acct.received.times, acct.received):
        kind = {TlpType.CPL: "cpl", TlpType.CPL_DATA: "cpld"}.get(tlp.fmt_type, "mmio")
        addr = getattr(tlp, "address", 0) if kind == "mmio" else tlp.lower_address
        lines.append((t, f"{t:12.1f} down {kind:5} {addr:#012x} {4 * tlp.length:5d} {tlp.tag:3d}"))
    with open(path, "w") as f:
        f.write("".join(line + "\n" for _, line in sorted(lines, key=lambda item: item[0])))


async def _read_devctl(transport):
    """Device Control of the PCI Express capability (walk the capability list)."""
    pointer = await transport.config_read(PCI_CAPABILITY_LIST, 1)
    while pointer:
        header = await transport.config_read(pointer, 2)
        if header & 0xFF == PCI_CAP_ID_EXP:
            return await transport.config_read(pointer + PCI_EXP_DEVCTL, 2)
        pointer = header >> 8
    return None


@cocotb.test()
async def bench(dut):
    """Measure the points of $VNF_BENCH on one link."""
    wall_started = time.perf_counter()
    progress = Progress()
    cfg = json.loads(os.environ["VNF_BENCH"])
    link = model.LINKS[cfg["link"]]
    read_latency_ns = cfg.get("read_latency_ns", model.DEFAULT_READ_LATENCY_NS)

    tb = TB(dut)
    if max(point.get("queue_pairs", 1) for point in cfg["points"] or [{}]) > 1:
        tb.mem = tb.rc.mem_pool.alloc_region(BENCH_HOST_MEMORY_BYTES)   # before init makes the transport
    dev_port, rp_port = set_link(tb, link)
    add_read_latency(tb.rc, read_latency_ns)
    tb.rc.split_on_all_rcb = True
    acct = LinkAccounting(tb, dev_port, rp_port)
    await tb.init()
    # one queue pair to start with; each point puts its own number in use (set_channels)
    net = VirtioNet(tb.transport, queue_size=QUEUE_SIZE, ring_start_index=tb.params.ring_start_index,
                    queue_pairs=1)
    await net.probe()
    await net.open()
    devctl = await _read_devctl(tb.transport)
    rx_load = cfg.get("rx_load", "line")
    bench_ = Bench(tb, net, acct, link, progress, rx_load, cfg.get("tx_ahead", TX_AHEAD))

    results = []
    for point in cfg["points"]:
        started = time.perf_counter()
        sim_started = _now()
        raw = await bench_.point(point["direction"], point["frame_bytes"], point["packets"],
                                 point["warmup"], point.get("queue_pairs", 1))
        raw["wall_s"] = round(time.perf_counter() - started, 2)
        raw["sim_us"] = round((_now() - sim_started) / 1e3, 1)
        results.append(raw)
        row = model.finish_result(raw)
        progress(f"{link.name} {point['direction']:4} {point['frame_bytes']:4d} B "
                 f"{raw['queue_pairs']} pair{'s' if raw['queue_pairs'] > 1 else ''}: "
                 f"{row['gbps']:.3f} Gb/s, {row['mpps']:.4f} Mpps, "
                 f"{row['link_limit_pct']:.1f}% of link limit, {row['line_rate_pct']:.1f}% of 1 GbE, "
                 f"{row['dma_tlps_per_packet']:.2f} DMA TLPs/packet"
                 + (f", RX drops {raw['rx']['device_drops']}/{raw['rx']['offered']}"
                    if "rx" in raw else "")
                 + f" ({raw['sim_us']:.0f} us simulated, {raw['wall_s']:.1f} s)")

    latency = []
    for frame_bytes in cfg.get("latency", []):
        latency += await bench_.latency(frame_bytes)
    for item in latency:
        progress(f"{link.name} latency {item['what']} {item['frame_bytes']} B: {item['ns']:.0f} ns")

    if cfg.get("trace"):
        write_trace(cfg["trace"], acct)
    tb.check_memory()
    sim_ns = _now()
    wall_s = time.perf_counter() - wall_started
    out = {
        "link": link.name,
        "read_latency_ns": read_latency_ns,
        "rx_load": rx_load,
        "tx_ahead": bench_.tx_ahead,
        "link_tx_queue_tlps": LINK_TX_QUEUE_TLPS,
        "tlp_tx_holds": acct.holds,
        "devctl": devctl,
        "points": results,
        "latency": latency,
        "sim_ns": sim_ns,
        "dut_cycles": sim_ns / CLOCK_PERIOD_NS,
        "wall_s": wall_s,
    }
    with open(os.environ["VNF_OUT"], "w") as f:
        f.write(json.dumps(out))
    progress.close()
