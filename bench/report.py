"""Turn the measurements into the markdown table (with PASS/FAIL per target) and the PNG chart."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.mesh import COORDINATOR_LABELS, PARTICIPANTS, CoordinatorKind
from bench.scenarios import Config, Point, ScaleRecovery

PROCESSES = ("coordinator", *PARTICIPANTS, "smtp-sink")
MESH = ("coordinator", *PARTICIPANTS, "smtp-sink")


def _mesh_cpu(point: Point) -> float:
    return sum(point.cpu_per_trip.get(name, 0.0) for name in MESH)


def median(values: Iterable[float]) -> float:
    data = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(data) if data else float("nan")


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    passed: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return "n/a" if self.passed is None else ("**PASS**" if self.passed else "**FAIL**")


class Summary:
    """Medians over rounds, and per-round ratios between coordinators."""

    def __init__(self, points: list[Point]) -> None:
        self.points = points
        self.kinds: list[CoordinatorKind] = []
        for p in points:
            if p.kind not in self.kinds:
                self.kinds.append(p.kind)
        self.concurrencies = sorted({p.concurrency for p in points})

    def of(self, kind: CoordinatorKind, concurrency: int) -> list[Point]:
        return [p for p in self.points if p.kind == kind and p.concurrency == concurrency]

    def med(self, kind: CoordinatorKind, concurrency: int, value: Callable[[Point], float]) -> float:
        return median(value(p) for p in self.of(kind, concurrency))

    def ratio(self, kind: CoordinatorKind, other: CoordinatorKind, concurrency: int) -> float:
        """Median over rounds of kind's trips/s divided by other's in the same round."""
        mine = {p.round: p.throughput for p in self.of(kind, concurrency)}
        theirs = {p.round: p.throughput for p in self.of(other, concurrency)}
        ratios = [mine[r] / theirs[r] for r in mine if r in theirs and theirs[r] > 0]
        return median(ratios)

    def rounds(self) -> int:
        return len({p.round for p in self.points})


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + b x: (a, b, r squared)."""
    n = len(xs)
    if n < 2:
        return float("nan"), float("nan"), float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    syy = sum((y - my) ** 2 for y in ys)
    b = sxy / sxx if sxx else float("nan")
    a = my - b * mx
    r2 = (sxy * sxy) / (sxx * syy) if sxx and syy else float("nan")
    return a, b, r2


def memory_fit(scale: ScaleRecovery) -> tuple[float, float, float]:
    levels = [x for x in scale.levels if x.inflight > 0]
    return fit_line([float(x.inflight) for x in levels], [float(x.rss) for x in levels])


def targets(summary: Summary | None, scale: ScaleRecovery | None, config: Config) -> list[Target]:
    out: list[Target] = []

    def have(kind: CoordinatorKind, c: int) -> bool:
        return summary is not None and bool(summary.of(kind, c))

    for c, floor in ((64, 0.9), (1, 0.8)):
        name = f"(a) >= {floor}x the no-step-log limit (b) at c={c}"
        if summary is not None and have("tripmesh", c) and have("nolog", c):
            r = summary.ratio("tripmesh", "nolog", c)
            out.append(Target(name, f"{r:.2f}x", r >= floor))
        else:
            out.append(Target(name, "not measured", None))
    for c in (16, 64):
        name = f"(a) >= 5x the DBOS workflow (c) at c={c}"
        if summary is not None and have("tripmesh", c) and have("dbos", c):
            r = summary.ratio("tripmesh", "dbos", c)
            out.append(Target(name, f"{r:.2f}x", r >= 5.0))
        else:
            out.append(Target(name, "not measured", None))
    name = "(a) p99 <= 3x p50 at c=64"
    if summary is not None and have("tripmesh", 64):
        ratio = summary.med("tripmesh", 64, lambda p: p.p99 / p.p50 if p.p50 > 0 else float("nan"))
        p50 = summary.med("tripmesh", 64, lambda p: p.p50) * 1000
        p99 = summary.med("tripmesh", 64, lambda p: p.p99) * 1000
        out.append(Target(name, f"p99/p50 = {ratio:.2f} ({p99:.0f} ms / {p50:.0f} ms)", ratio <= 3.0))
    else:
        out.append(Target(name, "not measured", None))
    name = f"recovery of {config.inflight_levels[-1]:,} in-flight trips <= 10 s"
    if scale is not None and scale.parked:
        if scale.terminal_after is not None:
            out.append(
                Target(name, f"{scale.terminal_after:.1f} s ({scale.parked:,} trips)", scale.terminal_after <= 10)
            )
        else:
            out.append(
                Target(
                    name,
                    f"> {config.recovery_limit:.0f} s: {scale.left_unfinished:,} of {scale.parked:,} still in flight",
                    False,
                )
            )
    else:
        out.append(Target(name, "not measured", None))
    name = "(a) <= 4 KB of step log per confirmed trip"
    if summary is not None and any(summary.of("tripmesh", c) for c in summary.concurrencies):
        worst = max(
            summary.med("tripmesh", c, lambda p: p.steplog_bytes_per_trip)
            for c in summary.concurrencies
            if summary.of("tripmesh", c)
        )
        out.append(Target(name, f"{worst / 1024:.2f} KB (worst concurrency point)", worst <= 4096))
    else:
        out.append(Target(name, "not measured", None))
    name = "<= 20 KB of coordinator memory per in-flight trip, growing linearly"
    if scale is not None and len(scale.levels) >= 2:
        _a, slope, r2 = memory_fit(scale)
        linear = r2 >= 0.95
        out.append(
            Target(
                name,
                f"{slope / 1024:.1f} KB/trip (least squares over {len(scale.levels)} levels, R^2 = {r2:.3f})",
                slope <= 20 * 1024 and linear,
            )
        )
    else:
        out.append(Target(name, "not measured", None))
    return out


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def _mb(n: float) -> str:
    return "-" if math.isnan(n) else f"{n / 2**20:.0f}"


def markdown(
    summary: Summary | None,
    scale: ScaleRecovery | None,
    config: Config,
    meta: dict[str, Any],
) -> str:
    lines: list[str] = []
    add = lines.append
    add(f"# tripmesh benchmark, {meta['started']}")
    add("")
    add(
        f"`{meta['command']}` on {meta['machine']}; commit `{meta['commit']}`; took {meta['duration']}. "
        f"Load average before/after: {meta['load_before']} / {meta['load_after']}; "
        f"CPU used by other programs on the machine during the measured points: median {meta['others_cores']} "
        f"cores (of {meta['cores']})."
    )
    add("")
    if summary is not None:
        trips = ", ".join(f"c={c}: {config.trips[c]}" for c in config.concurrencies)
        add(
            f"Throughput: {summary.rounds()} round(s), each coordinator on fresh participant databases per round, "
            f"in rotated order (A B C, B C A, ...); trips per point {trips}, after {config.warmup} warm-up trips. "
            "Figures are medians over the rounds; ratios are medians of the per-round ratios. Every trip is "
            "flight + hotel + payment + e-mail (the four participants) for cust-load."
        )
        add("")
    add("## Targets (issue 5)")
    add("")
    add("| target | measured | result |")
    add("|---|---|---|")
    for t in targets(summary, scale, config):
        add(f"| {t.name} | {t.measured} | {t.verdict} |")
    add("")
    if summary is not None:
        add("## Throughput and latency")
        add("")
        add("| coordinator | c | trips/s | x (b) | p50 ms | p90 ms | p99 ms | confirmed / sent |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|")
        for kind in summary.kinds:
            for c in summary.concurrencies:
                pts = summary.of(kind, c)
                if not pts:
                    continue
                thr = summary.med(kind, c, lambda p: p.throughput)
                ratio = summary.ratio(kind, "nolog", c) if summary.of("nolog", c) else float("nan")
                confirmed = sum(p.confirmed for p in pts)
                sent = sum(p.trips for p in pts)
                add(
                    f"| {COORDINATOR_LABELS[kind]} | {c} | {thr:.1f} | {ratio:.2f} | "
                    f"{_ms(summary.med(kind, c, lambda p: p.p50))} | {_ms(summary.med(kind, c, lambda p: p.p90))} | "
                    f"{_ms(summary.med(kind, c, lambda p: p.p99))} | {confirmed} / {sent} |"
                )
        add("")
        if "observed" in summary.kinds and "tripmesh" in summary.kinds:
            add("## Cost of metrics and tracing: (d) with both on / (a) with both off, same round")
            add("")
            add("| c | trips/s (d) / (a) | p50 (d) / (a) | mesh CPU per trip (d) / (a) |")
            add("|---:|---:|---:|---:|")
            for c in summary.concurrencies:
                if summary.of("observed", c) and summary.of("tripmesh", c):
                    p50 = summary.med("observed", c, lambda p: p.p50) / summary.med("tripmesh", c, lambda p: p.p50)
                    cpu = summary.med("observed", c, _mesh_cpu) / summary.med("tripmesh", c, _mesh_cpu)
                    add(f"| {c} | {summary.ratio('observed', 'tripmesh', c):.2f} | {p50:.2f} | {cpu:.2f} |")
            add("")
        add("## CPU per trip (ms of user+system CPU, by process)")
        add("")
        add("| coordinator | c | " + " | ".join(PROCESSES) + " | whole mesh | load generator |")
        add("|---|---:|" + "---:|" * (len(PROCESSES) + 2))
        for kind in summary.kinds:
            for c in summary.concurrencies:
                if not summary.of(kind, c):
                    continue
                cells = [summary.med(kind, c, lambda p, n=n: p.cpu_per_trip.get(n, float("nan"))) for n in PROCESSES]  # type: ignore[misc]
                mesh = summary.med(kind, c, lambda p: sum(p.cpu_per_trip.get(n, 0.0) for n in MESH))
                client = summary.med(kind, c, lambda p: p.cpu_per_trip.get("client", float("nan")))
                add(
                    f"| {COORDINATOR_LABELS[kind]} | {c} | "
                    + " | ".join(_ms(v) if v >= 0.0005 or math.isnan(v) else f"{v * 1000:.1f}" for v in cells)
                    + f" | {_ms(mesh)} | {_ms(client)} |"
                )
        add("")
        add("## Peak memory (peak RSS in MB during the point, by process)")
        add("")
        add("| coordinator | c | " + " | ".join(PROCESSES) + " |")
        add("|---|---:|" + "---:|" * len(PROCESSES))
        for kind in summary.kinds:
            for c in summary.concurrencies:
                if not summary.of(kind, c):
                    continue
                cells = [summary.med(kind, c, lambda p, n=n: float(p.peak_rss.get(n, float("nan")))) for n in PROCESSES]  # type: ignore[misc]
                add(f"| {COORDINATOR_LABELS[kind]} | {c} | " + " | ".join(_mb(v) for v in cells) + " |")
        add("")
        add("## Step log")
        add("")
        add(
            "Growth of the coordinator's database (tripmesh: `coordinator.db` + WAL, checkpointed before and "
            "after the point; DBOS: its SQLite system database + journal) per confirmed trip, and the bytes the "
            "coordinator process caused to be written to storage per trip (`/proc/PID/io` write_bytes: WAL, "
            "checkpoints, journal)."
        )
        add("")
        add("| coordinator | c | step log bytes / confirmed trip | coordinator disk writes / trip |")
        add("|---|---:|---:|---:|")
        for kind in summary.kinds:
            for c in summary.concurrencies:
                if not summary.of(kind, c):
                    continue
                size = summary.med(kind, c, lambda p: p.steplog_bytes_per_trip)
                writes = summary.med(kind, c, lambda p: p.coordinator_write_bytes_per_trip)
                add(f"| {COORDINATOR_LABELS[kind]} | {c} | {size:,.0f} | {writes:,.0f} |")
        add("")
    if scale is not None:
        add("## Scale and recovery (tripmesh as shipped)")
        add("")
        add(
            'Trips parked mid-saga: flight and hotel delay every Reserve of a trip whose id holds "hold-" by an '
            "hour (fault injection), and the coordinator's call deadline is longer than that, so each parked "
            "trip has both reserve intents durable and no outcome. RSS is sampled a second after each level is "
            f"reached (idle after the warm-up: {_mb(float(scale.baseline_rss))} MB); the closed loop is "
            f"{config.scale_trips} ordinary trips at c=16 beside the parked ones."
        )
        add("")
        add(
            "| trips in flight | coordinator RSS MB | (RSS - idle) / trip KB | c=16 trips/s | coordinator CPU ms/trip |"
        )
        add("|---:|---:|---:|---:|---:|")
        for level in scale.levels:
            per_trip = (level.rss - scale.baseline_rss) / level.inflight / 1024 if level.inflight else float("nan")
            thr = f"{level.measured.throughput:.1f}" if level.measured else ""
            cpu = _ms(level.coordinator_cpu_per_trip) if level.coordinator_cpu_per_trip is not None else ""
            add(f"| {level.inflight:,} | {_mb(float(level.rss))} | {per_trip:.1f} | {thr} | {cpu} |")
        a, slope, r2 = memory_fit(scale)
        add("")
        add(
            f"Least-squares line: RSS = {a / 2**20:.1f} MB + {slope / 1024:.1f} KB x trips in flight "
            f"(R^2 = {r2:.3f}). Parking them took {scale.fill_seconds:.0f} s "
            f"(BookTrip answers while parking: {scale.submit_errors or 'all in time'})."
        )
        add("")
        states = ", ".join(f"{k} {v:,}" for k, v in sorted(scale.final_states.items()))
        parked = ", ".join(f"{k} {v:,}" for k, v in sorted(scale.parked_states.items()))
        add("| recovery | |")
        add("|---|---|")
        add(f"| trips in flight at the SIGKILL | {scale.parked:,} (step log: {parked}) |")
        add(f"| restart -> serving (health SERVING) | {_s(scale.serving_after)} |")
        resumed = _s(scale.resumed_after) if scale.resumed_after is not None else "not within the limit"
        add(f"| restart -> every in-flight trip loaded, leased and queued (`coordinator_started` logged) | {resumed} |")
        driven = _s(scale.driven_after) if scale.driven_after is not None else "not within the limit"
        add(
            f"| restart -> every in-flight trip driven again (its next call's intent written, or terminal) | {driven} |"
        )
        if scale.terminal_after is not None:
            terminal = _s(scale.terminal_after)
        else:
            done = scale.parked - scale.left_unfinished
            terminal = (
                f"not within the {config.recovery_limit:.0f} s limit: {done:,} of {scale.parked:,} terminal by then "
                f"({done / config.recovery_limit:.1f} trips/s)"
            )
        add(f"| restart -> every trip terminal | {terminal} |")
        add(f"| end states | {states} |")
        if scale.failure_reasons:
            reasons = "; ".join(f"{n:,} x {r}" for r, n in scale.failure_reasons)
            add(f"| commonest failure reasons | {reasons} |")
        peak = _mb(float(scale.recovery_peak_rss))
        add(f"| restarted coordinator: CPU, peak RSS | {scale.recovery_cpu:.1f} s, {peak} MB |")
        for note in scale.notes:
            add(f"| note | {note} |")
        add("")
    if summary is not None:
        add("## Per round")
        add("")
        add(
            "trips/s (in cores, meanwhile: CPU of other programs on the machine / of kernel threads / stolen by "
            "the hypervisor. Other programs and stolen time make the figures noisier; kernel threads include "
            "the run's own I/O)"
        )
        add("")
        add("| coordinator | c | " + " | ".join(f"round {r}" for r in range(1, summary.rounds() + 1)) + " |")
        add("|---|---:|" + "---:|" * summary.rounds())
        for kind in summary.kinds:
            for c in summary.concurrencies:
                by_round = {p.round: p for p in summary.of(kind, c)}
                cells = [_round_cell(by_round[r]) if r in by_round else "" for r in range(1, summary.rounds() + 1)]
                add(f"| {COORDINATOR_LABELS[kind]} | {c} | " + " | ".join(cells) + " |")
        add("")
    return "\n".join(lines)


def _round_cell(p: Point) -> str:
    return f"{p.throughput:.1f} ({p.other_cpu_cores:.2f} / {p.kernel_cpu_cores:.2f} / {p.steal_cores:.2f})"


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


COLORS = {"tripmesh": "#1f77b4", "nolog": "#7f7f7f", "dbos": "#d62728", "observed": "#2ca02c"}


def chart(summary: Summary | None, scale: ScaleRecovery | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    fig.suptitle(title)
    ax_thr, ax_lat, ax_cpu, ax_mem = axes[0][0], axes[0][1], axes[1][0], axes[1][1]
    if summary is not None:
        width = 0.8 / max(1, len(summary.kinds))
        for i, kind in enumerate(summary.kinds):
            xs, ys, lo, hi = [], [], [], []
            for j, c in enumerate(summary.concurrencies):
                values = [p.throughput for p in summary.of(kind, c)]
                if not values:
                    continue
                m = median(values)
                xs.append(j + (i - (len(summary.kinds) - 1) / 2) * width)
                ys.append(m)
                lo.append(m - min(values))
                hi.append(max(values) - m)
            ax_thr.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=COORDINATOR_LABELS[kind], color=COLORS[kind])
        ax_thr.set_xticks(range(len(summary.concurrencies)), [f"c={c}" for c in summary.concurrencies])
        ax_thr.set_ylabel("trips/s (median, min-max over rounds)")
        ax_thr.set_title("Throughput")
        ax_thr.legend()
        for kind in summary.kinds:
            cs = [c for c in summary.concurrencies if summary.of(kind, c)]
            p50 = [summary.med(kind, c, lambda p: p.p50) * 1000 for c in cs]
            p99 = [summary.med(kind, c, lambda p: p.p99) * 1000 for c in cs]
            ax_lat.plot(cs, p50, "o-", color=COLORS[kind], label=f"{COORDINATOR_LABELS[kind]} p50")
            ax_lat.plot(cs, p99, "s--", color=COLORS[kind], label=f"{COORDINATOR_LABELS[kind]} p99")
        ax_lat.set_xscale("log", base=2)
        ax_lat.set_yscale("log")
        ax_lat.set_xticks(summary.concurrencies, [str(c) for c in summary.concurrencies])
        ax_lat.set_xlabel("concurrency")
        ax_lat.set_ylabel("BookTrip latency, ms")
        ax_lat.set_title("Latency (p50 solid, p99 dashed)")
        ax_lat.legend(fontsize=7)
        c_mid = 16 if 16 in summary.concurrencies else summary.concurrencies[-1]
        bottoms = [0.0] * len(summary.kinds)
        for name in (*PROCESSES, "client"):
            heights = [
                summary.med(kind, c_mid, lambda p, n=name: p.cpu_per_trip.get(n, 0.0)) * 1000  # type: ignore[misc]
                for kind in summary.kinds
            ]
            ax_cpu.bar(range(len(summary.kinds)), heights, 0.6, bottom=bottoms, label=name)
            bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
        ax_cpu.set_xticks(range(len(summary.kinds)), [COORDINATOR_LABELS[k] for k in summary.kinds])
        ax_cpu.set_ylabel("CPU ms per trip")
        ax_cpu.set_title(f"CPU per trip by process, c={c_mid}")
        ax_cpu.legend(fontsize=7)
    if scale is not None and scale.levels:
        xs = [x.inflight for x in scale.levels]
        ys = [x.rss / 2**20 for x in scale.levels]
        ax_mem.plot(xs, ys, "o", color=COLORS["tripmesh"], label="coordinator RSS")
        a, b, r2 = memory_fit(scale)
        if not math.isnan(b):
            ax_mem.plot(
                [0, max(xs)],
                [a / 2**20, (a + b * max(xs)) / 2**20],
                "-",
                color="#aaaaaa",
                label=f"fit: {b / 1024:.1f} KB/trip, R^2 {r2:.3f}",
            )
        ax_mem.set_xlabel("trips in flight")
        ax_mem.set_ylabel("MB")
        terminal = f"{scale.terminal_after:.0f} s" if scale.terminal_after is not None else "not finished"
        ax_mem.set_title(f"Coordinator memory vs trips in flight; recovery of {scale.parked:,}: {terminal}")
        ax_mem.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
