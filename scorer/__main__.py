"""``python -m scorer serve|train-demo``: the scorer on its own."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scorer.errors import ArtifactError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scorer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the models of a repository")
    serve.add_argument("--repository", type=Path)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--runtime", action="append", dest="runtimes", help="runtimes to serve")
    train = sub.add_parser("train-demo", help="train the demo models into a repository")
    train.add_argument("--repository", type=Path, required=True)
    train.add_argument("--force", action="store_true", help="retrain even if present")
    args = parser.parse_args(argv)

    try:
        if args.command == "train-demo":
            try:
                from scorer.dev.train import train_all
            except ModuleNotFoundError as exc:
                if exc.name is None or not exc.name.startswith("scorer.dev"):
                    raise
                print(
                    "scorer: train-demo is a development tool, not installed here", file=sys.stderr
                )
                return 2

            for folder in train_all(args.repository, force=args.force):
                print(f"model ready: {folder}")
            return 0
        from scorer.server import run
        from scorer.settings import ScorerSettings

        overrides = {
            key: value
            for key, value in vars(args).items()
            if key in {"repository", "host", "port", "runtimes"} and value is not None
        }
        run(ScorerSettings(**overrides))
    except ArtifactError as exc:
        print(f"scorer: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
