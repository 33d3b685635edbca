"""`flux-tunnel` entry point.

NOT BUILT YET: the tunnel agent is the subject of issue #5. This entry point
exists so the console script is installed; it says so and exits with status 2.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    print("flux-tunnel: the tunnel agent is not built yet (tracked in issue #5)", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
