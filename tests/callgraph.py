#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The file-level call graph of a component, from the .ci files that
gcc -fcallgraph-info writes (one per source file): which file calls a
function defined in which other file.  Prints every circle of files that
call each other, with the calls that close it, and exits 1 if there is
one; with --floors, also each file's floor (1: calls no other file;
n: calls files up to floor n-1).  Calls through function pointers (the
io ops, callbacks) are not in the graph, which is the point: a callback
is how a lower file reaches back up without a circle."""

import collections
import glob
import os
import re
import sys


def read_graph(ci_dir):
    defined = {}        # function (or file:static function) -> file
    calls = []
    for ci in glob.glob(os.path.join(ci_dir, '*.ci')):
        src = None
        with open(ci) as f:
            for line in f:
                m = re.match(r'graph: \{ title: "(.*)"', line)
                if m:
                    src = os.path.basename(m.group(1))
                    continue
                m = re.match(r'node: \{ title: "([^"]*)" label: "[^"]*"'
                             r'( shape)?', line)
                if m and not m.group(2):        # defined here
                    defined[m.group(1)] = src
                m = re.match(r'edge: \{ sourcename: "([^"]*)" '
                             r'targetname: "([^"]*)"', line)
                if m:
                    calls.append((m.group(1), m.group(2)))
    edges = collections.defaultdict(set)
    for caller, callee in calls:
        a, b = defined.get(caller), defined.get(callee)
        if a and b and a != b:
            edges[(a, b)].add((caller.split(':')[-1], callee.split(':')[-1]))
    return set(defined.values()), edges


def circles(nodes, edges):
    """Strongly connected components of more than one file (Tarjan)."""
    succ = collections.defaultdict(set)
    for a, b in edges:
        succ[a].add(b)
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(succ[v]):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out, succ


def main():
    args = [a for a in sys.argv[1:] if a != '--floors']
    if len(args) != 1:
        sys.exit('usage: callgraph.py [--floors] CI_DIR')
    nodes, edges = read_graph(args[0])
    if not nodes:
        sys.exit('callgraph.py: no .ci files in %s' % args[0])
    found, succ = circles(nodes, edges)
    for comp in found:
        print('circle: %s' % ' '.join(comp))
        for a in comp:
            for b in comp:
                if (a, b) in edges:
                    print('  %s -> %s: %s' % (a, b, ', '.join(
                        '%s calls %s' % e for e in sorted(edges[(a, b)]))))
    if '--floors' in sys.argv and not found:
        floor = {}

        def fl(v):
            if v not in floor:
                floor[v] = 1 + max((fl(w) for w in succ[v]), default=0)
            return floor[v]
        by = collections.defaultdict(list)
        for v in nodes:
            by[fl(v)].append(v)
        for k in sorted(by):
            print('floor %d: %s' % (k, ' '.join(sorted(by[k]))))
    sys.exit(1 if found else 0)


if __name__ == '__main__':
    main()
