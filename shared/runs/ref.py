"""The reference to one training run: tenant, model and version, passed as one value."""

from __future__ import annotations

from dataclasses import dataclass

from shared.runs.records import parse_member, run_key, run_member


@dataclass(frozen=True)
class RunRef:
    """One run of one model of one tenant (the three always travel together)."""

    tenant: str
    model_id: str
    version: int

    @classmethod
    def parse(cls, member: str) -> RunRef:
        """The run named by a member of the active-runs set; ValueError when malformed."""
        tenant, model_id, version = parse_member(member)
        return cls(tenant, model_id, version)

    @property
    def key(self) -> str:
        """The Redis key of the run record."""
        return run_key(self.tenant, self.model_id, self.version)

    @property
    def member(self) -> str:
        """The member naming this run in the active-runs set."""
        return run_member(self.tenant, self.model_id, self.version)

    def __str__(self) -> str:
        return f"{self.tenant}/{self.model_id} v{self.version}"
