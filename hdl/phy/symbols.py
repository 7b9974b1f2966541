"""8b/10b symbols and training-set fields of the PCIe physical layer (Gen1).

PCIe Base 4.0 section 4.2.1 (8b/10b encoding, Table 4-1 "Special Symbols") and
section 4.2.4.1 (Training Sequences, Tables 4-3 TS1 and 4-4 TS2). The values
here are the 8-bit "Dxx.y"/"Kxx.y" bytes as PIPE carries them (``datak`` says
K); the 10-bit codes are the SERDES's business.
"""
import enum

__all__ = ["KSymbol", "k_byte", "d_byte", "TS1_ID", "TS2_ID", "TS1_ID_INVERTED",
           "TS2_ID_INVERTED", "IDLE_DATA", "TrainingControl", "DataRate",
           "TS_SYMBOLS", "SKP_OS_SYMBOLS", "PAD"]


def k_byte(x, y):
    """The byte of Kx.y (or Dx.y): y in bits 7:5, x in bits 4:0 (section 4.2.1.1)."""
    return (y << 5) | x


d_byte = k_byte


class KSymbol(enum.IntEnum):
    """Special symbols, section 4.2.1.2 Table 4-1 (byte values with datak = 1)."""
    COM = k_byte(28, 5)   # 0xBC  comma: starts every ordered set, resets the LFSR
    STP = k_byte(27, 7)   # 0xFB  start of TLP
    SDP = k_byte(28, 2)   # 0x5C  start of DLLP
    END = k_byte(29, 7)   # 0xFD  end of a good TLP or DLLP
    EDB = k_byte(30, 7)   # 0xFE  end of a nullified TLP
    PAD = k_byte(23, 7)   # 0xF7  framing filler; link/lane number "PAD" in TS
    SKP = k_byte(28, 0)   # 0x1C  SKP ordered set filler (not scrambled, LFSR holds)
    FTS = k_byte(28, 1)   # 0x3C  fast training sequence (L0s exit; unused here)
    IDL = k_byte(28, 3)   # 0x7C  electrical idle ordered set (EIOS)
    EIE = k_byte(28, 7)   # 0xFC  electrical idle exit (Gen2+; unused here)


PAD = KSymbol.PAD

#: TS1 / TS2 identifier, symbols 6..15 of the set (Tables 4-3, 4-4).
TS1_ID = d_byte(10, 2)             # 0x4A
TS2_ID = d_byte(5, 2)              # 0x45
#: What a receiver with the wrong lane polarity decodes them as (section
#: 4.2.4.4, "Polarity Inversion"): the bitwise complement of the 10-bit code,
#: which decodes to D21.5 / D26.5.
TS1_ID_INVERTED = d_byte(21, 5)    # 0xB5
TS2_ID_INVERTED = d_byte(26, 5)    # 0xBA

#: Logical idle: D0.0, scrambled (section 4.2.1.2, "Logical Idle").
IDLE_DATA = 0x00

#: A TS1/TS2 is 16 symbols; a SKP ordered set as we send it is COM + 3 SKP
#: (section 4.2.7); an EIOS is COM + 3 IDL (section 4.2.4.2).
TS_SYMBOLS = 16
SKP_OS_SYMBOLS = 4


class DataRate(enum.IntFlag):
    """Symbol 4 of a TS: Data Rate Identifier (Table 4-3)."""
    GEN1_2_5GT = 1 << 1     # 2.5 GT/s supported (must be set)
    GEN2_5GT = 1 << 2
    GEN3_8GT = 1 << 3
    SPEED_CHANGE = 1 << 7


class TrainingControl(enum.IntFlag):
    """Symbol 5 of a TS: Training Control (Table 4-3)."""
    HOT_RESET = 1 << 0
    DISABLE_LINK = 1 << 1
    LOOPBACK = 1 << 2
    DISABLE_SCRAMBLING = 1 << 3
    COMPLIANCE_RECEIVE = 1 << 4
