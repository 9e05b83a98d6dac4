"""`arrowsmith env build|list|prune`: the environment cache by hand (an image bakes its
models' environments in with `env build`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from arrowsmith.environments.build import EnvironmentBuildError
from arrowsmith.environments.cache import Environment, EnvironmentCache, default_root, size_of


def run(args: argparse.Namespace) -> int:
    cache = EnvironmentCache(Path(args.env_cache) if args.env_cache else default_root())
    try:
        if args.env_command == "build":
            return _build(cache, args.model_uri, args.env_manager)
        if args.env_command == "list":
            return _list(cache, args.json)
        return _prune(cache, args.unused_days, args.all, args.dry_run)
    except (ValueError, EnvironmentBuildError, OSError) as error:
        print(f"arrowsmith env {args.env_command}: {error}", file=sys.stderr)
        return 2


def _build(cache: EnvironmentCache, uri: str, manager: str) -> int:
    from arrowsmith.environments.build import ensure_environment
    from arrowsmith.environments.serving import model_spec

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if manager == "local":
        raise ValueError("--env-manager local builds nothing: give uv or virtualenv")
    # An image's environment may be read-only later: its bytecode is compiled now.
    spec, resolved = model_spec(uri)
    environment = ensure_environment(spec, manager, cache, resolved, compile_bytecode=True)
    print(environment.path)
    return 0


def _describe(environment: Environment) -> dict[str, Any]:
    record = environment.record()
    return {
        "key": environment.key,
        "path": str(environment.path),
        "manager": record.get("manager"),
        "python": record.get("python"),
        "requirements": record.get("requirements", []),
        "models": record.get("models", []),
        "created": record.get("created"),
        "last_used": environment.last_used(),
        "size_bytes": size_of(environment.path),
    }


def _list(cache: EnvironmentCache, as_json: bool) -> int:
    described = [_describe(environment) for environment in cache.environments()]
    if as_json:
        print(json.dumps(described, indent=1))
        return 0
    if not described:
        print(f"no environments in {cache.root}")
        return 0
    print(f"{'KEY':<22}{'MANAGER':<12}{'PYTHON':<9}{'SIZE':>9}  {'LAST USED':<17}MODELS")
    for entry in described:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["last_used"]))
        print(
            f"{entry['key']:<22}{entry['manager'] or '?':<12}{entry['python'] or '?':<9}"
            f"{entry['size_bytes'] / 1e6:>7.0f}MB  {used:<17}{', '.join(entry['models'])}"
        )
    return 0


def _prune(cache: EnvironmentCache, unused_days: float, everything: bool, dry_run: bool) -> int:
    oldest = time.time() - unused_days * 86400
    doomed = [
        environment.path
        for environment in cache.environments()
        if everything or environment.last_used() < oldest
    ]
    doomed += cache.leftovers()
    for path in doomed:
        print(f"{'would remove' if dry_run else 'removed'} {path}")
        if not dry_run:
            key = path.name
            if key.startswith("."):
                cache.remove(path)
                continue
            with cache.locked(key):
                cache.remove(path)
    if not doomed:
        print("nothing to remove")
    return 0
