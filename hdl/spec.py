"""PCI, PCI Express, virtio and virtio-net constants.

Shared by the gateware (hdl/), the testbench (sim/) and the guest driver
(driver/). No Amaranth import here: the driver must run without it.

Sources: PCI Local Bus 3.0 (config header), PCI Express Base 4.0 (TLP formats,
PCIe capability), virtio 1.2 (transport and net device).
"""
import enum


# --- PCI configuration header, type 0 (PCI 3.0 section 6.1) -----------------

class PciCfg(enum.IntEnum):
    """Byte offsets in the type-0 configuration header."""
    VENDOR_ID = 0x00
    DEVICE_ID = 0x02
    COMMAND = 0x04
    STATUS = 0x06
    REVISION_ID = 0x08
    CLASS_PROG = 0x09
    CACHE_LINE_SIZE = 0x0C
    HEADER_TYPE = 0x0E
    BAR0 = 0x10
    SUBSYSTEM_VENDOR_ID = 0x2C
    SUBSYSTEM_ID = 0x2E
    CAPABILITIES_PTR = 0x34
    INTERRUPT_LINE = 0x3C
    INTERRUPT_PIN = 0x3D


PCI_CFG_SPACE_SIZE = 256           # bytes readable by type-0 config TLPs here
PCI_CFG_DWORDS = PCI_CFG_SPACE_SIZE // 4


class PciCommand(enum.IntFlag):
    """Command register bits (PCI 3.0 section 6.2.2)."""
    IO_SPACE = 1 << 0
    MEMORY_SPACE = 1 << 1
    BUS_MASTER = 1 << 2
    PARITY_ERROR_RESPONSE = 1 << 6
    SERR_ENABLE = 1 << 8
    INTX_DISABLE = 1 << 10


class PciStatus(enum.IntFlag):
    """Status register bits (PCI 3.0 section 6.2.3)."""
    INTX_STATUS = 1 << 3
    CAP_LIST = 1 << 4
    SIGNALED_TARGET_ABORT = 1 << 11
    RECEIVED_TARGET_ABORT = 1 << 12
    RECEIVED_MASTER_ABORT = 1 << 13
    SIGNALED_SYSTEM_ERROR = 1 << 14
    DETECTED_PARITY_ERROR = 1 << 15


class PciBar(enum.IntFlag):
    """Low bits of a memory BAR (PCI 3.0 section 6.2.5.1)."""
    MEM_TYPE_64 = 0b10 << 1
    PREFETCHABLE = 1 << 3


class PciCapId(enum.IntEnum):
    """Capability IDs (PCI Code and ID Assignment spec)."""
    PCI_EXPRESS = 0x10
    MSIX = 0x11
    VENDOR_SPECIFIC = 0x09


# --- PCI Express capability (PCIe Base 4.0 section 7.5.3) -------------------

class PcieCap(enum.IntEnum):
    """Byte offsets inside the PCI Express capability structure."""
    CAP_ID = 0x00
    FLAGS = 0x02
    DEVCAP = 0x04
    DEVCTL = 0x08
    DEVSTA = 0x0A
    LNKCAP = 0x0C
    LNKCTL = 0x10
    LNKSTA = 0x12
    DEVCAP2 = 0x24
    DEVCTL2 = 0x28
    LNKCAP2 = 0x2C
    LNKCTL2 = 0x30


PCIE_CAP_SIZE = 0x3C
PCIE_CAP_VERSION = 2
PCIE_TYPE_ENDPOINT = 0x0


class PcieDevCtl(enum.IntFlag):
    """Device Control register (section 7.5.3.4)."""
    CORR_ERR_REPORTING = 1 << 0
    NONFATAL_ERR_REPORTING = 1 << 1
    FATAL_ERR_REPORTING = 1 << 2
    UR_REPORTING = 1 << 3
    RELAXED_ORDERING = 1 << 4
    MPS_MASK = 0b111 << 5
    EXT_TAG = 1 << 8
    NO_SNOOP = 1 << 11
    MRRS_MASK = 0b111 << 12


PCIE_DEVCTL_MPS_SHIFT = 5
PCIE_DEVCTL_MRRS_SHIFT = 12


class PcieDevSta(enum.IntFlag):
    """Device Status register (section 7.5.3.5): RW1C error bits."""
    CORR_ERR_DETECTED = 1 << 0
    NONFATAL_ERR_DETECTED = 1 << 1
    FATAL_ERR_DETECTED = 1 << 2
    UR_DETECTED = 1 << 3


def pcie_size_code(nbytes):
    """Encode a payload/read-request size (128..4096 bytes) as the 3-bit field."""
    code = (nbytes // 128).bit_length() - 1
    if nbytes != 128 << code or not 0 <= code <= 5:
        raise ValueError(f"{nbytes} is not a PCIe payload size (128 to 4096, power of two)")
    return code


def pcie_size_bytes(code):
    """Decode the 3-bit MPS/MRRS field to bytes."""
    return 128 << code


# --- MSI-X capability (PCI 3.0 section 6.8.2) --------------------------------

class MsixCap(enum.IntEnum):
    CAP_ID = 0x00
    MESSAGE_CONTROL = 0x02
    TABLE = 0x04
    PBA = 0x08


MSIX_CAP_SIZE = 12
MSIX_ENTRY_SIZE = 16


class MsixControl(enum.IntFlag):
    TABLE_SIZE_MASK = 0x7FF
    FUNCTION_MASK = 1 << 14
    ENABLE = 1 << 15


class MsixEntry(enum.IntEnum):
    """Byte offsets of one MSI-X table entry."""
    ADDR_LO = 0x0
    ADDR_HI = 0x4
    DATA = 0x8
    VECTOR_CONTROL = 0xC


MSIX_VECTOR_MASKED = 1 << 0


# --- Transaction Layer Packets (PCIe Base 4.0 section 2.2) -------------------

class TlpFmt(enum.IntEnum):
    """Fmt field: header size and whether data follows."""
    DW3_NODATA = 0b000
    DW4_NODATA = 0b001
    DW3_DATA = 0b010
    DW4_DATA = 0b011
    PREFIX = 0b100


class TlpFmtType(enum.IntEnum):
    """The 8-bit {Fmt, Type} pair of the requests and completions we handle."""
    MRD32 = 0b000_00000
    MRD64 = 0b001_00000
    MRDLK32 = 0b000_00001
    MWR32 = 0b010_00000
    MWR64 = 0b011_00000
    IORD = 0b000_00010
    IOWR = 0b010_00010
    CFGRD0 = 0b000_00100
    CFGWR0 = 0b010_00100
    CFGRD1 = 0b000_00101
    CFGWR1 = 0b010_00101
    CPL = 0b000_01010
    CPLD = 0b010_01010
    MSG = 0b001_10000        # routed to root complex, no data (type 10rrr)
    MSGD = 0b011_10000


class CplStatus(enum.IntEnum):
    """Completion Status field (section 2.2.9)."""
    SC = 0b000
    UR = 0b001
    CRS = 0b010
    CA = 0b100


TLP_MAX_HEADER_DW = 4
PCIE_RCB_BYTES = 64               # Read Completion Boundary of an endpoint


# --- virtio over PCI (virtio 1.2 section 4.1) --------------------------------

VIRTIO_PCI_VENDOR_ID = 0x1AF4
VIRTIO_PCI_DEVICE_ID_BASE = 0x1040      # + device type (section 4.1.2.1)
VIRTIO_ID_NET = 1
VIRTIO_NET_PCI_DEVICE_ID = VIRTIO_PCI_DEVICE_ID_BASE + VIRTIO_ID_NET
VIRTIO_PCI_REVISION = 1                 # non-transitional device
PCI_CLASS_NETWORK_ETHERNET = 0x020000
VIRTIO_PCI_SUBSYSTEM_ID = 0x1100        # >= 0x40, as the spec recommends


class VirtioPciCapType(enum.IntEnum):
    """cfg_type of struct virtio_pci_cap (section 4.1.4)."""
    COMMON_CFG = 1
    NOTIFY_CFG = 2
    ISR_CFG = 3
    DEVICE_CFG = 4
    PCI_CFG = 5


class VirtioPciCap(enum.IntEnum):
    """Byte offsets in struct virtio_pci_cap (section 4.1.4)."""
    CAP_VNDR = 0
    CAP_NEXT = 1
    CAP_LEN = 2
    CFG_TYPE = 3
    BAR = 4
    ID = 5
    OFFSET = 8
    LENGTH = 12
    NOTIFY_OFF_MULTIPLIER = 16     # struct virtio_pci_notify_cap only
    PCI_CFG_DATA = 16              # struct virtio_pci_cfg_cap only


VIRTIO_PCI_CAP_SIZE = 16
VIRTIO_PCI_NOTIFY_CAP_SIZE = 20
VIRTIO_PCI_CFG_CAP_SIZE = 20


class VirtioCommonCfg(enum.IntEnum):
    """struct virtio_pci_common_cfg byte offsets (section 4.1.4.3)."""
    DEVICE_FEATURE_SELECT = 0x00
    DEVICE_FEATURE = 0x04
    DRIVER_FEATURE_SELECT = 0x08
    DRIVER_FEATURE = 0x0C
    CONFIG_MSIX_VECTOR = 0x10
    NUM_QUEUES = 0x12
    DEVICE_STATUS = 0x14
    CONFIG_GENERATION = 0x15
    QUEUE_SELECT = 0x16
    QUEUE_SIZE = 0x18
    QUEUE_MSIX_VECTOR = 0x1A
    QUEUE_ENABLE = 0x1C
    QUEUE_NOTIFY_OFF = 0x1E
    QUEUE_DESC = 0x20
    QUEUE_DRIVER = 0x28
    QUEUE_DEVICE = 0x30
    QUEUE_NOTIFY_DATA = 0x38
    QUEUE_RESET = 0x3A


VIRTIO_COMMON_CFG_SIZE = 0x3C
VIRTIO_MSI_NO_VECTOR = 0xFFFF


class VirtioStatus(enum.IntFlag):
    """device_status bits (section 2.1)."""
    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    DEVICE_NEEDS_RESET = 64
    FAILED = 128


class VirtioIsr(enum.IntFlag):
    """ISR status bits (section 4.1.4.5)."""
    QUEUE = 1
    CONFIG = 2


class VirtioF(enum.IntFlag):
    """Device-independent feature bits (section 6)."""
    INDIRECT_DESC = 1 << 28        # VIRTIO_RING_F_INDIRECT_DESC
    EVENT_IDX = 1 << 29            # VIRTIO_RING_F_EVENT_IDX
    VERSION_1 = 1 << 32
    ACCESS_PLATFORM = 1 << 33
    RING_PACKED = 1 << 34
    IN_ORDER = 1 << 35
    ORDER_PLATFORM = 1 << 36
    SR_IOV = 1 << 37
    NOTIFICATION_DATA = 1 << 38
    NOTIF_CONFIG_DATA = 1 << 39
    RING_RESET = 1 << 40


class VirtioNetF(enum.IntFlag):
    """virtio-net feature bits (section 5.1.3)."""
    CSUM = 1 << 0
    GUEST_CSUM = 1 << 1
    CTRL_GUEST_OFFLOADS = 1 << 2
    MTU = 1 << 3
    MAC = 1 << 5
    GUEST_TSO4 = 1 << 7
    GUEST_TSO6 = 1 << 8
    GUEST_ECN = 1 << 9
    GUEST_UFO = 1 << 10
    HOST_TSO4 = 1 << 11
    HOST_TSO6 = 1 << 12
    HOST_ECN = 1 << 13
    HOST_UFO = 1 << 14
    MRG_RXBUF = 1 << 15
    STATUS = 1 << 16
    CTRL_VQ = 1 << 17
    CTRL_RX = 1 << 18
    CTRL_VLAN = 1 << 19
    CTRL_RX_EXTRA = 1 << 20
    GUEST_ANNOUNCE = 1 << 21
    MQ = 1 << 22
    CTRL_MAC_ADDR = 1 << 23
    HASH_REPORT = 1 << 57
    RSS = 1 << 60
    RSC_EXT = 1 << 61
    STANDBY = 1 << 62
    SPEED_DUPLEX = 1 << 63


def feature_names(bits):
    """Names of the set feature bits, device-independent ones included, low bit first."""
    by_value = {member.value: name for enum_cls in (VirtioF, VirtioNetF)
                for name, member in enum_cls.__members__.items()}
    return [by_value.get(1 << bit, f"BIT{bit}") for bit in range(64) if bits >> bit & 1]


class VirtioNetCfg(enum.IntEnum):
    """struct virtio_net_config byte offsets (section 5.1.4)."""
    MAC = 0
    STATUS = 6
    MAX_VIRTQUEUE_PAIRS = 8
    MTU = 10
    SPEED = 12
    DUPLEX = 16


VIRTIO_NET_CFG_SIZE = 24


class VirtioNetS(enum.IntFlag):
    """virtio_net_config.status bits (section 5.1.4)."""
    LINK_UP = 1
    ANNOUNCE = 2


ETH_ALEN = 6
ETH_MIN_MTU = 68                    # Linux's minimum, used by virtnet_validate
ETH_DATA_LEN = 1500
VIRTIO_NET_MAX_MTU = 65535


def virtqueue_pairs_to_queues(pairs):
    """Queues of a device with N pairs: receiveq/transmitq pairs, then controlq (section 5.1.2)."""
    return 2 * pairs + 1


def rx_queue_index(pair):
    return 2 * pair


def tx_queue_index(pair):
    return 2 * pair + 1


# --- split virtqueues (virtio 1.2 section 2.7) --------------------------------

class VirtqDescF(enum.IntFlag):
    """struct virtq_desc flags (section 2.7.5)."""
    NEXT = 1
    WRITE = 2
    INDIRECT = 4


class VirtqAvailF(enum.IntFlag):
    """struct virtq_avail flags (section 2.7.6)."""
    NO_INTERRUPT = 1


class VirtqUsedF(enum.IntFlag):
    """struct virtq_used flags (section 2.7.8)."""
    NO_NOTIFY = 1


VIRTQ_DESC_SIZE = 16              # addr 8, len 4, flags 2, next 2
VIRTQ_AVAIL_ELEM_SIZE = 2
VIRTQ_USED_ELEM_SIZE = 8          # id 4, len 4
VIRTQ_RING_HEADER_SIZE = 4        # flags 2, idx 2 (avail and used)
VIRTQ_IDX_OFFSET = 2              # idx after flags


def vring_need_event(event_idx, new_idx, old_idx):
    """Section 2.7.10: notify if event_idx lies in [old_idx, new_idx) mod 2**16."""
    return (new_idx - event_idx - 1) & 0xFFFF < (new_idx - old_idx) & 0xFFFF


# --- virtio_net_hdr (virtio 1.2 section 5.1.6) --------------------------------

VIRTIO_NET_HDR_SIZE = 12          # v1 header: flags .. num_buffers
VIRTIO_NET_HDR_NUM_BUFFERS_OFFSET = 10
ETH_HLEN = 14
VLAN_HLEN = 4


# --- DMA requester: memory read/write requests and their completions ---------
# (PCIe Base 4.0 sections 2.2.5, 2.2.6.2, 2.2.7, 2.2.9, 2.3.1.1, 7.5.3.4)

PCIE_REQUEST_BOUNDARY_BYTES = 4096  # no memory request may cross a 4 KB boundary (2.2.7)
PCIE_MAX_SIZE_CODE = 5              # MPS/MRRS 101b = 4096 bytes; 110b, 111b reserved (7.5.3.4)
PCIE_SIZE_CODE_BITS = 3
PCIE_TAG_BITS = 5                   # tags usable without Extended Tag Field Enable (2.2.6.2)
PCIE_BYTE_COUNT_BITS = 12           # Completion Byte Count; 0 means 4096 bytes (2.2.9)
PCIE_LOWER_ADDRESS_BITS = 7         # Completion Lower Address (2.2.9, 2.3.1.1)


# --- driver datapath: ring field offsets, virtio_net_hdr fields ---------------
# (virtio 1.2 sections 2.7.6-2.7.10 and 5.1.6; used by driver/ and its fake device)

VIRTQ_FLAGS_OFFSET = 0            # flags, first field of both rings (sections 2.7.6, 2.7.8)
VIRTQ_USED_ELEM_LEN_OFFSET = 4    # struct virtq_used_elem: id (le32) then len (le32)
VIRTQ_EVENT_SIZE = 2              # used_event / avail_event, le16


def virtq_avail_entry_offset(slot):
    """Offset of avail->ring[slot] in the available ring (section 2.7.6)."""
    return VIRTQ_RING_HEADER_SIZE + VIRTQ_AVAIL_ELEM_SIZE * slot


def virtq_used_elem_offset(slot):
    """Offset of used->ring[slot] in the used ring (section 2.7.8)."""
    return VIRTQ_RING_HEADER_SIZE + VIRTQ_USED_ELEM_SIZE * slot


def virtq_used_event_offset(num):
    """Offset of used_event, after avail->ring[num] (sections 2.7.6, 2.7.7)."""
    return virtq_avail_entry_offset(num)


def virtq_avail_event_offset(num):
    """Offset of avail_event, after used->ring[num] (sections 2.7.8, 2.7.10)."""
    return virtq_used_elem_offset(num)


VIRTIO_NET_HDR_FLAGS_OFFSET = 0       # struct virtio_net_hdr (section 5.1.6)
VIRTIO_NET_HDR_GSO_TYPE_OFFSET = 1
VIRTIO_NET_HDR_GSO_NONE = 0           # gso_type without segmentation offload


# --- this device's statistics window in BAR0 (device-specific, not virtio) ---
# Read-only 32-bit counters that wrap; cleared by device reset (hdl/net/counters.py).

STATS_BAR_OFFSET = 0x6000
STATS_WINDOW_BYTES = 0x2000
STATS_QUEUE_BASE = 0x40            # byte offset of queue 0's block
STATS_QUEUE_STRIDE = 0x10          # bytes per queue: packets, bytes, drops, 0


class StatsDrop(enum.IntEnum):
    """Frames dropped, by reason: DW index in the window."""
    RX_NO_SPACE = 0            # RX frame buffer full (no RX buffers posted for a while)
    RX_TOO_SHORT = 1           # shorter than an Ethernet header
    RX_TOO_LONG = 2            # longer than MTU + header + VLAN tag
    RX_BUFFER_TOO_SMALL = 3    # the posted chain could not hold it (returned empty)
    TX_TOO_SHORT = 4
    TX_TOO_LONG = 5
    RX_FILTERED = 6            # refused by the receive filter (CTRL_RX, MAC table, VLAN)


class StatsQueue(enum.IntEnum):
    """DW index inside one queue's block."""
    PACKETS = 0
    BYTES = 1
    DROPS = 2


# --- virtio-net control virtqueue (virtio 1.2 section 5.1.6.5) ----------------
# A command is struct virtio_net_ctrl: u8 class, u8 command, data, then u8 ack
# written by the device. Used by driver/ and by the fake device's control-queue
# model (driver/testing_ctrl.py), the reference for the gateware's engine.

class VirtioNetCtrlClass(enum.IntEnum):
    """struct virtio_net_ctrl class."""
    RX = 0                  # 5.1.6.5.1 packet receive filtering
    MAC = 1                 # 5.1.6.5.2 MAC address filtering
    VLAN = 2                # 5.1.6.5.3 VLAN filtering
    ANNOUNCE = 3            # 5.1.6.5.4 gratuitous packet sending
    MQ = 4                  # 5.1.6.5.5 multiqueue
    GUEST_OFFLOADS = 5      # 5.1.6.5.6.1 offloads state configuration


class VirtioNetCtrlRx(enum.IntEnum):
    """VIRTIO_NET_CTRL_RX commands; data: u8 0 (off) or 1 (on)."""
    PROMISC = 0             # needs CTRL_RX
    ALLMULTI = 1            # needs CTRL_RX
    ALLUNI = 2              # needs CTRL_RX_EXTRA (and the three below)
    NOMULTI = 3
    NOUNI = 4
    NOBCAST = 5


class VirtioNetCtrlMac(enum.IntEnum):
    """VIRTIO_NET_CTRL_MAC commands."""
    TABLE_SET = 0           # le32 n, n unicast MACs, le32 m, m multicast MACs
    ADDR_SET = 1            # 6-byte MAC (needs CTRL_MAC_ADDR)


class VirtioNetCtrlVlan(enum.IntEnum):
    """VIRTIO_NET_CTRL_VLAN commands; data: le16 VLAN id."""
    ADD = 0
    DEL = 1


class VirtioNetCtrlAnnounce(enum.IntEnum):
    """VIRTIO_NET_CTRL_ANNOUNCE commands; no data."""
    ACK = 0


class VirtioNetCtrlMq(enum.IntEnum):
    """VIRTIO_NET_CTRL_MQ commands."""
    VQ_PAIRS_SET = 0        # le16 virtqueue_pairs (needs MQ)
    RSS_CONFIG = 1          # struct virtio_net_rss_config (needs RSS)
    HASH_CONFIG = 2         # struct virtio_net_hash_config (needs HASH_REPORT)


class VirtioNetCtrlGuestOffloads(enum.IntEnum):
    """VIRTIO_NET_CTRL_GUEST_OFFLOADS commands; data: le64 offloads."""
    SET = 0


class VirtioNetCtrlAck(enum.IntEnum):
    """The ack byte."""
    OK = 0
    ERR = 1


VIRTIO_NET_OK = VirtioNetCtrlAck.OK
VIRTIO_NET_ERR = VirtioNetCtrlAck.ERR

VIRTIO_NET_CTRL_HDR_SIZE = 2          # class, command
VIRTIO_NET_CTRL_ACK_SIZE = 1
VIRTIO_NET_CTRL_RX_DATA_SIZE = 1      # u8 on/off
VIRTIO_NET_CTRL_MAC_ENTRIES_SIZE = 4  # le32 entries, in front of each MAC table
VIRTIO_NET_CTRL_VLAN_DATA_SIZE = 2    # le16 vid
VIRTIO_NET_CTRL_MQ_DATA_SIZE = 2      # le16 virtqueue_pairs
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN = 1
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX = 0x8000
VLAN_N_VID = 4096                     # VLAN ids are 12 bits (IEEE 802.1Q)

# The feature each command needs negotiated (5.1.6.5.1-5.1.6.5.6). ADDR_SET is
# listed with CTRL_MAC_ADDR alone, as Linux and QEMU treat it, although
# 5.1.6.5.2.2 also forbids MAC class commands without CTRL_RX.
VIRTIO_NET_CTRL_FEATURE: dict[tuple[int, int], VirtioNetF] = {
    (VirtioNetCtrlClass.RX, VirtioNetCtrlRx.PROMISC): VirtioNetF.CTRL_RX,
    (VirtioNetCtrlClass.RX, VirtioNetCtrlRx.ALLMULTI): VirtioNetF.CTRL_RX,
    (VirtioNetCtrlClass.RX, VirtioNetCtrlRx.ALLUNI): VirtioNetF.CTRL_RX_EXTRA,
    (VirtioNetCtrlClass.RX, VirtioNetCtrlRx.NOMULTI): VirtioNetF.CTRL_RX_EXTRA,
    (VirtioNetCtrlClass.RX, VirtioNetCtrlRx.NOUNI): VirtioNetF.CTRL_RX_EXTRA,
    (VirtioNetCtrlClass.RX, VirtioNetCtrlRx.NOBCAST): VirtioNetF.CTRL_RX_EXTRA,
    (VirtioNetCtrlClass.MAC, VirtioNetCtrlMac.TABLE_SET): VirtioNetF.CTRL_RX,
    (VirtioNetCtrlClass.MAC, VirtioNetCtrlMac.ADDR_SET): VirtioNetF.CTRL_MAC_ADDR,
    (VirtioNetCtrlClass.VLAN, VirtioNetCtrlVlan.ADD): VirtioNetF.CTRL_VLAN,
    (VirtioNetCtrlClass.VLAN, VirtioNetCtrlVlan.DEL): VirtioNetF.CTRL_VLAN,
    (VirtioNetCtrlClass.ANNOUNCE, VirtioNetCtrlAnnounce.ACK): VirtioNetF.GUEST_ANNOUNCE,
    (VirtioNetCtrlClass.MQ, VirtioNetCtrlMq.VQ_PAIRS_SET): VirtioNetF.MQ,
    (VirtioNetCtrlClass.MQ, VirtioNetCtrlMq.RSS_CONFIG): VirtioNetF.RSS,
    (VirtioNetCtrlClass.MQ, VirtioNetCtrlMq.HASH_CONFIG): VirtioNetF.HASH_REPORT,
    (VirtioNetCtrlClass.GUEST_OFFLOADS, VirtioNetCtrlGuestOffloads.SET):
        VirtioNetF.CTRL_GUEST_OFFLOADS,
}


# --- hash calculation and RSS (virtio 1.2 sections 5.1.6.4.3, 5.1.6.5.7) ------
# Used by the RX classifier (hdl/net/rss.py).

class VirtioNetHashType(enum.IntFlag):
    """'Enabled hash types' / supported_hash_types bits (5.1.6.4.3.1, Supported/
    enabled hash types): hash_types of virtio_net_rss_config. Linux names them
    VIRTIO_NET_RSS_HASH_TYPE_*."""
    IPv4 = 1 << 0
    TCPv4 = 1 << 1
    UDPv4 = 1 << 2
    IPv6 = 1 << 3                 # IPv6 without extension headers
    TCPv6 = 1 << 4
    UDPv6 = 1 << 5
    IP_EX = 1 << 6                # IPv6 with extension headers
    TCP_EX = 1 << 7
    UDP_EX = 1 << 8


class VirtioNetHashReport(enum.IntEnum):
    """hash_report values (5.1.6.4.4): VIRTIO_NET_HASH_TYPE_X = 1 << (REPORT_X - 1)."""
    NONE = 0                      # no hash calculated
    IPv4 = 1
    TCPv4 = 2
    UDPv4 = 3
    IPv6 = 4
    TCPv6 = 5
    UDPv6 = 6
    IPv6_EX = 7
    TCPv6_EX = 8
    UDPv6_EX = 9


VIRTIO_NET_RSS_MIN_KEY_SIZE = 40               # rss_max_key_size at least 40 (5.1.4.1)
VIRTIO_NET_RSS_MIN_INDIRECTION_TABLE = 128     # rss_max_indirection_table_length (5.1.4.1)
