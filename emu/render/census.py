"""Text of ``emu map --vmlinux``: the census table, its summary, and the diff of two images."""

from __future__ import annotations

from typing import IO, Any


def text(label: str, rules: Any, sites: list[Any], summary: dict[str, Any],  # noqa: ANN401
         out: IO[str]) -> None:
    """One line per ``__ex_table`` entry, then totals by type and by function."""
    out.write(f"census: {label}\n#MC rules: {rules.name} ({rules.how})\n")
    out.write(f"{'site':44} {'instruction':38} {'touches':16} {'type':26} {'#MC':8} fixup\n")
    for s in sites:
        out.write(f"{s.where[:44]:44} {s.insn[:38]:38} {s.touches[:16]:16} {s.type[:26]:26} "
                  f"{s.mc:8} {s.fixup}\n")
    t = summary["total"]
    out.write(f"\n{t['sites']} sites, {t['user_loads']} user loads; an #MC recovers at "
              f"{t['recovers']}, panics at {t['panics']}\n")
    out.write("touches: " + ", ".join(f"{k} {v}" for k, v in sorted(
        summary["touches"].items(), key=lambda kv: -kv[1])) + "\n\n")
    _groups("by type", summary["by_type"], out)
    _groups("by function (with user loads)", {k: v for k, v in summary["by_function"].items()
                                              if v["user_loads"]}, out)


def _groups(title: str, rows: dict[str, dict[str, int]], out: IO[str]) -> None:
    out.write(f"{title:40} {'sites':>6} {'user loads':>10} {'recovers':>9} {'panics':>7}\n")
    for k, v in rows.items():
        out.write(f"{k[:40]:40} {v['sites']:6} {v['user_loads']:10} {v['recovers']:9} "
                  f"{v['panics']:7}\n")
    out.write("\n")


def diff_text(la: str, ra: Any, lb: str, rb: Any, changes: list[Any],  # noqa: ANN401
              out: IO[str]) -> None:
    out.write(f"census diff: {la} [#MC rules {ra.name}] -> {lb} [#MC rules {rb.name}]\n")
    for c in changes:
        s = c.after or c.before
        out.write(f"{c.kind:8} {s.where[:44]:44} {s.insn[:38]:38} {s.type:24} {c.flag}\n")
    kinds: dict[str, int] = {}
    for c in changes:
        key = c.flag if c.flag.startswith("#MC") else c.kind
        kinds[key] = kinds.get(key, 0) + 1
    out.write(f"\n{len(changes)} change(s): " + ", ".join(f"{k} {v}" for k, v in
                                                          sorted(kinds.items())) + "\n")
