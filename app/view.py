"""The chat's live terminal view (rich): Moshi's words, input level, step time against the 80 ms budget,
latency from microphone to speaker, echo cancellation."""

from __future__ import annotations

import statistics

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from moshi_mlx.constants import FRAME_MS

_TRANSCRIPT_CHARS = 600


def level_bar(peak: float, width: int = 20) -> str:
    n = min(width, int(round(peak * width)))
    return "█" * n + "·" * (width - n)


def render(transcript: str, session, warning: str | None, device_info: str) -> Group:
    """One frame of the live view of a `DuplexSession`."""
    stats = session.stats
    steps = list(stats.step_ms)[-32:]
    med = statistics.median(steps) if steps else 0.0
    margin = FRAME_MS - med
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim")
    table.add_column()
    table.add_row("input", level_bar(stats.input_level))
    colour = "green" if margin > 10 else ("yellow" if margin > 0 else "red")
    table.add_row("step", Text(f"{med:5.1f} ms  (margin {margin:+.1f} ms of {FRAME_MS:.0f}), "
                               f"{stats.frames_per_s:4.1f} frames/s", style=colour))
    latency = session.latency.recent()
    pipe = list(stats.pipeline_ms)[-32:]
    parts = [f"{latency:.0f} ms mic to speaker" if latency is not None else "mic to speaker: measuring"]
    if pipe:
        parts.append(f"{statistics.median(pipe):.0f} ms in the model")
    table.add_row("latency", ", ".join(parts))
    if stats.echo_cancel:
        erle = stats.echo_reduction_db
        table.add_row("echo", "cancelling" + (f", {erle:.0f} dB reduction" if erle is not None else ""))
    else:
        table.add_row("echo", Text("not cancelled (--echo-cancel off): use headphones", style="yellow"))
    table.add_row("backlog", f"{stats.backlog_frames} frames, {stats.skipped_frames} skipped")
    table.add_row("audio", f"{stats.xruns} xruns, {stats.speaker_underruns} speaker underruns, "
                           f"{stats.frames_in} frames")
    table.add_row("device", device_info)
    text = transcript[-_TRANSCRIPT_CHARS:] if transcript else "(Moshi is listening...)"
    parts = [Panel(Text(text), title="Moshi", border_style="cyan"), table]
    if warning:
        parts.append(Text(warning, style="bold red"))
    parts.append(Text("Ctrl-C to stop", style="dim"))
    return Group(*parts)
