#!/usr/bin/env python3
"""Import cycles between the modules of each crate of the workspace.

    scripts/check-cycles.py            prints each crate's module graph, exits 1 on a cycle
    scripts/check-cycles.py agent      only that crate (a folder with src/)
    VERBOSE=1 scripts/check-cycles.py  also every path behind each edge (on stderr)

An edge A -> B: code in A's file (its inline `mod tests` included) names an
item B defines, through `crate::`, `super::`, `self::` or a child module's
name, with re-exports followed to the module that defines the item.
Comments and string literals are left out.

What counts as a cycle: modules that are not one inside the other using each
other, directly or round a loop (`source` -> `recovery` -> `source`). A parent
and its own child using each other (`source.rs` and `source/precopy.rs`, or a
`mod.rs` whose children use its `CHUNK`) is no cycle. The crate root's file
(`lib.rs`, `main.rs`) sits beside the top-level modules' files, so its code
and theirs using each other is one; its `mod` lines and re-exports
(`pub use x::Y;`) are no use.

A reader of text, not a compiler: items made by macros and paths built in
macros are not seen. scripts/test.sh (CI) runs it.
"""
import os, re, sys

def strip(src):
    out = []; i = 0; n = len(src)
    while i < n:
        c = src[i]
        if src.startswith('//', i):
            j = src.find('\n', i); j = n if j < 0 else j
            i = j; continue
        if src.startswith('/*', i):
            depth = 0
            while i < n:
                if src.startswith('/*', i): depth += 1; i += 2
                elif src.startswith('*/', i):
                    depth -= 1; i += 2
                    if depth == 0: break
                else: i += 1
            out.append(' '); continue
        m = re.match(r'b?r(#*)"', src[i:i+10]) if c in 'rb' and (i == 0 or not (src[i-1].isalnum() or src[i-1] == '_')) else None
        if m:
            hashes = m.group(1); end = '"' + hashes
            j = src.find(end, i + m.end()); i = j + len(end); out.append('""'); continue
        if c == '"' :
            j = i + 1
            while src[j] != '"':
                j += 2 if src[j] == '\\' else 1
            i = j + 1; out.append('""'); continue
        if c == "'":
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\x[0-9a-fA-F]{2}|\\.|[^\\'])'", src[i:i+12])
            if m: i += m.end(); out.append("' '"); continue
        out.append(c); i += 1
    return ''.join(out)

IDENT = r'[A-Za-z_][A-Za-z0-9_]*'

def parse_tree(s, i):
    """Parse a use-tree starting at s[i]; returns (list of segment-lists, new i)."""
    paths = []
    prefix = []
    while True:
        while s[i].isspace(): i += 1
        if s[i] == '{':
            i += 1; subs = []
            while True:
                while s[i].isspace() or s[i] == ',': i += 1
                if s[i] == '}': i += 1; break
                sub, i = parse_tree(s, i); subs += sub
            return [prefix + p for p in subs], i
        if s[i] == '*':
            return [prefix + ['*']], i + 1
        m = re.match(IDENT, s[i:])
        if not m: return [prefix], i
        prefix.append(m.group(0)); i += m.end()
        j = i
        while j < len(s) and s[j].isspace(): j += 1
        if s.startswith('::', j): i = j + 2; continue
        # alias
        m2 = re.match(r'\s+as\s+(' + IDENT + ')', s[i:])
        if m2: i += m2.end(); return [prefix + ['@as', m2.group(1)]], i
        return [prefix], i

def inline_at(s, pos):
    """Names of the inline `mod x { ... }` blocks enclosing pos."""
    names = []
    for mt in re.finditer(r'\bmod\s+(' + IDENT + r')\s*\{', s[:pos]):
        depth = 0; i = mt.end() - 1
        while i < pos:
            if s[i] == '{': depth += 1
            elif s[i] == '}':
                depth -= 1
                if depth == 0: break
            i += 1
        if i >= pos: names.append(mt.group(1))
    return tuple(names)

def modname(rel):
    parts = rel[:-3].split('/')
    if parts[-1] in ('lib', 'main') and len(parts) == 1: return ()
    if parts[-1] == 'mod': parts = parts[:-1]
    return tuple(parts)

def analyze(srcdir, root='lib.rs'):
    files = {}
    for dp, _, fns in os.walk(srcdir):
        for fn in fns:
            if fn.endswith('.rs'):
                rel = os.path.relpath(os.path.join(dp, fn), srcdir)
                if rel == 'bin' or rel.startswith('bin/'): continue
                if len(rel.split('/')) == 1 and fn in ('lib.rs', 'main.rs') and fn != root: continue
                files[modname(rel)] = strip(open(os.path.join(dp, fn)).read())
    mods = set(files)
    # imports per module: name -> absolute path (list)
    imports = {m: {} for m in mods}; globs = {m: [] for m in mods}
    uses = {m: [] for m in mods}   # absolute paths referenced
    def absolute(m, segs):
        if not segs: return None
        if segs[0] == 'crate': return list(segs[1:])
        if segs[0] == 'self': return list(m) + list(segs[1:])
        if segs[0] == 'super':
            base = list(m)
            while segs and segs[0] == 'super': base = base[:-1]; segs = segs[1:]
            return base + list(segs)
        if tuple(list(m) + [segs[0]]) in mods: return list(m) + list(segs)
        return None
    for m, s in files.items():
        for mt in re.finditer(r'\buse\s+', s):
            paths, _ = parse_tree(s, mt.end())
            if inline_at(s, mt.start()): paths = [p for p in paths if p and p[0] == 'crate']  # inline module's own imports: only its crate:: uses count
            for p in paths:
                alias = None
                if len(p) >= 2 and p[-2] == '@as': alias = p[-1]; p = p[:-2]
                a = absolute(m, p)
                if a is None: continue
                if a and a[-1] == '*': globs[m].append(a[:-1]); continue
                if a and a[-1] == 'self': a = a[:-1]
                name = alias or (a[-1] if a else None)
                if name: imports[m][name] = a
        if m == ():
            # The crate root's re-exports (`pub use x::Y;`) and `mod` lines
            # are no use of its own; what its code calls is.
            s = re.sub(r'\bpub(\([a-z]+\))?\s+use\b[^;]*;', ' ', s)
        for mt in re.finditer(r'(?<![A-Za-z0-9_:])(crate|super|self)::', s):
            paths, _ = parse_tree(s, mt.start())
            here = m + inline_at(s, mt.start())
            for p in paths:
                if len(p) >= 2 and p[-2] == '@as': p = p[:-2]
                a = absolute(here, p)
                if a is not None: uses[m].append(a)
        # relative paths to child modules like `inplace::Bundle`
        for mt in re.finditer(r'(?<![A-Za-z0-9_:])(' + IDENT + ')::', s):
            if tuple(list(m) + [mt.group(1)]) in mods:
                paths, _ = parse_tree(s, mt.start())
                for p in paths: uses[m].append(list(m) + [x for x in p if x != '@as'])
    def resolve(a, depth=0):
        """Module that defines the item at absolute path a."""
        a = [x for x in a if x not in ('*',)]
        k = 0
        while k < len(a) and tuple(a[:k+1]) in mods: k += 1
        mod = tuple(a[:k]); rest = a[k:]
        if not rest or depth > 20: return mod
        name = rest[0]
        if name in imports[mod]:
            target = imports[mod][name]
            r = resolve(target + rest[1:], depth + 1)
            return r
        if re.search(r'\b(fn|struct|enum|trait|type|const|static|mod|macro_rules!|union)\s+' + re.escape(name) + r'\b', files[mod]):
            return mod
        for g in globs[mod]:
            gm = resolve(g, depth + 1)
            if gm in mods and re.search(r'\b(fn|struct|enum|trait|type|const|static)\s+' + re.escape(name) + r'\b', files[gm]):
                return gm
        return mod
    edges = {}
    for m in mods:
        for a in uses[m]:
            t = resolve(a)
            if t != m:
                edges.setdefault(m, set()).add(t)
                if os.environ.get('VERBOSE'): print('   ', '::'.join(m) or 'crate', '->', '::'.join(t) or 'crate', '::'.join(a), file=sys.stderr)
    return mods, edges

def name(m): return '::'.join(m) or 'crate'

def cycles(mods, edges):
    """Sibling-level graphs: for each edge A->B with neither an ancestor of the
    other, an edge between the children of their common ancestor. Edges from a
    module to an ancestor or descendant are parent/child and left out."""
    groups = {}
    for a, ts in edges.items():
        for b in ts:
            k = 0
            while k < min(len(a), len(b)) and a[k] == b[k]: k += 1
            if k == 0 and (a == () or b == ()):
                # The crate root's file sits beside the top-level modules' files:
                # its code and theirs using each other is a cycle too.
                groups.setdefault((), {}).setdefault(a[:1] or ('<crate root>',), set()).add(b[:1] or ('<crate root>',))
                continue
            if k == len(a) or k == len(b): continue   # ancestor/descendant
            groups.setdefault(a[:k], {}).setdefault(a[:k+1], set()).add(b[:k+1])
    found = []
    for parent, g in groups.items():
        # Tarjan SCC
        index = {}; low = {}; st = []; on = set(); c = [0]
        def sc(v):
            index[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
            for w in g.get(v, ()):
                if w not in index: sc(w); low[v] = min(low[v], low[w])
                elif w in on: low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = st.pop(); on.discard(w); comp.append(w)
                    if w == v: break
                if len(comp) > 1: found.append(sorted(comp))
        for v in list(g):
            if v not in index: sc(v)
    return found

if __name__ == '__main__':
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
    bad = 0
    for crate_dir in sys.argv[1:] or ['proto', 'transport', 'agent', 'coordinator', 'tests']:
        root = 'lib.rs' if os.path.exists(os.path.join(crate_dir, 'src/lib.rs')) else 'main.rs'
        mods, edges = analyze(os.path.join(crate_dir, 'src'), root)
        print(f'== {crate_dir} ({root})')
        for m in sorted(mods):
            print(f'  {name(m)} -> {", ".join(sorted(name(t) for t in edges.get(m, ())))}')
        for comp in cycles(mods, edges):
            bad += 1
            print('  CYCLE: ' + ' <-> '.join(name(x) for x in comp))
    sys.exit(1 if bad else 0)
