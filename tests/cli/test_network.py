"""With no network, a hub id fails at once: a Hub name that does not resolve is not retried (huggingface_hub would
retry the connection for about half a minute), the process works from the local cache only, and the message is
the usual "the Hugging Face Hub could not be reached (...)". Timeouts and 5xx answers are not this path."""

from __future__ import annotations

import socket

import datasets
import huggingface_hub.constants
from huggingface_hub.utils import get_session
import pytest

from samtune import network
from samtune.errors import DataError, UsageError
from samtune.recipe import DataSection, ModelSection


@pytest.fixture
def no_name_resolution(monkeypatch):
    """The resolver says the Hub's name does not exist; any HTTP request the loaders still make is recorded."""

    def unresolvable(host, *a, **kw):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    requests: list[str] = []

    def send(self, request, *a, **kw):
        requests.append(str(request.url))
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
    monkeypatch.setattr(type(get_session()), "send", send)  # the HTTP client huggingface_hub uses, whichever it is
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # restored after the test
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(network, "_found", [])
    return requests


def test_a_model_id_fails_at_once_when_the_hubs_name_does_not_resolve(no_name_resolution, monkeypatch):
    from samtune import modeling

    with pytest.raises(UsageError) as info:
        modeling.load_config(ModelSection(name="google-bert/bert-base-uncased"))
    assert "the Hugging Face Hub could not be reached (Name or service not known)" in str(info.value)
    assert no_name_resolution == []  # no request, so no retries: the cache was asked, and only the cache
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True


def test_a_dataset_id_fails_at_once_too(no_name_resolution):
    from samtune.data import _load_hub

    with pytest.raises(DataError) as info:
        _load_hub(DataSection(dataset="someone/some-dataset"))
    assert "the Hugging Face Hub could not be reached (Name or service not known)" in str(info.value)
    assert no_name_resolution == []


def test_a_name_that_resolves_leaves_the_hub_to_huggingface_hub(monkeypatch):
    """Where the name resolves (a timeout or a 5xx comes later), nothing changes: huggingface_hub keeps its retries."""
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda *a, **kw: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", 443))]
    )
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(network, "_found", [])
    assert network.work_offline_if_unresolved() is None
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False


def test_under_hf_hub_offline_the_resolver_is_not_asked(monkeypatch):
    def asked(*a, **kw):
        raise AssertionError("the resolver was asked under HF_HUB_OFFLINE=1")

    monkeypatch.setattr(socket, "getaddrinfo", asked)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(network, "_found", [])
    assert network.unresolved_hub() is None
