"""python -m rollout"""

import sys


def main() -> None:
    """Console entry point."""
    from rollout.cli import run_cli

    sys.exit(run_cli())


if __name__ == "__main__":
    main()
