"""Data Link Layer Packets (PCIe Base 4.0 section 3.5).

A DLLP is 4 bytes and a 16-bit CRC (section 3.5.2). Here the 4 bytes are held
as one 32-bit value the way the spec draws them, byte 0 (the type, sent
first) in bits 31:24, like the TLP header DWs (hdl/pcie/tlp.py)::

    Ack/Nak (3.5.1):              type | reserved[12] | AckNak_Seq_Num[12]
    InitFC1/InitFC2/UpdateFC (3.5.1):
                                  type | HdrScale[2] | HdrFC[8] | DataScale[2] | DataFC[12]

HdrScale/DataScale are 00b (no scaled flow control, a 16.0 GT/s feature).
Only VC0 is used. Power management and vendor-specific DLLPs are recognised
and ignored.

`DllpEncoder` turns a DLLP value into three link beats with the CRC;
`DllpDecoder` collects three beats, checks the CRC (a bad DLLP is discarded,
section 3.6.2.2) and hands the value on.
"""
import enum

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..phy.link_packet import DLLP_BYTES, LinkPacketSignature, PacketKind
from .lcrc import DLLP_CRC, crc_next, crc_output

__all__ = ["DllpType", "FcType", "FcKind", "AckNakDllp", "FcDllp", "SEQ_BITS",
           "HDR_FC_BITS", "DATA_FC_BITS", "DllpEncoder", "DllpDecoder",
           "DllpSignature", "dllp_bytes", "ack_nak", "flow_control", "dllp_byteswap"]

SEQ_BITS = 12           # sequence numbers (3.6.2.1)
HDR_FC_BITS = 8         # header credit fields (2.6.1)
DATA_FC_BITS = 12       # data credit fields
DLLP_BITS = 32


class DllpType(enum.IntEnum):
    """Byte 0 of a DLLP (3.5.1, DLLP type encodings), VC0 for the flow control ones."""
    ACK = 0b0000_0000
    NAK = 0b0001_0000
    PM_ENTER_L1 = 0b0010_0000
    PM_ENTER_L23 = 0b0010_0001
    PM_ACTIVE_STATE_REQUEST_L1 = 0b0010_0011
    PM_REQUEST_ACK = 0b0010_0100
    VENDOR_SPECIFIC = 0b0011_0000
    INIT_FC1_P = 0b0100_0000
    INIT_FC1_NP = 0b0101_0000
    INIT_FC1_CPL = 0b0110_0000
    INIT_FC2_P = 0b1100_0000
    INIT_FC2_NP = 0b1101_0000
    INIT_FC2_CPL = 0b1110_0000
    UPDATE_FC_P = 0b1000_0000
    UPDATE_FC_NP = 0b1001_0000
    UPDATE_FC_CPL = 0b1010_0000


class FcType(enum.IntEnum):
    """Type bits 5:4 of a flow control DLLP: the credit type (2.6.1)."""
    P = 0b00
    NP = 0b01
    CPL = 0b10


class FcKind(enum.IntEnum):
    """Type bits 7:6 of a flow control DLLP."""
    INIT_FC1 = 0b01
    UPDATE_FC = 0b10
    INIT_FC2 = 0b11


class AckNakDllp(data.Struct):
    """Ack and Nak (3.5.1), bit 0 first."""
    seq: SEQ_BITS
    reserved: 12
    type: DllpType


class FcDllp(data.Struct):
    """InitFC1, InitFC2, UpdateFC (3.5.1), bit 0 first."""
    data_fc: DATA_FC_BITS
    data_scale: 2
    hdr_fc: HDR_FC_BITS
    hdr_scale: 2
    vc: 3
    reserved: 1
    fc_type: FcType
    fc_kind: FcKind


#: A DLLP's 4 bytes, byte 0 in bits 31:24.
DllpSignature = stream.Signature(DLLP_BITS)


def dllp_byteswap(value):
    """The 32-bit DLLP value <-> its 4 bytes in wire order, byte 0 in bits 7:0."""
    return Cat(value[24:32], value[16:24], value[8:16], value[0:8])


# --- Python helpers (tests and models) ----------------------------------------

def ack_nak(kind, seq):
    """The value of an Ack or Nak DLLP."""
    return kind << 24 | seq & ((1 << SEQ_BITS) - 1)


def flow_control(kind, fc_type, hdr, data_credits):
    """The value of an InitFC1/InitFC2/UpdateFC DLLP for VC0."""
    return (kind << 30 | fc_type << 28 | (hdr & 0xFF) << 14
            | data_credits & ((1 << DATA_FC_BITS) - 1))


def dllp_bytes(value):
    """The 6 bytes of a DLLP on the wire: its 4 bytes and the CRC (3.5.2)."""
    body = value.to_bytes(4, "big")
    return body + DLLP_CRC.crc(body)


# --- gateware -------------------------------------------------------------------

class DllpEncoder(wiring.Component):
    """DLLP value -> three link beats with the 16-bit CRC (3.5.2).

    Ports (``sync``):
        dllp: In(DllpSignature), the DLLP to send; taken when the encoder
              is free, its CRC computed then, so ``tx`` is registered.
        tx:   Out(LinkPacketSignature()), the DLLP's beats (kind DLLP).
    """

    def __init__(self):
        super().__init__({
            "dllp": In(DllpSignature),
            "tx": Out(LinkPacketSignature()),
        })

    def elaborate(self, platform):
        m = Module()
        beats = DLLP_BYTES // 2
        packet = Signal(8 * DLLP_BYTES)
        beat = Signal(range(beats))
        busy = Signal()

        body = dllp_byteswap(self.dllp.payload)
        crc = crc_output(DLLP_CRC, crc_next(DLLP_CRC, DLLP_CRC.seed, body))
        m.d.comb += self.dllp.ready.eq(~busy)
        with m.If(self.dllp.valid & ~busy):
            m.d.sync += [packet.eq(Cat(body, crc)), busy.eq(1), beat.eq(0)]

        m.d.comb += [
            self.tx.valid.eq(busy),
            self.tx.payload.data.eq(packet.word_select(beat, 16)),
            self.tx.payload.kind.eq(PacketKind.DLLP),
            self.tx.payload.first.eq(beat == 0),
            self.tx.payload.last.eq(beat == beats - 1),
        ]
        with m.If(self.tx.valid & self.tx.ready):
            m.d.sync += beat.eq(beat + 1)
            with m.If(self.tx.payload.last):
                m.d.sync += busy.eq(0)
        return m


class DllpDecoder(wiring.Component):
    """Link beats of DLLPs -> DLLP values whose CRC is right (3.6.2.2: a
    DLLP with a bad CRC, a wrong length or ``bad`` set is discarded).

    Ports (``sync``):
        rx:   In(LinkPacketSignature()), beats of DLLPs only (``ready`` unused).
        dllp: Out(DllpSignature), one cycle per good DLLP, no back-pressure
              (``ready`` ignored), two cycles after its last beat.
        bad:  Out(1), registered pulse with ``dllp.valid``'s timing: a DLLP of
              the right length, without ``bad``, failed its CRC (Bad DLLP,
              3.6.2.2; a correctable error, 6.2). A DLLP that comes with
              ``bad`` or the wrong length is the physical layer's error
              (Receiver Error, framing) and is not counted here.
    """

    def __init__(self):
        super().__init__({
            "rx": In(LinkPacketSignature()),
            "dllp": Out(DllpSignature),
            "bad": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        beats = DLLP_BYTES // 2
        packet = Signal(8 * DLLP_BYTES)
        count = Signal(range(beats + 2))
        ended = Signal()          # a whole DLLP sits in ``packet``
        m.d.comb += self.rx.ready.eq(1)
        m.d.sync += ended.eq(0)
        with m.If(self.rx.valid):
            beat = self.rx.payload
            m.d.sync += packet.eq(Cat(packet[16:], beat.data))
            with m.If(beat.first):
                m.d.sync += count.eq(1)
            with m.Elif(count != beats + 1):
                m.d.sync += count.eq(count + 1)
            with m.If(beat.last):
                # the third beat of a packet that began with ``first``
                m.d.sync += ended.eq(~beat.bad & ~beat.first & (count == beats - 1))

        # Check the CRC a cycle later: the register run over the whole
        # packet, CRC included, ends at the residue (lcrc.py).
        valid = Signal()
        value = Signal(DLLP_BITS)
        register = crc_next(DLLP_CRC, DLLP_CRC.seed, packet)
        crc_ok = register == DLLP_CRC.residue
        m.d.sync += [
            valid.eq(ended & crc_ok),
            self.bad.eq(ended & ~crc_ok),
            value.eq(dllp_byteswap(packet[:32])),
        ]
        m.d.comb += [self.dllp.valid.eq(valid), self.dllp.payload.eq(value)]
        return m

