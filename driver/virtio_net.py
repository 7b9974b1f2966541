"""virtio-net driver: probe and datapath (virtio 1.2 section 5.1).

A Python rendering of Linux's drivers/net/virtio_net.c.

Probe follows the driver initialisation sequence of section 3.1.1: reset,
ACKNOWLEDGE, DRIVER, read and validate the device features, accept a subset,
FEATURES_OK (checked by reading it back), device configuration, virtqueues,
DRIVER_OK.

Datapath (section 5.1.6), one receiveq/transmitq pair in use:

- `open()` fills the receive rings and enables NAPI; `close()` stops it;
  `remove()` resets the device and takes every buffer back.
- `start_xmit(frame, queue_index)` sends one frame behind a zero
  virtio_net_hdr (no offloads are negotiated), stopping the queue when a
  maximal packet might not fit; TX completions are reclaimed by the next
  start_xmit, by the RX poll and by `poll_tx` (TX NAPI, as Linux's napi_tx).
- `poll(pair, budget)` is NAPI: receive up to `budget` frames, refill, and
  re-enable the interrupt when done. `wait_and_poll` / `wait_and_poll_tx`
  wait for the queue's MSI-X vector first. The driver starts no task of its
  own: a harness (asyncio or cocotb) runs these coroutines.
- `stats()` sums per-queue counters like ndo_get_stats64.

Not done: control-queue commands (so `curr_queue_pairs` stays 1, section
5.1.6.5.5), offloads (CSUM, GSO), "big packets" receive buffers (a large MTU
without MRG_RXBUF gets large single buffers instead), INTx (without MSI-X the
wait_* coroutines refuse and a harness must call poll itself).
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import os
import random
from collections.abc import Callable, Sequence

from hdl import spec
from hdl.spec import VirtioF, VirtioNetCfg, VirtioNetF, VirtioNetS, VirtioStatus

from .transport import Region, Transport, TransportError
from .virtio_pci_modern import VirtioPciError, VirtioPciModernDevice
from .virtio_ring import SplitVirtqueue, VirtqueueError, VirtqueueFullError

log = logging.getLogger("virtio_net")

# Bounds of max_virtqueue_pairs (section 5.1.6.5.5). Not in hdl/spec.py yet.
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN = 1
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX = 0x8000

# Entries per virtqueue the driver asks for (capped by the device's maximum).
DEFAULT_QUEUE_SIZE = 256

# MSI-X vector carrying configuration-change interrupts when MSI-X is used;
# virtqueue i then uses vector i + 1.
CONFIG_MSIX_VECTOR = 0

# Locally administered, unicast: the two low bits of the first MAC byte (IEEE 802).
MAC_MULTICAST_BIT = 0x01
MAC_LOCAL_ADMIN_BIT = 0x02

# Features this driver understands today. GUEST_ANNOUNCE is left out: it
# needs an ANNOUNCE_ACK command on the control queue, which cannot be sent yet.
DRIVER_FEATURES: int = int(
    VirtioF.VERSION_1
    | VirtioF.INDIRECT_DESC
    | VirtioF.EVENT_IDX
    | VirtioNetF.MRG_RXBUF
    | VirtioNetF.MAC
    | VirtioNetF.MTU
    | VirtioNetF.STATUS
    | VirtioNetF.CTRL_VQ
    | VirtioNetF.CTRL_RX
    | VirtioNetF.CTRL_VLAN
    | VirtioNetF.MQ
    | VirtioNetF.CTRL_MAC_ADDR
)

# Dependencies between feature bits (section 5.1.3.1), as Linux checks them:
# each dependent feature requires its dependency to be offered too.
FEATURES_NEEDING: dict[VirtioNetF, tuple[VirtioNetF, ...]] = {
    VirtioNetF.CTRL_VQ: (
        VirtioNetF.CTRL_RX, VirtioNetF.CTRL_VLAN, VirtioNetF.GUEST_ANNOUNCE,
        VirtioNetF.MQ, VirtioNetF.CTRL_MAC_ADDR, VirtioNetF.RSS,
        VirtioNetF.HASH_REPORT),
    VirtioNetF.GUEST_CSUM: (
        VirtioNetF.GUEST_TSO4, VirtioNetF.GUEST_TSO6, VirtioNetF.GUEST_ECN,
        VirtioNetF.GUEST_UFO),
    VirtioNetF.CSUM: (
        VirtioNetF.HOST_TSO4, VirtioNetF.HOST_TSO6, VirtioNetF.HOST_ECN,
        VirtioNetF.HOST_UFO),
}

# Features that need at least one of several others (section 5.1.3.1: ECN
# "requires TSO4 or TSO6").
FEATURES_NEEDING_ANY_OF: dict[VirtioNetF, tuple[VirtioNetF, ...]] = {
    VirtioNetF.GUEST_ECN: (VirtioNetF.GUEST_TSO4, VirtioNetF.GUEST_TSO6),
    VirtioNetF.HOST_ECN: (VirtioNetF.HOST_TSO4, VirtioNetF.HOST_TSO6),
}


def validate_features(device_features: int) -> list[str]:
    """Every broken feature dependency among the features a device offers.

    Returns one message per problem (empty if none), so that a faulty device
    is described completely at once rather than one problem per attempt.
    """
    problems = []
    for dependency, dependents in FEATURES_NEEDING.items():
        if device_features & dependency:
            continue
        for feature in dependents:
            if device_features & feature:
                problems.append(
                    f"device offers {feature.name} but not its dependency {dependency.name}")
    for feature, alternatives in FEATURES_NEEDING_ANY_OF.items():
        if device_features & feature and not any(device_features & a for a in alternatives):
            names = " or ".join(a.name for a in alternatives)
            problems.append(f"device offers {feature.name} but not its dependency {names}")
    return problems


feature_names = spec.feature_names


def format_features(features: int) -> str:
    return ", ".join(feature_names(features)) or "none"


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def random_mac(rng: random.Random | None = None) -> bytes:
    """A random locally administered unicast MAC address (like eth_random_addr)."""
    raw = bytearray(rng.randbytes(spec.ETH_ALEN) if rng else os.urandom(spec.ETH_ALEN))
    raw[0] = (raw[0] & ~MAC_MULTICAST_BIT) | MAC_LOCAL_ADMIN_BIT
    return bytes(raw)


# --- datapath constants ------------------------------------------------------------

# Section 5.1.6: with VERSION_1 the header always has num_buffers (12 bytes).
VIRTIO_NET_HDR_LEN = spec.VIRTIO_NET_HDR_SIZE
ETH_HLEN = spec.ETH_HLEN
VLAN_HLEN = spec.VLAN_HLEN

# Linux's sk_buff: a linear part plus at most MAX_SKB_FRAGS page fragments.
# A transmitted frame may be given as that many pieces + 1, each one a
# segment (the header goes in front of the first piece).
MAX_SKB_FRAGS = 17
# Stop a transmit queue when a maximal packet might not fit: header +
# linear part + fragments (virtio_net's 2 + MAX_SKB_FRAGS). A ring smaller
# than twice that stops at half its size instead, and then takes frames of at
# most that many pieces (see SendQueue.stop_threshold).
TX_STOP_THRESHOLD = 2 + MAX_SKB_FRAGS

NAPI_POLL_WEIGHT = 64                   # Linux's default NAPI budget

# Receive buffers with MRG_RXBUF: fixed size here (Linux sizes them from an
# average of recent packets). Each holds at least the header (section
# 5.1.6.3.1) and an Ethernet header, so that receive_buf's length check holds.
DEFAULT_MERGEABLE_BUF_LEN = 1536
MIN_MERGEABLE_BUF_LEN = VIRTIO_NET_HDR_LEN + ETH_HLEN

DMA_BUF_ALIGN = 64                      # a cache line
# Pieces of a multi-segment TX frame are spaced by this many bytes of
# untouched memory, so a device that ignores segment boundaries shows up.
TX_FRAG_GAP = 8


class NetdevTx(enum.IntEnum):
    """What start_xmit returns (Linux's netdev_tx_t)."""
    OK = 0x00                            # taken (or dropped and counted)
    BUSY = 0x10                          # not taken: the queue is stopped; retry later


NETDEV_TX_OK = NetdevTx.OK
NETDEV_TX_BUSY = NetdevTx.BUSY


class VirtioNetError(Exception):
    """The datapath used in a way it does not support."""


# --- statistics (ndo_get_stats64) ---------------------------------------------------------

@dataclasses.dataclass
class RxQueueStats:
    """One receive queue (virtnet_rq_stats, plus the errors Linux keeps per device)."""
    packets: int = 0
    bytes: int = 0                        # frame bytes, without virtio_net_hdr
    drops: int = 0
    length_errors: int = 0
    kicks: int = 0
    interrupts: int = 0                   # interrupts handled on the queue's vector
    polls: int = 0


@dataclasses.dataclass
class TxQueueStats:
    """One transmit queue (virtnet_sq_stats). Packets and bytes count at completion."""
    packets: int = 0
    bytes: int = 0
    drops: int = 0
    errors: int = 0
    kicks: int = 0
    interrupts: int = 0
    stops: int = 0
    wakes: int = 0
    busy: int = 0                         # start_xmit calls answered NETDEV_TX_BUSY


@dataclasses.dataclass
class NetStats:
    """Totals over the queues (rtnl_link_stats64 names), and the queues themselves."""
    rx_packets: int
    tx_packets: int
    rx_bytes: int
    tx_bytes: int
    rx_errors: int
    tx_errors: int
    rx_dropped: int
    tx_dropped: int
    rx_length_errors: int
    rx_kicks: int
    tx_kicks: int
    rx_interrupts: int
    tx_interrupts: int
    tx_stops: int
    tx_wakes: int
    tx_busy: int
    rx_queues: list[RxQueueStats]
    tx_queues: list[TxQueueStats]


@dataclasses.dataclass(frozen=True)
class QueueDeviceStats:
    """One virtqueue's counters as the device keeps them."""
    index: int
    packets: int
    bytes: int
    drops: int


@dataclasses.dataclass(frozen=True)
class DeviceStats:
    """The device's counters: drops by reason (spec.StatsDrop names) and per queue."""
    drops: dict[str, int]
    queues: list[QueueDeviceStats]


# --- DMA buffers ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DmaBuffer:
    """A buffer of DMA memory, mapped only while the device owns it."""
    addr: int
    size: int


class DmaBufferPool:
    """Fixed-size DMA buffers for one queue, allocated on demand up to `limit`
    and reused (transports allocate without freeing)."""

    def __init__(self, transport: Transport, size: int, limit: int) -> None:
        self.transport = transport
        self.size = size
        self.limit = limit
        self.allocated = 0
        self.free: list[DmaBuffer] = []

    def get(self) -> DmaBuffer | None:
        if self.free:
            return self.free.pop()
        if self.allocated == self.limit:
            return None
        self.allocated += 1
        return DmaBuffer(self.transport.dma_alloc(self.size, DMA_BUF_ALIGN), self.size)

    def put(self, buf: DmaBuffer) -> None:
        self.free.append(buf)

    @property
    def in_use(self) -> int:
        return self.allocated - len(self.free)


@dataclasses.dataclass(frozen=True)
class TxBuffer:
    """The token of a frame in a transmit ring."""
    buf: DmaBuffer
    frame_len: int


# --- queues -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Napi:
    """NAPI state of one queue: `scheduled` is the SCHED bit."""
    enabled: bool = False
    scheduled: bool = False

    def schedule_prep(self) -> bool:
        """Take the poll (napi_schedule_prep): False if disabled or already scheduled."""
        if not self.enabled or self.scheduled:
            return False
        self.scheduled = True
        return True

    def complete_done(self) -> bool:
        """Give the poll back (napi_complete_done)."""
        self.scheduled = False
        return self.enabled


class ReceiveQueue:
    """struct receive_queue: a receiveq, its NAPI, buffers and delivered frames."""

    def __init__(self, pair: int, vq: SplitVirtqueue, pool: DmaBufferPool) -> None:
        self.pair = pair
        self.vq = vq
        self.pool = pool
        self.napi = Napi()
        self.stats = RxQueueStats()
        self.frames: list[bytes] = []         # delivered, when no receive callback is set


class SendQueue:
    """struct send_queue: a transmitq, its NAPI, buffers, stop state and lock."""

    def __init__(self, pair: int, vq: SplitVirtqueue, pool: DmaBufferPool) -> None:
        self.pair = pair
        self.vq = vq
        self.pool = pool
        self.napi = Napi()
        self.stats = TxQueueStats()
        self.stopped = True                   # netif_tx_stop_queue until open()
        # Free descriptors below which the queue stops; also the most pieces
        # a frame may have, so that a running queue always has room for one.
        self.stop_threshold = min(TX_STOP_THRESHOLD, max(1, vq.num // 2))
        self.lock_owner: str | None = None    # __netif_tx_lock, as a try-lock
        self.poll_deferred = False            # poll_tx found the lock taken


class VirtioNetProbeError(Exception):
    """Probe failed; `problems` lists every cause found."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("virtio-net probe failed: " + "; ".join(self.problems))


class VirtioNet:
    """A virtio-net device driven over a Transport.

    After `await probe()`: `negotiated_features`, `mac`, `mtu`, `link_up`,
    `max_queue_pairs`, `curr_queue_pairs` and `queues` (queue index ->
    SplitVirtqueue) describe the device; `summary()` gathers them; `rq[pair]`
    and `sq[pair]` are the receive and send queues.

    Options: `driver_features` limits what the driver accepts (a subset of
    DRIVER_FEATURES); `mergeable_buf_len` is the receive buffer size with
    MRG_RXBUF; `on_receive(pair, frame)` takes delivered frames (otherwise
    they are appended to `rq[pair].frames`); `ring_start_index` is test-only
    (virtio_ring's start_index: the device must start there too).
    """

    def __init__(self, transport: Transport, *, queue_size: int = DEFAULT_QUEUE_SIZE,
                 rng: random.Random | None = None, driver_features: int = DRIVER_FEATURES,
                 mergeable_buf_len: int = DEFAULT_MERGEABLE_BUF_LEN,
                 on_receive: Callable[[int, bytes], None] | None = None,
                 ring_start_index: int = 0) -> None:
        if driver_features & ~DRIVER_FEATURES:
            raise ValueError("driver_features asks for features the driver does not "
                             f"support: {format_features(driver_features & ~DRIVER_FEATURES)}")
        if mergeable_buf_len < MIN_MERGEABLE_BUF_LEN:
            raise ValueError(f"mergeable_buf_len {mergeable_buf_len} is below "
                             f"{MIN_MERGEABLE_BUF_LEN} (header + Ethernet header)")
        self.transport = transport
        self.pci = VirtioPciModernDevice(transport)
        self.queue_size = queue_size
        self.rng = rng
        self.driver_features = int(driver_features)
        self.mergeable_buf_len = mergeable_buf_len
        self.on_receive = on_receive
        self.ring_start_index = ring_start_index
        self.hdr_len = VIRTIO_NET_HDR_LEN
        self.rq: list[ReceiveQueue] = []
        self.sq: list[SendQueue] = []
        self.is_open = False
        self.device_features = 0
        self.negotiated_features = 0
        self.mac: bytes | None = None
        self.mac_from_device = False
        self.mtu = spec.ETH_DATA_LEN
        self.link_up = False
        self.max_queue_pairs = 1
        self.curr_queue_pairs = 1
        self.queues: dict[int, SplitVirtqueue] = {}
        self.msix = False
        self.ready = False

    def has_feature(self, feature: int) -> bool:
        """Whether `feature` was negotiated."""
        return bool(self.negotiated_features & feature)

    @property
    def ctrl_queue_index(self) -> int | None:
        """Index of the control queue (section 5.1.2), None without CTRL_VQ."""
        if not self.has_feature(VirtioNetF.CTRL_VQ):
            return None
        return spec.virtqueue_pairs_to_queues(self.max_queue_pairs) - 1

    # --- probe -------------------------------------------------------------------

    async def probe(self) -> None:
        """Initialise the device (section 3.1.1) and leave it DRIVER_OK."""
        await self.pci.probe()
        if self.pci.virtio_device_type != spec.VIRTIO_ID_NET:
            raise VirtioNetProbeError(
                f"virtio device type {self.pci.virtio_device_type} is not a network "
                f"device ({spec.VIRTIO_ID_NET})")
        await self.pci.reset()
        try:
            await self._initialise()
        except VirtioNetProbeError as err:
            await self._fail(err)
            raise
        except (VirtioPciError, VirtqueueError, TransportError, ValueError) as err:
            failure = VirtioNetProbeError(str(err))
            await self._fail(failure)
            raise failure from err
        self.ready = True
        log.info("virtio-net ready: %s", self.summary())

    async def _initialise(self) -> None:
        await self.pci.add_status(VirtioStatus.ACKNOWLEDGE)
        await self.pci.add_status(VirtioStatus.DRIVER)
        await self._negotiate_features()
        await self._read_config()
        await self._setup_queues()
        await self.pci.add_status(VirtioStatus.DRIVER_OK)

    async def _fail(self, err: VirtioNetProbeError) -> None:
        """Give up on the device: reset it (releasing the queues), then set FAILED."""
        log.error("%s", err)
        try:
            await self.pci.reset()
            await self.pci.set_status(VirtioStatus.FAILED)
        except VirtioPciError as reset_err:
            err.problems.append(f"and the device could not be reset: {reset_err}")
        self._del_vqs()

    async def _negotiate_features(self) -> None:
        """Read, validate and accept features; check FEATURES_OK (section 3.1.1, 2.2)."""
        self.device_features = await self.pci.get_features()
        log.info("device features: %s", format_features(self.device_features))
        problems = validate_features(self.device_features)
        if not self.device_features & VirtioF.VERSION_1:
            problems.append("device does not offer VERSION_1, required of a modern device")
        if problems:
            raise VirtioNetProbeError(problems)

        negotiated = int(self.device_features & self.driver_features)
        if negotiated & VirtioNetF.MTU:
            # Before accepting: a device MTU below the minimum is ignored, so
            # the device is not bound to enforce it (like virtnet_validate).
            mtu = await self.pci.config_read16(VirtioNetCfg.MTU)
            if mtu < spec.ETH_MIN_MTU:
                log.warning("device MTU %d below %d: not accepting MTU", mtu,
                            spec.ETH_MIN_MTU)
                negotiated &= ~int(VirtioNetF.MTU)

        await self.pci.set_features(negotiated)
        await self.pci.add_status(VirtioStatus.FEATURES_OK)
        if not await self.pci.get_status() & VirtioStatus.FEATURES_OK:
            raise VirtioNetProbeError(
                f"device did not accept the features the driver asked for "
                f"(FEATURES_OK not set): {format_features(negotiated)}")
        self.negotiated_features = negotiated
        log.info("negotiated features: %s", format_features(negotiated))

    async def _read_config(self) -> None:
        """Device configuration layout (section 5.1.4)."""
        if self.has_feature(VirtioNetF.MAC):
            self.mac = await self.pci.read_config_bytes(VirtioNetCfg.MAC, spec.ETH_ALEN)
            self.mac_from_device = True
        else:
            self.mac = random_mac(self.rng)
            log.info("device has no MAC: using random %s", format_mac(self.mac))

        if self.has_feature(VirtioNetF.STATUS):
            status = VirtioNetS(await self.pci.config_read16(VirtioNetCfg.STATUS))
            self.link_up = bool(status & VirtioNetS.LINK_UP)
        else:
            self.link_up = True

        self.max_queue_pairs = 1
        if self.has_feature(VirtioNetF.MQ) and self.has_feature(VirtioNetF.CTRL_VQ):
            pairs = await self.pci.config_read16(VirtioNetCfg.MAX_VIRTQUEUE_PAIRS)
            if VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN <= pairs <= VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX:
                self.max_queue_pairs = pairs
            else:
                log.warning("max_virtqueue_pairs %d outside %d..%d: using 1 pair", pairs,
                            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX)
        self.curr_queue_pairs = 1

        self.mtu = spec.ETH_DATA_LEN
        if self.has_feature(VirtioNetF.MTU):
            self.mtu = await self.pci.config_read16(VirtioNetCfg.MTU)
            if self.mtu < spec.ETH_MIN_MTU:     # changed since features were accepted
                raise VirtioNetProbeError(
                    f"device MTU {self.mtu} is below the minimum {spec.ETH_MIN_MTU}")

    def _queue_indexes(self) -> list[int]:
        """receiveq1, transmitq1, ..., receiveqN, transmitqN, then controlq (section 5.1.2)."""
        indexes = []
        for pair in range(self.max_queue_pairs):
            indexes += [spec.rx_queue_index(pair), spec.tx_queue_index(pair)]
        if self.ctrl_queue_index is not None:
            indexes.append(self.ctrl_queue_index)
        return indexes

    async def _setup_queues(self) -> None:
        """Allocate, program and then enable every virtqueue (section 4.1.5.1.3)."""
        indexes = self._queue_indexes()
        num_queues = await self.pci.get_num_queues()
        if num_queues < len(indexes):
            raise VirtioNetProbeError(
                f"device has {num_queues} virtqueues, the driver needs {len(indexes)} "
                f"({self.max_queue_pairs} pair(s)"
                f"{' and a control queue' if self.ctrl_queue_index is not None else ''})")

        self.msix = self.transport.msix_vectors_available() >= len(indexes) + 1
        if self.msix:
            await self.pci.set_config_vector(CONFIG_MSIX_VECTOR)
        else:
            log.warning("not enough MSI-X vectors for %d queues + config: no interrupts "
                        "(INTx is not supported)", len(indexes))
            await self.pci.set_config_vector(spec.VIRTIO_MSI_NO_VECTOR)

        for index in indexes:
            max_size = await self.pci.get_queue_max_size(index)
            if max_size == 0:
                raise VirtioNetProbeError(f"queue {index} is not available (queue_size 0)")
            vq = await SplitVirtqueue.allocate(
                self.transport, index, min(max_size, self.queue_size),
                features=self.negotiated_features, start_index=self.ring_start_index)
            vector = index + 1 if self.msix else spec.VIRTIO_MSI_NO_VECTOR
            await self.pci.setup_queue(index, vq.num, vq.desc_addr, vq.avail_addr,
                                       vq.used_addr, vector)
            vq.msix_vector = vector
            vq.notify_address = self.pci.notify_address(index)
            self.queues[index] = vq

        for index in indexes:
            await self.pci.enable_queue(index)
        self._init_datapath_queues()

    # --- datapath set-up ---------------------------------------------------------------------

    @property
    def mergeable_rx_bufs(self) -> bool:
        return self.has_feature(VirtioNetF.MRG_RXBUF)

    @property
    def max_frame_len(self) -> int:
        """Longest frame (no FCS) sent or expected: MTU + Ethernet and VLAN headers."""
        return self.mtu + ETH_HLEN + VLAN_HLEN

    @property
    def rx_buf_len(self) -> int:
        """Bytes of one receive buffer, header included (section 5.1.6.3.1)."""
        if self.mergeable_rx_bufs:
            return self.mergeable_buf_len
        return self.hdr_len + self.max_frame_len

    @property
    def tx_buf_len(self) -> int:
        """Bytes of one transmit buffer: header, frame and the gaps between pieces."""
        return self.hdr_len + self.max_frame_len + MAX_SKB_FRAGS * TX_FRAG_GAP

    def _init_datapath_queues(self) -> None:
        """receive_queue / send_queue for every pair, with interrupt callbacks."""
        self.rq, self.sq = [], []
        for pair in range(self.max_queue_pairs):
            rvq = self.queues[spec.rx_queue_index(pair)]
            svq = self.queues[spec.tx_queue_index(pair)]
            rvq.callback = self.skb_recv_done
            svq.callback = self.skb_xmit_done
            self.rq.append(ReceiveQueue(pair, rvq, DmaBufferPool(
                self.transport, self.rx_buf_len, rvq.num)))
            self.sq.append(SendQueue(pair, svq, DmaBufferPool(
                self.transport, self.tx_buf_len, svq.num)))

    def _check_pair(self, pair: int) -> None:
        if not 0 <= pair < self.curr_queue_pairs:
            raise VirtioNetError(f"queue pair {pair} is not in use "
                                 f"(curr_queue_pairs {self.curr_queue_pairs})")

    # --- open / close (ndo_open, ndo_stop) --------------------------------------------------

    async def open(self) -> None:
        """Fill the receive rings, enable NAPI and the transmit queues (virtnet_open)."""
        if not self.ready:
            raise VirtioNetError("open() before a successful probe()")
        if self.is_open:
            return
        for pair in range(self.curr_queue_pairs):
            rq, sq = self.rq[pair], self.sq[pair]
            await self.try_fill_recv(rq)
            await self.virtnet_napi_enable(rq.napi, rq.vq)
            await self.virtnet_napi_enable(sq.napi, sq.vq)
            sq.stopped = False
        self.is_open = True

    async def close(self) -> None:
        """Disable NAPI and stop transmitting (virtnet_close). Posted buffers stay
        posted until remove(); callbacks are disabled so the device stops
        interrupting (Linux lets NAPI ignore them)."""
        if not self.is_open:
            return
        self.is_open = False
        for pair in range(self.curr_queue_pairs):
            rq, sq = self.rq[pair], self.sq[pair]
            sq.stopped = True
            for napi, vq in ((rq.napi, rq.vq), (sq.napi, sq.vq)):
                napi.enabled = napi.scheduled = False
                await vq.disable_cb()

    async def virtnet_napi_enable(self, napi: Napi, vq: SplitVirtqueue) -> None:
        """Enable NAPI and schedule a first poll: buffers used before now raised
        no interrupt."""
        napi.enabled = True
        await self.virtqueue_napi_schedule(napi, vq)

    async def virtqueue_napi_schedule(self, napi: Napi, vq: SplitVirtqueue) -> None:
        """Schedule the poll and mute the queue until it completes."""
        if napi.schedule_prep():
            await vq.disable_cb()

    async def virtqueue_napi_complete(self, napi: Napi, vq: SplitVirtqueue) -> None:
        """Re-arm the interrupt, then catch buffers that raced with it."""
        opaque = await vq.enable_cb_prepare()
        if napi.complete_done():
            if await vq.poll(opaque):
                await self.virtqueue_napi_schedule(napi, vq)
        else:
            await vq.disable_cb()

    # --- interrupts (vring_interrupt -> the queue's callback) ---------------------------------

    async def skb_recv_done(self, vq: SplitVirtqueue) -> None:
        await self.virtqueue_napi_schedule(self._rq_of(vq).napi, vq)

    async def skb_xmit_done(self, vq: SplitVirtqueue) -> None:
        await self.virtqueue_napi_schedule(self._sq_of(vq).napi, vq)

    def _rq_of(self, vq: SplitVirtqueue) -> ReceiveQueue:
        return self.rq[vq.index // 2]

    def _sq_of(self, vq: SplitVirtqueue) -> SendQueue:
        return self.sq[vq.index // 2]

    async def _wait_interrupt(self, vq: SplitVirtqueue, timeout_ns: int) -> bool:
        """Wait for the queue's vector and run its handler; False on timeout."""
        if vq.msix_vector in (None, spec.VIRTIO_MSI_NO_VECTOR):
            raise VirtioNetError(f"queue {vq.index} has no MSI-X vector: call poll() instead")
        try:
            await self.transport.wait_interrupt(vq.msix_vector, timeout_ns)
        except TimeoutError:
            return False
        await vq.vring_interrupt()
        return True

    async def wait_and_poll(self, pair: int = 0, budget: int = NAPI_POLL_WEIGHT,
                            timeout_ns: int = 1_000_000) -> int:
        """Unless a poll is already scheduled, wait up to `timeout_ns` for the
        receive queue's interrupt; then poll. Returns the frames received (0 on
        timeout)."""
        self._check_pair(pair)
        rq = self.rq[pair]
        if not rq.napi.scheduled:
            if not await self._wait_interrupt(rq.vq, timeout_ns):
                return 0
            rq.stats.interrupts += 1
            if not rq.napi.scheduled:         # nothing used, or NAPI disabled
                return 0
        return await self.poll(pair, budget)

    async def wait_and_poll_tx(self, pair: int = 0, timeout_ns: int = 1_000_000) -> int:
        """The same for the transmit queue: wait for its interrupt unless TX NAPI
        is scheduled, then poll_tx. Returns the buffers reclaimed."""
        self._check_pair(pair)
        sq = self.sq[pair]
        if not sq.napi.scheduled:
            if not await self._wait_interrupt(sq.vq, timeout_ns):
                return 0
            sq.stats.interrupts += 1
            if not sq.napi.scheduled:
                return 0
        return await self.poll_tx(pair)

    # --- receive (NAPI) -----------------------------------------------------------------------

    async def poll(self, pair: int = 0, budget: int = NAPI_POLL_WEIGHT) -> int:
        """NAPI poll of a queue pair (virtnet_poll): reclaim transmitted buffers,
        receive up to `budget` frames, refill, and re-enable the interrupt when
        fewer than `budget` arrived. Called without a scheduled poll, it takes
        one first (busy polling). Returns the frames received."""
        self._check_pair(pair)
        if budget <= 0:
            raise ValueError(f"budget {budget} must be positive")
        rq = self.rq[pair]
        if not rq.napi.enabled:
            return 0
        if not rq.napi.scheduled:
            await self.virtqueue_napi_schedule(rq.napi, rq.vq)
        rq.stats.polls += 1
        await self.virtnet_poll_cleantx(rq)
        received = await self.virtnet_receive(rq, budget)
        if received < budget:
            await self.virtqueue_napi_complete(rq.napi, rq.vq)
        return received

    async def virtnet_receive(self, rq: ReceiveQueue, budget: int) -> int:
        packets = 0
        while packets < budget:
            got = await rq.vq.get_buf()
            if got is None:
                break
            await self.receive_buf(rq, *got)
            packets += 1
        # Refill once half the budget's worth of descriptors is free (Linux's rule).
        if rq.vq.num_free > min(budget, rq.vq.num) // 2:
            await self.try_fill_recv(rq)
        return packets

    async def try_fill_recv(self, rq: ReceiveQueue) -> bool:
        """Post receive buffers until the ring is full, then kick if the device
        wants it (section 5.1.6.3). False if buffers ran out first."""
        oom = False
        while rq.vq.num_free:
            buf = rq.pool.get()
            if buf is None:
                oom = True
                break
            try:
                await rq.vq.add_inbuf([(buf.addr, buf.size)], buf)
            except VirtqueueFullError:
                rq.pool.put(buf)
                break
        if await rq.vq.kick_prepare() and await rq.vq.notify():
            rq.stats.kicks += 1
        return not oom

    async def receive_buf(self, rq: ReceiveQueue, buf: DmaBuffer, length: int) -> None:
        """One used receive buffer: check it, gather the frame, deliver it (section 5.1.6.4)."""
        if length < self.hdr_len + ETH_HLEN:
            log.debug("rx queue %d: short packet of %d bytes", rq.vq.index, length)
            rq.stats.length_errors += 1
            rq.pool.put(buf)
            return
        if self.mergeable_rx_bufs:
            frame = await self.receive_mergeable(rq, buf, length)
        else:
            frame = await self.receive_small(rq, buf, length)
        if frame is None:
            return
        rq.stats.packets += 1
        rq.stats.bytes += len(frame)
        self.napi_gro_receive(rq, frame)

    async def receive_small(self, rq: ReceiveQueue, buf: DmaBuffer,
                            length: int) -> bytes | None:
        """A frame in one buffer, behind its header."""
        data = await self._take_used_buffer(rq, buf, length)
        return None if data is None else data[self.hdr_len:]

    async def _take_used_buffer(self, rq: ReceiveQueue, buf: DmaBuffer,
                                length: int) -> bytes | None:
        """The `length` bytes the device wrote into `buf`, which goes back to the
        pool; None (a length error) if the device claims more than the buffer holds."""
        if length > buf.size:
            log.debug("rx queue %d: used length %d exceeds the buffer (%d)", rq.vq.index,
                      length, buf.size)
            rq.stats.length_errors += 1
            rq.pool.put(buf)
            return None
        data = await self.transport.dma_read(buf.addr, length)
        rq.pool.put(buf)
        return data

    async def receive_mergeable(self, rq: ReceiveQueue, buf: DmaBuffer,
                                length: int) -> bytes | None:
        """A frame over num_buffers buffers, the header in the first (section 5.1.6.4)."""
        data = await self._take_used_buffer(rq, buf, length)
        if data is None:
            return None
        num_buffers = int.from_bytes(
            data[spec.VIRTIO_NET_HDR_NUM_BUFFERS_OFFSET:][:2], "little")
        if num_buffers == 0:
            log.debug("rx queue %d: num_buffers is 0", rq.vq.index)
            rq.stats.length_errors += 1
            rq.stats.drops += 1
            return None
        pieces = [data[self.hdr_len:]]
        for received in range(1, num_buffers):
            got = await rq.vq.get_buf()
            if got is None:
                log.debug("rx queue %d: %d of %d buffers missing", rq.vq.index,
                          num_buffers - received, num_buffers)
                rq.stats.length_errors += 1
                rq.stats.drops += 1
                return None
            piece = await self._take_used_buffer(rq, *got)
            if piece is None:
                await self._drop_mergeable(rq, num_buffers - received - 1)
                return None
            pieces.append(piece)
        return b"".join(pieces)

    async def _drop_mergeable(self, rq: ReceiveQueue, remaining: int) -> None:
        """Discard the rest of a bad mergeable packet."""
        for _ in range(remaining):
            got = await rq.vq.get_buf()
            if got is None:
                rq.stats.length_errors += 1
                break
            rq.pool.put(got[0])
        rq.stats.drops += 1

    def napi_gro_receive(self, rq: ReceiveQueue, frame: bytes) -> None:
        """Hand a frame up: to on_receive, or to the queue's frame list."""
        if self.on_receive is not None:
            self.on_receive(rq.pair, frame)
        else:
            rq.frames.append(frame)

    def take_received(self, pair: int = 0) -> list[bytes]:
        """The frames delivered to rq[pair].frames so far, emptying the list."""
        frames, self.rq[pair].frames = self.rq[pair].frames, []
        return frames

    # --- transmit ---------------------------------------------------------------------------

    def _tx_trylock(self, sq: SendQueue, owner: str) -> bool:
        if sq.lock_owner is not None:
            return False
        sq.lock_owner = owner
        return True

    async def _tx_unlock(self, sq: SendQueue) -> None:
        """Release the queue, running a TX poll that found it taken."""
        sq.lock_owner = None
        if sq.poll_deferred and sq.napi.enabled:
            sq.poll_deferred = False
            if self._tx_trylock(sq, "deferred poll_tx"):
                await self._poll_tx_locked(sq)

    async def start_xmit(self, frame: bytes | Sequence[bytes], queue_index: int = 0, *,
                         more: bool = False) -> NetdevTx:
        """Transmit one Ethernet frame (no FCS) on transmit queue `queue_index`.

        `frame` is bytes, or a sequence of up to 1 + MAX_SKB_FRAGS pieces (a
        linear part and fragments), each a segment of its own. `more` is
        netdev_xmit_more(): more frames follow at once, so the kick may wait.
        Returns NETDEV_TX_BUSY, without taking the frame, when the queue is
        stopped (or busy in another coroutine); NETDEV_TX_OK otherwise.
        """
        self._check_pair(queue_index)
        sq = self.sq[queue_index]
        pieces = self._frame_pieces(frame, sq.stop_threshold)
        if not self.is_open or sq.stopped or not self._tx_trylock(sq, "start_xmit"):
            sq.stats.busy += 1
            return NETDEV_TX_BUSY
        try:
            kick = not more
            while True:                        # free old buffers first
                await sq.vq.disable_cb()
                await self.free_old_xmit(sq)
                if not kick or await sq.vq.enable_cb_delayed():
                    break
            try:
                await self.xmit_skb(sq, pieces)
            except VirtqueueFullError as err:
                log.warning("tx queue %d: %s", sq.vq.index, err)
                sq.stats.errors += 1
                sq.stats.drops += 1
                return NETDEV_TX_OK
            await self.check_sq_full_and_disable(sq)
            if kick or sq.stopped:
                if await sq.vq.kick_prepare() and await sq.vq.notify():
                    sq.stats.kicks += 1
            return NETDEV_TX_OK
        finally:
            await self._tx_unlock(sq)

    def _frame_pieces(self, frame: bytes | Sequence[bytes], max_pieces: int) -> list[bytes]:
        pieces = [bytes(frame)] if isinstance(frame, (bytes, bytearray, memoryview)) \
            else [bytes(piece) for piece in frame]
        max_pieces = min(1 + MAX_SKB_FRAGS, max_pieces)
        if not 1 <= len(pieces) <= max_pieces:
            raise ValueError(f"a frame takes 1..{max_pieces} pieces here, not {len(pieces)}")
        if not all(pieces[1:]):
            raise ValueError("an empty fragment")
        total = sum(map(len, pieces))
        if not ETH_HLEN <= total <= self.max_frame_len:
            raise ValueError(f"frame of {total} bytes outside {ETH_HLEN}..{self.max_frame_len}"
                             f" (MTU {self.mtu})")
        return pieces

    async def xmit_skb(self, sq: SendQueue, pieces: list[bytes]) -> None:
        """Copy the header and frame into a DMA buffer and post it (section 5.1.6.2).

        The zero header goes in front of the first piece, in the same segment
        (VERSION_1 implies any layout, section 2.7.4); other pieces follow
        TX_FRAG_GAP bytes apart.
        """
        buf = sq.pool.get()
        if buf is None:
            raise VirtqueueFullError(f"tx queue {sq.vq.index}: no transmit buffer left")
        sgs = []
        offset = 0
        for i, piece in enumerate(pieces):
            data = bytes(self.hdr_len) + piece if i == 0 else piece
            await self.transport.dma_write(buf.addr + offset, data)
            sgs.append((buf.addr + offset, len(data)))
            offset += len(data) + TX_FRAG_GAP
        try:
            await sq.vq.add_outbuf(sgs, TxBuffer(buf, sum(map(len, pieces))))
        except BaseException:
            sq.pool.put(buf)
            raise

    async def free_old_xmit(self, sq: SendQueue) -> int:
        """Reclaim transmitted buffers; count them as sent. Returns how many."""
        packets = 0
        while (got := await sq.vq.get_buf()) is not None:
            token: TxBuffer = got[0]
            sq.pool.put(token.buf)
            sq.stats.packets += 1
            sq.stats.bytes += token.frame_len
            packets += 1
        return packets

    async def check_sq_full_and_disable(self, sq: SendQueue) -> None:
        """Stop the queue when a maximal packet might not fit, and ask for an
        interrupt once most of the ring is done."""
        if sq.vq.num_free >= sq.stop_threshold:
            return
        sq.stopped = True
        sq.stats.stops += 1
        if not await sq.vq.enable_cb_delayed():
            await self.virtqueue_napi_schedule(sq.napi, sq.vq)

    def _maybe_wake(self, sq: SendQueue) -> None:
        if sq.stopped and self.is_open and sq.vq.num_free >= sq.stop_threshold:
            sq.stopped = False
            sq.stats.wakes += 1

    async def virtnet_poll_cleantx(self, rq: ReceiveQueue) -> None:
        """From the receive poll: reclaim the paired transmit queue if it is free."""
        sq = self.sq[rq.pair]
        if not sq.napi.enabled or not self._tx_trylock(sq, "virtnet_poll_cleantx"):
            return
        try:
            while True:
                await sq.vq.disable_cb()
                await self.free_old_xmit(sq)
                if await sq.vq.enable_cb_delayed():
                    break
            self._maybe_wake(sq)
        finally:
            await self._tx_unlock(sq)

    async def poll_tx(self, pair: int = 0) -> int:
        """TX NAPI poll (virtnet_poll_tx): reclaim, wake the queue, re-arm the
        interrupt. If start_xmit holds the queue, it runs this when done.
        Returns the buffers reclaimed."""
        self._check_pair(pair)
        sq = self.sq[pair]
        if not sq.napi.enabled:
            return 0
        if not sq.napi.scheduled:
            await self.virtqueue_napi_schedule(sq.napi, sq.vq)
        if not self._tx_trylock(sq, "poll_tx"):
            sq.poll_deferred = True
            sq.napi.complete_done()
            return 0
        return await self._poll_tx_locked(sq)

    async def _poll_tx_locked(self, sq: SendQueue) -> int:
        try:
            await sq.vq.disable_cb()
            done = await self.free_old_xmit(sq)
            self._maybe_wake(sq)
            opaque = await sq.vq.enable_cb_prepare()
            completed = sq.napi.complete_done()
            if not completed:
                await sq.vq.disable_cb()
        finally:
            sq.lock_owner = None
        if completed and await sq.vq.poll(opaque):
            await self.virtqueue_napi_schedule(sq.napi, sq.vq)
        return done

    # --- helpers for harnesses ----------------------------------------------------------------

    async def send(self, frame: bytes | Sequence[bytes], queue_index: int = 0, *,
                   timeout_ns: int = 1_000_000) -> None:
        """start_xmit, waiting while the queue is stopped: poll_tx (reclaim what
        the device is done with, re-arm the interrupt), then, if still stopped,
        wait for the transmit interrupt. Polling before waiting means an
        interrupt raised before the wait began is not needed.

        Raises TimeoutError if no interrupt comes within `timeout_ns`.
        """
        sq = self.sq[queue_index]
        while await self.start_xmit(frame, queue_index) == NETDEV_TX_BUSY:
            if not self.is_open:
                raise VirtioNetError("send() on a closed device")
            if not sq.stopped:
                raise VirtioNetError(f"tx queue {queue_index} is in use by {sq.lock_owner}")
            await self.poll_tx(queue_index)
            if not sq.stopped or sq.napi.scheduled:
                continue
            if not await self._wait_interrupt(sq.vq, timeout_ns):
                raise TimeoutError(f"tx queue {queue_index} still stopped after "
                                   f"{timeout_ns} ns without an interrupt")
            sq.stats.interrupts += 1

    async def receive(self, count: int, pair: int = 0, *, budget: int = NAPI_POLL_WEIGHT,
                      timeout_ns: int = 1_000_000) -> list[bytes]:
        """Poll, waiting on the receive interrupt, until `count` frames were
        delivered to rq[pair].frames or an interrupt wait times out; return
        and remove up to `count` of them."""
        rq = self.rq[pair]
        while len(rq.frames) < count:
            if rq.napi.scheduled:
                await self.poll(pair, budget)
            elif not await self._wait_interrupt(rq.vq, timeout_ns):
                break
            else:
                rq.stats.interrupts += 1
        frames, rq.frames = rq.frames[:count], rq.frames[count:]
        return frames

    # --- statistics ---------------------------------------------------------------------

    def stats(self) -> NetStats:
        """Totals and per-queue counters (virtnet_stats)."""
        rx = [rq.stats for rq in self.rq]
        tx = [sq.stats for sq in self.sq]
        return NetStats(
            rx_packets=sum(s.packets for s in rx), tx_packets=sum(s.packets for s in tx),
            rx_bytes=sum(s.bytes for s in rx), tx_bytes=sum(s.bytes for s in tx),
            rx_errors=sum(s.length_errors for s in rx), tx_errors=sum(s.errors for s in tx),
            rx_dropped=sum(s.drops for s in rx), tx_dropped=sum(s.drops for s in tx),
            rx_length_errors=sum(s.length_errors for s in rx),
            rx_kicks=sum(s.kicks for s in rx), tx_kicks=sum(s.kicks for s in tx),
            rx_interrupts=sum(s.interrupts for s in rx),
            tx_interrupts=sum(s.interrupts for s in tx),
            tx_stops=sum(s.stops for s in tx), tx_wakes=sum(s.wakes for s in tx),
            tx_busy=sum(s.busy for s in tx),
            rx_queues=[dataclasses.replace(s) for s in rx],
            tx_queues=[dataclasses.replace(s) for s in tx])

    async def device_stats(self) -> DeviceStats:
        """The device's own counters, from its statistics window in BAR0 (a
        device-specific extension: spec.STATS_*; no virtio structure exists)."""
        region = Region(self.transport, self.transport.bar_address(0), spec.STATS_BAR_OFFSET,
                        spec.STATS_WINDOW_BYTES, "device statistics")
        drops = {reason.name.lower(): await region.read32(4 * reason) for reason in spec.StatsDrop}
        queues = []
        for index in range(await self.pci.get_num_queues() - 1):     # no control queue counters
            base = spec.STATS_QUEUE_BASE + spec.STATS_QUEUE_STRIDE * index
            values = {stat.name.lower(): await region.read32(base + 4 * stat)
                      for stat in spec.StatsQueue}
            queues.append(QueueDeviceStats(index=index, **values))
        return DeviceStats(drops=drops, queues=queues)

    async def _free_unused_bufs(self) -> None:
        """Take back buffers the device never used (free_unused_bufs); after reset."""
        for rq in self.rq:
            while (buf := await rq.vq.detach_unused_buf()) is not None:
                rq.pool.put(buf)
        for sq in self.sq:
            while (token := await sq.vq.detach_unused_buf()) is not None:
                sq.pool.put(token.buf)

    # --- results and removal ----------------------------------------------------------

    def summary(self) -> dict:
        return {
            "device_features": feature_names(self.device_features),
            "negotiated_features": feature_names(self.negotiated_features),
            "mac": format_mac(self.mac) if self.mac else None,
            "mac_from_device": self.mac_from_device,
            "mtu": self.mtu,
            "link_up": self.link_up,
            "max_queue_pairs": self.max_queue_pairs,
            "curr_queue_pairs": self.curr_queue_pairs,
            "msix": self.msix,
            "queues": {i: vq.num for i, vq in self.queues.items()},
            "rx_buf_len": self.rx_buf_len if self.rq else None,
        }

    async def remove(self) -> None:
        """Stop the device (virtnet_remove): close, reset (which releases every
        virtqueue), take back and unmap every buffer, unmap the rings."""
        if self.is_open:
            await self.close()
        await self.pci.reset()
        await self._free_unused_bufs()
        self._del_vqs()
        self.ready = False

    def _del_vqs(self) -> None:
        """Unmap and forget every virtqueue (virtnet_del_vqs); after a reset."""
        for vq in self.queues.values():
            vq.free()
        self.queues.clear()
        self.rq.clear()
        self.sq.clear()
