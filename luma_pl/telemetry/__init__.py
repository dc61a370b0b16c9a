"""Safe@k telemetry (docs/design.md section 6): the certificate, its online audit and recall probes.

- ``functional``: the pure batched certificate (``certify``, ``normalised_epsilon``)
- ``safe_at_k``: ε choice, bridging, certifying a memory search, the ``SafeAtK`` metric
- ``audit``: ``OnlineAudit`` re-ranks a fixed probe set at every bridge refresh
- ``probes``: recall probes against exact search
"""

from luma_pl.telemetry.audit import AuditReport, OnlineAudit
from luma_pl.telemetry.functional import EPSILON_SOURCES, Certificate, certify, normalised_epsilon
from luma_pl.telemetry.probes import ProbeReport, probe_recall
from luma_pl.telemetry.safe_at_k import (
    EpsilonChoice,
    SafeAtK,
    bridge_queries,
    certify_search,
    choose_epsilon,
    query_epsilon,
)

__all__ = ["EPSILON_SOURCES", "AuditReport", "Certificate", "EpsilonChoice", "OnlineAudit", "ProbeReport",
           "SafeAtK", "bridge_queries", "certify", "certify_search", "choose_epsilon", "normalised_epsilon",
           "probe_recall", "query_epsilon"]
