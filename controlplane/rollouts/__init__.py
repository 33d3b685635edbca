"""Staged config rollouts: canary nodes first, node groups one after another.

`plan` decides what a rollout changes and on which nodes it starts; `load` and `analysis`
compare the canaries' request counters with the rest's; `answers` tells which nodes took a
version; `store` keeps rollouts in the database; `driver` moves them forward on every
control plane of the database (one at a time holds the lease). The snapshot cache pins the
nodes not yet released to the version before (controlplane.discovery.hold).
"""
