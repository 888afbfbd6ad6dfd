"""Turn one run's results into the tables of ``BENCHMARKS.md`` and the plots in ``docs/``.

Only the region between the two ``bench:generated`` markers is rewritten; the hand-written
sections around it (method notes, the hot-path log) stay as they are. Every figure comes from the
results file named in the region, and each is the median over the run's repeats.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.load import PERCENTILES, percentile_at

BEGIN = "<!-- bench:generated:begin (make bench rewrites this region) -->"
END = "<!-- bench:generated:end -->"
NATIVE_ORDER = (
    "direct",
    "nginx",
    "plain-httpx",
    "plain-aiohttp",
    "gateway",
    "gateway-default-gc",
    "gateway-baseline",
    "litellm",
)

Rows = dict[tuple[str, str, str], list[dict[str, Any]]]


def _index(results: dict[str, Any]) -> Rows:
    rows: Rows = defaultdict(list)
    for row in results.get("measurements", []):
        rows[(row["family"], row["step"], row["target"])].append(row)
    return rows


def _median(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def _spread(values: list[float]) -> float:
    """(max - min) / median over repeats: how much one figure moved between repeats."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if len(values) < 2:
        return float("nan")
    mid = statistics.median(values)
    return (max(values) - min(values)) / abs(mid) if mid else float("nan")


def _iqr_spread(values: list[float]) -> float:
    values = sorted(v for v in values if v is not None and not math.isnan(v))
    if len(values) < 2:
        return float("nan")
    q = statistics.quantiles(values, n=4, method="inclusive")
    mid = statistics.median(values)
    return (q[2] - q[0]) / abs(mid) if mid else float("nan")


class Figures:
    """Medians over repeats for one results file, and the spread of each figure."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self.rows = _index(results)
        self.spreads: list[float] = []
        self.quartile_spreads: list[float] = []

    def values(self, family: str, step: str, target: str, metric: str) -> list[float]:
        out = []
        for row in self.rows.get((family, step, target), []):
            out.append(self._metric(row, metric, family, step, target))
        return out

    def get(self, family: str, step: str, target: str, metric: str) -> float:
        values = self.values(family, step, target, metric)
        spread = _spread(values)
        if not math.isnan(spread):
            self.spreads.append(spread)
            self.quartile_spreads.append(_iqr_spread(values))
        return _median(values)

    def _chunks_per_request(self, family: str, step: str, target: str) -> float:
        c1 = step.rsplit("-c", 1)[0] + "-c1"
        per = [
            r["result"]["chunks"] / r["result"]["all_requests"]
            for r in self.rows.get((family, c1, target), [])
            if r["result"]["all_requests"]
        ]
        return _median(per)

    def _metric(self, row: dict[str, Any], metric: str, family: str, step: str, target: str) -> float:
        res = row["result"]
        if metric == "p50":
            return percentile_at(res["latency_us"], 50) / 1000
        if metric == "p99":
            return percentile_at(res["latency_us"], 99) / 1000
        if metric == "ttfc50":
            return percentile_at(res["ttfc_us"], 50) / 1000 if res["ttfc_us"] else float("nan")
        if metric == "rps":
            return float(res["rps"]) if not res["errors"] else float(res["rps"])
        if metric == "errors":
            return float(res["errors"])
        if metric == "cpu_per_request_us":
            return row["cpu_s"] * 1e6 / res["all_requests"] if res["all_requests"] and row["cpu_s"] else float("nan")
        if metric == "cpu_per_chunk_us":
            chunks = res["chunks"]
            if res["tool"] == "wrk":
                chunks = res["all_requests"] * self._chunks_per_request(family, step, target)
            return row["cpu_s"] * 1e6 / chunks if chunks and row["cpu_s"] else float("nan")
        if metric == "chunks_per_request":
            return res["chunks"] / res["all_requests"] if res["all_requests"] else float("nan")
        raise KeyError(metric)

    def added(self, family: str, step: str, target: str, metric: str = "p50") -> float:
        """The target's figure minus direct's, paired by repeat (same round), then the median."""
        mine = self.values(family, step, target, metric)
        base = self.values(family, step, "direct", metric)
        return _median([a - b for a, b in zip(mine, base, strict=False)])

    def targets(self, family: str) -> list[str]:
        present = {t for (f, _, t) in self.rows if f == family}
        return [t for t in NATIVE_ORDER if t in present] + sorted(present - set(NATIVE_ORDER))

    def steps(self, family: str) -> list[str]:
        seen: list[str] = []
        for f, s, _ in self.rows:
            if f == family and s not in seen:
                seen.append(s)
        return seen


def _fmt(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def _ratio(a: float, b: float) -> str:
    if any(math.isnan(x) for x in (a, b)) or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _find(steps: list[str], prefix: str, concurrency: int) -> str | None:
    name = f"{prefix}-c{concurrency}"
    return name if name in steps else None


def _stream_steps(steps: list[str]) -> list[int]:
    tokens = sorted({int(s.split("-")[0][6:]) for s in steps if s.startswith("stream")})
    return tokens


def headline(fig: Figures) -> str:
    fam = "native"
    steps = fig.steps(fam)
    small_c = sorted({int(s.rsplit("-c", 1)[1]) for s in steps if s.startswith("small")})
    top_stream = _stream_steps(steps)
    header = ["target", "c=1 p50 added over direct (ms)", "× plain aiohttp's added"]
    for c in small_c[1:]:
        header += [f"c={c} req/s", "× direct", "× plain aiohttp"]
    stream_c = [c for c in sorted({int(s.rsplit("-c", 1)[1]) for s in steps if s.startswith("stream")}) if c > 1]
    if top_stream and stream_c:
        header += [f"{top_stream[0]}-token streams/s c={stream_c[0]}", "× plain aiohttp"]
        header += [f"CPU µs/chunk ({top_stream[-1]} tok, c=1)", "× plain aiohttp"]
    rows = []
    aio_added = fig.added(fam, "small-c1", "plain-aiohttp")
    aio_chunk = fig.get(fam, f"stream{top_stream[-1]}-c1", "plain-aiohttp", "cpu_per_chunk_us") if top_stream else 0
    for target in fig.targets(fam):
        added = fig.added(fam, "small-c1", target) if target != "direct" else float("nan")
        row = [f"**{target}**" if target == "gateway" else target, _fmt(added, 3), _ratio(added, aio_added)]
        for c in small_c[1:]:
            step = f"small-c{c}"
            rps = fig.get(fam, step, target, "rps")
            row += [
                _fmt(rps, 0),
                _ratio(rps, fig.get(fam, step, "direct", "rps")),
                _ratio(rps, fig.get(fam, step, "plain-aiohttp", "rps")),
            ]
        if top_stream and stream_c:
            step = f"stream{top_stream[0]}-c{stream_c[0]}"
            sps = fig.get(fam, step, target, "rps")
            row += [_fmt(sps, 1), _ratio(sps, fig.get(fam, step, "plain-aiohttp", "rps"))]
            cpc = fig.get(fam, f"stream{top_stream[-1]}-c1", target, "cpu_per_chunk_us")
            row += [_fmt(cpc, 1), _ratio(cpc, aio_chunk)]
        rows.append(row)
    return _table(header, rows)


def small_table(fig: Figures, fam: str) -> str:
    steps = [s for s in fig.steps(fam) if s.startswith("small")]
    header = ["target"]
    for s in steps:
        c = s.rsplit("-c", 1)[1]
        header += [f"c={c} p50 ms", f"c={c} p99 ms", f"c={c} req/s"]
    header += ["CPU µs/request (c=" + steps[-1].rsplit("-c", 1)[1] + ")"]
    rows = []
    for target in fig.targets(fam):
        row = [target]
        for s in steps:
            row += [
                _fmt(fig.get(fam, s, target, "p50"), 3),
                _fmt(fig.get(fam, s, target, "p99"), 3),
                _fmt(fig.get(fam, s, target, "rps"), 0),
            ]
        row.append(_fmt(fig.get(fam, steps[-1], target, "cpu_per_request_us"), 0))
        rows.append(row)
    return _table(header, rows)


def stream_table(fig: Figures, fam: str) -> str:
    steps = fig.steps(fam)
    header = ["target"]
    cols: list[tuple[str, str, str]] = []
    for tokens in _stream_steps(steps):
        c1 = f"stream{tokens}-c1"
        if c1 in steps:
            cols += [(c1, "ttfc50", f"{tokens} tok: first chunk p50 ms"), (c1, "p50", f"{tokens} tok: total p50 ms")]
        for s in steps:
            if s.startswith(f"stream{tokens}-c") and s != c1:
                cols.append((s, "rps", f"{tokens} tok: streams/s c={s.rsplit('-c', 1)[1]}"))
    header += [c[2] for c in cols]
    rows = []
    for target in fig.targets(fam):
        rows.append([target] + [_fmt(fig.get(fam, s, target, m), 3 if m != "rps" else 1) for s, m, _ in cols])
    return _table(header, rows)


def chunk_table(fig: Figures, fam: str) -> str:
    steps = fig.steps(fam)
    tokens = _stream_steps(steps)
    header = ["target"]
    cols: list[tuple[str, str]] = []
    for t in tokens:
        for s in steps:
            if s.startswith(f"stream{t}-c"):
                cols.append((s, f"{t} tok, c={s.rsplit('-c', 1)[1]}"))
    header += [c[1] + " µs/chunk" for c in cols]
    marginal = len(tokens) >= 2
    if marginal:
        header.append(f"marginal µs/chunk ({tokens[0]}→{tokens[-1]} tok, c=1)")
    rows = []
    for target in fig.targets(fam):
        if target == "direct":
            continue
        row = [target] + [_fmt(fig.get(fam, s, target, "cpu_per_chunk_us"), 1) for s, _ in cols]
        if marginal:
            row.append(_fmt(_marginal(fig, fam, target, tokens[0], tokens[-1]), 1))
        rows.append(row)
    return _table(header, rows)


def _marginal(fig: Figures, fam: str, target: str, low: int, high: int) -> float:
    """Per-chunk CPU with the per-request cost taken out: the slope between two stream lengths."""
    a = fig.values(fam, f"stream{low}-c1", target, "cpu_per_request_us")
    b = fig.values(fam, f"stream{high}-c1", target, "cpu_per_request_us")
    ca = _median(fig.values(fam, f"stream{low}-c1", target, "chunks_per_request"))
    cb = _median(fig.values(fam, f"stream{high}-c1", target, "chunks_per_request"))
    if math.isnan(ca) or math.isnan(cb) or cb == ca:
        return float("nan")
    return (_median(b) - _median(a)) / (cb - ca)


def openai_table(fig: Figures) -> str:
    fam = "openai"
    steps = fig.steps(fam)
    header = ["target", "c=1 p50 ms", "added over direct (ms)", "× plain aiohttp's added"]
    small_c = [s for s in steps if s.startswith("small") and not s.endswith("-c1")]
    for s in small_c:
        header += [f"c={s.rsplit('-c', 1)[1]} req/s", "× direct"]
    stream = [s for s in steps if s.startswith("stream")]
    for s in stream:
        tokens, c = s[6:].split("-c")
        header.append(f"{tokens} tok c={c}: " + ("first chunk p50 ms" if c == "1" else "streams/s"))
    aio = fig.added(fam, "small-c1", "plain-aiohttp")
    rows = []
    for target in fig.targets(fam):
        added = fig.added(fam, "small-c1", target) if target != "direct" else float("nan")
        row = [target, _fmt(fig.get(fam, "small-c1", target, "p50"), 3), _fmt(added, 3), _ratio(added, aio)]
        for s in small_c:
            rps = fig.get(fam, s, target, "rps")
            row += [_fmt(rps, 1), _ratio(rps, fig.get(fam, s, "direct", "rps"))]
        for s in stream:
            metric = "ttfc50" if s.endswith("-c1") else "rps"
            row.append(_fmt(fig.get(fam, s, target, metric), 3 if metric == "ttfc50" else 1))
        rows.append(row)
    return _table(header, rows)


def targets_check(fig: Figures) -> str:
    """Where the gateway stands against its performance targets (reported, never asserted)."""
    fam = "native"
    steps = fig.steps(fam)
    out = []
    gw_added = fig.added(fam, "small-c1", "gateway")
    aio_added = fig.added(fam, "small-c1", "plain-aiohttp")
    if not math.isnan(gw_added) and not math.isnan(aio_added) and aio_added > 0:
        r, shown = _judged(fig, fam, "small-c1", "added", gw_added / aio_added)
        out.append(
            [
                "added p50 at c=1 ≤ 1.5× plain aiohttp's (stretch ≤ 1.0×)",
                f"{gw_added:.3f} ms vs {aio_added:.3f} ms: {shown}",
                _verdict(r <= 1.5, r <= 1.0),
            ]
        )
    for s in steps:
        if s.startswith("small") and not s.endswith("-c1"):
            aio = fig.get(fam, s, "plain-aiohttp", "rps")
            for target, label in (("gateway", ""), ("gateway-default-gc", " (gateway with CPython's default GC)")):
                gw = fig.get(fam, s, target, "rps")
                if not math.isnan(gw) and not math.isnan(aio) and aio:
                    r, shown = (
                        _judged(fig, fam, s, "rps", gw / aio) if target == "gateway" else (gw / aio, f"{gw / aio:.2f}×")
                    )
                    out.append(
                        [
                            f"throughput {s.split('-')[1].replace('c', 'c=')} ≥ 0.67× plain aiohttp's{label}",
                            f"{gw:,.0f} vs {aio:,.0f} req/s: {shown}",
                            _verdict(r >= 0.67),
                        ]
                    )
    tokens = _stream_steps(steps)
    if tokens:
        s = f"stream{tokens[-1]}-c1"
        gw, aio = fig.get(fam, s, "gateway", "cpu_per_chunk_us"), fig.get(fam, s, "plain-aiohttp", "cpu_per_chunk_us")
        if not math.isnan(gw) and not math.isnan(aio):
            r, shown = _judged(fig, fam, s, "cpu_per_chunk_us", gw / aio)
            out.append(
                [
                    f"CPU per chunk ≤ plain aiohttp's (stretch ≤ 10 µs), {tokens[-1]}-token streams, c=1",
                    f"{gw:.1f} vs {aio:.1f} µs: {shown}",
                    _verdict(r <= 1.0, gw <= 10),
                ]
            )
    rss = fig.results.get("scenarios", {}).get("rss_streams", {}).get("gateway")
    if rss:
        growth = rss["growth_bytes"] / 2**20
        out.append(
            [
                f"{rss['streams']:,} concurrent streams: RSS growth < 100 MB, no errors",
                f"+{growth:.1f} MiB, {rss['errors']} errors",
                _verdict(growth * 1.048576 < 100 and not rss["errors"]),
            ]
        )
    gw_o, ll_o = fig.added("openai", "small-c1", "gateway"), fig.added("openai", "small-c1", "litellm")
    if not math.isnan(gw_o) and not math.isnan(ll_o):
        out.append(
            [
                "added latency below LiteLLM's (OpenAI API, c=1)",
                f"{gw_o:.3f} ms vs {ll_o:.3f} ms ({ll_o / gw_o:.0f}× less)"
                if gw_o > 0
                else f"{gw_o:.3f} vs {ll_o:.3f} ms",
                _verdict(gw_o < ll_o),
            ]
        )
    elif fig.results.get("targets", {}).get("litellm", {}).get("status") == "not measured":
        out.append(
            ["added latency below LiteLLM's", "not measured: " + fig.results["targets"]["litellm"]["reason"], "—"]
        )
    return _table(["target", "this run", "status"], out)


def _paired(fig: Figures, fam: str, step: str, metric: str) -> list[float]:
    """The gateway ÷ plain-aiohttp ratio of each repeat, lowest to highest.

    Every repeat measures the two back to back, so a pair shares whatever the machine was doing
    then; the median of these ratios is what the targets are judged by (see ``_judged``).
    """
    if metric == "added":
        direct = fig.values(fam, step, "direct", "p50")
        gw = [a - b for a, b in zip(fig.values(fam, step, "gateway", "p50"), direct, strict=False)]
        aio = [a - b for a, b in zip(fig.values(fam, step, "plain-aiohttp", "p50"), direct, strict=False)]
    else:
        gw, aio = fig.values(fam, step, "gateway", metric), fig.values(fam, step, "plain-aiohttp", metric)
    return sorted(a / b for a, b in zip(gw, aio, strict=False) if b and not math.isnan(a / b))


def _judged(fig: Figures, fam: str, step: str, metric: str, of_medians: float) -> tuple[float, str]:
    """The ratio a target is judged by, and how the table shows it.

    With two or more repeats: the median of the per-repeat (paired) ratios, which cancels drift of
    the machine between repeats that the ratio of the two overall medians does not; that ratio is
    shown beside it. With one repeat they are the same number.
    """
    ratios = _paired(fig, fam, step, metric)
    if len(ratios) < 2:
        return of_medians, f"{of_medians:.2f}×"
    paired = statistics.median(ratios)
    each = ", ".join(f"{r:.2f}" for r in ratios)
    return paired, f"**{paired:.2f}×** paired (per repeat {each}; ratio of medians {of_medians:.2f}×)"


def _verdict(met: bool, stretch: bool | None = None) -> str:
    if not met:
        return "not met"
    return "met, stretch met" if stretch else "met"


def scenarios_section(results: dict[str, Any]) -> str:
    sc = results.get("scenarios")
    if not sc:
        return "_Scenarios were not run._"
    parts = []
    rss = sc["rss_streams"]
    rows = []
    for name in ("gateway", "plain-aiohttp"):
        r = rss.get(name)
        if not r:
            continue
        top = r["points"][-1]
        rows.append(
            [
                name,
                f"{r['baseline_rss'] / 2**20:.1f}",
                f"{top['rss'] / 2**20:.1f}",
                f"{r['growth_bytes'] / 2**20:.1f}",
                f"{r['growth_bytes'] / max(1, r['streams']) / 1024:.1f}",
                str(r["errors"]),
                "yes" if r["all_held_at_peak"] else "no",
            ]
        )
    parts.append(
        f"**Memory with {max(p['streams'] for p in rss['gateway']['points']):,} slow streams held** "
        f"(one token every {rss['interval']:g} s, {rss['tokens']} tokens each; RSS of the server process):\n\n"
        + _table(
            ["server", "RSS idle MiB", "RSS at peak MiB", "growth MiB", "KiB per stream", "errors", "all held at once"],
            rows,
        )
    )
    gap = sc["refill_gap"]
    up, gw = gap["upstream_gap_us"], gap["gateway_gap_us"]
    parts.append(
        "**Slot refill gap** (parallel=1, 8 clients queued, streamed answers of 10 tokens): from the emulator's "
        f"clock, the end of one answer to the arrival of the next request: p50 {_fmt(up[0] if up else math.nan, 0)} µs, "
        f"p90 {_fmt(up[1] if up else math.nan, 0)} µs, p99 {_fmt(up[2] if up else math.nan, 0)} µs over "
        f"{gap['upstream_gaps']} hand-overs ({gap['overlaps']} overlaps); the gateway's own `Pool.refill_gaps` "
        f"(release to grant): p50 {_fmt(gw[0] if gw else math.nan, 1)} µs, p99 {_fmt(gw[2] if gw else math.nan, 1)} µs; "
        f"{gap['requests']} requests, {gap['errors']} errors."
    )
    cold = sc["cold_burst"]
    rows = []
    for name in ("gateway", "direct"):
        c = cold.get(name)
        if c:
            rows.append(
                [
                    name,
                    str(c["requests"]),
                    str(c["ok"]),
                    str(c["upstream_loads"]),
                    str(c["upstream_reloads"]),
                    f"{c['seconds']:.2f}",
                ]
            )
    parts.append(
        f"**Cold burst** ({cold['gateway']['requests']} concurrent requests for a model not loaded; the "
        f"emulated load takes {cold['load_seconds']:g} s):\n\n"
        + _table(["via", "requests", "200 OK", "upstream loads", "reloads", "seconds"], rows)
    )
    for key, behaviour in (
        ("retry_after", "polled every 100 ms until admitted"),
        ("retry_after_honoured", "waited as long as each Retry-After said before asking again"),
    ):
        if key in sc:
            parts.append(_retry_after_paragraph(sc[key], behaviour))
    return "\n\n".join(parts)


def _retry_after_paragraph(ra: dict[str, Any], behaviour: str) -> str:
    adv, act, ratio = ra["advertised_s"], ra["actual_s"], ra["ratio"]
    retries = ra.get("retries")
    asked = f" (retries per client p50/p90: {'/'.join(_fmt(v, 0) for v in retries)})" if retries else ""
    return (
        f"**Retry-After at 2× overload, clients that {behaviour.split(' ', 1)[0]}** (parallel={ra['parallel']}, "
        f"max_queue={ra['max_queue']}, about {ra['service_s']:g} s per answer, so capacity ≈ "
        f"{ra['capacity_per_s']:g}/s; {ra['offered_per_s']:g} arrivals/s, each client its own host): of "
        f"{ra['arrivals']} arrivals, {ra['rejected_then_retried']} were refused with a Retry-After and then "
        f"{behaviour}{asked}. "
        + (
            f"First Retry-After p10/p50/p90: {'/'.join(_fmt(v, 1) for v in adv)} s; actual time from that refusal "
            f"until admitted: {'/'.join(_fmt(v, 2) for v in act)} s; actual ÷ advertised: "
            f"{'/'.join(_fmt(v, 2) for v in ratio)}; the advertised wait (+0.25 s) was enough for "
            f"{ra['within_advertised'] * 100:.0f}%"
            + (
                f", {ra['first_retry_admitted'] * 100:.0f}% were admitted at their first retry"
                if ra.get("first_retry_admitted") is not None and "honour" in ra and ra["honour"]
                else ""
            )
            + f" (mean absolute error {ra['mean_abs_error_s']} s); "
            f"{ra['gave_up']} gave up after 60 s."
            if act
            else "No request was refused."
        )
    )


def overhead_section(results: dict[str, Any]) -> str:
    """The in-process figures (``bench.overhead``): the gateway's own Python per request and per chunk."""
    data = results.get("overhead") or {}
    runs = {name: r for name, r in data.items() if r}
    if not runs:
        return "_Not measured._"
    reference = next((name for name in ("gateway-baseline", "before") if name in runs), "")
    base = runs.get(reference)
    base_req = _median([r["request_us"] for r in base]) if base else math.nan
    base_chunk = _median([r["chunk_us"] for r in base]) if base else math.nan
    rows = []
    for name, r in runs.items():
        req = _median([x["request_us"] for x in r])
        chunk = _median([x["chunk_us"] for x in r])
        spread = _spread([x["request_us"] for x in r])
        row = [name, _fmt(req, 1), "—" if math.isnan(spread) else f"{spread * 100:.0f}%", _fmt(chunk, 2)]
        if base:
            row += [_fmt(req - base_req, 1), _fmt(chunk - base_chunk, 2)]
        rows.append(row)
    header = ["package", "µs per small request", "spread", "µs per streamed chunk"]
    if base:
        header += [f"Δ request vs {reference} (µs)", f"Δ chunk vs {reference} (µs)"]
    return _table(header, rows)


def before_after(fig: Figures) -> str:
    """End-to-end figures of the gateway against its baseline copy, measured side by side in this run."""
    if "gateway-baseline" not in fig.targets("native"):
        return ""
    rows = []
    for fam in ("native", "openai"):
        for step in fig.steps(fam):
            for metric, label in (
                ("p50", "p50 ms"),
                ("rps", "req/s"),
                ("cpu_per_request_us", "CPU µs/request"),
                ("cpu_per_chunk_us", "CPU µs/chunk"),
            ):
                if metric == "cpu_per_chunk_us" and not step.startswith("stream"):
                    continue
                if metric == "cpu_per_request_us" and step.startswith("stream"):
                    continue
                before = fig.get(fam, step, "gateway-baseline", metric)
                after = fig.get(fam, step, "gateway", metric)
                if math.isnan(before) or math.isnan(after):
                    continue
                rows.append([f"{fam} {step}", label, _fmt(before, 3), _fmt(after, 3), _ratio(after, before)])
    return _table(["step", "figure", "before (baseline)", "after (gateway)", "after ÷ before"], rows)


def client_choice(fig: Figures) -> str:
    """The upstream client: the two plain proxies differ only in their HTTP client."""
    fam = "native"
    if not {"plain-httpx", "plain-aiohttp"} <= set(fig.targets(fam)):
        return "_Both plain proxies are needed for this comparison._"
    rows = []
    for target in ("plain-httpx", "plain-aiohttp"):
        row = [target, _fmt(fig.added(fam, "small-c1", target), 3)]
        for step in fig.steps(fam):
            if step.startswith("small") and not step.endswith("-c1"):
                row.append(_fmt(fig.get(fam, step, target, "rps"), 0))
        last_small = [s for s in fig.steps(fam) if s.startswith("small")][-1]
        row.append(_fmt(fig.get(fam, last_small, target, "cpu_per_request_us"), 0))
        tokens = _stream_steps(fig.steps(fam))
        if tokens:
            row.append(_fmt(fig.get(fam, f"stream{tokens[-1]}-c1", target, "cpu_per_chunk_us"), 1))
        rows.append(row)
    header = ["plain proxy", "c=1 p50 added (ms)"]
    header += [
        f"{s.split('-')[1].replace('c', 'c=')} req/s"
        for s in fig.steps(fam)
        if s.startswith("small") and not s.endswith("-c1")
    ]
    header += ["CPU µs/request", "CPU µs/chunk"] if _stream_steps(fig.steps(fam)) else ["CPU µs/request"]
    return _table(header, rows)


def noise_line(fig: Figures) -> str:
    spreads = sorted(s for s in fig.spreads if not math.isnan(s))
    if not spreads:
        return "One repeat only: no spread to report."
    quartiles = sorted(q for q in fig.quartile_spreads if not math.isnan(q))
    return (
        f"Across the {len(spreads)} figures above, how far each moved over the repeats: the interquartile range ÷ "
        f"median is {statistics.median(quartiles) * 100:.0f}% for the median figure and "
        f"{quartiles[int(0.9 * (len(quartiles) - 1))] * 100:.0f}% at the 90th percentile; the full range (max − min) "
        f"÷ median is {statistics.median(spreads) * 100:.0f}% for the median figure, "
        f"{spreads[int(0.9 * (len(spreads) - 1))] * 100:.0f}% at the 90th percentile and {spreads[-1] * 100:.0f}% "
        "at worst (p99 latencies and the emulator-bound stream rates move most). The targets table judges each "
        "ratio by the median of its per-repeat ratios, each repeat's pair measured back to back, and shows the "
        "ratio of the overall medians beside it."
    )


def machine_section(results: dict[str, Any]) -> str:
    m = results["machine"]
    v = m["versions"]
    targets = results.get("targets", {})
    lines = [
        f"- Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}; load average "
        f"{m['loadavg_start'][0]:.2f} at the start, {m.get('loadavg_end', [math.nan])[0]:.2f} at the end (other work "
        "shares the machine).",
        f"- Python {m['python']}; uvicorn {v['uvicorn']} with uvloop {v['uvloop'] or 'absent'} and httptools "
        f"{v['httptools'] or 'absent'}, one worker per server; aiohttp {v['aiohttp']}, httpx {v['httpx']}, "
        f"Starlette {v['starlette']}, orjson {v['orjson']}, prometheus-client {v['prometheus-client']}.",
        f"- ollama-asgi {v['ollama-asgi']} at git {m['git_commit']}"
        + (" with uncommitted changes to the package" if m.get("package_modified") else "")
        + f"; load generator: {results['loadgen']}"
        + (f" {m['wrk']}" if results["loadgen"] == "wrk" else "")
        + f"; nginx {m['nginx'] or 'absent'}.",
        f"- Run started {m['started']}, took {results.get('seconds', '?')} s, "
        f"{results.get('plan', {}).get('repeats', '?')} repeats of every step; results in "
        f"`bench/results/{results.get('run_dir', 'run-*')}/results.json` (git-ignored; also `bench/results/latest.json`).",
    ]
    missing = [f"{k}: {t['reason']}" for k, t in targets.items() if t.get("status") == "not measured"]
    if missing:
        lines.append("- Not measured: " + "; ".join(missing) + ".")
    ll = targets.get("litellm")
    if ll and ll.get("status") == "measured":
        lines.append(
            f"- LiteLLM proxy {ll['version']} (`litellm[proxy]=={ll['version']}`, its own venv): {ll['note']}."
        )
    return "\n".join(lines)


def render_region(results: dict[str, Any], plots: list[str]) -> str:
    fig = Figures(results)
    sections = [
        BEGIN,
        "",
        "### This run",
        "",
        machine_section(results),
        "",
        "### Headline: the gateway against direct and the plain aiohttp proxy (native API, `/api/chat`)",
        "",
        headline(fig),
        "",
        "### Targets",
        "",
        targets_check(fig),
        "",
        "### Small non-streamed requests (native `/api/chat`, one token)",
        "",
        small_table(fig, "native"),
        "",
        "### Streams (native `/api/chat`)",
        "",
        stream_table(fig, "native"),
        "",
        "### CPU per relayed chunk (proxy process CPU time ÷ NDJSON lines delivered)",
        "",
        chunk_table(fig, "native"),
    ]
    if fig.steps("openai"):
        sections += [
            "",
            "### OpenAI-compatible API (`/v1/chat/completions`), where LiteLLM is compared",
            "",
            openai_table(fig),
        ]
    sections += ["", "### Upstream HTTP client: httpx against aiohttp (the plain proxies, this run)", ""]
    sections += [client_choice(fig), "", "### The gateway's own Python (in-process, canned upstream, no sockets)", ""]
    sections += [overhead_section(results)]
    table = before_after(fig)
    if table:
        sections += ["", "### Before and after the hot-path changes (end to end, this run)", "", table]
    sections += [
        "",
        "### Gateway behaviour under load",
        "",
        scenarios_section(results),
        "",
        "### Noise",
        "",
        noise_line(fig),
    ]
    if plots:
        sections += ["", "### Plots", ""] + [f"![{p}](docs/{p})" for p in plots]
    sections += ["", END]
    return "\n".join(sections)


def plot(results: dict[str, Any], out: Path) -> list[str]:
    """PNG plots; returns their file names (none when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out.mkdir(parents=True, exist_ok=True)
    fig = Figures(results)
    names = []
    steps = [s for s in fig.steps("native") if s.startswith("small")]
    if steps:
        figure, axes = plt.subplots(1, len(steps), figsize=(5 * len(steps), 4), squeeze=False)
        for ax, step in zip(axes[0], steps, strict=True):
            for target in fig.targets("native"):
                runs = fig.rows.get(("native", step, target), [])
                if not runs:
                    continue
                mid = sorted(runs, key=lambda r: percentile_at(r["result"]["latency_us"], 50))[len(runs) // 2]
                lat = mid["result"]["latency_us"]
                if lat:
                    ax.plot([v / 1000 for v in lat], [p / 100 for p in PERCENTILES], marker=".", label=target)
            ax.set_xscale("log")
            ax.set_xlabel("latency (ms, log)")
            ax.set_ylabel("fraction of requests")
            ax.set_title(f"small request, {step.split('-')[1].replace('c', 'c=')}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(out / "bench-latency-cdf.png", dpi=110)
        plt.close(figure)
        names.append("bench-latency-cdf.png")
    chunk_steps = [s for s in fig.steps("native") if s.startswith("stream")]
    if chunk_steps:
        targets = [t for t in fig.targets("native") if t != "direct"]
        figure, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / max(1, len(chunk_steps))
        for i, step in enumerate(chunk_steps):
            values = [fig.get("native", step, t, "cpu_per_chunk_us") for t in targets]
            ax.bar(
                [x + i * width for x in range(len(targets))],
                [0 if math.isnan(v) else v for v in values],
                width,
                label=step.replace("stream", "").replace("-c", " tok, c="),
            )
        ax.set_xticks([x + width * (len(chunk_steps) - 1) / 2 for x in range(len(targets))], targets)
        ax.set_ylabel("proxy CPU µs per relayed chunk")
        ax.set_title("CPU per relayed chunk (lower is better)")
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        figure.tight_layout()
        figure.savefig(out / "bench-cpu-per-chunk.png", dpi=110)
        plt.close(figure)
        names.append("bench-cpu-per-chunk.png")
    rss = results.get("scenarios", {}).get("rss_streams")
    if rss:
        figure, ax = plt.subplots(figsize=(6, 4))
        for name in ("gateway", "plain-aiohttp"):
            r = rss.get(name)
            if r:
                ax.plot(
                    [p["streams"] for p in r["points"]],
                    [(p["rss"] - r["baseline_rss"]) / 2**20 for p in r["points"]],
                    marker="o",
                    label=name,
                )
        ax.set_xlabel("concurrent streams held")
        ax.set_ylabel("RSS growth over idle (MiB)")
        ax.set_title("Memory vs concurrent streams")
        ax.grid(True, alpha=0.3)
        ax.legend()
        figure.tight_layout()
        figure.savefig(out / "bench-rss-streams.png", dpi=110)
        plt.close(figure)
        names.append("bench-rss-streams.png")
    return names


_SKELETON = """# Benchmarks

How much the gateway costs on the path of every token, measured against Ollama directly (the
emulator), plain Python proxies, nginx and the LiteLLM proxy, in one interleaved run.
Reproduce with `make bench`.

{region}
"""


def render(results: dict[str, Any], markdown: Path, plots_dir: Path) -> None:
    plots = plot(results, plots_dir)
    region = render_region(results, plots)
    if markdown.exists() and BEGIN in markdown.read_text():
        text = markdown.read_text()
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1] if END in rest else ""
        markdown.write_text(head + region + tail)
    else:
        markdown.write_text(_SKELETON.format(region=region))
