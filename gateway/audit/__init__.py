"""The audit trail: one record per decision, hash-chained, signed, and read back.

record   what a record is; sealing it into the chain
trail    the writer: a bounded queue, batches, checkpoints, the failure policy
sinks    where lines go (a rotated file chain, stdout)
signing  Ed25519 checkpoints and the keys reviewers verify them with
review   the reader behind `scoregate audit verify|query|report`
"""
