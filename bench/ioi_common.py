"""What the IOI read-out benches share: their command line (a model, a locate run, locations by name) and loading them."""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first, as in every bench script (docs/threads.md)

import argparse


def parser(doc: str) -> argparse.ArgumentParser:
    """--model, --locations (a `workbench ioi locate` run), --location (repeated), --seed, --json."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy-ioi")
    p.add_argument("--locations", required=True, help="a `workbench ioi locate` run (for its locations)")
    p.add_argument("--location", action="append", required=True, help="location name as the locate run writes it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    return p


def model_and_locations(p: argparse.ArgumentParser, args: argparse.Namespace):
    """(the model on CPU, the --location locations of the --locations run); a usage error names a missing one."""
    from cli.ioi import find_locations
    from workbench.errors import ConfigError
    from workbench.models import load_model

    try:
        locs = find_locations(args.locations, args.location)
    except ConfigError as e:
        p.error(str(e))
    return load_model(args.model, "cpu"), locs
