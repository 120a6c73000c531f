"""What the edge box reports about itself: CPU, memory, temperature where available."""

from __future__ import annotations

import psutil

__all__ = ["system_telemetry"]


def system_telemetry() -> dict[str, float]:
    """CPU %, memory %, and the hottest temperature sensor in °C when the OS exposes one."""
    values = {
        "cpu_percent": float(psutil.cpu_percent(interval=None)),
        "memory_percent": float(psutil.virtual_memory().percent),
    }
    sensors = getattr(psutil, "sensors_temperatures", None)
    readings = sensors() if sensors else {}
    temperatures = [entry.current for entries in readings.values() for entry in entries if entry.current]
    if temperatures:
        values["temperature_c"] = float(max(temperatures))
    return values
