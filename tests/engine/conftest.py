"""Fixtures for the engine tests: a fresh store per test (SQLite and PostgreSQL), and a
Dask cluster per test module that asks for one."""

from __future__ import annotations

import pytest

import engine
from engine_support import DASK_TIMEOUT, shutdown_executors


@pytest.fixture
def store(db_url):
    """A new store (SQLite file or PostgreSQL database). Its executors are stopped and it
    is closed afterwards."""
    s = engine.open_store(db_url)
    yield s
    shutdown_executors(s)
    s.close()


@pytest.fixture(scope="module")
def dask_client():
    """A client of a real ``LocalCluster``: two worker processes of one thread each."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            client.wait_for_workers(2, timeout=DASK_TIMEOUT)
            yield client


@pytest.fixture
def healthy(dask_client):
    """The client, with both workers up before and after the test (a test may kill one)."""
    dask_client.wait_for_workers(2, timeout=DASK_TIMEOUT)
    yield dask_client
    dask_client.wait_for_workers(2, timeout=DASK_TIMEOUT)


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A work directory whose path durable-work steps find in $DURABLE_WORK (their counters)."""
    monkeypatch.setenv("DURABLE_WORK", str(tmp_path))
    return tmp_path


