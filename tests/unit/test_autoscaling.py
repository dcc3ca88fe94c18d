"""core.autoscaling.QueuedAudioPolicy on crafted AutoscalingContexts (Serve's own class), alone and through
Serve's wrapper that applies min/max replicas and the delays, as the controller runs it."""

from __future__ import annotations

import time
from typing import Any

import pytest
from ray.serve.autoscaling_policy import _apply_autoscaling_config
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from core.autoscaling import IN_FLIGHT_AUDIO_S, QUEUED_AUDIO_S, QueuedAudioPolicy


def context(replicas: dict[str, tuple[float, float]] | None, *, current: int | None = None, target: int | None = None,
            ongoing: float = 0.0, queued_at_handles: float = 0.0, min_replicas: int = 1, max_replicas: int = 8,
            state: dict[str, Any] | None = None, **config: Any) -> AutoscalingContext:
    """`replicas`: replica id -> (queued, in flight) audio seconds each reported; None: nothing reported."""
    count = len(replicas or {}) if current is None else current
    metrics = None if replicas is None else {
        QUEUED_AUDIO_S: {rid: queued for rid, (queued, _) in replicas.items()},
        IN_FLIGHT_AUDIO_S: {rid: in_flight for rid, (_, in_flight) in replicas.items()}}
    return AutoscalingContext(
        deployment_id=None, deployment_name="AsrDeployment", app_name="transcription",  # type: ignore[arg-type]
        current_num_replicas=count, target_num_replicas=count if target is None else target,
        running_replicas=list(replicas or {}), total_num_requests=ongoing, total_queued_requests=queued_at_handles,
        aggregated_metrics=metrics, raw_metrics=None, capacity_adjusted_min_replicas=min_replicas,
        capacity_adjusted_max_replicas=max_replicas, policy_state=state or {}, last_scale_up_time=None,
        last_scale_down_time=None, current_time=time.time(),
        config=AutoscalingConfig(min_replicas=min_replicas, max_replicas=max_replicas, **config))


POLICY = QueuedAudioPolicy(target_audio_s_per_replica=100)


def test_replicas_follow_the_audio_held_not_the_call_count():
    # One replica holding a 30-minute plan (one call) needs more help than one holding 40 short chunks.
    one_long_call = POLICY(context({"r1": (1800.0, 0.0)}, ongoing=1))
    many_short_calls = POLICY(context({"r1": (80.0, 120.0)}, ongoing=40))
    assert one_long_call[0] == 8  # 18 wanted, max_replicas 8
    assert many_short_calls[0] == 2
    assert many_short_calls[1] == {"audio_s": 200.0}


def test_queued_and_in_flight_audio_of_every_replica_count():
    desired, _ = POLICY(context({"r1": (150.0, 50.0), "r2": (0.0, 95.0), "r3": (0.0, 5.0)}, ongoing=9))
    assert desired == 3


def test_idle_replicas_go_down_to_min_replicas_and_to_zero_where_allowed():
    assert POLICY(context({"r1": (0.0, 0.0), "r2": (0.0, 0.0)}))[0] == 1
    assert POLICY(context({"r1": (0.0, 0.0)}, min_replicas=0))[0] == 0


def test_calls_waiting_at_the_handles_count_as_the_mean_call():
    # 4 calls at the replicas hold 200 s; 4 more wait at the handles: about 400 s in all.
    desired, state = POLICY(context({"r1": (100.0, 100.0)}, ongoing=8, queued_at_handles=4))
    assert state["audio_s"] == pytest.approx(400.0)
    assert desired == 4


def test_no_report_yet_keeps_the_current_target():
    assert POLICY(context(None, current=2, target=3, ongoing=5))[0] == 3
    assert POLICY(context({}, current=2, target=2, ongoing=5))[0] == 2


def test_target_must_be_positive():
    with pytest.raises(ValueError, match="target_audio_s_per_replica must be positive"):
        QueuedAudioPolicy(target_audio_s_per_replica=0)


def test_serve_wrapper_starts_from_zero_at_once_and_waits_before_scaling_down():
    wrapped = _apply_autoscaling_config(POLICY)
    # Scaled to zero: nothing reports; a call waiting at a handle starts a replica at once.
    cold, _ = wrapped(context(None, current=0, target=0, ongoing=1, queued_at_handles=1, min_replicas=0))
    assert cold == 1
    # Busy: up after upscale_delay_s (0 here) on the first decision.
    up, _ = wrapped(context({"r1": (500.0, 100.0)}, ongoing=10, upscale_delay_s=0))
    assert up == 6
    # Idle: the first decision only starts the downscale delay; the replicas stay.
    down, state = wrapped(context({"r1": (0.0, 0.0), "r2": (0.0, 0.0)}, downscale_delay_s=60))
    assert down == 2
    later, _ = wrapped(context({"r1": (0.0, 0.0), "r2": (0.0, 0.0)}, downscale_delay_s=0, state=state))
    assert later == 1
