"""Lines of code on the path `vlm_attn.apply(model, VARConfig())` -> engine install -> attention -> VAR's edit.

Counts the definitions (functions, methods, classes) that run on that path, listed below by hand from reading it:
`span` is first line (decorators included) to last line as Python's `ast` reports them; `code` is the same minus
blank, comment-only and docstring lines. `chain` is the call chain alone (apply, install, the attention function
and its helpers, the interface types it passes, VAR's rows and edit and their math); `full` adds what feeds it from
the side (the position-tracking and layer-input hooks, CallState, Tally, VAR's sink observation). Edit PATH when a
definition moves. Usage: python scripts/count_path_lines.py [-v]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATH = [  # (file, qualified name, fed from the side rather than on the call chain)
    # api
    ('vlm_attn/api.py', 'apply', False),
    ('vlm_attn/methods/registry.py', 'config_list_of', False),
    ('vlm_attn/api.py', 'Handle.__init__', False),
    ('vlm_attn/methods/registry.py', 'register_method', False),
    ('vlm_attn/methods/registry.py', 'build_method', False),
    # engine install + hooks
    ('vlm_attn/engine/engine.py', 'Engine.__init__', False),
    ('vlm_attn/engine/engine.py', 'Engine.install', False),
    ('vlm_attn/engine/engine.py', 'Engine._top_pre_hook', True),
    ('vlm_attn/engine/engine.py', '_cache_length', True),
    ('vlm_attn/engine/engine.py', 'Engine._check_guidance', True),
    ('vlm_attn/engine/engine.py', 'Engine._layer_hook', True),
    # attention function
    ('vlm_attn/engine/attention.py', 'register', False),
    ('vlm_attn/engine/attention.py', '_sdpa_steered', False),
    ('vlm_attn/engine/attention.py', 'steered_attention', False),
    ('vlm_attn/engine/attention.py', 'methods_asking', False),
    ('vlm_attn/engine/attention.py', 'skips_base', False),
    ('vlm_attn/engine/attention.py', 'row_sets', False),
    ('vlm_attn/engine/attention.py', 'row_scores', False),
    ('vlm_attn/engine/attention.py', 'grouped_matmul', False),
    ('vlm_attn/engine/attention.py', 'row_mask', False),
    ('vlm_attn/engine/attention.py', '_additive', False),
    ('vlm_attn/engine/attention.py', 'run_edits', False),
    ('vlm_attn/engine/attention.py', '_union', False),
    ('vlm_attn/engine/attention.py', 'write_back', False),
    # interface
    ('vlm_attn/engine/method.py', 'CallState', True),
    ('vlm_attn/engine/method.py', 'LayerView', False),
    ('vlm_attn/engine/method.py', 'RowSet', False),
    ('vlm_attn/engine/method.py', 'Tally', True),
    ('vlm_attn/engine/method.py', 'AttentionMethod', False),
    # VAR
    ('vlm_attn/methods/var.py', 'VARMethod.__init__', False),
    ('vlm_attn/methods/var.py', 'VARMethod.bind', False),
    ('vlm_attn/methods/var.py', 'VARConfig.resolve_layers', False),
    ('vlm_attn/methods/var.py', 'VARMethod.observe_layer_input', True),
    ('vlm_attn/methods/var.py', 'activation_ratio', True),
    ('vlm_attn/methods/var.py', 'sink_scores', True),
    ('vlm_attn/methods/var.py', 'key_sets', True),
    ('vlm_attn/methods/var.py', 'VARMethod.rows', False),
    ('vlm_attn/methods/var.py', 'VARMethod.decode_rows_cover_all', False),
    ('vlm_attn/methods/var.py', 'VARMethod.edit_probs', False),
    ('vlm_attn/methods/var.py', 'var_step', False),
    ('vlm_attn/methods/var.py', '_column_sums', False),
    ('vlm_attn/methods/var.py', '_is_image_centric', False),
    ('vlm_attn/methods/var.py', '_redistribute', False),
    ('vlm_attn/methods/var.py', 'KeySets.rows', False),
    ('vlm_attn/methods/var.py', 'KeySets.__init__', True),
    ('vlm_attn/methods/var.py', 'KeySets._room', True),
    ('vlm_attn/methods/var.py', 'KeySets.append_text', True),
]


def _docstring_lines(node: ast.AST) -> set[int]:
    out: set[int] = set()
    for n in ast.walk(node):
        body = getattr(n, "body", None)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.update(range(first.lineno, first.end_lineno + 1))
    return out


def measure(file: str, name: str) -> tuple[int, int]:
    """(span, code) lines of definition `name` (dotted for methods) in `file`."""
    src = (ROOT / file).read_text()
    node: ast.AST = ast.parse(src)
    for part in name.split("."):
        node = next(n for n in ast.iter_child_nodes(node)
                    if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == part)
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    lines, doc = src.splitlines(), _docstring_lines(node)
    code = sum(1 for i in range(start, node.end_lineno + 1)
               if i not in doc and lines[i - 1].strip() and not lines[i - 1].strip().startswith("#"))
    return node.end_lineno - start + 1, code


def main() -> int:
    totals = {"chain": [0, 0], "full": [0, 0]}
    for file, name, side in PATH:
        span, code = measure(file, name)
        if "-v" in sys.argv:
            print(f"{span:5d} {code:5d}  {'side ' if side else 'chain'}  {file}:{name}")
        for key in ("full",) if side else ("chain", "full"):
            totals[key][0] += span
            totals[key][1] += code
    for key, (span, code) in totals.items():
        print(f"{key}: span {span} lines, code {code} lines")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
