"""Writes `_riccati3.py`: the linear Kalman filter's covariance step for a 3-dim state, and its adjoint, as
straight-line scalar code.

The kernels of `_linear_kernels` run the step on small arrays for any state size n; for n = 3, the size of every
affect dimension's filter, a step is some 200 flops and the arrays' loads and stores, not the arithmetic, are its
cost, with the length of its chain of dependent operations. Here the step is traced once, in the order of
`_linear_kernels._riccati_step` and `_kernels._joseph` except for S^-1 (its adjugate over its determinant instead of
a Cholesky solve: a much shorter chain), into scalar assignments (the compiler keeps them in registers), and its
adjoint is derived from the trace by reverse accumulation, line by line: the exact adjoint of the same computation.

    python -m affect_core.filters._step_codegen   # rewrites _riccati3.py (a test checks that it is up to date)
"""

from __future__ import annotations

from pathlib import Path

N = 3
TARGET = Path(__file__).with_name("_riccati3.py")


class Tape:
    """The straight-line program being traced: (name, op, operands) per assignment."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, tuple[Value, ...]]] = []

    def emit(self, op: str, *operands: Value) -> Value:
        value = Value(self, f"v{len(self.lines)}")
        self.lines.append((value.name, op, operands))
        return value

    def input(self, name: str) -> Value:
        return Value(self, name)


class Value:
    """A scalar of the traced program: an input (named as the generated code reads it) or an assignment."""

    def __init__(self, tape: Tape, name: str) -> None:
        self.tape, self.name = tape, name

    def __add__(self, other: Value) -> Value:
        return self.tape.emit("+", self, other)

    def __sub__(self, other: Value) -> Value:
        return self.tape.emit("-", self, other)

    def __mul__(self, other: Value) -> Value:
        return self.tape.emit("*", self, other)

    def __truediv__(self, other: Value) -> Value:
        return self.tape.emit("/", self, other)

    def __neg__(self) -> Value:
        return self.tape.emit("neg", self)


Matrix = list[list[Value]]


def mm(A: Matrix, B: Matrix) -> Matrix:  # _kernels._mm: s = 0; s += A[i, k] B[k, j] (0 + x is x)
    out = []
    for i in range(N):
        row = []
        for j in range(N):
            s = A[i][0] * B[0][j]
            for k in range(1, N):
                s = s + A[i][k] * B[k][j]
            row.append(s)
        out.append(row)
    return out


def mm_nt(A: Matrix, B: Matrix) -> Matrix:  # A @ B^T
    return mm(A, [[B[j][i] for j in range(N)] for i in range(N)])


def add(A: Matrix, B: Matrix) -> Matrix:
    return [[A[i][k] + B[i][k] for k in range(N)] for i in range(N)]


def sym(A: Matrix) -> Matrix:  # _kernels._sym: the off-diagonal pairs averaged, in place
    out = [row[:] for row in A]
    for i in range(N):
        for j in range(i + 1, N):
            v = (A[i][j] + A[j][i]) * HALF[0]
            out[i][j] = out[j][i] = v
    return out


def spd_inverse(S: Matrix) -> Matrix:
    """S^-1 of a symmetric 3 x 3 S (S[i][k] and S[k][i] one value) by its adjugate over its determinant: one
    division and no square root on the step's critical path, where a Cholesky solve chains three square roots and
    six divisions (the step is a chain of dependent operations: its length, not the flop count, is its time)."""
    s00, s01, s02, s11, s12, s22 = S[0][0], S[0][1], S[0][2], S[1][1], S[1][2], S[2][2]
    c00 = s11 * s22 - s12 * s12
    c01 = s02 * s12 - s01 * s22
    c02 = s01 * s12 - s02 * s11
    c11 = s00 * s22 - s02 * s02
    c12 = s01 * s02 - s00 * s12
    c22 = s00 * s11 - s01 * s01
    inverse_det = ONE[0] / (s00 * c00 + s01 * c01 + s02 * c02)
    i00, i01, i02 = c00 * inverse_det, c01 * inverse_det, c02 * inverse_det
    i11, i12, i22 = c11 * inverse_det, c12 * inverse_det, c22 * inverse_det
    return [[i00, i01, i02], [i01, i11, i12], [i02, i12, i22]]


# Constants of the traced code, set per tape (inputs named as literals).
HALF: list[Value] = []
ONE: list[Value] = []


def matrix(tape: Tape, name: str) -> Matrix:
    return [[tape.input(f"{name}[{i}, {k}]") for k in range(N)] for i in range(N)]


def _constants(tape: Tape) -> None:
    HALF[:] = [tape.input("0.5")]
    ONE[:] = [tape.input("1.0")]


def observed_step(tape: Tape) -> tuple[Matrix, Matrix]:
    """_linear_kernels._riccati_step with mu != 0, then _kernels._joseph: (P_t, K_t) from P_{t-1}."""
    _constants(tape)
    P, F, H, Q, R = (matrix(tape, name) for name in ("P", "F", "H", "Q", "R"))
    mu = tape.input("mu")
    Pp = sym(add(mm_nt(mm(F, P), F), Q))
    Bm = mm_nt(Pp, H)
    S = sym(add(mm(H, Bm), R))
    Sinv = spd_inverse(S)
    K = [[x * mu for x in row] for row in mm(Bm, Sinv)]
    KH = mm(K, H)
    M = [[(ONE[0] - KH[i][k]) if i == k else -KH[i][k] for k in range(N)] for i in range(N)]
    P_out = sym(add(mm_nt(mm(M, Pp), M), mm_nt(mm(K, R), K)))
    return P_out, K


def gap_step(tape: Tape) -> tuple[Matrix, Matrix]:
    """_linear_kernels._riccati_step with mu = 0: P_t = sym(G P_{t-1} G^T + Q) (M = I, K = 0: _joseph keeps P^)."""
    _constants(tape)
    P, G, Q = (matrix(tape, name) for name in ("P", "G", "Q"))
    Pp = sym(add(mm_nt(mm(G, P), G), Q))
    # _joseph with M = I and K = 0: sym(I P^ I^T + 0) is P^ bit for bit (products with 1 and 0, sums with 0).
    return Pp, []


def _forward_lines(tape: Tape) -> list[str]:
    lines = []
    for name, op, operands in tape.lines:
        a = [o.name for o in operands]
        if op == "neg":
            lines.append(f"{name} = -{a[0]}")
        else:
            lines.append(f"{name} = {a[0]} {op} {a[1]}")
    return lines


def _adjoint_lines(tape: Tape, seeds: dict[str, list[str]], wanted: set[str]) -> tuple[list[str], set[str]]:
    """Reverse accumulation over the tape: `seeds` maps an assignment to the expressions of its adjoint from the
    outputs; returns the lines and the inputs (of `wanted`) that received an adjoint (named g_<input>)."""
    adjoint: dict[str, list[str]] = {name: list(terms) for name, terms in seeds.items()}
    lines: list[str] = []
    reached: dict[str, list[str]] = {}

    def give(operand: Value, term: str) -> None:
        if operand.name.startswith("v"):
            adjoint.setdefault(operand.name, []).append(term)
        elif operand.name in wanted:
            reached.setdefault(operand.name, []).append(term)

    for name, op, operands in reversed(tape.lines):
        terms = adjoint.pop(name, None)
        if not terms:
            continue
        g = f"g{name}"
        lines += _sum(g, terms)
        a = operands
        if op == "+":
            give(a[0], g)
            give(a[1], g)
        elif op == "-":
            give(a[0], g)
            give(a[1], f"-{g}")
        elif op == "*":
            give(a[0], f"{g} * {a[1].name}")
            give(a[1], f"{g} * {a[0].name}")
        elif op == "/":
            give(a[0], f"{g} / {a[1].name}")
            give(a[1], f"-{g} * {name} / {a[1].name}")
        elif op == "neg":
            give(a[0], f"-{g}")
    for name, terms in reached.items():
        lines += _sum(_adjoint_name(name), terms)
    return lines, set(reached)


def _sum(target: str, terms: list[str], per_line: int = 4) -> list[str]:
    """`target = t1 + t2 + ...` over lines of at most `per_line` terms (the later lines add with +=)."""
    lines = []
    for start in range(0, len(terms), per_line):
        expression = terms[start]
        for term in terms[start + 1 : start + per_line]:
            expression += f" - {term[1:]}" if term.startswith("-") else f" + {term}"
        lines.append(f"{target} {'=' if start == 0 else '+='} {expression}")
    return lines


def _adjoint_name(name: str) -> str:  # "F[0, 1]" -> "gF_0_1"
    return "g" + name.replace("[", "_").replace(", ", "_").replace("]", "")


def _indent(lines: list[str]) -> str:
    return "".join(f"    {line}\n" for line in lines)


def _seeds(outputs: dict[str, Matrix]) -> dict[str, list[str]]:
    """The adjoint of each output entry, read from the caller's arrays g<name> (a symmetric output's two entries are
    one assignment: their adjoints add)."""
    seeds: dict[str, list[str]] = {}
    for name, M in outputs.items():
        for i in range(N):
            for k in range(N):
                seeds.setdefault(M[i][k].name, []).append(f"g{name}[{i}, {k}]")
    return seeds


def _step_functions(
    kind: str, trace: object, inputs: tuple[str, ...], parameters: tuple[str, ...], doc: str, adjoint_doc: str
) -> str:
    tape = Tape()
    P_out, K = trace(tape)  # type: ignore[operator]
    forward = _forward_lines(tape)
    writes = [f"P_out[{i}, {k}] = {P_out[i][k].name}" for i in range(N) for k in range(N)]
    if K:
        writes += [f"K_out[{i}, {k}] = {K[i][k].name}" for i in range(N) for k in range(N)]
    else:
        writes += [f"K_out[{i}, {k}] = 0.0" for i in range(N) for k in range(N)]
    signature = ", ".join(inputs)
    source = (
        '@njit(cache=True, inline="always", error_model="numpy")\n'
        f"def {kind}_step({signature}, P_out, K_out):\n"
        f'    """{doc}"""\n' + _indent(forward + writes) + "\n\n"
    )
    outputs = {"P_out": P_out} | ({"K_out": K} if K else {})
    wanted = {f"{name}[{i}, {k}]" for name in ("P", *parameters) for i in range(N) for k in range(N)}
    backward, reached = _adjoint_lines(tape, _seeds(outputs), wanted)
    accumulate = []
    for name in ("P", *parameters):
        for i in range(N):
            for k in range(N):
                entry = f"{name}[{i}, {k}]"
                value = _adjoint_name(entry) if entry in reached else "0.0"
                if name == "P":
                    accumulate.append(f"gP[{i}, {k}] = {value}")
                elif entry in reached:
                    accumulate.append(f"g{name}[{i}, {k}] += {value}")
    grads = ", ".join(f"g{name}" for name in parameters)
    outs = ", ".join(f"g{name}" for name in outputs)
    source += (
        '@njit(cache=True, inline="always", error_model="numpy")\n'
        f"def {kind}_step_adjoint({signature}, {outs}, gP, {grads}):\n"
        f'    """{adjoint_doc}"""\n' + _indent(forward + backward + accumulate)
    )
    return source


HEADER = '''"""Generated by `python -m affect_core.filters._step_codegen`; do not edit.

The linear Kalman filter's covariance step for a 3-dim state (the array kernels' `_riccati_step` then `_joseph`,
S^-1 by its adjugate) and its adjoint, as straight-line scalar code. Matrices are (3, 3) float64 arrays.
"""

# ruff: noqa

from numba import njit


'''


def source() -> str:
    observed = _step_functions(
        "observed",
        observed_step,
        ("P", "mu", "F", "H", "Q", "R"),
        ("F", "H", "Q", "R"),
        "A frame with a face: P^ = sym(F P F^T + Q); S = sym(H P^ H^T + R); K = mu P^ H^T S^-1; M = I - K H;\n"
        "    P_out = sym(M P^ M^T + K R K^T); K_out = K.",
        "Adjoint of `observed_step`: from gP_out and gK_out (the adjoints of its outputs) sets gP (of P) and adds\n"
        "    into gF, gH, gQ, gR.",
    )
    gap = _step_functions(
        "gap",
        gap_step,
        ("P", "G", "Q"),
        ("G", "Q"),
        "A frame without a face: P_out = sym(G P G^T + Q); K_out = 0.",
        "Adjoint of `gap_step`: from gP_out sets gP (of P) and adds into gG, gQ.",
    )
    return HEADER + observed + "\n\n" + gap


def main() -> None:
    TARGET.write_text(source())


if __name__ == "__main__":
    main()
