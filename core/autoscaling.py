"""Autoscaling the model deployments on audio seconds, not on calls.

Serve's default policy counts ongoing requests. Here one call may be a 5-second chunk or the plan of a
2-hour file, so a model replica reports the audio it holds through `record_autoscaling_stats`
(`QUEUED_AUDIO_S` waiting for its model, `IN_FLIGHT_AUDIO_S` being processed), and
`QueuedAudioPolicy` asks for as many replicas as that audio needs at `target_audio_s_per_replica`
each. Serve's own wrapper then applies min/max replicas, the up- and downscale delays and the fast
start from zero, so a deployment scaled to zero starts a replica as soon as a call waits for it.

    autoscaling_config:
      policy:
        policy_function: core.autoscaling:QueuedAudioPolicy
        policy_kwargs: {target_audio_s_per_replica: 600}
"""

from __future__ import annotations

import math
from typing import Any

QUEUED_AUDIO_S = "queued_audio_s"
IN_FLIGHT_AUDIO_S = "in_flight_audio_s"
AUDIO_STATS = (QUEUED_AUDIO_S, IN_FLIGHT_AUDIO_S)


class QueuedAudioPolicy:
    """Replicas = audio queued and in flight at the replicas / `target_audio_s_per_replica`.

    Calls still waiting at the callers' handles (every replica at `max_ongoing_requests`) have not
    reported their audio yet; each counts as the mean audio of a call the replicas hold.
    """

    def __init__(self, target_audio_s_per_replica: float = 600.0) -> None:
        if not target_audio_s_per_replica > 0:
            raise ValueError(f"target_audio_s_per_replica must be positive, not {target_audio_s_per_replica!r}")
        self.target_audio_s_per_replica = float(target_audio_s_per_replica)

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        """`ctx` is Serve's `AutoscalingContext`; returns (desired replicas, policy state)."""
        if ctx.current_num_replicas == 0:
            # Nothing reports from zero replicas; Serve's wrapper starts one when a call waits.
            return ctx.target_num_replicas, {}
        metrics = ctx.aggregated_metrics or {}
        reported = {replica for name in AUDIO_STATS for replica in metrics.get(name, {})}
        if not reported:
            # Replicas that have not reported yet (just started, or stats off): keep what there is.
            return ctx.target_num_replicas, {}
        held_s = sum(value for name in AUDIO_STATS for value in metrics.get(name, {}).values())
        waiting_calls = ctx.total_queued_requests or 0.0
        held_calls = max(ctx.total_num_requests - waiting_calls, 1.0)
        audio_s = held_s + waiting_calls * held_s / held_calls
        desired = audio_s / self.target_audio_s_per_replica
        bounded = min(max(desired, ctx.capacity_adjusted_min_replicas), ctx.capacity_adjusted_max_replicas)
        return math.ceil(bounded) if bounded > 0 else 0, {"audio_s": audio_s}
