#!/usr/bin/env python3
"""Prints the ninja targets that the tests of the given meson suites need.

  tools/suite_targets.py <builddir> <suite> [suite...]

The sanitizer builds run only the 'sanitize' suite; building just what it needs
(instead of every tool, demo and daemon test) keeps tools/test well inside its
time budget on two cores.
"""
import json, os, subprocess, sys

build, suites = sys.argv[1], set(sys.argv[2:])
def introspect(what):
    return json.loads(subprocess.check_output(["meson", "introspect", build, what]))
build_abs = os.path.abspath(build)
files = {t["id"]: t["filename"] for t in introspect("--targets")}
out = set()
for t in introspect("--tests"):
    if not any(s.split(":")[-1] in suites for s in t["suite"]):
        continue
    cmd0 = t["cmd"][0]
    if cmd0.startswith(build_abs + "/"):
        out.add(os.path.relpath(cmd0, build_abs))
    for dep in t["depends"]:
        for f in files.get(dep, []):
            if f.startswith(build_abs + "/"):
                out.add(os.path.relpath(f, build_abs))
print("\n".join(sorted(out)))
