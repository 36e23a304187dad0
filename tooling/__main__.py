"""Command line of nixos-k3s: `python -m tooling plan|diff ...`.

plan  run the program offline under mocks and write plan.json + hosts/*.json (no credentials)
diff  compare two plan directories (per resource and per host), exit 1 when they differ
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components.config import ConfigError

EXIT_CONFIG_ERROR = 2


def _plan(args: argparse.Namespace) -> int:
    from tooling import plan

    if args.config_file:
        path = Path(args.config_file)
        stack = args.stack or _stack_from_filename(path)
    else:
        stack = args.stack or "dev"
        path = plan.PROJECT_DIR / f"Pulumi.{stack}.yaml"
    out = Path(args.out) if args.out else plan.PROJECT_DIR / "build" / stack
    try:
        stack_file = plan.read_stack_file(path, stack)
        result = plan.run_program(stack_file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    source = _shown_path(path, plan.PROJECT_DIR)
    replaced = _previous_source(out)
    if replaced is not None and replaced != source:
        print(f"note: replacing {out}, the plan of {replaced}", file=sys.stderr)
    plan.write_plan(result, out)
    (out / SOURCE_FILE).write_text(source + "\n", encoding="utf-8")
    if not args.quiet:
        sys.stdout.write(plan.render_tree(result))
    print(f"wrote {out / 'plan.json'} and {len(result.hosts)} host file(s)", file=sys.stderr)
    return 0


# Beside plan.json: which stack file the plan was made from, so a later plan into the same
# directory from another file says what it replaces instead of overwriting it silently.
SOURCE_FILE = "source"


def _shown_path(path: Path, project_dir: Path) -> str:
    resolved = path.resolve()
    return (
        str(resolved.relative_to(project_dir))
        if resolved.is_relative_to(project_dir)
        else str(resolved)
    )


def _previous_source(out: Path) -> str | None:
    try:
        return (out / SOURCE_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _stack_from_filename(path: Path) -> str:
    parts = path.name.split(".")
    if len(parts) == 3 and parts[0] == "Pulumi" and parts[2] in ("yaml", "yml"):
        return parts[1]
    return "plan"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["diff"]:
        from tooling import diff

        return diff.main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m tooling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    plan_cmd = sub.add_parser("plan", help="render a stack offline under mocks")
    plan_cmd.add_argument("--stack", help="stack name (reads Pulumi.<stack>.yaml); default dev")
    plan_cmd.add_argument("--config-file", help="any file shaped like Pulumi.<stack>.yaml")
    plan_cmd.add_argument("--out", help="output directory (default build/<stack>)")
    plan_cmd.add_argument("--quiet", action="store_true", help="do not print the resource tree")
    sub.add_parser("diff", help="compare two plan directories (see `diff --help`)")
    args = parser.parse_args(argv)
    return _plan(args)


if __name__ == "__main__":
    from tooling.process import hard_exit

    hard_exit(main())
