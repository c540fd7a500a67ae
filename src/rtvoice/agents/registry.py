"""Which :class:`Agent` class serves a call, by ``RTVOICE_AGENT`` mode.

Each vendor module is imported only when its mode is used, so ``python -m rtvoice serve`` in ``echo`` mode
never imports the OpenAI or ElevenLabs SDKs."""

from __future__ import annotations

import importlib

from rtvoice.agents.base import Agent
from rtvoice.config import AGENT_MODES, ConfigError, Settings

#: mode -> (module, class name). Every class is constructed as ``Cls(settings)``.
AGENT_CLASSES: dict[str, tuple[str, str]] = {
    "echo": ("rtvoice.agents.echo", "EchoAgent"),
    "local": ("rtvoice.agents.local.agent", "LocalAgent"),
    "openai": ("rtvoice.agents.openai_realtime", "OpenAIRealtimeAgent"),
    "openai-elevenlabs": ("rtvoice.agents.openai_elevenlabs", "OpenAIElevenLabsAgent"),
    "elevenlabs-agent": ("rtvoice.agents.elevenlabs_agent", "ElevenLabsAgent"),
}


def agent_class(mode: str) -> type[Agent]:
    """The agent class for ``mode`` (imports its module). Raises :class:`ConfigError` for an unknown mode."""
    if mode not in AGENT_CLASSES:
        raise ConfigError(f"RTVOICE_AGENT={mode!r}: expected one of {', '.join(AGENT_MODES)}")
    module_name, class_name = AGENT_CLASSES[mode]
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise TypeError(f"{module_name}.{class_name} is not an Agent")
    return cls


def preflight(settings: Settings, mode: str | None = None) -> None:
    """Start-up checks of the agent class for ``mode`` (default ``settings.agent``), if it has any.

    The mode's credentials are checked (:meth:`Settings.check_agent_credentials`), then an agent class may
    define ``preflight(settings)`` (a classmethod) that raises :class:`ConfigError` for
    what would otherwise fail at the first call (e.g. the local agent's scenario file); ``serve`` runs it
    before binding.
    """
    chosen = mode or settings.agent
    # A missing key for the chosen mode stops startup with the variable's name, not a fault at the first call.
    settings.with_overrides(agent=chosen).check_agent_credentials()
    check = getattr(agent_class(chosen), "preflight", None)
    if check is not None:
        check(settings)


def create_agent(settings: Settings, mode: str | None = None) -> Agent:
    """A new agent for one call, in ``mode`` (default: ``settings.agent``).

    The mode's credentials are checked first (:meth:`Settings.check_agent_credentials`): a missing key is a
    :class:`ConfigError` naming the variable, not a vendor error mid-call.
    """
    chosen = mode or settings.agent
    if chosen != settings.agent:
        settings = settings.with_overrides(agent=chosen)
    settings.check_agent_credentials()
    return agent_class(chosen)(settings)  # type: ignore[call-arg]
