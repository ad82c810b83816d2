"""How the vsnap command shows things to people: tables, key: value details, sizes like 1.5G,
and progress on stderr (a bar on a terminal, one line per change otherwise)."""
from __future__ import annotations

import json
import time
from datetime import datetime

UNITS = "KMGTPE"


def human_size(value) -> str:
    """Bytes -> 512B, 1.5G, 22G (binary units, as zfs prints them); anything else as it is."""
    if value is None or value == "":
        return "-"
    try:
        n = int(value)
    except (TypeError, ValueError):
        return str(value)
    if abs(n) < 1024:
        return f"{n}B"
    size = float(n)
    unit = ""
    for unit in UNITS:
        size /= 1024
        if abs(size) < 1024:
            break
    text = f"{size:.1f}" if abs(size) < 100 else f"{size:.0f}"
    return text.removesuffix(".0") + unit


def human_time(value) -> str:
    """Epoch seconds -> local 'YYYY-MM-DD HH:MM:SS'; anything else as it is."""
    if value is None or value == "":
        return "-"
    try:
        return datetime.fromtimestamp(float(str(value))).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(value)


def plain(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(plain(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def is_size_key(key: str) -> bool:
    return key == "size" or key.startswith("size_")


def is_time_key(key: str) -> bool:
    return key == "time" or key.startswith("time_")


def table(rows: list[dict], columns: list[tuple]) -> str:
    """columns: (HEADER, key or function of the row, optional formatter)."""
    cells = [[c[0] for c in columns]]
    for row in rows:
        line = []
        for column in columns:
            getter = column[1]
            value = getter(row) if callable(getter) else row.get(getter)
            formatter = column[2] if len(column) > 2 else plain
            line.append(formatter(value))
        cells.append(line)
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip()
                     for line in cells)


def _detail_value(key: str, value) -> str:
    if value is None:
        return "-"
    if is_size_key(key) and str(value).isdigit():
        return f"{human_size(value)} ({value} bytes)" if int(value) >= 1024 else f"{value} bytes"
    if is_time_key(key) and str(value).replace(".", "", 1).isdigit():
        return human_time(value)
    if isinstance(value, list) and value:
        return ", ".join(plain(v) for v in value)
    return plain(value)


def detail(obj: dict) -> str:
    """One 'key: value' line per field, in the API's order; objects and lists of objects
    indented below their key."""
    if not obj:
        return ""
    width = max(len(k) for k in obj) + 1
    lines = []
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            lines.append(f"{key}:")
            inner = max(len(str(k)) for k in value) + 1
            for k, v in value.items():
                lines.append(f"  {(str(k) + ':').ljust(inner)} {_detail_value(str(k), v)}")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{key}:")
            for item in value:
                lines.append("  - " + ", ".join(f"{k}: {_detail_value(k, v)}" for k, v in item.items()))
        else:
            lines.append(f"{(key + ':').ljust(width)} {_detail_value(key, value)}")
    return "\n".join(lines)


class Progress:
    """Follows a long action on `stream`. On a terminal: one line redrawn in place with a bar
    (bouncing: the total is not known), bytes, rate and elapsed time. Otherwise one line per
    change of what is shown, so logs stay readable."""

    BAR = 24

    def __init__(self, stream, label: str, *, tty: bool | None = None, clock=time):
        self.stream = stream
        self.label = label
        self.tty = stream.isatty() if tty is None else tty
        self.clock = clock
        self.start = clock.monotonic()
        self.samples: list[tuple[float, int]] = []
        self.tick = 0
        self.last_line: tuple[str, object] | None = None  # (status, sent) of the last line written
        self.drawn = False

    def rate(self) -> float | None:
        """Bytes per second over the last 10 seconds of samples."""
        if len(self.samples) < 2:
            return None
        t1, b1 = self.samples[-1]
        window = [s for s in self.samples[:-1] if t1 - s[0] <= 10]
        t0, b0 = window[0] if window else self.samples[-2]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None

    def update(self, status: str, sent=None, *, done: bool = False) -> None:
        now = self.clock.monotonic()
        parts = [status]
        if sent is not None:
            try:
                count = int(sent)
            except (TypeError, ValueError):
                count = None
            if count is not None:
                self.samples.append((now, count))
                while len(self.samples) > 2 and now - self.samples[1][0] > 10:
                    self.samples.pop(0)
                parts.append(f"{human_size(count)} sent")
                rate = self.rate()
                if rate is not None:
                    parts.append(f"{human_size(int(rate))}/s")
        if self.tty:
            elapsed = int(now - self.start)
            self.tick += 1
            if done:
                bar = "=" * self.BAR
            else:
                span, pos = 6, self.tick % (2 * (self.BAR - 6))
                pos = pos if pos <= self.BAR - span else 2 * (self.BAR - span) - pos
                bar = " " * pos + "=" * span + " " * (self.BAR - span - pos)
            text = f"{self.label} [{bar}] " + ", ".join(parts) + f"  {elapsed // 60:02d}:{elapsed % 60:02d}"
            self.stream.write("\r" + text + "\x1b[K" + ("\n" if done else ""))
            self.stream.flush()
            self.drawn = not done
        else:
            line = f"{self.label}: " + ", ".join(parts)
            # The rate changes at every poll: it alone is no change worth a line.
            key = (status, sent)
            if key != self.last_line:
                self.stream.write(line + "\n")
                self.stream.flush()
                self.last_line = key

    def close(self) -> None:
        """Leaves the terminal line alone (interrupted): ends it so the next output starts clean."""
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
