"""virtio-net driver: feature validation and probe (virtio 1.2 section 5.1).

The probe follows the driver initialisation sequence of section 3.1.1:
reset, ACKNOWLEDGE, DRIVER, read and validate the device features, accept a
subset, FEATURES_OK (checked by reading it back), device configuration,
virtqueues, DRIVER_OK.

What it does not do yet, and why:

- no buffers are posted and no control-queue commands are sent (add_buf and
  get_buf come later), so the device stays on its first queue pair
  (`curr_queue_pairs` is 1, section 5.1.6.5.5) whatever `max_queue_pairs` is;
- interrupts: MSI-X vectors are assigned when the transport has enough of
  them; otherwise no vector is used at all, because the endpoint cannot raise
  INTx yet (the driver would have to poll).
"""
from __future__ import annotations

import logging
import os
import random

from hdl import spec
from hdl.spec import VirtioF, VirtioNetCfg, VirtioNetF, VirtioNetS, VirtioStatus

from .transport import Transport, TransportError
from .virtio_pci_modern import VirtioPciError, VirtioPciModernDevice
from .virtio_ring import SplitVirtqueue, VirtqueueError

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


class VirtioNetProbeError(Exception):
    """Probe failed; `problems` lists every cause found."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("virtio-net probe failed: " + "; ".join(self.problems))


class VirtioNet:
    """A virtio-net device driven over a Transport.

    After `await probe()`: `negotiated_features`, `mac`, `mtu`, `link_up`,
    `max_queue_pairs`, `curr_queue_pairs` and `queues` (queue index ->
    SplitVirtqueue) describe the device; `summary()` gathers them.
    """

    def __init__(self, transport: Transport, *, queue_size: int = DEFAULT_QUEUE_SIZE,
                 rng: random.Random | None = None) -> None:
        self.transport = transport
        self.pci = VirtioPciModernDevice(transport)
        self.queue_size = queue_size
        self.rng = rng
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
        self.queues.clear()
        try:
            await self.pci.reset()
            await self.pci.set_status(VirtioStatus.FAILED)
        except VirtioPciError as reset_err:
            err.problems.append(f"and the device could not be reset: {reset_err}")

    async def _negotiate_features(self) -> None:
        """Read, validate and accept features; check FEATURES_OK (section 3.1.1, 2.2)."""
        self.device_features = await self.pci.get_features()
        log.info("device features: %s", format_features(self.device_features))
        problems = validate_features(self.device_features)
        if not self.device_features & VirtioF.VERSION_1:
            problems.append("device does not offer VERSION_1, required of a modern device")
        if problems:
            raise VirtioNetProbeError(problems)

        negotiated = int(self.device_features & DRIVER_FEATURES)
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
            vq = await SplitVirtqueue.allocate(self.transport, index,
                                               min(max_size, self.queue_size))
            vector = index + 1 if self.msix else spec.VIRTIO_MSI_NO_VECTOR
            await self.pci.setup_queue(index, vq.num, vq.desc_addr, vq.avail_addr,
                                       vq.used_addr, vector)
            vq.msix_vector = vector
            vq.notify_address = self.pci.notify_address(index)
            self.queues[index] = vq

        for index in indexes:
            await self.pci.enable_queue(index)

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
        }

    async def remove(self) -> None:
        """Stop the device: reset it, which releases every virtqueue."""
        await self.pci.reset()
        self.queues.clear()
        self.ready = False
