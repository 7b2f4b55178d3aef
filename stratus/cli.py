"""The `stratus` command: `dev` (local stack), `demo` (the whole flow), `migrate` (schema),
`cleanup` and `admin` (operations, stratus/ops.py).

Its output is for a person at a terminal, so it prints; the functions themselves log JSON lines.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _dev(args: argparse.Namespace) -> int:
    from stratus.local_stack import serve

    serve(host=args.host, port=args.port)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from stratus.demo import DemoError, run_demo

    try:
        run_demo(args.url, prompt=args.prompt, timeout=args.timeout)
    except DemoError as exc:
        print(f"stratus demo: {exc}", file=sys.stderr)
        return 1
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from shared_layer.config import ConfigError

    try:
        return _run_migration(args)
    except (CommandError, SQLAlchemyError, ConfigError) as exc:
        print(f"stratus migrate: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _run_migration(args: argparse.Namespace) -> int:
    from shared_layer.database import get_engine
    from shared_layer.migrate import current_revision, downgrade, head_revision, upgrade

    engine = get_engine()
    before = current_revision(engine)
    if args.action == "upgrade":
        upgrade(engine, args.revision or "head")
    elif args.action == "downgrade":
        if not args.revision:
            print("stratus migrate downgrade: give a revision (or 'base')", file=sys.stderr)
            return 2
        downgrade(engine, args.revision)
    after = current_revision(engine)
    url = engine.url.render_as_string(hide_password=True)
    if args.action == "current":
        print(f"{url}: at {after or 'an empty schema (base)'}; newest is {head_revision()}")
    else:
        print(f"{url}: {before or 'base'} -> {after or 'base'}")
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stratus.bundle import BundleError, build_bundles, summary

    try:
        bundles = build_bundles(args.functions or None, out=Path(args.out))
    except BundleError as exc:
        print(f"stratus bundle: {exc}", file=sys.stderr)
        return 1
    print(summary(bundles, markdown=args.markdown))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stratus", description="Develop and try Stratus locally.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser(
        "dev",
        help="serve every function on one port (development server)",
        description="Serve every function under http://HOST:PORT/<function>/ with SQLite, "
        "the in-process task queue and the offline LLM unless configured otherwise. "
        "A development server: never expose it.",
    )
    dev.add_argument("--host", default="127.0.0.1", help="address (default %(default)s)")
    dev.add_argument("--port", type=int, default=8080, help="port (default %(default)s)")
    dev.set_defaults(run=_dev)

    demo = commands.add_parser(
        "demo",
        help="register, log in, create an agent, run a task and print its answer",
        description="Drive the whole flow over HTTP against a running stack.",
    )
    demo.add_argument("--url", default="http://127.0.0.1:8080", help="default %(default)s")
    demo.add_argument("--prompt", default="In one sentence: what does Stratus do?")
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the task")
    demo.set_defaults(run=_demo)

    migrate = commands.add_parser(
        "migrate",
        help="apply or inspect database migrations (DATABASE_URL or CLOUD_SQL_INSTANCE)",
        description="Migrate the configured database: upgrade [REV] (default head), "
        "downgrade REV, or show the current revision.",
    )
    migrate.add_argument(
        "action", nargs="?", default="upgrade", choices=["upgrade", "downgrade", "current"]
    )
    migrate.add_argument("revision", nargs="?", help="target revision (upgrade: default head)")
    migrate.set_defaults(run=_migrate)

    bundle = commands.add_parser(
        "bundle",
        help="build the deployable bundle of each function into build/",
        description="Build build/<function>/ and build/<function>.zip for each function (default: "
        "all): main.py, a vendored shared_layer/ and a complete pinned requirements.txt; and "
        "build/bundles.json with each bundle's content hash. Building twice gives the same bytes.",
    )
    bundle.add_argument("functions", nargs="*", help="functions to build (default: all)")
    bundle.add_argument("--out", default="build", help="output directory (default %(default)s)")
    bundle.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    bundle.set_defaults(run=_bundle)

    from stratus.ops import add_commands

    add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
