"""Reference model of the virtio-net control virtqueue (virtio 1.2 section 5.1.6.5).

`ControlQueueModel` is what a device does with control commands and with the
state they set: receive filters, MAC tables, VLAN table, default MAC, the
ANNOUNCE status bit and the number of queue pairs in use with their receive
steering. It knows nothing of rings or DMA: `FakeVirtioNetDevice`
(driver/testing.py) reads a command buffer from the control queue, hands the
bytes to `handle`, writes the ack and returns the buffer used. The gateware's
control-queue engine is to follow the same rules, which are listed in the
class docstring.
"""
from __future__ import annotations

import dataclasses
import enum

from hdl import spec
from hdl.spec import (VirtioNetCtrlAck, VirtioNetCtrlClass, VirtioNetCtrlMac, VirtioNetCtrlMq,
                      VirtioNetCtrlRx, VirtioNetCtrlVlan, VirtioNetF)

from .flow import FlowKeys, flow_dissect, flow_hash, vlan_id

MAC_TABLE_ENTRIES = 16          # per table (the gateware's); more turns the table's kind to "accept all"
CTRL_MAX_COMMAND = 256          # class + command + data the gateware takes (hdl/virtio/virtqueues.py)
RSS_INDIRECTION_ENTRIES = 128   # steering table; index = hash & (entries - 1)
ETH_BROADCAST = b"\xff" * spec.ETH_ALEN
ETH_MULTICAST_BIT = 0x01        # I/G bit of the first address byte


def is_multicast(mac: bytes) -> bool:
    return bool(mac[0] & ETH_MULTICAST_BIT)


class CtrlError(enum.Enum):
    """Why a command got VIRTIO_NET_ERR (kept in the log for tests)."""
    SHORT = "shorter than class + command"
    UNKNOWN = "unknown class or command"
    NOT_NEGOTIATED = "its feature was not negotiated"
    NOT_IMPLEMENTED = "not implemented by this device"
    LENGTH = "data of the wrong length"
    VALUE = "data out of range"
    NOTHING_TO_ACK = "no ANNOUNCE to acknowledge"
    TOO_LONG = "longer than the device's command buffer"


@dataclasses.dataclass(frozen=True)
class CtrlRecord:
    """One command buffer as the device handled it."""
    cls: int | None
    cmd: int | None
    data: bytes
    ack: VirtioNetCtrlAck | None        # None: no writable byte, nothing written
    error: CtrlError | None = None


@dataclasses.dataclass(frozen=True)
class CtrlResult:
    """What the ring engine writes back: the ack byte (if any) and the used length."""
    ack: VirtioNetCtrlAck | None
    used_len: int


@dataclasses.dataclass
class RxFilter:
    """Receive filter state (sections 5.1.6.5.1-5.1.6.5.3)."""
    promisc: bool = True            # until the driver says otherwise (see rule 7)
    allmulti: bool = False
    alluni: bool = False
    nomulti: bool = False
    nouni: bool = False
    nobcast: bool = False
    uc_table: tuple[bytes, ...] = ()
    mc_table: tuple[bytes, ...] = ()
    uc_overflow: bool = False
    mc_overflow: bool = False


RX_FLAG_NAMES = {
    VirtioNetCtrlRx.PROMISC: "promisc", VirtioNetCtrlRx.ALLMULTI: "allmulti",
    VirtioNetCtrlRx.ALLUNI: "alluni", VirtioNetCtrlRx.NOMULTI: "nomulti",
    VirtioNetCtrlRx.NOUNI: "nouni", VirtioNetCtrlRx.NOBCAST: "nobcast",
}


class _Refused(Exception):
    def __init__(self, reason: CtrlError) -> None:
        self.reason = reason


class ControlQueueModel:
    """The device side of the control virtqueue, and the state it controls.

    Rules, per command buffer (`handle(out, in_len)`):

    1. A buffer is its device-readable part (`out`: class, command, data)
       followed by its device-writable part of `in_len` bytes (section 2.7.4
       orders them). The device writes the ack into the first writable byte
       and returns the buffer with used length 1. With no writable byte it
       cannot answer: used length 0, nothing changes (counted as
       `unanswerable`). Writable bytes past the first are left alone.
    2. VIRTIO_NET_ERR, and no state changes, when:
       - `out` is shorter than class + command (2 bytes);
       - the class or command is unknown (spec.VIRTIO_NET_CTRL_FEATURE);
       - the command's feature was not negotiated;
       - the command is RSS_CONFIG, HASH_CONFIG or GUEST_OFFLOADS_SET, which
         this device does not implement (it never offers their features);
       - the data length is not exactly the command's (RX class: 1; VLAN: 2;
         MQ VQ_PAIRS_SET: 2; MAC ADDR_SET: 6; ANNOUNCE ACK: 0; MAC TABLE_SET:
         4 + 6n + 4 + 6m with both counts read from the data). Data put in
         the writable part ("wrong direction") therefore fails as too short;
       - a value is out of range: a VLAN id of 4096 or more; virtqueue_pairs outside 1..max_virtqueue_pairs
         (section 5.1.6.5.5.1); a multicast or all-zero address for ADDR_SET
         (a table entry of the other kind is kept: it never matches);
       - more than CTRL_MAX_COMMAND bytes of class, command and data (the
         gateware's command buffer);
       - ANNOUNCE ACK while the ANNOUNCE status bit is clear (QEMU's rule).
    3. VIRTIO_NET_OK once the command has taken effect (the state changes
       before the buffer is used, sections 5.1.6.5.2.1, 5.1.6.5.4.1):
       - RX class: sets the flag; the byte means on when not zero (the spec
         says 0 or 1; Linux's header and QEMU read any non-zero as on);
       - MAC TABLE_SET: replaces both tables; a table of more than
         `mac_table_entries` addresses keeps none and sets that table's
         overflow, which accepts every address of its kind (the spec's
         footnote allows this);
       - MAC ADDR_SET: the default MAC, also shown in config space `mac`;
       - VLAN ADD / DEL: adds or removes the id (idempotent);
       - ANNOUNCE ACK: clears the ANNOUNCE status bit;
       - MQ VQ_PAIRS_SET: the pairs in use; receive steering changes at once.
    4. Reset (`reset()`): every flag back to rule 7's defaults, both tables
       empty (5.1.6.5.2.1), VLAN table empty, the default MAC back to the
       device's own, ANNOUNCE clear, one queue pair in use (5.1.6.5.5.1).
    5. Receive filter (`accepts(frame)`, QEMU's order): promisc accepts all
       (5.1.6.5.1.1: even with other modes on). With CTRL_VLAN negotiated, a
       tagged frame whose VLAN id is not in the table is dropped (without
       CTRL_VLAN every VLAN passes). Broadcast: accepted unless nobcast.
       Other multicast: dropped if nomulti; accepted if allmulti, if the
       multicast table overflowed or lists it. Unicast: dropped if nouni;
       accepted if alluni, if the unicast table overflowed, if it is the
       default MAC or in the unicast table. Everything else is dropped.
    6. Receive steering (`rx_queue(frame)`, section 5.1.6.5.5): with one pair,
       receiveq1. Otherwise the Toeplitz hash of the flow (driver/flow.py,
       section 5.1.6.4.3's fields, the default RSS key) indexes a 128-entry
       table whose entry i is i mod pairs; frames without IP go to
       receiveq1. With `follow_tx_flows`, a flow the driver last transmitted
       on transmitqX is steered to receiveqX (the spec's SHOULD) while X is
       in use; the plain hash is the MAY ("a random queue") that gateware
       can afford.
    7. Defaults: promisc on, every other flag off. A driver without CTRL_RX
       cannot turn filtering on, so the device receives everything until
       the driver asks otherwise (QEMU does the same).
    """

    def __init__(self, *, max_pairs: int, mac: bytes,
                 mac_table_entries: int = MAC_TABLE_ENTRIES,
                 follow_tx_flows: bool = False) -> None:
        self.max_pairs = max_pairs
        self.device_mac = bytes(mac)
        self.mac_table_entries = mac_table_entries
        self.follow_tx_flows = follow_tx_flows
        self.features = 0
        self.log: list[CtrlRecord] = []
        self.unanswerable = 0
        self.reset()

    # --- state ----------------------------------------------------------------------

    def reset(self) -> None:
        """Rule 4: the state after a device reset (features are negotiated again)."""
        self.features = 0
        self.rx = RxFilter()
        self.vlans: set[int] = set()
        self.mac = self.device_mac
        self.announce = False
        self.pairs = 1
        self.tx_flows: dict[FlowKeys, int] = {}
        self._build_indirection()

    def _build_indirection(self) -> None:
        self.indirection = [i % self.pairs for i in range(RSS_INDIRECTION_ENTRIES)]

    def negotiated(self, feature: int) -> bool:
        return bool(self.features & feature)

    @property
    def acked(self) -> list[CtrlRecord]:
        """The commands answered OK."""
        return [r for r in self.log if r.ack == VirtioNetCtrlAck.OK]

    # --- commands ---------------------------------------------------------------------

    def handle(self, out: bytes, in_len: int) -> CtrlResult:
        """One command buffer: readable bytes `out`, `in_len` writable bytes (rule 1)."""
        out = bytes(out)
        cls = out[0] if out else None
        cmd = out[1] if len(out) > 1 else None
        data = out[spec.VIRTIO_NET_CTRL_HDR_SIZE:]
        if in_len < spec.VIRTIO_NET_CTRL_ACK_SIZE:
            self.unanswerable += 1
            self.log.append(CtrlRecord(cls, cmd, data, None))
            return CtrlResult(None, 0)
        try:
            if cmd is None:
                raise _Refused(CtrlError.SHORT)
            if len(out) > CTRL_MAX_COMMAND:
                raise _Refused(CtrlError.TOO_LONG)
            self._execute(cls, cmd, data)
        except _Refused as refused:
            self.log.append(CtrlRecord(cls, cmd, data, VirtioNetCtrlAck.ERR, refused.reason))
            return CtrlResult(VirtioNetCtrlAck.ERR, spec.VIRTIO_NET_CTRL_ACK_SIZE)
        self.log.append(CtrlRecord(cls, cmd, data, VirtioNetCtrlAck.OK))
        return CtrlResult(VirtioNetCtrlAck.OK, spec.VIRTIO_NET_CTRL_ACK_SIZE)

    def _execute(self, cls: int, cmd: int, data: bytes) -> None:
        """Check everything first, then change the state (rule 2: nothing on ERR)."""
        feature = spec.VIRTIO_NET_CTRL_FEATURE.get((cls, cmd))
        if feature is None:
            raise _Refused(CtrlError.UNKNOWN)
        if not self.negotiated(feature):
            raise _Refused(CtrlError.NOT_NEGOTIATED)
        match cls:
            case VirtioNetCtrlClass.RX:
                on = self._fixed(data, spec.VIRTIO_NET_CTRL_RX_DATA_SIZE)
                setattr(self.rx, RX_FLAG_NAMES[VirtioNetCtrlRx(cmd)], bool(on))
            case VirtioNetCtrlClass.MAC if cmd == VirtioNetCtrlMac.TABLE_SET:
                self._mac_table_set(data)
            case VirtioNetCtrlClass.MAC:                  # ADDR_SET
                if len(data) != spec.ETH_ALEN:
                    raise _Refused(CtrlError.LENGTH)
                if is_multicast(data) or not any(data):
                    raise _Refused(CtrlError.VALUE)
                self.mac = data
            case VirtioNetCtrlClass.VLAN:
                vid = self._fixed(data, spec.VIRTIO_NET_CTRL_VLAN_DATA_SIZE)
                if vid >= spec.VLAN_N_VID:
                    raise _Refused(CtrlError.VALUE)
                if cmd == VirtioNetCtrlVlan.ADD:
                    self.vlans.add(vid)
                else:
                    self.vlans.discard(vid)
            case VirtioNetCtrlClass.ANNOUNCE:              # ACK
                self._fixed(data, 0)
                if not self.announce:
                    raise _Refused(CtrlError.NOTHING_TO_ACK)
                self.announce = False
            case VirtioNetCtrlClass.MQ if cmd == VirtioNetCtrlMq.VQ_PAIRS_SET:
                pairs = self._fixed(data, spec.VIRTIO_NET_CTRL_MQ_DATA_SIZE)
                if not spec.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN <= pairs <= self.max_pairs:
                    raise _Refused(CtrlError.VALUE)
                self.pairs = pairs
                self._build_indirection()
            case _:                                        # RSS, HASH, GUEST_OFFLOADS
                raise _Refused(CtrlError.NOT_IMPLEMENTED)

    @staticmethod
    def _fixed(data: bytes, size: int) -> int:
        """The little-endian value of data that must be exactly `size` bytes."""
        if len(data) != size:
            raise _Refused(CtrlError.LENGTH)
        return int.from_bytes(data, "little")

    def _mac_table_set(self, data: bytes) -> None:
        """Two tables: le32 n, n unicast addresses, le32 m, m multicast (5.1.6.5.2)."""
        tables, offset = [], 0
        for multicast in (False, True):
            head = data[offset:offset + spec.VIRTIO_NET_CTRL_MAC_ENTRIES_SIZE]
            if len(head) != spec.VIRTIO_NET_CTRL_MAC_ENTRIES_SIZE:
                raise _Refused(CtrlError.LENGTH)
            entries = int.from_bytes(head, "little")
            offset += spec.VIRTIO_NET_CTRL_MAC_ENTRIES_SIZE
            end = offset + entries * spec.ETH_ALEN
            if end > len(data):
                raise _Refused(CtrlError.LENGTH)
            macs = [data[i:i + spec.ETH_ALEN] for i in range(offset, end, spec.ETH_ALEN)]
            tables.append(macs)
            offset = end
        if offset != len(data):
            raise _Refused(CtrlError.LENGTH)
        (uc, mc), limit = tables, self.mac_table_entries
        self.rx.uc_overflow, self.rx.mc_overflow = len(uc) > limit, len(mc) > limit
        self.rx.uc_table = () if self.rx.uc_overflow else tuple(uc)
        self.rx.mc_table = () if self.rx.mc_overflow else tuple(mc)

    # --- what the state does to received frames ------------------------------------------

    def accepts(self, frame: bytes) -> bool:
        """Rule 5: whether the receive filter lets the frame through."""
        rx = self.rx
        if rx.promisc:
            return True
        frame = bytes(frame)
        if self.negotiated(VirtioNetF.CTRL_VLAN):
            vid = vlan_id(frame)
            if vid is not None and vid not in self.vlans:
                return False
        dst = frame[:spec.ETH_ALEN]
        if dst == ETH_BROADCAST:
            return not rx.nobcast
        if is_multicast(dst):
            if rx.nomulti:
                return False
            return rx.allmulti or rx.mc_overflow or dst in rx.mc_table
        if rx.nouni:
            return False
        return rx.alluni or rx.uc_overflow or dst == self.mac or dst in rx.uc_table

    def rx_queue(self, frame: bytes) -> int:
        """Rule 6: the pair whose receive queue gets the frame."""
        if self.pairs == 1:
            return 0
        if self.follow_tx_flows:
            keys = flow_dissect(frame)
            pair = self.tx_flows.get(keys.reversed()) if keys is not None else None
            if pair is not None and pair < self.pairs:
                return pair
        return self.indirection[flow_hash(frame) & (RSS_INDIRECTION_ENTRIES - 1)]

    def transmitted(self, frame: bytes, pair: int) -> None:
        """The device sent `frame` from transmitq `pair` (rule 6's flow memory)."""
        if self.follow_tx_flows:
            keys = flow_dissect(frame)
            if keys is not None:
                self.tx_flows[keys] = pair
