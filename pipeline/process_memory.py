"""This process's resident memory from the kernel (/proc/self/status), and its peak since a chosen moment.

Used by the `--jobs` workers (each task's peak, counted from its start, is logged and recorded) and by the memory
planner's CPU measurement (a training step's peak, counted after the model is loaded). On a system without /proc
(not Linux) the readings are None and nothing is reset."""
from __future__ import annotations

from typing import Optional


def _status(key: str) -> Optional[int]:
    """A `VmRSS:`/`VmHWM:` line of /proc/self/status, in bytes; None where the file or the line is missing."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def resident() -> Optional[int]:
    """Bytes resident now (VmRSS)."""
    return _status("VmRSS")


def peak() -> Optional[int]:
    """The most bytes resident since the process started or since the last reset_peak() (VmHWM)."""
    return _status("VmHWM")


def reset_peak() -> bool:
    """Start a new peak from what is resident now (writing 5 to /proc/self/clear_refs, Linux 4.0+); False where
    the kernel does not allow it, and peak() then still counts from the process's start."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def gigabytes(n_bytes: Optional[int]) -> str:
    """'2.1 GB', or 'unknown' for None."""
    return "unknown" if n_bytes is None else f"{n_bytes / 1e9:.1f} GB"
