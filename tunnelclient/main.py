"""`flux-tunnel` entry point (the console script); the command line is tunnelclient/cli.py."""

from __future__ import annotations

import sys

from tunnelclient.cli import main as cli_main


def main(argv: list[str] | None = None) -> None:
    sys.exit(cli_main(argv))


if __name__ == "__main__":
    main()
