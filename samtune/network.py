"""Whether the Hugging Face Hub's host name resolves, asked once before a hub id is loaded.

With no network, huggingface_hub retries a failed connection for about half a minute before the
error comes back; a name that does not resolve is not a transient failure, so samtune asks the
resolver first (a few milliseconds) and, when the name does not resolve, loads from the local cache
only (what `HF_HUB_OFFLINE=1` would do) and fails at once if the id is not there. Timeouts and 5xx
answers never reach this path: the name resolves, and huggingface_hub keeps its retries for them.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from urllib.parse import urlparse

from huggingface_hub import constants

RESOLVE_DEADLINE_S = 3.0  # a resolver that does not answer in time: let the normal path (and its retries) decide
_found: list[str] = []  # why the name did not resolve, once found (this process then works offline)


def offline_mode() -> bool:
    """HF_HUB_OFFLINE is set: nothing is asked of the network at all."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_host() -> str:
    """The Hub's host name (HF_ENDPOINT's, as huggingface_hub reads it)."""
    return urlparse(constants.ENDPOINT).hostname or "huggingface.co"


def unresolved_hub() -> str | None:
    """Why the Hub's host name does not resolve ('Name or service not known'), or None: it resolves, the resolver
    did not answer within RESOLVE_DEADLINE_S, or HF_HUB_OFFLINE is set (nothing to ask)."""
    if offline_mode():
        return None
    host, answer = hub_host(), {}

    def resolve() -> None:
        try:
            socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            answer["why"] = e.strerror or str(e)
        except OSError:
            pass

    thread = threading.Thread(target=resolve, daemon=True)
    thread.start()
    thread.join(RESOLVE_DEADLINE_S)
    return answer.get("why")


def work_offline_if_unresolved() -> str | None:
    """Before a hub id is loaded: when the Hub's name does not resolve, this process works from the local cache only
    (as under HF_HUB_OFFLINE=1, for huggingface_hub, transformers and datasets alike) and the reason is returned, for
    the caller's message if the id is not in the cache; None when the Hub may be asked."""
    if _found:
        return _found[0]
    why = unresolved_hub()
    if why is None:
        return None
    _found.append(why)
    os.environ["HF_HUB_OFFLINE"] = "1"  # for what reads the environment later (and child processes)
    constants.HF_HUB_OFFLINE = True  # huggingface_hub.is_offline_mode(), which transformers asks
    if "datasets" in sys.modules:  # datasets copies the flag at import
        sys.modules["datasets"].config.HF_HUB_OFFLINE = True
    return why
