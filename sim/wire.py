"""The wire side of the testbench: Ethernet frames into and out of the core, and a capture of both.

The core's two frame streams (hdl/net/frame.py) carry Ethernet frames from the
destination MAC to the end of the payload (no preamble, no FCS) in 32-bit
beats, byte 0 in bits 7:0::

    payload[31:0]   data
    payload[35:32]  keep: valid bytes; 0b1111 on every beat but the last, whose
                    n valid bytes sit in the low lanes ((1 << n) - 1, n >= 1)
    payload[36]     last

`FrameSource` drives ``wire_rx`` (frames from the wire into the device),
`FrameSink` takes ``wire_tx`` (frames from the device to the wire) and checks
its framing, `PcapRecorder` writes what crossed either port into one pcapng
file, in time order.

cocotb-bus 0.3.0 with cocotb 2.1 (checked): `cocotb_bus.drivers.BusDriver`
and `cocotb_bus.monitors.BusMonitor` work as bases here. ``Bus`` finds
``wire_rx__valid`` with ``bus_separator="__"``; the driver's send thread and
the monitor's receive coroutine run as ordinary cocotb 2 tasks. Two things do
not carry over, and these classes avoid them: ``Driver.send`` sends at once,
beside the queue (here `FrameSource.send` queues), and
``cocotb_bus.scoreboard.Scoreboard.result`` ends the test as passed through
``cocotb.pass_test()`` (deprecated in 2.1, and it stops the test where it is
called), so compare frames with `FrameSink.recv` rather than a Scoreboard.
``Monitor.wait_for_recv`` takes a timeout in simulator steps; use
`FrameSink.recv`, which takes nanoseconds.

Outputs of the DUT are sampled at ``ReadOnly`` (settled values of the cycle);
inputs are written in the cycle's normal phase, after the clock edge.
"""
import itertools
import logging
import random
from decimal import Decimal
from pathlib import Path

from cocotb.queue import Queue
from cocotb.simtime import get_sim_time
from cocotb.triggers import Event, ReadOnly, RisingEdge, with_timeout
from cocotb_bus.drivers import BusDriver
from cocotb_bus.monitors import BusMonitor
from scapy.data import DLT_EN10MB
from scapy.packet import Raw
from scapy.utils import PcapNgWriter

from hdl.net.frame import FrameBeat

__all__ = ["FramingError", "FrameSource", "FrameSink", "PcapRecorder", "frame_bytes",
           "frame_to_beats", "pack_beat", "unpack_beat"]

BYTES_PER_BEAT = 4
KEEP_ALL = (1 << BYTES_PER_BEAT) - 1
# keep values a frame's last beat may carry: 1..4 bytes in the low lanes
LAST_KEEPS = {(1 << n) - 1: n for n in range(1, BYTES_PER_BEAT + 1)}
_DATA, _KEEP, _LAST = (FrameBeat[name] for name in ("data", "keep", "last"))
# the bus signals, as `wire_rx__valid` etc. on the DUT
STREAM_SIGNALS = ["valid", "ready", "payload"]
BUS_SEPARATOR = "__"


class FramingError(AssertionError):
    """A frame stream broke its framing rules (keep on a middle or last beat)."""


def frame_bytes(frame):
    """``frame`` (a scapy packet, bytes, bytearray or memoryview) as bytes."""
    data = bytes(frame)
    if not data:
        raise ValueError("an Ethernet frame has at least one byte")
    return data


def pack_beat(data, keep, last):
    """One beat's payload value from its fields."""
    return data << _DATA.offset | keep << _KEEP.offset | int(last) << _LAST.offset


def unpack_beat(value):
    """(data, keep, last) of a beat's payload value."""
    def field(f):
        return value >> f.offset & ((1 << f.width) - 1)
    return field(_DATA), field(_KEEP), bool(field(_LAST))


def frame_to_beats(data):
    """The beats (data, keep, last) that carry ``data``, densely, low lanes first."""
    beats = []
    for start in range(0, len(data), BYTES_PER_BEAT):
        chunk = data[start:start + BYTES_PER_BEAT]
        last = start + BYTES_PER_BEAT >= len(data)
        beats.append((int.from_bytes(chunk, "little"), (1 << len(chunk)) - 1, last))
    return beats


def _sim_time_ps():
    return round(get_sim_time("ps"))


class FrameSource(BusDriver):
    """Drives frames into a frame stream port of the DUT (``wire_rx``).

    Ports: ``<name>__valid`` (DUT input, driven here), ``<name>__payload``
    (DUT input, driven here), ``<name>__ready`` (DUT output, sampled here).

    ``idle_cycles``: cycles with ``valid`` low between two frames.
    ``gap_probability``: before each beat after a frame's first, the chance of
    one more cycle with ``valid`` low (repeated, so gaps are geometric);
    drawn from ``random.Random(seed)``, so a run is repeatable.

    Frames are queued: ``await send(frame)`` (or `send_nowait`) returns at
    once; `wait_idle` waits until every queued frame has gone. Callables in
    ``on_frame`` are called with each frame's bytes at the clock edge its last
    beat was taken on (the pcap uses that).
    """

    _signals = STREAM_SIGNALS

    def __init__(self, entity, name, clock, *, idle_cycles=0, gap_probability=0.0, seed=0):
        BusDriver.__init__(self, entity, name, clock, bus_separator=BUS_SEPARATOR,
                           case_insensitive=False)
        self.bus.valid.value = 0
        self.bus.payload.value = 0
        self.random = random.Random(seed)
        self.idle_cycles = 0
        self.gap_probability = 0.0
        self.set_gaps(idle_cycles=idle_cycles, gap_probability=gap_probability)
        self.on_frame = []
        self.frames_sent = 0
        self.bytes_sent = 0
        self._outstanding = 0
        self._idle = Event()
        self._idle.set()

    def set_gaps(self, *, idle_cycles=None, gap_probability=None, seed=None):
        """Change the idle cycles between frames, the in-frame gap chance, the seed."""
        if idle_cycles is not None:
            if idle_cycles < 0:
                raise ValueError(f"idle cycles {idle_cycles} < 0")
            self.idle_cycles = idle_cycles
        if gap_probability is not None:
            if not 0 <= gap_probability < 1:
                raise ValueError(f"gap probability {gap_probability} is not in [0, 1)")
            self.gap_probability = gap_probability
        if seed is not None:
            self.random.seed(seed)

    def send_nowait(self, frame):
        """Queue ``frame`` (scapy packet or bytes) for the wire."""
        data = frame_bytes(frame)
        self._outstanding += 1
        self._idle.clear()
        self.append(data)

    async def send(self, frame):
        """Queue ``frame`` (scapy packet or bytes); returns before it is sent.

        (cocotb-bus's ``Driver.send`` sends at once, beside the queue; a frame
        stream has one sender, so this one queues.)
        """
        self.send_nowait(frame)

    def clear(self):
        """Drop the frames not started yet (the one on the wire finishes)."""
        self._outstanding -= len(self._sendQ)
        super().clear()
        if not self._outstanding:
            self._idle.set()

    @property
    def idle(self):
        """True when no frame is queued or on its way."""
        return self._outstanding == 0

    async def wait_idle(self):
        """Wait until every queued frame has been taken by the DUT."""
        while self._outstanding:
            await self._idle.wait()

    async def _driver_send(self, data, sync=True):
        bus, clock = self.bus, self.clock
        if sync:
            await RisingEdge(clock)        # out of whatever phase the queue was filled in
        for index, (word, keep, last) in enumerate(frame_to_beats(data)):
            if index:
                while self.gap_probability and self.random.random() < self.gap_probability:
                    bus.valid.value = 0
                    await RisingEdge(clock)
            bus.payload.value = pack_beat(word, keep, last)
            bus.valid.value = 1
            while True:
                await ReadOnly()
                taken = bool(bus.ready.value)
                await RisingEdge(clock)
                if taken:
                    break
        bus.valid.value = 0
        self.frames_sent += 1
        self.bytes_sent += len(data)
        for callback in self.on_frame:
            callback(data)
        self._outstanding -= 1
        if not self._outstanding:
            self._idle.set()
        for _ in range(self.idle_cycles):
            await RisingEdge(clock)


class FrameSink(BusMonitor):
    """Takes frames from a frame stream port of the DUT (``wire_tx``).

    Ports: ``<name>__valid`` and ``<name>__payload`` (DUT outputs, sampled at
    ReadOnly), ``<name>__ready`` (DUT input, driven here every cycle).

    Back-pressure: ``ready_probability`` (each cycle ready with this chance,
    from ``random.Random(seed)``) or ``ready_pattern`` (a sequence of 0/1,
    repeated); neither: always ready.

    Every frame is checked as it arrives: keep is 0b1111 on all but the last
    beat; the last beat keeps 1..4 low lanes. A violation is logged as an
    error and kept in ``framing_errors``; with ``strict`` (the default) it is
    raised as `FramingError` from the monitor's task, which fails the cocotb
    test; without, the broken frame is dropped and the sink goes on. Beats
    seen while ``reset`` is high are dropped.

    Complete frames (bytes) go to `recv` in order and to the monitor's
    callbacks (cocotb-bus ``add_callback``), at the clock edge after the last
    beat's handshake; ``count`` says how many have arrived.

    While always ready and nothing is offered, the sink sleeps until
    ``valid`` rises instead of waking every cycle (``valid`` is a registered
    output of a synchronous DUT, so it rises just after a clock edge).
    """

    _signals = STREAM_SIGNALS

    def __init__(self, entity, name, clock, *, reset=None, ready_probability=None,
                 ready_pattern=None, seed=0, strict=True, callback=None):
        self.random = random.Random(seed)
        self.strict = strict
        self._ready_next = None
        self.set_backpressure(probability=ready_probability, pattern=ready_pattern)
        self._frames = Queue()
        self.framing_errors = []
        self.bytes_received = 0
        BusMonitor.__init__(self, entity, name, clock, reset=reset, callback=callback,
                            bus_separator=BUS_SEPARATOR, case_insensitive=False)
        self.add_callback(self._frames.put_nowait)
        self.bus.ready.value = 1

    def set_backpressure(self, *, probability=None, pattern=None, seed=None):
        """Ready each cycle with ``probability``, or following ``pattern`` (0/1,
        repeated), or (neither given) always."""
        if probability is not None and pattern is not None:
            raise ValueError("give a ready probability or a ready pattern, not both")
        if seed is not None:
            self.random.seed(seed)
        if probability is not None:
            if not 0 < probability <= 1:
                raise ValueError(f"ready probability {probability} is not in (0, 1]")
            self._ready_next = lambda: self.random.random() < probability
        elif pattern is not None:
            pattern = [bool(bit) for bit in pattern]
            if not any(pattern):
                raise ValueError("a ready pattern that is never ready stalls the stream")
            self._ready_next = itertools.cycle(pattern).__next__
        else:
            self._ready_next = None

    @property
    def count(self):
        """Frames received so far."""
        return self.stats.received_transactions

    def empty(self):
        """True when no received frame is waiting for `recv`."""
        return self._frames.empty()

    async def recv(self, timeout_ns=None):
        """The next received frame (bytes); ``cocotb.triggers.SimTimeoutError``
        (a TimeoutError) if none arrives within ``timeout_ns``."""
        if timeout_ns is None:
            return await self._frames.get()
        return await with_timeout(self._frames.get(), timeout_ns, "ns")

    def recv_nowait(self):
        """The next received frame, or None."""
        return None if self._frames.empty() else self._frames.get_nowait()

    def _framing_error(self, message):
        message = f"{self.name}: {message}"
        self.framing_errors.append(message)
        self.log.error("framing error: %s", message)
        if self.strict:
            raise FramingError(message)

    def _check_beat(self, index, keep, last):
        """True if the beat's keep is right for its place in the frame."""
        if last:
            if keep not in LAST_KEEPS:
                what = "no byte" if keep == 0 else "bytes not in the low lanes"
                self._framing_error(f"beat {index} (last) has keep={keep:#06b}: {what}")
                return False
        elif keep != KEEP_ALL:
            self._framing_error(f"beat {index} (not last) has keep={keep:#06b}, not 0b1111")
            return False
        return True

    async def _monitor_recv(self):
        bus, clock = self.bus, self.clock
        edge, settled = RisingEdge(clock), ReadOnly()
        data = bytearray()
        beats = 0
        broken = False       # the frame being taken broke framing: dropped at its last beat
        done = None          # a frame completed at the coming edge
        ready_now = True
        valid_rises = RisingEdge(bus.valid)
        while True:
            if (self._ready_next is None and ready_now and done is None
                    and not bus.valid.value):
                # always ready and nothing offered: sleep until valid rises
                # (after a clock edge) instead of waking every cycle
                await valid_rises
            else:
                await edge
            if done is not None:
                self.bytes_received += len(done)
                self._recv(done)
                done = None
            if self._ready_next is not None:
                ready = self._ready_next()
                if ready != ready_now:
                    bus.ready.value = int(ready)
                    ready_now = ready
            elif not ready_now:
                bus.ready.value = 1
                ready_now = True
            await settled
            if self.in_reset:
                data.clear()
                beats, broken = 0, False
                continue
            if ready_now and bus.valid.value:
                word, keep, last = unpack_beat(int(bus.payload.value))
                if self._check_beat(beats, keep, last):
                    data += word.to_bytes(BYTES_PER_BEAT, "little")[:LAST_KEEPS[keep]]
                else:
                    broken = True
                beats += 1
                if last:
                    if not broken:
                        done = bytes(data)
                    data.clear()
                    beats, broken = 0, False


class _NanosecondPcapNgWriter(PcapNgWriter):
    """scapy's pcapng writer with nanosecond timestamps and one named
    interface per frame port.

    scapy 2.8 writes microsecond timestamps and opens an unnamed interface 0;
    this writes every interface description block itself, named, with
    ``if_tsresol`` = 10^-9. (It overrides scapy's ``_write_header`` and
    ``_write_block_idb``, which exist in scapy 2.5 to 2.8; scapy is pinned.)
    """

    linktype = DLT_EN10MB
    OPT_END, OPT_IF_NAME, OPT_IF_DESCRIPTION, OPT_IF_TSRESOL = 0, 2, 3, 9
    TSRESOL_NS = 9                 # if_tsresol: 10^-9 s

    def __init__(self, filename, interfaces):
        super().__init__(filename)
        self.tsresol = 10 ** self.TSRESOL_NS
        self.sync = True            # flush after every packet: a failed test keeps its capture
        self._interfaces = interfaces
        self.interfaces2id = {name.encode(): index for index, (name, _) in enumerate(interfaces)}

    def _option(self, code, value):
        return (code.to_bytes(2, "little") + len(value).to_bytes(2, "little")
                + self._add_padding(value))

    def _write_header(self, pkt):
        if self.header_present:
            return
        self.header_present = True
        self._write_block_shb()
        for name, description in self._interfaces:
            self._write_block_idb(self.linktype, name.encode(), description.encode())

    def _write_block_idb(self, linktype, ifname=None, description=None):
        body = linktype.to_bytes(2, "little") + bytes(2) + (0).to_bytes(4, "little")  # snaplen 0: none
        options = b""
        if ifname is not None:
            options += self._option(self.OPT_IF_NAME, ifname)
        if description is not None:
            options += self._option(self.OPT_IF_DESCRIPTION, description)
        options += self._option(self.OPT_IF_TSRESOL, bytes([self.TSRESOL_NS]))
        options += self._option(self.OPT_END, b"")
        self.f.write(self.build_block((1).to_bytes(4, "little"), body, options=options))


class PcapRecorder:
    """Both frame ports in one pcapng file (LINKTYPE_ETHERNET), in time order.

    Each port is its own interface of the capture, and each packet carries
    the pcapng direction flag, so tshark tells them apart
    (``frame.interface_name``, ``frame.packet_flags_direction``):

        interface 0  ``wire_rx``  inbound (1): from the wire into the device
        interface 1  ``wire_tx``  outbound (2): from the device to the wire

    Timestamps are simulated time (ns resolution) at the clock edge a frame's
    last beat was taken on. The file is created at the first frame, so a test
    with no wire traffic writes none. One simulator process runs several
    cocotb tests: give each test with traffic its own file name (a second
    recorder on the same path closes the first and starts the file again,
    with a warning).
    """

    _open = {}                         # path -> the recorder writing it, in this process

    RX, TX = "wire_rx", "wire_tx"
    INBOUND, OUTBOUND = 1, 2           # pcapng EPB flags, direction bits
    INTERFACES = [(RX, "frames from the wire into the device"),
                  (TX, "frames from the device to the wire")]
    DIRECTIONS = {RX: INBOUND, TX: OUTBOUND}

    def __init__(self, path):
        self.path = Path(path)
        self.frames = 0
        self._writer = None
        self._last_ps = 0

    def attach(self, source, sink):
        """Record what ``source`` sends (as wire_rx) and ``sink`` receives (as wire_tx)."""
        source.on_frame.append(lambda data: self.record(self.RX, data))
        sink.add_callback(lambda data: self.record(self.TX, data))

    def record(self, port, frame, time_ps=None):
        """Write ``frame`` as seen on ``port`` ("wire_rx" or "wire_tx") at
        ``time_ps`` (default: now, in simulated time)."""
        if port not in self.DIRECTIONS:
            raise ValueError(f"unknown frame port {port!r}")
        time_ps = _sim_time_ps() if time_ps is None else time_ps
        if time_ps < self._last_ps:
            raise ValueError(f"pcap records must come in time order ({time_ps} < {self._last_ps} ps)")
        self._last_ps = time_ps
        if self._writer is None:
            self._take_path()
            self._writer = _NanosecondPcapNgWriter(str(self.path), self.INTERFACES)
            self._writer.write_header(None)
        packet = Raw(frame_bytes(frame))
        packet.sniffed_on = port
        packet.direction = self.DIRECTIONS[port]
        self._writer.write_packet(packet, sec=Decimal(time_ps) / 10 ** 12)
        self.frames += 1

    def _take_path(self):
        key = self.path.resolve()
        earlier = self._open.get(key)
        if earlier is not None and earlier is not self:
            logging.getLogger("cocotb.tb.pcap").warning(
                "%s: a new capture replaces the one of %d frames (give each test its own pcap name)",
                self.path, earlier.frames)
            earlier.close()
        self._open[key] = self
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def close(self):
        """Finish the file (it is flushed after every frame anyway)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._open.pop(self.path.resolve(), None)
