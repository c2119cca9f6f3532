"""The bench record and its tables: a compact one (llama-bench's columns, a row per test) and --wide.

A Record holds one (-p, -n, -d) test of one artifact: TTFT and pp t/s, tg t/s and the peak memory of
the same run. The compact table shows it as llama-bench does, a pp row and a tg row; --wide shows every
figure on one row. Both are one table per run, a column for each swept value (ctx, --set knobs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from . import printers
from .base import MB, RecordBase, record_type
from .printers import Column, CsvPrinter, JsonlPrinter, JsonPrinter, MarkdownPrinter, Printer, parse_markdown


@record_type("records")
@dataclass
class Record(RecordBase):
    """One bench measurement: an artifact, one test (pp + tg at a depth), the memory it took, and how."""

    # what was measured
    artifact: str  # file or folder name as the manifest lists it
    model: str
    format: str  # gguf | mlx
    quant: str
    engine: str  # llama.cpp | mlx
    sha256: str
    file_bytes: int
    device: str  # hostname unless the lab names it
    target: str  # target profile whose knobs and budget applied ("" for none)
    # how
    threads: Optional[int]  # None where the engine has no thread knob (MLX)
    ctx: int
    n_prompt: int
    n_gen: int
    reps: int
    # figures (mean and sample sd over reps; raw samples in `samples`)
    load_ms: float
    ttft_ms: float
    ttft_ms_sd: float
    pp_tps: float
    pp_tps_sd: float
    tg_tps: float
    tg_tps_sd: float
    peak_rss_bytes: int
    peak_anon_bytes: Optional[int] = None
    peak_file_bytes: Optional[int] = None
    phys_footprint_bytes: Optional[int] = None
    mlx_peak_bytes: Optional[int] = None
    kv_cache_bytes: Optional[int] = None  # llama.cpp: its log's MiB, 2 decimals, per buffer; MLX: cache nbytes
    compute_buffer_bytes: Optional[int] = None  # llama.cpp only (same resolution)
    # roofline: weights read per decoded token vs this host's measured read bandwidth
    bytes_per_token: Optional[int] = None
    host_read_gbs: Optional[float] = None
    achieved_gbs: Optional[float] = None
    roofline_pct: Optional[float] = None
    predicted_tg_tps: Optional[float] = None  # a prediction from the target's bandwidth, not a measurement
    budget_bytes: Optional[int] = None
    # memory as a device would count it (edgekit.measure.limits, edgekit.measure.pages); None where not measured
    depth: int = 0  # tokens already in the cache before each test (-d)
    page_size: Optional[int] = None  # this host's page size (Linux)
    peak_16k_bytes: Optional[int] = None  # peak RSS with the artifact's mappings counted in 16 KB pages
    limit_bytes: Optional[int] = None  # the memory limit the child was asked to run under
    limit_mechanism: Optional[str] = None  # what enforced it ("cgroup v1 memory.limit_in_bytes", ...)
    limit_not_enforced: Optional[str] = None  # why an asked-for limit could not be enforced
    cgroup_peak_bytes: Optional[int] = None  # the cgroup's own peak: page cache charged to the run included
    oom_killed: Optional[bool] = None  # the kernel's OOM killer stopped the child inside the limit
    majflt_prefill: Optional[float] = None  # major page faults per prefill (mean over reps)
    majflt_per_token: Optional[float] = None  # major page faults per decoded token (mean over reps)
    # "bench": edgekit bench, in its own process; "served": an HTTP client timing `edgekit serve`
    # (edgekit lab run --served: TTFT and decode t/s as the client sees them, template, HTTP and SSE included)
    via: str = "bench"
    # a test with a medium in its prompt (bench --image/--audio, edgekit.measure.media); None otherwise
    media_kind: Optional[str] = None  # image | audio
    media_sha256: Optional[str] = None  # of the file as given
    media_width: Optional[int] = None  # image: the file's pixels
    media_height: Optional[int] = None
    media_seconds: Optional[float] = None  # audio: the clip's duration
    image_tokens_budget: Optional[int] = None  # image: the soft-token budget it was sized for
    media_tokens: Optional[int] = None  # soft tokens the towers gave it (mtmd's count)
    n_positions: Optional[int] = None  # the prompt's positions: BOS, the framed medium, -p text tokens
    encode_ms: Optional[float] = None  # the towers' encode (mtmd_encode_chunk), mean over reps
    encode_ms_sd: Optional[float] = None
    towers_load_ms: Optional[float] = None  # loading the projector inside TTFT (towers = on_demand), else 0
    towers_bytes: Optional[int] = None  # the towers' anonymous memory at its largest (weights + compute)
    text_bytes: Optional[int] = None  # the peak's text part (peak RSS less the towers' part at the peak)
    # provenance
    timestamp: str = ""
    edgekit_version: str = ""
    engine_version: str = ""
    host: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gate_bytes(self) -> int:
        """The figure the budget gate compares: peak RSS, or the 16 KB-page peak where that is larger."""
        return max(self.peak_rss_bytes, self.peak_16k_bytes or 0)

    @property
    def over_budget_bytes(self) -> Optional[int]:
        return None if self.budget_bytes is None else self.gate_bytes - self.budget_bytes

    @property
    def medium(self) -> str:
        """The medium in the prompt as a test name's part ("+image256", "+audio250"), or ""."""
        return f"+{self.media_kind}{self.media_tokens or 0}" if self.media_kind else ""

    @property
    def pp_test(self) -> str:
        """llama-bench's name of the prompt test: pp512, or pp512 @ d1024 after 1024 tokens of depth;
        pp512+image256 with a medium in the prompt."""
        return f"pp{self.n_prompt}{self.medium}" + (f" @ d{self.depth}" if self.depth else "")

    @property
    def tg_test(self) -> str:
        """tg128; after a prompt with a medium, decoding continues from it: tg128 @ pp512+image256."""
        if self.media_kind:
            return f"tg{self.n_gen} @ {self.pp_test}"
        return f"tg{self.n_gen}" + (f" @ d{self.depth}" if self.depth else "")

    @property
    def failed(self) -> bool:
        """The child did not finish its test (the kernel killed it inside its limit): no figures."""
        return bool(self.oom_killed) or (self.tg_tps == 0 and not self.samples.get("tg_tps"))


def _mb(x: Optional[int]) -> Optional[float]:
    return None if x is None else x / MB


def _sd(mean: float, sd: float, r: Record) -> Optional[tuple[float, float]]:
    return None if r.failed else (mean, sd)


MEAN_NOTE = "mean ± sd over the repetitions"
MB_NOTE = "MB = 1e6 bytes"
GATE_NOTE = (
    "the target's memory gate (peak RSS, or the 16 KB-page peak if larger, vs its budget; OOM-kill or thrashing)"
)


MEDIA_NOTE = (
    "media: the file in the prompt (image WxH @ its token budget, or audio seconds); test pp<p>+image<k>: BOS, "
    "the k soft tokens framed by their markers, then p text tokens; tg after that prompt"
)
SPLIT_NOTE = (
    "text/towers: towers = the anonymous memory the projector added, before its load to its peak (weights and "
    "compute); text = peak RSS less the towers' part at the peak (towers=on_demand: the largest RSS after they "
    "were freed)"
)


def _media(r: Record) -> Optional[str]:
    if r.media_kind == "image":
        return f"image {r.media_width}x{r.media_height} @{r.image_tokens_budget}"
    if r.media_kind == "audio":
        return f"audio {r.media_seconds:.2f} s"
    return None


def _some(rows: Sequence[Record], test: Callable[[Record], bool]) -> bool:
    return any(test(r) for r in rows)


# The --wide table: every figure of a record on one row; optional columns only when some row has a value.
WIDE: list[Column] = [
    Column("artifact", lambda r: r.artifact),
    Column("quant", lambda r: r.quant),
    Column("engine", lambda r: r.engine),
    Column(
        "via",
        lambda r: r.via,
        show=lambda rs: _some(rs, lambda r: r.via != "bench"),
        note="via served: timed by an HTTP client through `edgekit serve` (lab run --served: TTFT to the "
        "first streamed text, decode t/s over the stream, pp t/s = prompt tokens ÷ that TTFT, peak RSS "
        "the server's), not by `edgekit bench`",
    ),
    Column("device", lambda r: r.device),
    Column("target", lambda r: r.target or None, show="some"),
    Column("threads", lambda r: r.threads, 0),
    Column("ctx", lambda r: r.ctx, 0),
    Column("size MB", lambda r: _mb(r.file_bytes), 1, note=MB_NOTE),
    Column("test", lambda r: f"{r.pp_test} + {r.tg_test}"),
    Column("load ms", lambda r: None if r.failed else r.load_ms, 1),
    Column("TTFT ms", lambda r: _sd(r.ttft_ms, r.ttft_ms_sd, r), 2, note=MEAN_NOTE),
    Column("pp t/s", lambda r: _sd(r.pp_tps, r.pp_tps_sd, r), 2, note=MEAN_NOTE),
    Column("tg t/s", lambda r: _sd(r.tg_tps, r.tg_tps_sd, r), 2, note=MEAN_NOTE),
    Column("peak RSS MB", lambda r: None if r.failed else _mb(r.peak_rss_bytes), 1, note=MB_NOTE),
    Column(
        "anon MB",
        lambda r: _mb(r.peak_anon_bytes),
        1,
        "some",
        "anon/file: the peak's anonymous vs file-backed (mmap'd) part",
    ),
    Column("file MB", lambda r: _mb(r.peak_file_bytes), 1, "some"),
    Column(
        "footprint MB",
        lambda r: _mb(r.phys_footprint_bytes),
        1,
        "some",
        "footprint: macOS's physical footprint of the process",
    ),
    Column("MLX peak MB", lambda r: _mb(r.mlx_peak_bytes), 1, "some"),
    Column("KV MB", lambda r: _mb(r.kv_cache_bytes), 2, "some"),
    Column("compute MB", lambda r: _mb(r.compute_buffer_bytes), 2, "some"),
    Column(
        "roofline %",
        lambda r: None if r.failed else r.roofline_pct,
        1,
        "some",
        "roofline: weight bytes read per token × tg ÷ this host's measured read bandwidth",
    ),
    Column(
        "predicted tg t/s",
        lambda r: r.predicted_tg_tps,
        1,
        "some",
        "predicted tg: the target's bandwidth ÷ bytes per token, a prediction, not a measurement",
    ),
    Column("budget MB", lambda r: _mb(r.budget_bytes), 0, "some"),
    Column("page KB", lambda r: None if r.page_size is None else r.page_size / 1024, 0, "some"),
    Column(
        "peak @16K MB",
        lambda r: _mb(r.peak_16k_bytes),
        1,
        "some",
        "peak @16K: the peak with the artifact's mapped pages counted in 16 KB file-aligned blocks, as a "
        "16 KB-page kernel (Raspberry Pi 5) maps them",
    ),
    Column("limit MB", lambda r: _mb(r.limit_bytes), 0, "some"),
    Column(
        "enforced by",
        lambda r: r.limit_mechanism or (r.limit_not_enforced and f"not enforced: {r.limit_not_enforced}"),
        show="some",
    ),
    Column(
        "cgroup peak MB",
        lambda r: _mb(r.cgroup_peak_bytes),
        1,
        "some",
        "cgroup peak: the memory cgroup's high-water mark (page cache charged to the run included)",
    ),
    Column("OOM", lambda r: None if r.oom_killed is None else ("killed" if r.oom_killed else "no"), show="some"),
    Column("majflt pp", lambda r: r.majflt_prefill, 1, "some", "majflt: major page faults (pages read from disk)"),
    Column("majflt/tok", lambda r: r.majflt_per_token, 2, "some"),
    Column("media", lambda r: _media(r), show="some", note=MEDIA_NOTE),
    Column("media sha256", lambda r: r.media_sha256 and r.media_sha256[:12], show="some"),
    Column("soft tokens", lambda r: r.media_tokens, 0, "some"),
    Column(
        "encode ms", lambda r: None if r.failed or r.encode_ms is None else (r.encode_ms, r.encode_ms_sd), 1, "some"
    ),
    Column("towers load ms", lambda r: None if r.failed else r.towers_load_ms or None, 1, "some"),
    Column("text MB", lambda r: None if r.failed else _mb(r.text_bytes), 1, "some", note=SPLIT_NOTE),
    Column("towers MB", lambda r: None if r.failed else _mb(r.towers_bytes), 1, "some"),
]


@dataclass(frozen=True)
class TestRow:
    """A row of the compact table: one record's pp or tg test."""

    __test__ = False  # not a pytest test class
    rec: Record
    phase: str  # "pp" | "tg"

    @property
    def name(self) -> str:
        return self.rec.pp_test if self.phase == "pp" else self.rec.tg_test

    @property
    def tps(self) -> Optional[tuple[float, float]]:
        r = self.rec
        return _sd(r.pp_tps, r.pp_tps_sd, r) if self.phase == "pp" else _sd(r.tg_tps, r.tg_tps_sd, r)


def simple_verdict(r: Record) -> Optional[str]:
    """The budget column without the gate's cross-row checks (edgekit.measure.budget.verdict has them)."""
    if r.oom_killed:
        return "OOM-killed"
    if r.budget_bytes is None:
        return None
    over = r.over_budget_bytes or 0
    return f"over by {over / MB:.1f} MB" if over > 0 else "ok"


def compact(verdict: Callable[[Record], Optional[str]] = simple_verdict) -> list[Column]:
    """llama-bench's columns (model, size, threads, test, t/s) and the memory this toolkit is about."""
    return [
        Column("artifact", lambda t: t.rec.artifact),
        Column("size MB", lambda t: _mb(t.rec.file_bytes), 1, note=MB_NOTE),
        Column("threads", lambda t: t.rec.threads, 0),
        Column("test", lambda t: t.name),
        Column("t/s", lambda t: t.tps, 2, note=MEAN_NOTE),
        Column(
            "encode ms",
            lambda t: None if t.phase != "pp" or t.rec.failed or t.rec.encode_ms is None else t.rec.encode_ms,
            1,
            "some",
            "encode ms: the towers' encode of the medium (mtmd_encode_chunk), inside TTFT; pp t/s counts the "
            "prompt's text positions only",
        ),
        Column("peak RSS MB", lambda t: None if t.rec.failed else _mb(t.rec.peak_rss_bytes), 1, note=MB_NOTE),
        Column(
            "budget",
            lambda t: verdict(t.rec),
            show=lambda ts: any(verdict(t.rec) for t in ts),
            note="budget: " + GATE_NOTE,
        ),
    ]


def swept(keys: Iterable[str], *, row: bool) -> list[Column]:
    """A column per swept value: ctx, or a --set knob as the engine applied it."""
    get: Callable[[Any], Record] = (lambda t: t.rec) if row else (lambda r: r)
    return [Column("ctx", lambda t: get(t).ctx, 0) if k == "ctx" else _knob_column(k, get) for k in keys]


def _knob_column(k: str, get: Callable[[Any], Record]) -> Column:
    return Column(k, lambda t: _knob(get(t).runtime.get(k)))


def _knob(v: Any) -> Any:
    return None if v is None else str(v).lower() if isinstance(v, bool) else v


def varying(records: Sequence[Record]) -> list[str]:
    """The runtime knobs (and ctx) whose values differ between records of the same artifact."""
    by: dict[str, list[Record]] = {}
    for r in records:
        by.setdefault(r.sha256, []).append(r)
    keys: dict[str, None] = {}
    for rs in by.values():
        if len({r.ctx for r in rs}) > 1:
            keys["ctx"] = None
        for k in sorted({k for r in rs for k in r.runtime}):
            if len({repr(r.runtime.get(k)) for r in rs}) > 1:
                keys[k] = None
    return list(keys)


def table(
    wide: bool = False,
    sweep: Sequence[str] = (),
    decide: Optional[Sequence[Record]] = None,
    verdict: Callable[[Record], Optional[str]] = simple_verdict,
) -> MarkdownPrinter:
    """The bench table for one run; ``sweep``: the swept keys (ctx, knob names) shown as columns after
    threads."""
    base = compact(verdict)
    if wide:
        gate = dataclasses.replace(
            base[-1],
            header="verdict",
            get=verdict,
            show=lambda rs: any(verdict(r) for r in rs),
            note="verdict: " + GATE_NOTE,
        )
        knobs = swept([k for k in sweep if k != "ctx"], row=False)  # ctx is a wide column already
        return MarkdownPrinter(WIDE[:8] + knobs + WIDE[8:] + [gate], decide=decide)
    return MarkdownPrinter(
        base[:3] + swept(sweep, row=True) + base[3:],
        rows_of=lambda r: [TestRow(r, "pp"), TestRow(r, "tg")],
        decide=decide,
    )


def to_markdown(records: Iterable[Record], wide: bool = True) -> str:
    """A finished list as one table (wide by default, as report and lab print it), knobs that differ
    between runs of an artifact as columns."""
    rs = list(records)
    return table(wide, varying(rs), decide=rs).render(rs)


# ---------------------------------------------------------------- -o md|csv|json|jsonl

OUTPUTS = ("md", "csv", "json", "jsonl")


def printer(
    output: str,
    wide: bool = False,
    sweep: Sequence[str] = (),
    verdict: Callable[[Record], Optional[str]] = simple_verdict,
) -> Printer:
    """The streaming printer ``bench -o OUTPUT`` writes with (md: the compact table, or --wide)."""
    if output == "md":
        return table(wide, sweep, verdict=verdict)
    return {"csv": lambda: CsvPrinter(Record), "json": JsonPrinter, "jsonl": JsonlPrinter}[output]()


def to_csv(records: Iterable[Any]) -> str:
    """Every field of the records' dataclass (a bench Record, or eval's), one row each."""
    rs = list(records)
    return CsvPrinter(type(rs[0]) if rs else Record).render(rs)


def to_json(records: Iterable[Any]) -> str:
    return JsonPrinter().render(records)


def to_jsonl(records: Iterable[Any]) -> str:
    return JsonlPrinter().render(records)


def parse_csv(text: str, cls: Any = Record) -> list[Any]:
    return printers.parse_csv(text, cls)


def parse_json(text: str, cls: Any = Record) -> list[Any]:
    return printers.parse_json(text, cls)


def parse_jsonl(text: str, cls: Any = Record) -> list[Any]:
    return printers.parse_jsonl(text, cls)


PRINTERS: dict[str, Callable[[Iterable[Record]], str]] = {
    "md": to_markdown,
    "csv": to_csv,
    "json": to_json,
    "jsonl": to_jsonl,
}
PARSERS: dict[str, Callable[[str], list[Any]]] = {
    "md": parse_markdown,
    "csv": parse_csv,
    "json": parse_json,
    "jsonl": parse_jsonl,
}
