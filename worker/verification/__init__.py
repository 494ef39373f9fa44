"""Proof that it is gone, and that it stays gone: the verification step after an erasure, tombstones,
and the resurrection scan (``oubli verify``). See docs/architecture.md, "Verification and tombstones"."""

from worker.verification.step import VerificationStep, tombstone_hashes

__all__ = ["VerificationStep", "tombstone_hashes"]
