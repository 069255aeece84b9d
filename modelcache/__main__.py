"""`modelcache ...` (the console script) and `python -m modelcache ...`."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """`node ...` runs the installed node package in this process; the rest is coordinator.cli.

    In this process, not as `python -m node`: a subprocess would run a `node/` folder of the
    current directory (the console script's sys.path[0] is its own directory, not the cwd).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["node"]:
        from node.__main__ import main as node_main

        return node_main(args[1:])
    from coordinator.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
