"""TCP's minimum retransmission timeout against the step deadline.

Over tcp a lost segment is recovered by the kernel, not by rmio: the bytes behind it wait in order
until the retransmission arrives, so an application-level resend cannot overtake it. Linux waits
at least ``tcp_rto_min`` (200 ms by default) before retransmitting, which is longer than a 100 ms
step deadline: on a link that drops 5% of the packets each way a quarter of the steps then miss
their deadline (bench/results/netfaults.md). Lowering the minimum per network namespace
(``net.ipv4.tcp_rto_min_us``, Linux 6.11 and later) or per route (``ip route change ... rto_min
5ms``) brings tcp back within the deadline. This module reads the setting and says when it is
too long; it never changes the host's network configuration itself.
"""

from __future__ import annotations

from pathlib import Path

SYSCTL = Path("/proc/sys/net/ipv4/tcp_rto_min_us")
LINUX_DEFAULT_S = 0.2
"""The kernel's minimum RTO where the sysctl does not exist (older kernels, other systems)."""


def rto_min_s(sysctl: Path | None = None) -> float:
    """This network namespace's minimum TCP retransmission timeout in seconds (a route's own
    ``rto_min`` overrides it for that route; this does not see routes)."""
    try:
        return int((sysctl or SYSCTL).read_text().split()[0]) / 1e6
    except (OSError, ValueError, IndexError):
        return LINUX_DEFAULT_S


def rto_warning(step_deadline_s: float, rto_s: float | None = None) -> str | None:
    """A one-line warning when one lost tcp segment costs more than half a step deadline, else
    None."""
    rto = rto_min_s() if rto_s is None else rto_s
    if rto < 0.5 * step_deadline_s:
        return None
    return (
        f"tcp: a lost packet waits at least the kernel's minimum retransmission timeout "
        f"({rto * 1e3:.0f} ms), against a {step_deadline_s * 1e3:.0f} ms step deadline, so on a "
        "lossy network each loss costs a step: use udp there, or lower the minimum on every "
        "host (sysctl -w net.ipv4.tcp_rto_min_us=5000, or `ip route change ... rto_min 5ms`; "
        "docs/DEPLOY.md)"
    )
