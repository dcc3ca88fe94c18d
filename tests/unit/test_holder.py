"""The holder lifecycle with small stand-in models: one owning thread, swaps, rollback, health."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from pydantic import Field

from core.errors import ModelUnavailable
from deployments.holder import DeviceConfig, ModelHolder

MIB = 1024 * 1024
KEPT: list[np.ndarray] = []  # what the leaky holder "forgets" to release


class FakeConfig(DeviceConfig):
    model: str = "a"
    size_mib: int = Field(64, description="memory the fake model holds")
    leak: bool = False
    fail_load: bool = False
    slow_s: float = 0.0


class FakeHolder(ModelHolder[FakeConfig, np.ndarray]):
    def identity(self, config: FakeConfig):
        return (config.model, config.size_mib)

    def check_config(self, config: FakeConfig) -> None:
        if config.model == "unknown":
            raise ModelUnavailable("no model named unknown")

    def load_model(self, config: FakeConfig) -> np.ndarray:
        if config.fail_load:
            raise ModelUnavailable("out of memory")
        return np.ones(config.size_mib * MIB, dtype=np.uint8)  # touched, so resident

    def release_model(self, model: np.ndarray) -> None:
        if self.config.leak:
            KEPT.append(model)

    def infer(self, seconds: float) -> tuple[str, str]:
        time.sleep(seconds)
        return self.config.model, threading.current_thread().name


@pytest.fixture
def holder():
    h = FakeHolder(FakeConfig())
    yield h
    h.close()
    KEPT.clear()


def test_every_call_runs_on_the_one_owning_thread(holder):
    names = {holder.run(holder.infer, 0)[1] for _ in range(3)}
    assert names == {holder.run(threading.current_thread).name}
    assert names != {threading.current_thread().name}


def test_unchanged_identity_reloads_nothing(holder):
    model = holder.model
    assert holder.reconfigure(FakeConfig(slow_s=1)) is None
    assert holder.model is model and holder.config.slow_s == 1


def test_changed_identity_tears_down_measures_and_loads(holder):
    report = holder.reconfigure(FakeConfig(model="b", size_mib=32))
    assert report is not None and report.model == "a" and report.device == "cpu"
    assert report.loaded.rss_bytes - report.baseline.rss_bytes >= 60 * MIB
    assert report.freed_bytes >= 60 * MIB, report.summary()
    assert holder.config.model == "b" and holder.model.size == 32 * MIB
    assert holder.health_problem() is None


def test_invalid_config_is_refused_before_teardown(holder):
    model = holder.model
    with pytest.raises(ModelUnavailable, match="no model named unknown"):
        holder.reconfigure(FakeConfig(model="unknown"))
    assert holder.model is model and holder.last_teardown is None


def test_failed_load_rolls_back_to_the_previous_model(holder):
    with pytest.raises(ModelUnavailable, match="out of memory"):
        holder.reconfigure(FakeConfig(model="b", fail_load=True))
    assert holder.model is not None and holder.config.model == "a"
    assert holder.run(holder.infer, 0)[0] == "a"


def test_a_swap_waits_for_calls_in_flight_and_holds_new_ones(holder):
    results: list[str] = []
    first = threading.Thread(target=lambda: results.append(holder.run(holder.infer, 0.5)[0]))
    first.start()
    time.sleep(0.1)
    swap = threading.Thread(target=holder.reconfigure, args=(FakeConfig(model="b"),))
    swap.start()
    time.sleep(0.1)
    results.append(holder.run(holder.infer, 0)[0])  # submitted during the swap
    first.join()
    swap.join()
    assert results == ["a", "b"], "the call in flight finished on a, the next one waited for b"


def test_memory_kept_after_teardown_fails_health_against_the_cpu_budget():
    holder = FakeHolder(FakeConfig(leak=True, size_mib=200, rss_residue_budget_mib=64))
    try:
        holder.reconfigure(FakeConfig(model="b", size_mib=8, leak=True, rss_residue_budget_mib=64))
        problem = holder.health_problem()
        assert problem is not None and "after teardown" in problem and "budget 64 MiB" in problem
    finally:
        holder.close()
        KEPT.clear()


def test_a_clean_teardown_stays_healthy_under_the_same_budget():
    holder = FakeHolder(FakeConfig(size_mib=200, rss_residue_budget_mib=64))
    try:
        holder.reconfigure(FakeConfig(model="b", size_mib=8, rss_residue_budget_mib=64))
        assert holder.health_problem() is None, holder.last_teardown.summary()
    finally:
        holder.close()


def test_close_tears_down_once_and_stops_the_thread(holder):
    report = holder.close()
    assert report is not None and holder.model is None
    assert holder.close() is None
    assert "no model loaded" in holder.health_problem()


def test_failed_first_load_leaves_no_thread():
    before = threading.active_count()
    with pytest.raises(ModelUnavailable):
        FakeHolder(FakeConfig(fail_load=True))
    time.sleep(0.1)
    assert threading.active_count() == before
