"""How a program describes itself: options, attach strategies, maps, metrics.

A program of the catalogue is bpf/<name>.c plus a module
node_agent/programs/<name>.py holding one ProgramSpec. The spec says which
options the config may set (typed, bounded, reaching the C code as -D
constants), which ways of attaching it has (tried in order), which kernel
struct offsets it needs from BTF, and how its maps become metrics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union

# ---------------------------------------------------------------- options


@dataclass(frozen=True)
class Option:
    name: str
    type: type                      # int | str | bool | float
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    define: str | None = None       # C macro that receives the value
    to_c: Callable[[Any], str] | None = None   # value -> C literal (default: str)

    def validate(self, value: Any) -> Any:
        """The checked value, or ValueError saying what is wrong with it."""
        t = self.type
        if t is bool:
            ok = isinstance(value, bool)
        elif t is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif t is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, t)
        if not ok:
            raise ValueError(f"expected {t.__name__}, got {type(value).__name__} {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}, got {value!r}")
        if self.min is not None and value < self.min:
            raise ValueError(f"must be >= {self.min}, got {value!r}")
        if self.max is not None and value > self.max:
            raise ValueError(f"must be <= {self.max}, got {value!r}")
        return value

    def c_literal(self, value: Any) -> str:
        return self.to_c(value) if self.to_c else str(int(value) if isinstance(value, bool) else value)


def max_entries_option(default: int) -> Option:
    """Every program has it: the size of its maps (one entry per label key)."""
    return Option("max_entries", int, default, "entries of each of the program's maps",
                  min=64, max=1 << 20, define="NP_MAX_ENTRIES")


# ---------------------------------------------------------------- attaching


@dataclass(frozen=True)
class Attach:
    kind: str        # "tracepoint" | "raw_tracepoint" | "tp_btf" | "kprobe"
    target: str      # "category:event" (the tracepoint kinds) or a kernel function name
    fn: str          # the C function to attach


@dataclass(frozen=True)
class Strategy:
    """One way to attach the program; its name is the `attach` label."""
    name: str
    attachments: tuple[Attach, ...]
    defines: tuple[str, ...] = ()   # extra -D flags selecting this variant's code

    @property
    def tracepoints(self) -> list[str]:
        """Tracepoints attached with their record (BCC reads the record's format)."""
        return [a.target for a in self.attachments if a.kind == "tracepoint"]

    @property
    def raw_tracepoints(self) -> list[str]:
        """Tracepoints attached raw: the program gets the arguments, no record."""
        return [a.target for a in self.attachments if a.kind == "raw_tracepoint"]

    @property
    def btf_tracepoints(self) -> list[str]:
        """Tracepoints attached as BTF-typed programs (tp_btf): the arguments, typed."""
        return [a.target for a in self.attachments if a.kind == "tp_btf"]

    @property
    def kprobe_functions(self) -> list[str]:
        return [a.target for a in self.attachments if a.kind == "kprobe"]


# ---------------------------------------------------------------- maps -> metrics


# A map key is described by its fields' names, as the C struct declares them:
# the runtime reads the struct BCC built from the C (Key._fields_) and checks
# that every field is claimed by exactly one decoder below, so the C and this
# description cannot drift apart. Fields named pad* are padding.


@dataclass(frozen=True)
class Pods:
    """An address pair: local and remote (16 bytes each, IPv4 mapped) ->
    the identity labels (namespace, pod, workload, peer_*) via the resolver."""
    local: str = "local"
    remote: str = "remote"

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.local, self.remote)


@dataclass(frozen=True)
class Code:
    """An integer code -> a label, through `values`; a code not in it shows as
    its number. With `define`, each value reaches the C code as -D<define>_<NAME>=<code>
    (e.g. DIR_OUTBOUND=1), so the numbers are written only here. `values` may
    also be a function returning the mapping (called at each scrape: cache it),
    for codes the running kernel defines, e.g. enum skb_drop_reason from BTF."""
    field: str
    label: str
    values: dict[int, str] | Callable[[], dict[int, str]]
    define: str | None = None

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.field,)


@dataclass(frozen=True)
class Number:
    """An integer shown as it is (e.g. an ifindex, a port)."""
    field: str
    label: str

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.field,)


@dataclass(frozen=True)
class Slot:
    """The log2 slot of a histogram key (bpf/netprobe.h): becomes the bucket."""
    field: str = "slot"

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.field,)


KeyDecoder = Union[Pods, Code, Number, Slot]

PODS = Pods()
SLOT = Slot()


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str                      # "counter" | "gauge" | "histogram"
    help: str
    map: str
    key: tuple[KeyDecoder, ...]                # every field of the map's key, claimed once
    value_field: str | None = None             # value struct field (None: the value is a number)
    unit_seconds: float = 1.0                  # histogram value unit (1e-6: microseconds)
    bucket_slots: tuple[int, int] = (0, 0)     # histogram: first and last slot exported
    signed: bool = False                       # gauge values are s64

    @property
    def pods(self) -> Pods | None:
        """The key's address pair, if it has one (then the identity labels come first)."""
        return next((d for d in self.key if isinstance(d, Pods)), None)

    @property
    def extra_labels(self) -> tuple[str, ...]:
        """Labels from the key's codes and numbers, in key order (after the identity labels)."""
        return tuple(d.label for d in self.key if isinstance(d, (Code, Number)))

    @property
    def slot(self) -> Slot | None:
        return next((d for d in self.key if isinstance(d, Slot)), None)

    @property
    def key_fields(self) -> tuple[str, ...]:
        return tuple(f for d in self.key for f in d.fields)


@dataclass(frozen=True)
class MapInfo:
    """A map that counts toward netprobe_map_* self-metrics."""
    name: str
    max_entries_option: str = "max_entries"
    # How to know its size without walking it: (map, field) whose values sum
    # to the entry count (e.g. tracked sockets = sum of active connections).
    entries_from_sum_of: tuple[str, str] | None = None
    lru: bool = True
    # A front cache (bpf/netprobe.h) sits before it: the per-CPU array
    # <name>_front of {key, value} entries, added to the map's entries at scrape.
    front: bool = False


@dataclass(frozen=True)
class ProgramSpec:
    name: str
    source: str                                # file in bpf/
    summary: str
    options: tuple[Option, ...]
    strategies: tuple[Strategy, ...]
    metrics: tuple[Metric, ...]
    maps: tuple[MapInfo, ...] = ()
    # The np_map_errors slots, in order: first the maps whose updates can fail,
    # then the reasons an event is discarded (not a map failure). Each reaches
    # the C code as -DERR_<NAME>=<slot> (e.g. ERR_CONNECTIONS, ERR_STALE).
    map_errors: tuple[str, ...] = ()
    discards: tuple[str, ...] = ()
    # -D name -> (struct, member path): offsets read from the kernel's BTF
    btf_offsets: dict[str, tuple[str, str]] = field(default_factory=dict)
    # -D name -> (enum, member): values of enums read from the kernel's BTF;
    # a member the running kernel lacks gives no -D (the C tests #ifdef)
    btf_enum_values: dict[str, tuple[str, str]] = field(default_factory=dict)
    # -D constants the running kernel decides, read at the config stage (e.g.
    # its memory layout); a ValueError or OSError fails the program's config stage.
    kernel_constants: Callable[[], dict[str, int | str]] | None = None
    # Called at each scrape before the maps are read, with the running
    # instance (e.g. to expire entries older than a timeout).
    before_scrape: Callable[[Any], None] | None = None
    # Which strategies to try given the options (default: all, in order).
    choose_strategies: Callable[[dict], tuple[str, ...] | None] | None = None

    def option(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(name)

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}

    def strategy(self, name: str) -> Strategy:
        for s in self.strategies:
            if s.name == name:
                return s
        raise KeyError(name)

    def candidate_strategies(self, options: dict) -> tuple[Strategy, ...]:
        names = self.choose_strategies(options) if self.choose_strategies else None
        if names is None:
            return self.strategies
        return tuple(self.strategy(n) for n in names)

    @property
    def map_error_slots(self) -> dict[int, str]:
        """np_map_errors index -> map whose update failed."""
        return dict(enumerate(self.map_errors))

    @property
    def discard_slots(self) -> dict[int, str]:
        """np_map_errors index -> reason an event was discarded."""
        return {len(self.map_errors) + i: reason for i, reason in enumerate(self.discards)}

    def constants(self) -> dict[str, int]:
        """-D constants of the description itself: error slots and key codes."""
        out: dict[str, int] = {"NP_MAP_ERROR_SLOTS": max(1, len(self.map_errors) + len(self.discards))}
        slots = {**self.map_error_slots, **self.discard_slots}
        for index, name in slots.items():
            out[f"ERR_{name.upper()}"] = index
        for m in self.metrics:
            for d in m.key:
                if isinstance(d, Code) and d.define and not callable(d.values):
                    for code, name in d.values.items():
                        define = f"{d.define}_{name.upper()}"
                        if out.setdefault(define, code) != code:
                            raise ValueError(f"{self.name}: {define} is {out[define]} and {code}")
        return out


# ------------------------------------------------- shared by the program specs

RAW_FIRST = ("raw_tracepoint", "tracepoint")
# The hot programs: BTF-typed tracepoints (plain loads of socket and sk_buff
# members) where the kernel loads them, else raw, else plain tracepoints.
BTF_FIRST = ("tp_btf", "raw_tracepoint", "tracepoint")


def attach_option(hooks: str, modes: tuple[str, ...] = RAW_FIRST) -> Option:
    """The `attach` option of a program whose hooks can be taken several ways;
    `auto` tries `modes` in order (see attach_modes)."""
    return Option("attach", str, "auto",
                  f"how to hook {hooks}: auto ({', else '.join(modes)}) | {' | '.join(modes)}",
                  choices=("auto", *modes))


def attach_modes(options: dict, modes: tuple[str, ...] = RAW_FIRST) -> tuple[str, ...]:
    """The strategies to try, by name, for the program's `attach` option."""
    mode = options["attach"]
    return modes if mode == "auto" else (mode,)


def btf_first_modes(options: dict) -> tuple[str, ...]:
    """attach_modes for a program with all three of BTF_FIRST."""
    return attach_modes(options, BTF_FIRST)


# BTF offsets of the members bpf/netprobe.h's helpers read.
SOCK_ADDRESS_OFFSETS = {          # np_sock_addresses
    "OFF_SKC_FAMILY": ("sock_common", "skc_family"),
    "OFF_SKC_DADDR": ("sock_common", "skc_daddr"),
    "OFF_SKC_RCV_SADDR": ("sock_common", "skc_rcv_saddr"),
    "OFF_SKC_V6_DADDR": ("sock_common", "skc_v6_daddr"),
    "OFF_SKC_V6_RCV_SADDR": ("sock_common", "skc_v6_rcv_saddr"),
}
SKB_NETWORK_HEADER_OFFSETS = {    # np_skb_network_header
    "OFF_SKB_HEAD": ("sk_buff", "head"),
    "OFF_SKB_NETWORK_HEADER": ("sk_buff", "network_header"),
}


def front_cache_option() -> Option:
    """Programs with a front cache (bpf/netprobe.h) before a per-packet map:
    its size per CPU, as a power of two."""
    return Option("front_cache_log2", int, 8,
                  "the per-CPU front cache before the per-packet map holds 2^N keys (N=8: 256); a key whose slot "
                  "another holds moves that one's counts to the map, so more slots, fewer moves, more to read "
                  "per scrape", min=0, max=14, define="NP_FRONT_ENTRIES_LOG2")


def sample_every_option(what: str, how: str = "drawn at random") -> Option:
    """`sample_every: N` observes one event in N (1: every event) of a
    distribution, where a subsample serves as well as the whole and the
    skipped events cost almost nothing (docs/agent.md)."""
    return Option("sample_every", int, 1,
                  f"observe one {what} in N, {how} (1: all); the histogram's count is then of samples",
                  min=1, max=65536, define="NP_SAMPLE_EVERY")
