"""What a long run costs the machine: the process's resident set size, read per report window."""

from __future__ import annotations


def resident_set_bytes() -> int:
    """Current resident set size (VmRSS of ``/proc/self/status``) in bytes; on a system without
    ``/proc`` the peak RSS (``getrusage``), which only grows, so a flat series is still flat."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
