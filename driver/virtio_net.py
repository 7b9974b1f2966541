"""virtio-net driver: probe and datapath (virtio 1.2 section 5.1).

A Python rendering of Linux's drivers/net/virtio_net.c.

Probe follows the driver initialisation sequence of section 3.1.1: reset,
ACKNOWLEDGE, DRIVER, read and validate the device features, accept a subset,
FEATURES_OK (checked by reading it back), device configuration, virtqueues,
DRIVER_OK.

Datapath (section 5.1.6), on the queue pairs in use:

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

Control virtqueue (section 5.1.6.5), when CTRL_VQ is negotiated:

- `send_command(class, command, data)` is virtnet_send_command: one command
  at a time, polled (the control queue has no interrupt, as in Linux), with
  a timeout;
- multiqueue: probe asks for every queue pair (`queue_pairs=` to ask for
  fewer), `set_channels(n)` changes it (VQ_PAIRS_SET), `select_queue(frame)`
  picks a transmit queue by flow hash;
- receive filters: `set_rx_mode` (PROMISC, ALLMULTI, MAC TABLE_SET),
  `set_rx_flag` (the CTRL_RX_EXTRA commands), `set_mac_address`,
  `vlan_rx_add_vid` / `vlan_rx_kill_vid`;
- configuration changes: `config_changed()` (link status, carrier,
  ANNOUNCE acknowledged), reached through `wait_config_change` or
  `vp_interrupt`.

Interrupts: MSI-X with one vector per data queue plus one for configuration
changes, else one vector shared by the queues plus one for configuration
changes, else none (the transport has no INTx; the harness polls).

Not done: RSS and hash reporting, guest offload control, offloads (CSUM,
GSO), "big packets" receive buffers (a large MTU without MRG_RXBUF gets large
single buffers instead), INTx.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import os
import random
from collections.abc import Callable, Sequence

from hdl import spec
from hdl.spec import (VirtioF, VirtioIsr, VirtioNetCfg, VirtioNetCtrlAck, VirtioNetCtrlAnnounce,
                      VirtioNetCtrlClass, VirtioNetCtrlMac, VirtioNetCtrlMq, VirtioNetCtrlRx,
                      VirtioNetCtrlVlan, VirtioNetF, VirtioNetS, VirtioStatus)

from .flow import flow_hash, reciprocal_scale
from .transport import Region, Transport, TransportError
from .virtio_pci_modern import VirtioPciError, VirtioPciModernDevice, VirtioPciVectorError
from .virtio_ring import SplitVirtqueue, VirtqueueError, VirtqueueFullError

log = logging.getLogger("virtio_net")

# Bounds of max_virtqueue_pairs and of VQ_PAIRS_SET (section 5.1.6.5.5).
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN = spec.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX = spec.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX

# Entries per virtqueue the driver asks for (capped by the device's maximum).
DEFAULT_QUEUE_SIZE = 256

# MSI-X vectors, as Linux's virtio_pci assigns them: configuration changes on
# vector 0; with a vector per queue, data queue i on vector i + 1; with a
# shared vector, every data queue on vector 1. The control queue has none:
# the driver polls it (Linux gives it no callback).
CONFIG_MSIX_VECTOR = 0
SHARED_VQ_MSIX_VECTOR = 1

# Control queue: how long send_command polls for the device's answer, and the
# pauses between polls (doubling from the first to the last) when the
# transport can wait (Transport.delay). Without it each poll counts as
# CTRL_POLL_MIN_NS. Linux polls without limit.
CTRL_TIMEOUT_NS = 100_000_000
CTRL_POLL_MIN_NS = 1_000
CTRL_POLL_MAX_NS = 1_000_000
# The command buffer: class and command at 0, the ack on its own cache line,
# then the data, pieces TX_FRAG_GAP apart (so a device that ignores segment
# boundaries reads the wrong bytes).
CTRL_BUF_SIZE = 4096
CTRL_ACK_OFFSET = 64
CTRL_DATA_OFFSET = 128
CTRL_ACK_UNSET = 0xFF                  # Linux writes ~0 before sending

# Locally administered, unicast: the two low bits of the first MAC byte (IEEE 802).
MAC_MULTICAST_BIT = 0x01
MAC_LOCAL_ADMIN_BIT = 0x02

# Features this driver understands.
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
    | VirtioNetF.CTRL_RX_EXTRA
    | VirtioNetF.GUEST_ANNOUNCE
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


# Accepted only together (a driver choice, not a reason to refuse a device):
# the extra RX commands belong to CTRL_RX's filtering (section 5.1.6.5.1).
ACCEPT_ONLY_WITH: dict[VirtioNetF, tuple[VirtioNetF, ...]] = {
    VirtioNetF.CTRL_RX_EXTRA: (VirtioNetF.CTRL_RX,),
}


def _requirements() -> list[tuple[VirtioNetF, tuple[VirtioNetF, ...]]]:
    """(feature, any of these must come with it), from the three tables."""
    rules = [(feature, (dependency,)) for dependency, dependents in FEATURES_NEEDING.items()
             for feature in dependents]
    return rules + list(FEATURES_NEEDING_ANY_OF.items()) + list(ACCEPT_ONLY_WITH.items())


def accept_features(device_features: int, driver_features: int) -> tuple[int, list[str]]:
    """The features to accept: offered and understood, less those whose
    dependency is not accepted too (section 2.2.1: the driver MUST NOT accept
    a feature which requires another feature which was not accepted).
    Returns them and a note per feature dropped."""
    accepted = int(device_features & driver_features)
    notes = []
    changed = True
    while changed:                      # until no more falls (drops can cascade)
        changed = False
        for feature, alternatives in _requirements():
            if accepted & feature and not any(accepted & a for a in alternatives):
                accepted &= ~int(feature)
                names = " or ".join(a.name for a in alternatives)
                notes.append(f"not accepting {feature.name}: {names} not accepted")
                changed = True
    return accepted, notes


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


class VectorPolicy(enum.Enum):
    """How the virtqueues got interrupts (Linux's vp_find_vqs, in order of preference)."""
    EACH = "each"          # one MSI-X vector per data queue, one for config changes
    SHARED = "shared"      # one MSI-X vector for all data queues, one for config changes
    NONE = "none"          # no vector: the harness polls (no INTx here)


class VirtioNetError(Exception):
    """The driver used in a way it does not support, or a feature missing."""


class VirtioNetCtrlError(VirtioNetError):
    """The device answered a control command with VIRTIO_NET_ERR (or not at all)."""


class VirtioNetCtrlTimeout(VirtioNetError, TimeoutError):
    """The device did not use a control command buffer in time."""


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
class CtrlQueueStats:
    """The control queue: commands placed, answered OK or not, timed out."""
    commands: int = 0
    ok: int = 0
    errors: int = 0                       # VIRTIO_NET_ERR, no ack written, or not placed
    timeouts: int = 0


@dataclasses.dataclass
class LinkStats:
    """Configuration changes handled and what they did (Linux: carrier_up/down_count)."""
    config_changes: int = 0
    carrier_up: int = 0
    carrier_down: int = 0
    announces: int = 0                    # ANNOUNCE seen (and acknowledged)


@dataclasses.dataclass(frozen=True)
class RxMode:
    """What ndo_set_rx_mode sends: the two flags and the two address lists."""
    promisc: bool = False
    allmulti: bool = False
    uc: tuple[bytes, ...] = ()
    mc: tuple[bytes, ...] = ()


@dataclasses.dataclass(frozen=True)
class CtrlToken:
    """The token of a command in the control queue."""
    seq: int
    cls: int
    cmd: int


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
    ctrl: CtrlQueueStats = dataclasses.field(default_factory=CtrlQueueStats)
    link: LinkStats = dataclasses.field(default_factory=LinkStats)


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
    `carrier`, `max_queue_pairs`, `curr_queue_pairs`, `vector_policy` and
    `queues` (queue index -> SplitVirtqueue) describe the device; `summary()`
    gathers them; `rq[pair]` and `sq[pair]` are the receive and send queues
    (for every pair up to max_queue_pairs), `cvq` the control queue.

    Options: `driver_features` limits what the driver accepts (a subset of
    DRIVER_FEATURES); `queue_pairs` is how many pairs probe asks for with MQ
    (default all: Linux asks for one per CPU); `mergeable_buf_len` is the
    receive buffer size with MRG_RXBUF; `on_receive(pair, frame)` takes
    delivered frames (otherwise they are appended to `rq[pair].frames`);
    `on_announce()` is called when the device asks for gratuitous packets
    (Linux's netdev_notify_peers); `ring_start_index` is test-only
    (virtio_ring's start_index: the device must start there too).
    """

    def __init__(self, transport: Transport, *, queue_size: int = DEFAULT_QUEUE_SIZE,
                 rng: random.Random | None = None, driver_features: int = DRIVER_FEATURES,
                 mergeable_buf_len: int = DEFAULT_MERGEABLE_BUF_LEN,
                 on_receive: Callable[[int, bytes], None] | None = None,
                 ring_start_index: int = 0, queue_pairs: int | None = None,
                 on_announce: Callable[[], None] | None = None) -> None:
        if driver_features & ~DRIVER_FEATURES:
            raise ValueError("driver_features asks for features the driver does not "
                             f"support: {format_features(driver_features & ~DRIVER_FEATURES)}")
        if mergeable_buf_len < MIN_MERGEABLE_BUF_LEN:
            raise ValueError(f"mergeable_buf_len {mergeable_buf_len} is below "
                             f"{MIN_MERGEABLE_BUF_LEN} (header + Ethernet header)")
        if queue_pairs is not None and not (
                VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN <= queue_pairs <= VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX):
            raise ValueError(f"queue_pairs {queue_pairs} outside {VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN}"
                             f"..{VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX}")
        self.transport = transport
        self.pci = VirtioPciModernDevice(transport)
        self.queue_size = queue_size
        self.rng = rng
        self.driver_features = int(driver_features)
        self.mergeable_buf_len = mergeable_buf_len
        self.on_receive = on_receive
        self.on_announce = on_announce
        self.ring_start_index = ring_start_index
        self.requested_queue_pairs = queue_pairs
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
        # pairs transmit may use (Linux's real_num_tx_queues): curr_queue_pairs,
        # except while VQ_PAIRS_SET lowers it, when it already has the new value
        self.real_num_tx_queues = 1
        self.queues: dict[int, SplitVirtqueue] = {}
        self.msix = False
        self.vector_policy = VectorPolicy.NONE
        self.config_vector = spec.VIRTIO_MSI_NO_VECTOR
        self.ready = False
        # control queue (section 5.1.6.5)
        self.cvq: SplitVirtqueue | None = None
        self.ctrl_stats = CtrlQueueStats()
        self.ctrl_busy = False                  # Linux's cvq_lock, as a try-lock
        self.ctrl_failed: str | None = None     # set by a timeout: no more commands
        self._ctrl_buf: DmaBuffer | None = None
        self._ctrl_seq = 0
        self._announce_ack_deferred = False
        # what the filters were set to (applied by open(), like dev_open)
        self.rx_mode = RxMode()
        self.vlans: set[int] = set()
        # link (section 5.1.4): netif_carrier_ok, and the changes handled
        self.carrier = False
        self.link_stats = LinkStats()

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
        self.ctrl_failed = None
        self.ctrl_busy = False
        try:
            await self._initialise()
        except VirtioNetProbeError as err:
            await self._fail(err)
            raise
        except (VirtioPciError, VirtqueueError, TransportError, ValueError,
                VirtioNetError) as err:
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
        await self._probe_commands()

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

        negotiated, notes = accept_features(self.device_features, self.driver_features)
        for note in notes:
            log.warning("%s", note)
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
        self.carrier = self.link_up

        self.max_queue_pairs = 1
        if self.has_feature(VirtioNetF.MQ) and self.has_feature(VirtioNetF.CTRL_VQ):
            pairs = await self.pci.config_read16(VirtioNetCfg.MAX_VIRTQUEUE_PAIRS)
            if VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN <= pairs <= VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX:
                self.max_queue_pairs = pairs
            else:
                log.warning("max_virtqueue_pairs %d outside %d..%d: using 1 pair", pairs,
                            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX)
        self.curr_queue_pairs = self.real_num_tx_queues = 1

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
        """Allocate every virtqueue, give them MSI-X vectors, then enable them
        all (sections 4.1.5.1.2, 4.1.5.1.3)."""
        indexes = self._queue_indexes()
        num_queues = await self.pci.get_num_queues()
        if num_queues < len(indexes):
            raise VirtioNetProbeError(
                f"device has {num_queues} virtqueues, the driver needs {len(indexes)} "
                f"({self.max_queue_pairs} pair(s)"
                f"{' and a control queue' if self.ctrl_queue_index is not None else ''})")

        for index in indexes:
            max_size = await self.pci.get_queue_max_size(index)
            if max_size == 0:
                raise VirtioNetProbeError(f"queue {index} is not available (queue_size 0)")
            self.queues[index] = await SplitVirtqueue.allocate(
                self.transport, index, min(max_size, self.queue_size),
                features=self.negotiated_features, start_index=self.ring_start_index)
        await self._find_vqs()

        for index in indexes:
            await self.pci.enable_queue(index)
        self._init_datapath_queues()
        if self.cvq is not None:
            await self.cvq.disable_cb()           # polled: no used buffer notifications

    def _has_callback(self, index: int) -> bool:
        """Whether a queue wants interrupts: the data queues; not the control
        queue, which send_command polls (Linux registers no callback for it)."""
        return index != self.ctrl_queue_index

    async def _find_vqs(self) -> None:
        """Program every queue with a vector, as Linux's vp_find_vqs: MSI-X with a
        vector per queue (that has a callback) plus one for configuration
        changes; failing that, one vector shared by the queues plus one for
        configuration changes; failing that, no vector (Linux would try INTx,
        which a Transport does not offer: the harness polls).

        A policy fails when the transport has too few vectors or when the
        device reads a vector back as NO_VECTOR (section 4.1.5.1.2.1).
        """
        available = self.transport.msix_vectors_available()
        wanted = 1 + sum(map(self._has_callback, self.queues))
        for policy, needed in ((VectorPolicy.EACH, wanted), (VectorPolicy.SHARED, 2)):
            if available < needed:
                log.info("MSI-X %s: %d vectors needed, %d available", policy.value, needed,
                         available)
                continue
            try:
                await self._assign_vectors(policy)
                return
            except VirtioPciVectorError as err:
                log.warning("MSI-X %s: %s", policy.value, err)
        log.warning("no MSI-X vectors for %d queues (INTx is not supported): the harness "
                    "must poll", len(self.queues))
        await self._assign_vectors(VectorPolicy.NONE)

    async def _assign_vectors(self, policy: VectorPolicy) -> None:
        """Write config_msix_vector and every queue's size, rings and vector."""
        no_vector = spec.VIRTIO_MSI_NO_VECTOR
        config = no_vector if policy is VectorPolicy.NONE else CONFIG_MSIX_VECTOR
        await self.pci.set_config_vector(config)
        next_vector = CONFIG_MSIX_VECTOR + 1
        for index, vq in self.queues.items():
            if policy is VectorPolicy.NONE or not self._has_callback(index):
                vector = no_vector
            elif policy is VectorPolicy.SHARED:
                vector = SHARED_VQ_MSIX_VECTOR
            else:
                vector, next_vector = next_vector, next_vector + 1
            await self.pci.setup_queue(index, vq.num, vq.desc_addr, vq.avail_addr,
                                       vq.used_addr, vector)
            vq.msix_vector = vector
            vq.notify_address = self.pci.notify_address(index)
        self.vector_policy = policy
        self.config_vector = config
        self.msix = policy is not VectorPolicy.NONE

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
        self.cvq = self.queues.get(self.ctrl_queue_index)

    def _check_pair(self, pair: int) -> None:
        """A pair that exists: NAPI runs on every pair, in use or not."""
        if not 0 <= pair < len(self.rq):
            raise VirtioNetError(f"queue pair {pair} does not exist "
                                 f"(max_queue_pairs {len(self.rq)})")

    def _check_active_pair(self, pair: int) -> None:
        """A pair in use: only those transmit (section 5.1.6.5.5.1)."""
        if not 0 <= pair < self.real_num_tx_queues:
            raise VirtioNetError(f"queue pair {pair} is not in use "
                                 f"(curr_queue_pairs {self.curr_queue_pairs}, "
                                 f"{self.real_num_tx_queues} transmitting)")

    # --- open / close (ndo_open, ndo_stop) --------------------------------------------------

    async def open(self) -> None:
        """Fill the receive rings of the pairs in use, enable NAPI on every pair
        and start the transmit queues in use (virtnet_open), then send the
        receive filters (dev_open's dev_set_rx_mode)."""
        if not self.ready:
            raise VirtioNetError("open() before a successful probe()")
        if self.is_open:
            return
        for pair in range(self.max_queue_pairs):
            rq, sq = self.rq[pair], self.sq[pair]
            if pair < self.curr_queue_pairs:
                await self.try_fill_recv(rq)
            await self.virtnet_napi_enable(rq.napi, rq.vq)
            await self.virtnet_napi_enable(sq.napi, sq.vq)
        self.is_open = True
        for sq in self.sq:
            self._start_queue(sq)
        await self._apply_rx_mode()

    async def close(self) -> None:
        """Disable NAPI and stop transmitting (virtnet_close). Posted buffers stay
        posted until remove(); callbacks are disabled so the device stops
        interrupting (Linux lets NAPI ignore them)."""
        if not self.is_open:
            return
        self.is_open = False
        for pair in range(self.max_queue_pairs):
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
        await self.vp_vring_interrupt(vq.msix_vector)
        return True

    async def vp_vring_interrupt(self, vector: int | None = None) -> bool:
        """The handler of a queue vector (vp_vring_interrupt): every queue on
        `vector` (all queues if None) runs vring_interrupt, so a shared vector
        reaches each. Returns whether any had used buffers."""
        handled = False
        for vq in list(self.queues.values()):
            if vector is None or vq.msix_vector == vector:
                handled |= await vq.vring_interrupt()
        return handled

    async def vp_interrupt(self) -> VirtioIsr:
        """What Linux's INTx handler does, for a harness without vectors: read
        (and so clear) ISR status, then handle a configuration change and
        the queues (section 4.1.4.5). Returns the ISR bits read."""
        isr = await self.pci.read_isr()
        if isr & VirtioIsr.CONFIG:
            await self.config_changed()
        if isr & VirtioIsr.QUEUE:
            await self.vp_vring_interrupt()
        return isr

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
        self._check_active_pair(queue_index)
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

    def _may_run(self, sq: SendQueue) -> bool:
        """Whether a transmit queue may take frames: open, carrier on, its pair
        in use and room for a maximal packet."""
        return (self.is_open and self.carrier and sq.pair < self.real_num_tx_queues
                and sq.vq.num_free >= sq.stop_threshold)

    def _maybe_wake(self, sq: SendQueue) -> None:
        """Wake a queue that stopped when full (netif_tx_wake_queue), counted."""
        if sq.stopped and self._may_run(sq):
            sq.stopped = False
            sq.stats.wakes += 1

    def _start_queue(self, sq: SendQueue) -> None:
        """Start a queue for open, carrier on or a pair put in use (not counted)."""
        if sq.stopped and self._may_run(sq):
            sq.stopped = False

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

    async def send(self, frame: bytes | Sequence[bytes], queue_index: int | None = None, *,
                   timeout_ns: int = 1_000_000) -> int:
        """start_xmit on `queue_index` (by default `select_queue(frame)`), waiting
        while the queue is stopped: poll_tx (reclaim what the device is done
        with, re-arm the interrupt), then, if still stopped, wait for the
        transmit interrupt. Polling before waiting means an interrupt raised
        before the wait began is not needed. Returns the queue used.

        Raises TimeoutError if no interrupt comes within `timeout_ns`, and
        VirtioNetError while the device is closed or the carrier is off. A
        queue chosen here is chosen again on each try: set_channels may have
        changed the pairs in use meanwhile.
        """
        choose = queue_index is None
        while True:
            if choose:
                queue_index = self.select_queue(frame)
            self._check_active_pair(queue_index)
            sq = self.sq[queue_index]
            if await self.start_xmit(frame, queue_index) == NETDEV_TX_OK:
                return queue_index
            if not self.is_open:
                raise VirtioNetError("send() on a closed device")
            if not self.carrier:
                raise VirtioNetError("send() with the carrier off (link down)")
            if not sq.stopped:
                raise VirtioNetError(f"tx queue {queue_index} is in use by {sq.lock_owner}")
            await self.poll_tx(queue_index)
            if not sq.stopped or sq.napi.scheduled or queue_index >= self.real_num_tx_queues:
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

    # --- control virtqueue (section 5.1.6.5) ------------------------------------------------

    async def send_command(self, cls: int, cmd: int, out_sgs: Sequence[bytes] = (), *,
                           timeout_ns: int = CTRL_TIMEOUT_NS) -> bool:
        """Send one control command and wait for its ack (virtnet_send_command).

        The buffer is class and command, one segment per non-empty piece of
        `out_sgs`, then the device-writable ack byte (section 5.1.6.5). After
        the kick the used ring is polled: the control queue has no
        interrupt. Returns True iff the device answered VIRTIO_NET_OK; a
        buffer returned without an ack counts as an error, as in Linux.

        Raises VirtioNetCtrlTimeout if the buffer is not used within
        `timeout_ns` (then, like DEVICE_NEEDS_RESET, the control queue is out
        of use until the device is reset), and VirtioNetError without a
        control queue or while another command is in flight (Linux waits on
        a mutex; nothing here waits, so a harness cannot deadlock).
        """
        if self.cvq is None:
            raise VirtioNetError("no control queue: CTRL_VQ was not negotiated")
        if self.ctrl_failed is not None:
            raise VirtioNetError(f"the control queue is out of use ({self.ctrl_failed}): "
                                 f"reset the device (remove and probe)")
        if self.ctrl_busy:
            raise VirtioNetError("the control queue is busy with another command")
        self.ctrl_busy = True
        try:
            return await self._send_command(cls, cmd, [bytes(p) for p in out_sgs if len(p)],
                                            timeout_ns)
        finally:
            self.ctrl_busy = False
            if self._announce_ack_deferred and self.ctrl_failed is None:
                self._announce_ack_deferred = False
                await self._ack_announce()

    def _ctrl_buffer(self, size: int) -> DmaBuffer:
        """The command buffer (Linux's vi->ctrl), grown when a command needs more."""
        if self._ctrl_buf is None or self._ctrl_buf.size < size:
            size = max(size, CTRL_BUF_SIZE)
            self._ctrl_buf = DmaBuffer(self.transport.dma_alloc(size, DMA_BUF_ALIGN), size)
        return self._ctrl_buf

    async def _send_command(self, cls: int, cmd: int, pieces: list[bytes],
                            timeout_ns: int) -> bool:
        cvq = self.cvq
        buf = self._ctrl_buffer(CTRL_DATA_OFFSET + sum(len(p) + TX_FRAG_GAP for p in pieces))
        ack_addr = buf.addr + CTRL_ACK_OFFSET
        await self.transport.dma_write(buf.addr, bytes([cls, cmd]))
        await self.transport.dma_write(ack_addr, bytes([CTRL_ACK_UNSET]))
        out = [(buf.addr, spec.VIRTIO_NET_CTRL_HDR_SIZE)]
        offset = CTRL_DATA_OFFSET
        for piece in pieces:
            await self.transport.dma_write(buf.addr + offset, piece)
            out.append((buf.addr + offset, len(piece)))
            offset += len(piece) + TX_FRAG_GAP
        self._ctrl_seq += 1
        token = CtrlToken(self._ctrl_seq, cls, cmd)
        try:
            await cvq.add_sgs(out, [(ack_addr, spec.VIRTIO_NET_CTRL_ACK_SIZE)], token)
        except VirtqueueFullError as err:
            log.warning("control queue: command not placed: %s", err)
            self.ctrl_stats.errors += 1
            return False
        self.ctrl_stats.commands += 1
        if await cvq.kick_prepare():
            await cvq.notify()
        got, _ = await self._ctrl_wait(timeout_ns, token)
        if got != token:
            raise VirtioNetError(f"control queue: the device used {got}, not {token}")
        ack = (await self.transport.dma_read(ack_addr, 1))[0]
        if ack == VirtioNetCtrlAck.OK:
            self.ctrl_stats.ok += 1
            return True
        self.ctrl_stats.errors += 1
        log.warning("control command class %d command %d: %s", cls, cmd,
                    "no ack written" if ack == CTRL_ACK_UNSET else f"ack {ack}")
        return False

    async def _ctrl_wait(self, timeout_ns: int, token: CtrlToken) -> tuple:
        """Poll the control queue's used ring (Linux's cpu_relax loop, bounded).

        Each round reads device_status: an MMIO read that lets a simulator
        run, and that notices DEVICE_NEEDS_RESET. With Transport.delay the
        pauses between rounds double from CTRL_POLL_MIN_NS to CTRL_POLL_MAX_NS
        and add up to `timeout_ns`; without it each round counts as
        CTRL_POLL_MIN_NS.
        """
        waited, pause = 0, CTRL_POLL_MIN_NS
        while (got := await self.cvq.get_buf()) is None:
            if await self.pci.get_status() & VirtioStatus.DEVICE_NEEDS_RESET:
                self.ctrl_failed = "the device set DEVICE_NEEDS_RESET"
                raise VirtioNetError(f"control command {token.cls}/{token.cmd}: "
                                     f"{self.ctrl_failed}")
            if waited >= timeout_ns:
                self.ctrl_failed = (f"command class {token.cls} command {token.cmd} got no "
                                    f"answer within {timeout_ns} ns")
                self.ctrl_stats.timeouts += 1
                raise VirtioNetCtrlTimeout(f"control queue: {self.ctrl_failed}")
            try:
                await self.transport.delay(pause)
            except NotImplementedError:
                waited += CTRL_POLL_MIN_NS
            else:
                waited += pause
                pause = min(2 * pause, CTRL_POLL_MAX_NS)
        return got

    async def _probe_commands(self) -> None:
        """What virtnet_probe sends once the device is live: a random MAC when
        the device gave none, the queue pairs, and the status (an ANNOUNCE
        already pending is acknowledged)."""
        if self.cvq is None:
            return
        if not self.has_feature(VirtioNetF.MAC) and self.has_feature(VirtioNetF.CTRL_MAC_ADDR):
            if not await self.send_command(VirtioNetCtrlClass.MAC, VirtioNetCtrlMac.ADDR_SET,
                                           [self.mac]):
                raise VirtioNetProbeError(
                    f"the device refused the driver's MAC {format_mac(self.mac)} "
                    f"(MAC_ADDR_SET)")
        pairs = min(self.requested_queue_pairs or self.max_queue_pairs, self.max_queue_pairs)
        try:
            await self._set_queues(pairs)
        except VirtioNetCtrlError as err:
            log.warning("%s: using 1 queue pair", err)
        await self._update_status()

    # --- multiqueue (section 5.1.6.5.5) ---------------------------------------------------------

    async def set_channels(self, queue_pairs: int) -> None:
        """Use `queue_pairs` queue pairs (ethtool -L combined N: virtnet_set_channels).

        Raises ValueError outside 1..max_queue_pairs and VirtioNetCtrlError if
        the device refuses; curr_queue_pairs changes only when it accepts.
        Without MQ there is one pair and nothing to send.
        """
        if not self.ready:
            raise VirtioNetError("set_channels() before a successful probe()")
        if not VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN <= queue_pairs <= self.max_queue_pairs:
            raise ValueError(f"{queue_pairs} queue pairs: the device has "
                             f"{VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN}..{self.max_queue_pairs}")
        await self._set_queues(queue_pairs)

    async def _set_queues(self, pairs: int) -> None:
        """VQ_PAIRS_SET (_virtnet_set_queues), keeping the spec's rules
        (section 5.1.6.5.5.1): the transmit queues of pairs leaving use are
        stopped, under their lock, and real_num_tx_queues lowered before the
        command is in the ring, so nothing more is queued there (Linux lowers
        it after the command); their buffers in flight are reclaimed as usual
        (NAPI stays on for every pair). Receive queues of pairs coming into
        use are filled before the command (Linux refills after it), so the
        first frames steered there find buffers. A refused command restores
        both."""
        if self.cvq is None or not self.has_feature(VirtioNetF.MQ):
            return
        old = self.curr_queue_pairs
        leaving = self.sq[pairs:old]
        locked: list[SendQueue] = []
        try:
            for sq in leaving:
                if not self._tx_trylock(sq, "set_channels"):
                    raise VirtioNetError(f"tx queue {sq.vq.index} is in use by "
                                         f"{sq.lock_owner}: retry set_channels")
                locked.append(sq)
            was_stopped = [sq.stopped for sq in leaving]
            for sq in leaving:
                sq.stopped = True
            self.real_num_tx_queues = min(old, pairs)
            if self.is_open:
                for rq in self.rq[old:pairs]:
                    await self.try_fill_recv(rq)
            ok = await self.send_command(VirtioNetCtrlClass.MQ, VirtioNetCtrlMq.VQ_PAIRS_SET,
                                         [pairs.to_bytes(spec.VIRTIO_NET_CTRL_MQ_DATA_SIZE,
                                                         "little")])
            if not ok:
                self.real_num_tx_queues = old
                for sq, stopped in zip(leaving, was_stopped):
                    sq.stopped = stopped
                raise VirtioNetCtrlError(f"the device refused VQ_PAIRS_SET {pairs} "
                                         f"(curr_queue_pairs stays {old})")
            self.curr_queue_pairs = self.real_num_tx_queues = pairs
            log.info("queue pairs in use: %d (was %d)", pairs, old)
            for sq in self.sq[old:pairs]:
                self._start_queue(sq)
            for sq in leaving:                      # what the device is done with
                await self.free_old_xmit(sq)
        finally:
            for sq in locked:
                await self._tx_unlock(sq)

    def select_queue(self, frame: bytes | Sequence[bytes]) -> int:
        """The transmit queue for a frame (netdev_pick_tx -> skb_tx_hash): the
        flow's Toeplitz hash (driver/flow.py) scaled onto the pairs in use, so
        a flow keeps its queue while curr_queue_pairs does not change. Frames
        without IP go to queue 0."""
        if self.real_num_tx_queues == 1:
            return 0
        data = bytes(frame) if isinstance(frame, (bytes, bytearray, memoryview)) \
            else b"".join(map(bytes, frame))
        return reciprocal_scale(flow_hash(data), self.real_num_tx_queues)

    # --- receive filters (sections 5.1.6.5.1-5.1.6.5.3) -----------------------------------------

    async def set_rx_mode(self, *, promisc: bool = False, allmulti: bool = False,
                          uc: Sequence[bytes] = (), mc: Sequence[bytes] = ()) -> bool:
        """ndo_set_rx_mode: promiscuous and all-multicast flags, and the unicast
        and multicast address lists. Remembered, and sent while open (open()
        sends them, as dev_open does) as PROMISC, ALLMULTI and one MAC
        TABLE_SET holding both tables (virtnet_set_rx_mode). Returns True
        unless a command failed (Linux only warns); without CTRL_RX nothing
        is sent."""
        uc = tuple(self._check_mac(mac, multicast=False) for mac in uc)
        mc = tuple(self._check_mac(mac, multicast=True) for mac in mc)
        self.rx_mode = RxMode(bool(promisc), bool(allmulti), uc, mc)
        if not self.is_open:
            return True
        return await self._apply_rx_mode()

    @staticmethod
    def _check_mac(mac: bytes, *, multicast: bool) -> bytes:
        mac = bytes(mac)
        if len(mac) != spec.ETH_ALEN:
            raise ValueError(f"a MAC address has {spec.ETH_ALEN} bytes, not {len(mac)}")
        if bool(mac[0] & MAC_MULTICAST_BIT) != multicast:
            kind = "multicast" if multicast else "unicast"
            raise ValueError(f"{format_mac(mac)} is not a {kind} address")
        return mac

    async def _apply_rx_mode(self) -> bool:
        if self.cvq is None or not self.has_feature(VirtioNetF.CTRL_RX):
            return True                 # Linux: "can't dynamically set rx mode"
        mode, ok = self.rx_mode, True
        for cmd, on in ((VirtioNetCtrlRx.PROMISC, mode.promisc),
                        (VirtioNetCtrlRx.ALLMULTI, mode.allmulti)):
            if not await self.send_command(VirtioNetCtrlClass.RX, cmd, [bytes([on])]):
                log.warning("failed to %sable %s", "en" if on else "dis", cmd.name)
                ok = False
        tables = [len(macs).to_bytes(spec.VIRTIO_NET_CTRL_MAC_ENTRIES_SIZE, "little")
                  + b"".join(macs) for macs in (mode.uc, mode.mc)]
        if not await self.send_command(VirtioNetCtrlClass.MAC, VirtioNetCtrlMac.TABLE_SET,
                                       tables):
            log.warning("failed to set the MAC filter tables")
            ok = False
        return ok

    async def set_rx_flag(self, cmd: VirtioNetCtrlRx, on: bool) -> bool:
        """One VIRTIO_NET_CTRL_RX command (the CTRL_RX_EXTRA ones: ALLUNI,
        NOMULTI, NOUNI, NOBCAST; PROMISC and ALLMULTI also update rx_mode).
        VirtioNetError if its feature is not negotiated (5.1.6.5.1.2: the
        driver MUST NOT send it). Returns whether the device accepted it."""
        cmd = VirtioNetCtrlRx(cmd)
        feature = spec.VIRTIO_NET_CTRL_FEATURE[(VirtioNetCtrlClass.RX, cmd)]
        if not self.has_feature(feature):
            raise VirtioNetError(f"RX {cmd.name} needs {feature.name}, not negotiated")
        ok = await self.send_command(VirtioNetCtrlClass.RX, cmd, [bytes([bool(on)])])
        if ok and cmd in (VirtioNetCtrlRx.PROMISC, VirtioNetCtrlRx.ALLMULTI):
            self.rx_mode = dataclasses.replace(self.rx_mode, **{cmd.name.lower(): bool(on)})
        return ok

    async def set_mac_address(self, mac: bytes) -> None:
        """ndo_set_mac_address (virtnet_set_mac_address). With CTRL_MAC_ADDR the
        device is told (MAC ADDR_SET, section 5.1.6.5.2) and VirtioNetCtrlError
        leaves the address unchanged if it refuses. Without it the address
        changes in the driver only: config space `mac` is read-only to a
        modern driver (section 5.1.4; only legacy drivers wrote it), so the
        device keeps filtering on its own address unless told otherwise
        (promiscuous mode or the unicast table)."""
        mac = self._check_mac(mac, multicast=False)
        if not any(mac):
            raise ValueError("00:00:00:00:00:00 is not a valid address")
        if self.has_feature(VirtioNetF.CTRL_MAC_ADDR):
            if not await self.send_command(VirtioNetCtrlClass.MAC, VirtioNetCtrlMac.ADDR_SET,
                                           [mac]):
                raise VirtioNetCtrlError(f"the device refused MAC address {format_mac(mac)}")
        else:
            log.info("MAC %s set in the driver only (no CTRL_MAC_ADDR)", format_mac(mac))
        self.mac = mac

    async def vlan_rx_add_vid(self, vid: int) -> bool:
        """Accept VLAN `vid` (ndo_vlan_rx_add_vid: VLAN ADD, section 5.1.6.5.3).
        Returns whether the device accepted it (Linux only warns)."""
        return await self._vlan_command(VirtioNetCtrlVlan.ADD, vid)

    async def vlan_rx_kill_vid(self, vid: int) -> bool:
        """Stop accepting VLAN `vid` (ndo_vlan_rx_kill_vid: VLAN DEL)."""
        return await self._vlan_command(VirtioNetCtrlVlan.DEL, vid)

    async def _vlan_command(self, cmd: VirtioNetCtrlVlan, vid: int) -> bool:
        if not 0 <= vid < spec.VLAN_N_VID:
            raise ValueError(f"VLAN id {vid} outside 0..{spec.VLAN_N_VID - 1}")
        if not self.has_feature(VirtioNetF.CTRL_VLAN):
            raise VirtioNetError("VLAN filtering needs CTRL_VLAN, not negotiated")
        ok = await self.send_command(VirtioNetCtrlClass.VLAN, cmd,
                                     [vid.to_bytes(spec.VIRTIO_NET_CTRL_VLAN_DATA_SIZE, "little")])
        if not ok:
            log.warning("failed to %s VLAN id %d", cmd.name.lower(), vid)
        elif cmd == VirtioNetCtrlVlan.ADD:
            self.vlans.add(vid)
        else:
            self.vlans.discard(vid)
        return ok

    # --- configuration changes (sections 4.1.4.5, 5.1.4, 5.1.6.5.4) ------------------------------

    async def wait_config_change(self, timeout_ns: int = 1_000_000) -> bool:
        """Wait for the configuration change vector, then `config_changed()`.
        False on timeout; VirtioNetError without a vector (use vp_interrupt)."""
        if self.config_vector == spec.VIRTIO_MSI_NO_VECTOR:
            raise VirtioNetError("no MSI-X vector for configuration changes: call "
                                 "vp_interrupt() instead")
        try:
            await self.transport.wait_interrupt(self.config_vector, timeout_ns)
        except TimeoutError:
            return False
        await self.config_changed()
        return True

    async def config_changed(self) -> None:
        """A configuration change notification (virtnet_config_changed_work):
        re-read status; ANNOUNCE is handled (on_announce, then ANNOUNCE_ACK);
        a LINK_UP change turns the carrier on or off, waking or stopping the
        transmit queues. Counted in link_stats."""
        self.link_stats.config_changes += 1
        await self._update_status()

    async def _update_status(self) -> None:
        if not self.has_feature(VirtioNetF.STATUS):
            return
        status = VirtioNetS(await self.pci.config_read16(VirtioNetCfg.STATUS))
        if status & VirtioNetS.ANNOUNCE and self.has_feature(VirtioNetF.GUEST_ANNOUNCE):
            self.link_stats.announces += 1
            if self.on_announce is not None:
                self.on_announce()              # netdev_notify_peers
            await self._ack_announce()
        up = bool(status & VirtioNetS.LINK_UP)
        if up != self.link_up:
            self.link_up = up
            self._set_carrier(up)

    async def _ack_announce(self) -> None:
        """ANNOUNCE_ACK (section 5.1.6.5.4); deferred while another command runs."""
        if self.ctrl_busy:
            self._announce_ack_deferred = True
            return
        if not await self.send_command(VirtioNetCtrlClass.ANNOUNCE, VirtioNetCtrlAnnounce.ACK):
            log.warning("failed to acknowledge the link announcement")

    def _set_carrier(self, up: bool) -> None:
        """netif_carrier_on + netif_tx_wake_all_queues, or carrier_off + stop all."""
        if up == self.carrier:
            return
        self.carrier = up
        if up:
            self.link_stats.carrier_up += 1
            for sq in self.sq:
                self._start_queue(sq)
        else:
            self.link_stats.carrier_down += 1
            for sq in self.sq:
                sq.stopped = True
        log.info("link %s", "up" if up else "down")

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
            tx_queues=[dataclasses.replace(s) for s in tx],
            ctrl=dataclasses.replace(self.ctrl_stats),
            link=dataclasses.replace(self.link_stats))

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
        if self.cvq is not None:                  # a command that never got an answer
            while await self.cvq.detach_unused_buf() is not None:
                pass

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
            "carrier": self.carrier,
            "msix": self.msix,
            "vector_policy": self.vector_policy.value,
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
        self.cvq = None
