"""Fake deployment handles: the pipeline's orchestration tested without Ray or models."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


class FakeResponse:
    """Awaitable like a DeploymentResponse; runs the fake method when awaited."""

    def __init__(self, fn: Callable[[], Any], log: list[str], name: str) -> None:
        self._fn, self._log, self._name = fn, log, name
        self.cancelled = False

    def __await__(self):
        return self._run().__await__()

    async def _run(self) -> Any:
        await asyncio.sleep(0)
        result = self._fn()
        if inspect.isawaitable(result):  # a fake method that takes its time
            result = await result
        self._log.append(f"{self._name}:done")
        return result

    def cancel(self) -> None:
        self.cancelled = True


class FakeMethod:
    def __init__(self, handle: FakeHandle, name: str, fn: Callable[..., Any]) -> None:
        self._handle, self._name, self._fn = handle, name, fn

    def remote(self, *args: Any) -> FakeResponse:
        self._handle.calls.append((self._name, args))
        self._handle.log.append(f"{self._name}:sent")
        response = FakeResponse(lambda: self._fn(*args), self._handle.log, self._name)
        self._handle.responses.append(response)
        return response


class FakeHandle:
    """`handle.method.remote(...)` over plain functions."""

    def __init__(self, log: list[str], **methods: Callable[..., Any]) -> None:
        self.log = log
        self.calls: list[tuple[str, tuple]] = []
        self.responses: list[FakeResponse] = []
        self._methods = methods

    def __getattr__(self, name: str) -> FakeMethod:
        methods = self.__dict__.get("_methods", {})
        if name not in methods:
            raise AttributeError(name)
        return FakeMethod(self, name, methods[name])


def failing_first(times: int, error: Callable[[], BaseException], fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, except that its first `times` calls raise `error()` instead: a replica lost mid-call."""
    calls = 0

    def method(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls <= times:
            raise error()
        return fn(*args)

    return method
