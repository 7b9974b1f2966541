"""Flow control (PCIe Base 4.0 sections 2.6 and 3.4), VC0 only.

Credit types (2.6.1): P (posted: MWr, Msg/MsgD), NP (MRd, MRdLk,
IO, configuration, AtomicOp requests), Cpl (completions). Each has header
credits (one per TLP) and data credits (one per 4 DWs of payload).

Transmitter (2.6.1.2, "FC Information Tracked by Transmitter"): `CreditGate`
keeps CREDIT_LIMIT from the partner's InitFC1/InitFC2 and UpdateFC DLLPs and
CREDITS_CONSUMED, and says whether a TLP may be sent:

    (CREDIT_LIMIT - (CREDITS_CONSUMED + needed)) mod 2^[Field Size] <= 2^[Field Size] / 2

An advertisement of 0 during initialisation means infinite credits (no
gating, later UpdateFCs for that field ignored).

Receiver (2.6.1.2, "FC Information Tracked by Receiver"): `CreditAllocator`
keeps CREDITS_ALLOCATED, starting at what we advertise and growing as the
core drains TLPs from the receive buffer, and makes the FC DLLPs to send:
InitFC1 (FC_INIT1) and InitFC2 (FC_INIT2) for P, NP and Cpl over and over
during initialisation (3.4.2), then UpdateFC for a type whose credits were
returned, and for every non-infinite type at least every ``update_period``
cycles (2.6.1.2: 30 us, so 3750 cycles at 125 MHz).

An Endpoint advertises infinite Completion credits (2.6.1, initial values
table: "Endpoint: infinite FC units"); it must only issue requests whose
completions it has room for, so the receive buffer keeps room for them.
"""
import enum

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .dllp import DATA_FC_BITS, HDR_FC_BITS, DllpSignature, FcDllp, FcKind, FcType

__all__ = ["FcUpdate", "CreditRequest", "CreditCheckSignature", "CreditGate", "CreditAllocator", "FcPhase",
           "tlp_credit_type", "tlp_data_credits", "py_tlp_credits"]

_TYPE_MSG = 0b10000          # Type 10rrr: messages (2.2.8)
_TYPE_CPL = 0b01010          # Cpl/CplD; 01011 CplLk/CplDLk
_FMT_DATA = 0b010            # Fmt bit 1: a TLP with data (2.2.1)


class FcPhase(enum.IntEnum):
    """Which FC DLLPs the allocator sends (3.4.2)."""
    IDLE = 0                 # DL_Inactive: none
    FC_INIT1 = 1
    FC_INIT2 = 2
    ACTIVE = 3               # DL_Active: UpdateFCs


def tlp_credit_type(dw0):
    """The FcType of a TLP from its header DW0 (32-bit spec value)."""
    fmt = dw0[29:32]
    type_ = dw0[24:29]
    with_data = fmt[1]
    is_msg = type_[3:5] == 0b10
    is_mem = type_[1:5] == 0          # MRd/MWr 00000, MRdLk 00001
    is_cpl = type_[1:5] == _TYPE_CPL >> 1
    return Mux(is_cpl, FcType.CPL,
               Mux(is_msg | (is_mem & with_data), FcType.P, FcType.NP))


def tlp_data_credits(dw0):
    """Data credits (4 DWs each) of a TLP from DW0: 0 without data; the
    Length field's 0 means 1024 DWs (256 credits)."""
    return Mux(dw0[30], ((dw0[0:10] - 1)[0:10] >> 2) + 1, 0)


def py_tlp_credits(dw0):
    """Python model: (FcType, data credits) of a TLP's header DW0."""
    fmt, type_ = dw0 >> 29 & 7, dw0 >> 24 & 0x1F
    length = (dw0 & 0x3FF) or 1024
    if type_ >> 1 == _TYPE_CPL >> 1:
        kind = FcType.CPL
    elif type_ >> 3 == 0b10 or (type_ >> 1 == 0 and fmt & _FMT_DATA):
        kind = FcType.P
    else:
        kind = FcType.NP
    return kind, (length + 3) // 4 if fmt & _FMT_DATA else 0


#: A received flow control DLLP, decoded.
FcUpdate = data.StructLayout({
    "kind": FcKind,
    "fc_type": FcType,
    "hdr": unsigned(HDR_FC_BITS),
    "data": unsigned(DATA_FC_BITS),
})

#: What a TLP about to be sent needs.
CreditRequest = data.StructLayout({
    "fc_type": FcType,
    "data": unsigned(DATA_FC_BITS),      # data credits; the header credit is 1
})

#: Transmitter <-> CreditGate: the TLP waiting to go, the answer, and the
#: pulse that consumes its credits. ``grant`` is registered: it answers the
#: ``request`` of the previous cycle.
CreditCheckSignature = wiring.Signature({
    "request": Out(CreditRequest),
    "grant": In(1),
    "consume": Out(1),
})

_TYPES = (FcType.P, FcType.NP, FcType.CPL)


def _fits(limit, consumed, needed, bits):
    """2.6.1.2's check, modulo 2^bits."""
    half = 1 << (bits - 1)
    return (limit - consumed - needed)[:bits] <= half


class CreditGate(wiring.Component):
    """The transmitter's credit accounting (2.6.1.2).

    Ports (``sync``):
        fc:        In(stream(FcUpdate), always ready), a flow control DLLP
                   received from the partner.
        init_done: Out(1), InitFC1/InitFC2 seen for P, NP and Cpl (the FI1
                   flag of 3.4.2: limits recorded).
        credit:    In(CreditCheckSignature): ``request`` the TLP waiting to
                   go; ``grant`` (registered) its credits are available;
                   ``consume`` pulse: it was taken, add it to CREDITS_CONSUMED.
    """

    def __init__(self):
        super().__init__({
            "fc": In(stream.Signature(FcUpdate, always_ready=True)),
            "init_done": Out(1),
            "credit": In(CreditCheckSignature),
        })

    def elaborate(self, platform):
        m = Module()
        ok = []
        for fc_type in _TYPES:
            name = fc_type.name.lower()
            recorded = Signal(name=f"{name}_recorded")
            hdr_infinite = Signal(name=f"{name}_hdr_infinite")
            data_infinite = Signal(name=f"{name}_data_infinite")
            hdr_limit = Signal(HDR_FC_BITS, name=f"{name}_hdr_limit")
            data_limit = Signal(DATA_FC_BITS, name=f"{name}_data_limit")
            hdr_consumed = Signal(HDR_FC_BITS, name=f"{name}_hdr_consumed")
            data_consumed = Signal(DATA_FC_BITS, name=f"{name}_data_consumed")

            update = self.fc.payload
            with m.If(self.fc.valid & (update.fc_type == fc_type)):
                with m.If(update.kind == FcKind.UPDATE_FC):
                    # 2.6.1.2: UpdateFC sets CREDIT_LIMIT, not for an infinite field
                    with m.If(recorded & ~hdr_infinite):
                        m.d.sync += hdr_limit.eq(update.hdr)
                    with m.If(recorded & ~data_infinite):
                        m.d.sync += data_limit.eq(update.data)
                with m.Elif(~recorded):
                    # 3.4.2 FC_INIT1: record the first InitFC1/InitFC2 values
                    m.d.sync += [
                        recorded.eq(1),
                        hdr_limit.eq(update.hdr), data_limit.eq(update.data),
                        hdr_infinite.eq(update.hdr == 0),
                        data_infinite.eq(update.data == 0),
                    ]
            with m.If(self.credit.consume & (self.credit.request.fc_type == fc_type)):
                m.d.sync += [
                    hdr_consumed.eq(hdr_consumed + 1),
                    data_consumed.eq(data_consumed + self.credit.request.data),
                ]
            ok.append((recorded, hdr_infinite | _fits(hdr_limit, hdr_consumed, 1, HDR_FC_BITS),
                       data_infinite | (self.credit.request.data == 0)
                       | _fits(data_limit, data_consumed, self.credit.request.data, DATA_FC_BITS)))

        m.d.comb += self.init_done.eq(Cat(r for r, _, _ in ok).all())
        with m.Switch(self.credit.request.fc_type):
            for fc_type, (recorded, hdr_ok, data_ok) in zip(_TYPES, ok):
                with m.Case(fc_type):
                    m.d.sync += self.credit.grant.eq(recorded & hdr_ok & data_ok & ~self.credit.consume)
            with m.Default():
                m.d.sync += self.credit.grant.eq(0)
        return m


class CreditAllocator(wiring.Component):
    """The receiver's credit accounting (2.6.1.2) and the FC DLLPs it sends.

    Parameters: ``p_hdr``, ``p_data``, ``np_hdr``, ``np_data``: the credits
    advertised at initialisation (not 0: 0 would mean infinite). Completion
    credits are advertised infinite. ``update_period``: cycles between the
    periodic UpdateFCs.

    Ports (``sync``):
        phase:  In(FcPhase), what the link is doing (from the DLCMSM).
        freed:  In(stream(CreditRequest), always ready), a TLP of this type
                and data size left the receive buffer: its credits return.
        dllp:   Out(DllpSignature), the next FC DLLP to send.
    """

    def __init__(self, *, p_hdr, p_data, np_hdr, np_data, update_period=3750):
        for value, bits in ((p_hdr, HDR_FC_BITS), (np_hdr, HDR_FC_BITS),
                            (p_data, DATA_FC_BITS), (np_data, DATA_FC_BITS)):
            if not 0 < value < 1 << (bits - 1):
                raise ValueError(f"credit advertisement {value}: 1 to {(1 << (bits - 1)) - 1}")
        self.advertised = {FcType.P: (p_hdr, p_data), FcType.NP: (np_hdr, np_data),
                           FcType.CPL: (0, 0)}
        self.update_period = update_period
        super().__init__({
            "phase": In(FcPhase),
            "freed": In(stream.Signature(CreditRequest, always_ready=True)),
            "dllp": Out(DllpSignature),
        })

    def elaborate(self, platform):
        m = Module()
        allocated = {}
        pending = {}
        for fc_type in (FcType.P, FcType.NP):
            name = fc_type.name.lower()
            hdr, data_ = self.advertised[fc_type]
            hdr_alloc = Signal(HDR_FC_BITS, init=hdr, name=f"{name}_hdr_allocated")
            data_alloc = Signal(DATA_FC_BITS, init=data_, name=f"{name}_data_allocated")
            allocated[fc_type] = (hdr_alloc, data_alloc)
            pending[fc_type] = Signal(name=f"{name}_update_pending")
            with m.If(self.freed.valid & (self.freed.payload.fc_type == fc_type)):
                m.d.sync += [
                    hdr_alloc.eq(hdr_alloc + 1),
                    data_alloc.eq(data_alloc + self.freed.payload.data),
                ]

        # Periodic UpdateFC (2.6.1.2): every non-infinite type.
        timer = Signal(range(self.update_period + 1))
        periodic = Signal()
        m.d.comb += periodic.eq((timer == 0) & (self.phase == FcPhase.ACTIVE))
        with m.If(self.phase != FcPhase.ACTIVE):
            m.d.sync += timer.eq(self.update_period)
        with m.Elif(periodic):
            m.d.sync += timer.eq(self.update_period)
        with m.Else():
            m.d.sync += timer.eq(timer - 1)

        # Initialisation DLLPs cycle through P, NP, Cpl (3.4.2).
        init_type = Signal(FcType)
        out = FcDllp(self.dllp.payload)
        sending = Signal(FcType)
        m.d.comb += out.vc.eq(0)
        with m.Switch(self.phase):
            with m.Case(FcPhase.FC_INIT1, FcPhase.FC_INIT2):
                m.d.comb += [
                    self.dllp.valid.eq(1),
                    out.fc_kind.eq(Mux(self.phase == FcPhase.FC_INIT1,
                                       FcKind.INIT_FC1, FcKind.INIT_FC2)),
                    sending.eq(init_type),
                ]
                with m.If(self.dllp.ready):
                    m.d.sync += init_type.eq(Mux(init_type == FcType.CPL, FcType.P,
                                                 Mux(init_type == FcType.P, FcType.NP,
                                                     FcType.CPL)))
            with m.Case(FcPhase.ACTIVE):
                m.d.comb += [
                    self.dllp.valid.eq(pending[FcType.P] | pending[FcType.NP]),
                    out.fc_kind.eq(FcKind.UPDATE_FC),
                    sending.eq(Mux(pending[FcType.P], FcType.P, FcType.NP)),
                ]
        m.d.comb += out.fc_type.eq(sending)
        with m.Switch(sending):
            for fc_type, (hdr_alloc, data_alloc) in allocated.items():
                with m.Case(fc_type):
                    m.d.comb += [out.hdr_fc.eq(hdr_alloc), out.data_fc.eq(data_alloc)]
            # Cpl: 0/0, infinite

        for fc_type, flag in pending.items():
            freed_now = self.freed.valid & (self.freed.payload.fc_type == fc_type)
            taken = (self.dllp.valid & self.dllp.ready & (self.phase == FcPhase.ACTIVE)
                     & (sending == fc_type))
            with m.If(self.phase != FcPhase.ACTIVE):
                m.d.sync += flag.eq(0)
            with m.Elif(freed_now | periodic):
                m.d.sync += flag.eq(1)
            with m.Elif(taken):
                m.d.sync += flag.eq(0)
        return m
