"""Plays an RLE-lab recording back as devices (one per `device` column value), at real time or faster.

Recording time advances `speed` seconds per wall-clock second; each sample reports the newest
recorded row at that point. At the end the recording starts over; the engine's state carries on
(time keeps running, so it sees a jump in the values, not a gap).
"""

from __future__ import annotations

import bisect
from pathlib import Path

from thermograd.exporter.backends.base import DeviceInfo, Reading
from thermograd.exporter.labcsv import LabCsvError, LabRow, iter_rows

# The RLE lab's settings for its two device kinds: (rated power W, temperature limit °C).
LAB_DEFAULTS = {"gpu": (200.0, 83.0), "cpu": (125.0, 80.0)}


class ReplayBackend:
    name = "replay"

    def __init__(self, csv_path: Path, speed: float = 1.0) -> None:
        if not speed > 0:
            raise ValueError(f"--speed must be > 0, got {speed}")
        self.speed = speed
        self.path = Path(csv_path)
        self.time_scale = speed  # recorded seconds per wall-clock second: the sampler runs the engine on it
        series: dict[str, list[LabRow]] = {}
        for row in iter_rows(Path(csv_path)):
            series.setdefault(row.device, []).append(row)
        if not series:
            raise LabCsvError(f"{csv_path}: no data rows")
        self._names = list(series)
        self._rows = [series[name] for name in self._names]
        self._offsets = [[r.timestamp_s - rows[0].timestamp_s for r in rows] for rows in self._rows]
        self._start_s: float | None = None

    def devices(self) -> list[DeviceInfo]:
        infos = []
        for name in self._names:
            kind = "cpu" if name.startswith("cpu") else "gpu"
            power_w, limit_c = LAB_DEFAULTS[kind]
            infos.append(DeviceInfo(device=name, uuid=f"replay-{name}", model=f"RLE-lab recording ({name})",
                                    kind=kind, backend="replay", power_limit_w=power_w, temp_limit_c=limit_c,
                                    heat_source=f"the recording {self.path.name}, played back"))
        return infos

    def read(self, index: int, now_s: float) -> Reading:
        if self._start_s is None:
            self._start_s = now_s
        offsets = self._offsets[index]
        span_s = offsets[-1] + 1.0  # one nominal interval after the last row, then loop
        position_s = ((now_s - self._start_s) * self.speed) % span_s
        row = self._rows[index][max(bisect.bisect_right(offsets, position_s) - 1, 0)]
        return Reading(util_pct=row.util_pct, temp_c=row.temp_c, power_w=row.power_w, fan_ratio=row.fan_ratio)

    def close(self) -> None:
        pass
