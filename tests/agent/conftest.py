"""Fixtures of the agent tests (helpers live in agent_harness.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from agent_harness import AgentProcess


@pytest.fixture
def agent_factory(tmp_path):
    started: list[AgentProcess] = []

    def make(programs: dict, pods_file: Path, **kw) -> AgentProcess:
        agent = AgentProcess(tmp_path, programs, pods_file, **kw)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop()
