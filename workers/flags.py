"""The worker settings as command-line flags (pydantic-settings' CLI source on argparse).

Every :class:`engine.settings.Settings` field but the secrets becomes ``--field-name``; a flag
overrides its ``KINDLING_*`` variable, and its value is parsed and checked exactly like the
variable's (``--gc-freeze false`` is False). ``kindling worker --help`` lists them in one group;
the other commands accept them too but keep ``--help`` to their own options and list the settings
with ``--help-settings``.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic_settings import CliSettingsSource

from engine.settings import SECRETS, Settings

GROUP_TITLE = "worker settings"
GROUP_TEXT = "each flag overrides its KINDLING_* environment variable"


def add_settings_flags(parser: argparse.ArgumentParser, listed: bool = False) -> None:
    """Add every setting as a flag to ``parser``. ``listed``: show them in ``--help`` (the
    worker); otherwise ``--help-settings`` lists them and ``--help`` stays short."""
    group = (parser.add_argument_group(GROUP_TITLE, GROUP_TEXT) if listed
             else parser.add_argument_group())  # no title: an all-hidden group prints nothing

    def add_argument(_: Any, *names: str, **kwargs: Any) -> Any:
        if kwargs.get("dest") in SECRETS:
            return None  # secrets only via env
        if not listed:
            kwargs["help"] = argparse.SUPPRESS
        return group.add_argument(*names, **kwargs)

    source = CliSettingsSource(Settings, root_parser=parser, add_argument_method=add_argument,
                               cli_kebab_case=True)
    parser.set_defaults(settings_source=source)
    if not listed:
        parser.add_argument(
            "--help-settings", action=_HelpSettings, nargs=0,
            help="list the worker settings this command also takes as flags (each overrides "
            "its KINDLING_* variable) and exit")


class _HelpSettings(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        listing = argparse.ArgumentParser(prog=parser.prog, usage=f"{parser.prog} [settings]",
                                          add_help=False)
        add_settings_flags(listing, listed=True)
        listing.print_help()
        secrets = ", ".join(f"KINDLING_{name.upper()}" for name in sorted(SECRETS))
        print(f"\nfrom the environment only: {secrets}")
        parser.exit()


def settings_from(args: argparse.Namespace, **fixed: Any) -> Settings:
    """Defaults < ``KINDLING_*`` env vars < the flags given < ``fixed``. Raises
    :class:`engine.settings.SettingsError` naming each bad flag or variable."""
    source: CliSettingsSource[Any] | None = getattr(args, "settings_source", None)
    flags = source(parsed_args=args)() if source is not None else {}
    labels = {name: "--" + name.replace("_", "-") for name in flags}
    return Settings.from_sources(None, {**flags, **fixed}, labels)
