#!/usr/bin/env python3
"""Checks that the modules of src/ only use modules of their own layer or below (ARCHITECTURE.md).

Reads every `crate::<module>` path in src/ (in `use` lines and inline), maps both ends to their layer, and
fails on an edge that goes up. `make lint` runs it. Exit status 1 lists the offending lines.
"""

import re
import sys
from pathlib import Path

# Bottom to top; a module may use its own layer and every layer below it.
LAYERS = [
    ("foundation", ["config", "ids"]),
    ("protocol", ["protocol", "auth"]),
    ("events", ["events", "delivery"]),
    ("state", ["state", "metrics", "telemetry"]),
    ("hubs", ["hubs"]),
    ("edge", ["edge"]),
    ("bus", ["bus", "router", "publish"]),
    ("transport", ["transport"]),
    ("server", ["server"]),
]
LEVEL = {module: level for level, (_, modules) in enumerate(LAYERS) for module in modules}
NAME = {level: name for level, (name, _) in enumerate(LAYERS)}

# Edges that still go up, each with the reason it has not been moved yet. The list may only shrink.
KNOWN = {
    # The hub framework's Caller holds the connection, the group registry and the edge's shared state;
    # issue 13 hands hubs a context the edge implements instead.
    ("hubs", "edge"),
}

SRC = Path(__file__).resolve().parents[1] / "src"
PATH = re.compile(r"\bcrate::([a-z_]+)")


def module_of(path: Path) -> str | None:
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts[0] in ("lib", "main"):
        return None
    return parts[0]


def main() -> int:
    failures = []
    unknown = set()
    for path in sorted(SRC.rglob("*.rs")):
        source = module_of(path)
        if source is None:
            continue
        if source not in LEVEL:
            unknown.add(source)
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("//"):
                continue
            for target in PATH.findall(line):
                if target not in LEVEL:
                    unknown.add(target)
                elif LEVEL[target] > LEVEL[source] and (source, target) not in KNOWN:
                    failures.append(
                        f"{path.relative_to(SRC.parent)}:{number}: {source} ({NAME[LEVEL[source]]}) uses "
                        f"{target} ({NAME[LEVEL[target]]}), a layer above it"
                    )
    for module in sorted(unknown):
        failures.append(f"src/{module}: not in any layer; add it to LAYERS in scripts/check-layers.py")
    for line in failures:
        print(line)
    if failures:
        print(f"check-layers: {len(failures)} import(s) go up; see ARCHITECTURE.md for the layers", file=sys.stderr)
        return 1
    print("check-layers: every import points down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
