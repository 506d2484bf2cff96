"""Set DNS records (the admin button): delete every record of the VM and create them again, then back to
``ready``. Queued by setting the status; the tick does the work with live output."""
from __future__ import annotations

from core import dns

from .deploy import dns_target
from .pipeline import Done, Pipeline, Step, StepContext, StepResult, register


def resync_records(ctx: StepContext) -> StepResult:
    return Done(dns.resync(dns_target(ctx), ctx.out.line).note)


SET_DNS_RECORDS = register(Pipeline("SetDNSRecords", "set_dns_records", (
    Step("Delete + set DNS records", "set_dns_records", "ready", resync_records),
)))
