#!/usr/bin/env python3
"""The direction of dependencies inside src/: which module may use which.

Reads every src/**/*.rs of the library (src/main.rs, the binary, is left
out), finds each reference to another module of the crate -- `use crate::…`,
`use super::…`, `use self::…` (nested braces too) and inline paths such as
`crate::conn::panic_message(…)` -- and builds the graph between modules,
resolved to the top-level module (`shard`, `http`) and, for the directory
modules, to their first level (`http::session`, `handlers::static_files`,
`config::load`). `#[cfg(test)] mod tests { … }` blocks, and test modules in
files of their own (`…/tests.rs`), are skipped: a test may reach wherever it
needs to.

Exits 1, printing each offending edge with the file and line that makes it,
when
  (a) the top-level modules have an import cycle, or
  (b) an edge breaks the rule table below.
Exits 0 otherwise. ARCHITECTURE.md ("Layers") states the same rules in words;
change both together.

    python3 .ci/layers.py            # check
    python3 .ci/layers.py --edges    # also print the whole graph
"""

import os
import re
import sys
from collections import defaultdict

# ---------------------------------------------------------------- the rules

# Every top-level module of src/ and its layer. A module may use only
# modules of a strictly lower layer. A module missing from this table fails
# the check: place a new module deliberately.
LAYERS = {
    # 0: leaves, nothing else from the crate.
    "http": 0,      # the protocol: parsing, bodies, responses, the session
    "units": 0,     # `8k`, `75s`
    "utc": 0,       # calendar time for log timestamps
    "cpus": 0,      # which CPUs get a shard
    "host": 0,      # rlimits, the io_uring probe
    "signals": 0,   # signals as typed events
    "bell": 0,      # an eventfd one thread rings to wake another
    "recheck": 0,   # the shard's budget of direct syscalls
    "recycled": 0,  # a future in a block the shard reuses (a Box::pin without malloc)
    "sys": 0,       # send and recv without libc's cancellation wrappers
    "status": 0,    # `coreserve status`, a client of the metrics endpoint
    "panics": 0,    # the text of a panic payload
    "child": 0,     # a supervised child: restarts and their back-off
    "keep_awake": 0, # a thread that wakes an executor's task (glommio's lost wake-up)
    "log_queue": 0, # the log's lines on their way to stderr, never waited for
    "throttle": 0,  # at most one log line a second about one thing
    "waiters": 0,   # tasks of one thread waiting for what another changes
    "proxy_protocol": 0, # the PROXY protocol header a load balancer sends first
    "memory": 0,    # memory a burst of connections left, given back to the system
    # 1: built on the leaves.
    "config": 1,    # Config, its loading and validation
    "readiness": 1, # the shard's own io_uring ring
    "metrics": 1,   # per-shard counters, Prometheus text
    # 2: what a shard's parts are made of.
    "access_log": 2,
    "handlers": 2,
    "listener": 2,
    "handoff": 2,
    "transport": 2,  # sockets as connections see them (client and upstream)
    "tls": 2,       # a shard's rustls configuration: SNI, tickets, HSTS
    # 3
    "router": 3,
    "admin": 3,
    "systemd": 3,
    "acceptor": 3,
    "proxy": 3,     # the reverse proxy's exchange and per-shard upstream pools
    # 4: the per-shard state a connection sees: Shard, Site, ConnKey; and
    # a handler's job run with what the connection lends it.
    "state": 4,
    "job": 4,
    # 5: one connection.
    "conn": 5,
    # 6: one shard.
    "shard": 6,
    "apps": 6,      # application processes: start, supervise, stop
    # 7: the master runtime.
    "master": 7,
    # 8: the flags; only the binary (src/main.rs) uses them.
    "cli": 8,
}

# Finer rules: modules under a prefix may use only modules under one of the
# allowed prefixes (their own prefix is always allowed).
ONLY = [
    (
        "http",
        ["http"],
        "the protocol layer imports nothing else from the crate",
    ),
    (
        "config",
        ["config", "http::parse", "http::path", "http::status", "units", "cpus"],
        "configuration is data: it may know protocol limits, status codes "
        "and the canonical form of a path, not the session, the handlers or "
        "the access log",
    ),
    (
        "handlers",
        ["handlers", "http", "config", "recheck", "throttle"],
        "a handler sees a request and a response writer, never a socket "
        "owner, a shard or the log (a throttle paces its own lines)",
    ),
]

# ------------------------------------------------------------- the parsing

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SRC = os.path.join(ROOT, "src")

# Directory modules resolved to their first level, not only to the top.
DEEP = {"http", "handlers", "config"}


def module_of(path):
    """src/a/b.rs → ['a', 'b']; src/a/mod.rs → ['a']; src/lib.rs → []."""
    rel = os.path.relpath(path, SRC)[: -len(".rs")].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel == ["lib"]:
        rel = []
    return rel


def source_files():
    for dirpath, _, files in os.walk(SRC):
        for f in sorted(files):
            if f.endswith(".rs"):
                p = os.path.join(dirpath, f)
                if os.path.relpath(p, SRC) in ("main.rs",) or os.sep + "bin" + os.sep in p:
                    continue
                yield p


def code_lines(text):
    """(line number, code) with comments and test modules left out."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        # `#[cfg(test)]` then `mod tests {`: rustfmt puts the closing brace of
        # a module at the module's own indentation.
        if stripped == "#[cfg(test)]" and i + 1 < len(lines):
            m = re.match(r"^(\s*)(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{\s*$", lines[i + 1])
            if m:
                indent = m.group(1)
                j = i + 2
                while j < len(lines) and lines[j] != indent + "}":
                    j += 1
                i = j + 1
                continue
        # Line comments (doc comments too); good enough: a `//` inside a
        # string only hides the rest of that line.
        cut = line.find("//")
        if cut >= 0:
            line = line[:cut]
        yield i + 1, line
        i += 1


def expand_use_tree(tree):
    """'crate::{a::X, b::{self, Y}}' → ['crate::a::X', 'crate::b', 'crate::b::Y']."""
    tree = tree.strip()
    depth = 0
    for k, ch in enumerate(tree):
        if ch == "{":
            prefix = tree[:k]
            inner = tree[k + 1 : tree.rindex("}")]
            parts, depth, start = [], 0, 0
            for m, c in enumerate(inner):
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                elif c == "," and depth == 0:
                    parts.append(inner[start:m])
                    start = m + 1
            parts.append(inner[start:])
            out = []
            for p in parts:
                p = p.strip()
                if not p:
                    continue
                if p == "self":
                    out.append(prefix.rstrip(":"))
                else:
                    out.extend(expand_use_tree(prefix + p))
            return out
    return [tree]


USE = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?use\s+")
INLINE = re.compile(r"(?<![\w:])(crate|super|self)((?:::\w+)+)")


def references(path):
    """(line, path as written) for every crate-relative path in the file."""
    with open(path, encoding="utf-8") as f:
        lines = list(code_lines(f.read()))
    k = 0
    while k < len(lines):
        no, line = lines[k]
        if USE.match(line):
            # A use statement may span lines: gather to its semicolon.
            stmt = line
            while ";" not in stmt and k + 1 < len(lines):
                k += 1
                stmt += " " + lines[k][1]
            body = USE.sub("", stmt, count=1).split(";")[0]
            body = re.sub(r"\s+as\s+\w+", "", body)
            body = re.sub(r"\s+", "", body)
            for p in expand_use_tree(body):
                if p.split("::")[0] in ("crate", "super", "self"):
                    yield no, p
        else:
            for m in INLINE.finditer(line):
                yield no, m.group(1) + m.group(2)
        k += 1


def resolve(segments, here, modules):
    """The deepest existing module a path names, as a list of segments."""
    head, rest = segments[0], segments[1:]
    if head == "crate":
        base = []
    elif head == "self":
        base = list(here)
    elif head == "super":
        base = list(here[:-1])
    else:
        return None
    while rest and rest[0] == "super":
        base, rest = base[:-1], rest[1:]
    found = list(base)
    for s in rest:
        if tuple(found + [s]) in modules:
            found.append(s)
        else:
            break
    return found


def unit(mod):
    """The node a module counts as: http::session, handlers::static_files, shard."""
    if not mod:
        return None
    if mod[0] in DEEP and len(mod) > 1:
        return "::".join(mod[:2])
    return mod[0]


def build():
    files = list(source_files())
    modules = {tuple(module_of(p)) for p in files}
    # Parents of nested modules exist too.
    for m in list(modules):
        for k in range(len(m)):
            modules.add(m[:k])
    edges = defaultdict(list)  # (from unit, to unit) → [file:line]
    for p in files:
        here = module_of(p)
        if not here or here[-1] == "tests":
            continue
        src_unit = unit(here)
        for no, written in references(p):
            target = resolve(written.split("::"), here, modules)
            if not target:
                continue
            dst_unit = unit(target)
            if dst_unit is None or dst_unit == src_unit:
                continue
            site = f"{os.path.relpath(p, ROOT)}:{no}"
            if site not in edges[(src_unit, dst_unit)]:
                edges[(src_unit, dst_unit)].append(site)
    return edges


def top(u):
    return u.split("::")[0]


def under(u, prefix):
    return u == prefix or u.startswith(prefix + "::")


# ---------------------------------------------------------------- the check


def sccs(nodes, succ):
    """Tarjan's strongly connected components."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(succ.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def shortest_cycle(comp, succ):
    """One shortest cycle through the component's first node (BFS)."""
    start = comp[0]
    members = set(comp)
    prev = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(succ.get(v, ())):
            if w not in members:
                continue
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return comp


def simple_cycles(edges, limit=20):
    """Elementary cycles between modules (not only top-level ones), skipping
    the edges between a directory module and its own sub-modules."""
    succ = defaultdict(set)
    for (a, b) in edges:
        if not (under(a, b) or under(b, a)):
            succ[a].add(b)
    found = []

    def walk(start, v, path, seen):
        for w in sorted(succ.get(v, ())):
            if w == start:
                found.append(path + [start])
            elif w > start and w not in seen and len(found) < limit:
                walk(start, w, path + [w], seen | {w})

    for start in sorted(succ):
        walk(start, start, [start], {start})
    return found[:limit]


def main():
    edges = build()
    show_all = "--edges" in sys.argv[1:]
    failures = 0

    def where(e):
        sites = edges[e]
        more = f" (+{len(sites) - 3} more)" if len(sites) > 3 else ""
        return ", ".join(sites[:3]) + more

    if show_all:
        print("module graph (from → to: where):")
        for e in sorted(edges):
            print(f"  {e[0]} → {e[1]}: {where(e)}")
        print()

    # (a) cycles among top-level modules.
    top_edges = defaultdict(list)
    for (a, b) in edges:
        if top(a) != top(b):
            top_edges[(top(a), top(b))].append((a, b))
    succ = defaultdict(set)
    nodes = set()
    for (a, b) in top_edges:
        succ[a].add(b)
        nodes.update((a, b))
    for comp in sccs(nodes, succ):
        if len(comp) < 2:
            continue
        failures += 1
        print(f"cycle among {', '.join(comp)}: e.g. {' → '.join(shortest_cycle(comp, succ))}")
        members = set(comp)
        inside = [
            e
            for (a, b), fine in sorted(top_edges.items())
            if a in members and b in members
            for e in sorted(fine)
        ]
        # The edges that go the wrong way by the table, else all of them.
        upward = [e for e in inside if LAYERS.get(top(e[1]), -1) >= LAYERS.get(top(e[0]), 99)]
        for e in upward or inside:
            print(f"  {e[0]} → {e[1]}: {where(e)}")

    if failures:
        print("cycles between modules:")
        for c in simple_cycles(edges):
            print("  " + " → ".join(c))

    # (b) the rule table.
    for name in sorted({top(u) for e in edges for u in e} - set(LAYERS)):
        failures += 1
        print(f"module {name} is not in the rule table (LAYERS in .ci/layers.py)")
    for (a, b) in sorted(edges):
        ta, tb = top(a), top(b)
        if ta == tb or ta not in LAYERS or tb not in LAYERS:
            continue
        if LAYERS[tb] >= LAYERS[ta]:
            failures += 1
            print(
                f"layer: {a} (layer {LAYERS[ta]}) uses {b} (layer {LAYERS[tb]}): "
                f"{where((a, b))}"
            )
    for prefix, allowed, why in ONLY:
        for (a, b) in sorted(edges):
            if under(a, prefix) and not any(under(b, p) for p in allowed):
                failures += 1
                print(f"rule: {a} uses {b} ({why}): {where((a, b))}")

    if failures:
        print(f"\n{failures} problem(s) in the direction of dependencies (see ARCHITECTURE.md, Layers)")
        return 1
    print("layers: no cycle, every edge follows the rule table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
