"""Byte streams inside the core: 32-bit beats whose valid bytes are marked.

A beat carries up to four bytes, byte 0 in bits 7:0 (address order, as PCIe
payload DWs and Ethernet frames both have it). ``keep`` marks the valid
bytes. `BytePacker` turns a stream with valid bytes anywhere into a dense one.
"""
from amaranth.hdl import unsigned
from amaranth.lib import data, stream

BYTES_PER_BEAT = 4

ByteBeat = data.StructLayout({
    "data": unsigned(8 * BYTES_PER_BEAT),
    "keep": unsigned(BYTES_PER_BEAT),
    "last": unsigned(1),
})

ByteStreamSignature = stream.Signature(ByteBeat)
