"""A deployment whose holder keeps its model's memory after teardown: drives the failing-health path."""

from __future__ import annotations

import numpy as np

from deployments.holder import DeviceConfig, ModelHolder
from deployments.replica import ModelReplica

MIB = 1024 * 1024
_KEPT: list[np.ndarray] = []


class LeakyConfig(DeviceConfig):
    model: str = "first"
    size_mib: int = 256


class LeakyHolder(ModelHolder[LeakyConfig, np.ndarray]):
    def load_model(self, config: LeakyConfig) -> np.ndarray:
        return np.ones(config.size_mib * MIB, dtype=np.uint8)

    def release_model(self, model: np.ndarray) -> None:
        _KEPT.append(model)  # the bug under test: a reference survives the teardown


class LeakyDeployment(ModelReplica[LeakyConfig, LeakyConfig, LeakyHolder]):
    config_cls = LeakyConfig

    def __init__(self) -> None:
        super().__init__(LeakyHolder)


def build(args: dict) -> object:
    """App builder for a Serve config (import_path tests.integration.leaky:build)."""
    from ray import serve

    return serve.deployment(LeakyDeployment, name="LeakyDeployment").bind()
