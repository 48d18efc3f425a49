"""Writes `_steps3.py`: the 3-dim filter steps (the linear Kalman filter's covariance step, the extended Kalman
filter's step) and their adjoints as straight-line scalar code.

The kernels of `_linear_kernels` and `_kernels` run a step on small arrays for any state size n; for n = 3, the size
of every affect dimension's filter, the arrays' loads and stores, not the arithmetic, were a step's cost. Here each
step is traced once into scalar assignments (the compiler keeps them in registers), the same mathematics as the array
kernels' `_riccati_step`, `_joseph`, `_step` and `_finish` with three changes that shorten it: S^-1 by its adjugate
over its determinant (one division where a Cholesky solve chains three square roots and six divisions), every
symmetric product computed once (its upper triangle; the input P_{t-1} through sym(P)), and Q, R read as the diagonal
matrices they are. Its adjoint is derived from the trace by reverse accumulation, line by line: the exact adjoint of
the same computation.

    python -m affect_core.filters._step_codegen   # rewrites _steps3.py (a test checks that it is up to date)
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

N = 3
TARGET = Path(__file__).with_name("_steps3.py")


class Tape:
    """The straight-line program being traced: (name, op, operands) per assignment, and the entries of each named
    input."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, tuple[Value, ...]]] = []
        self.names: dict[str, list[str]] = {}
        self.kept: dict[str, Entries] = {}  # values the forward also writes out, which no adjoint reads

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


def tanh(x: Value) -> Value:
    return x.tape.emit("tanh", x)


def held(x: Value) -> Value:
    """x, through which no adjoint flows back (derivatives are taken with it held fixed)."""
    return x.tape.emit("held", x)


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


def sym(A: Matrix) -> Matrix:  # _kernels._sym: the off-diagonal pairs averaged, in place
    out = [row[:] for row in A]
    for i in range(N):
        for j in range(i + 1, N):
            v = (A[i][j] + A[j][i]) * HALF[0]
            out[i][j] = out[j][i] = v
    return out


def congruence(A: Matrix, X: Matrix) -> tuple[Matrix, Matrix]:
    """(A X A^T, A X) for a symmetric X (X[i][k] and X[k][i] one value): the product's upper triangle only, its
    lower one the same values (no sym needed: the result is symmetric by construction)."""
    T = mm(A, X)
    out: list[list[Value | None]] = [[None] * N for _ in range(N)]
    for i in range(N):
        for j in range(i, N):
            s = T[i][0] * A[j][0]
            for k in range(1, N):
                s = s + T[i][k] * A[j][k]
            out[i][j] = out[j][i] = s
    return out, T  # type: ignore[return-value]


def plus_diagonal(X: Matrix, d: list[Value]) -> Matrix:
    """X + diag(d) (X's off-diagonal values kept as they are)."""
    return [[X[i][k] + d[i] if i == k else X[i][k] for k in range(N)] for i in range(N)]


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

Entries = list[tuple[str, "Value | None"]]  # (index, value) per entry of an output; None: a constant zero


def matrix(tape: Tape, name: str) -> Matrix:
    rows = [[tape.input(f"{name}[{i}, {k}]") for k in range(N)] for i in range(N)]
    tape.names[name] = [f"{i}, {k}" for i in range(N) for k in range(N)]
    return rows


def diagonal(tape: Tape, name: str) -> list[Value]:
    """The diagonal of a diagonal matrix input (Q and R are: `BayesFilter.noise_covariances`); its off-diagonal
    entries are never read, and their adjoints are zeros."""
    tape.names[name] = [f"{i}, {i}" for i in range(N)]
    return [tape.input(f"{name}[{i}, {i}]") for i in range(N)]


def vector(tape: Tape, name: str) -> list[Value]:
    tape.names[name] = [str(i) for i in range(N)]
    return [tape.input(f"{name}[{i}]") for i in range(N)]


def matrix_entries(M: Matrix) -> Entries:
    return [(f"{i}, {k}", M[i][k]) for i in range(N) for k in range(N)]


def vector_entries(v: list[Value]) -> Entries:
    return [(str(i), v[i]) for i in range(N)]


def zeros() -> Entries:
    return [(f"{i}, {k}", None) for i in range(N) for k in range(N)]


def _constants(tape: Tape) -> None:
    HALF[:] = [tape.input("0.5")]
    ONE[:] = [tape.input("1.0")]


def _predict(A: Matrix, P: Matrix, q: list[Value]) -> Matrix:
    """P^ = A sym(P) A^T + diag(q): through sym(P), as `_riccati_step`'s sym(A P A^T + Q) is for a diagonal Q."""
    return plus_diagonal(congruence(A, sym(P))[0], q)


def _update(Pp: Matrix, J: Matrix, r: list[Value], mu: Value, optimal: bool = False) -> tuple[Matrix, Matrix]:
    """K = mu P^ J^T S^-1 with S = J P^ J^T + diag(r), and P = M P^ M^T + K diag(r) K^T with M = I - K J (the
    Joseph form): `_riccati_step` then `_kernels._joseph` for a diagonal R, every symmetric product computed once.

    optimal: the same values, with K held fixed in the Joseph form, so that its adjoint leaves out the Joseph form's
    derivative with respect to K, 2 (K S - P^ J^T). That is zero where mu = 1 (K is the optimal gain
    P^ J^T S^-1) and contributes nothing where mu = 0 (K = 0 whatever its inputs): for mu in {0, 1} the adjoint is
    the same without the terms that add up to zero (to rounding)."""
    S, JP = congruence(J, Pp)  # JP = J P^ = (P^ J^T)^T
    Sinv = spd_inverse(plus_diagonal(S, r))
    K = []
    for i in range(N):  # K = (P^ J^T) S^-1
        row = []
        for k in range(N):
            s = JP[0][i] * Sinv[0][k]
            for j in range(1, N):
                s = s + JP[j][i] * Sinv[j][k]
            row.append(s * mu)
        K.append(row)
    gain = K
    if optimal:
        K = [[held(k) for k in row] for row in K]
    KJ = mm(K, J)
    M = [[(ONE[0] - KJ[i][k]) if i == k else -KJ[i][k] for k in range(N)] for i in range(N)]
    P, _ = congruence(M, Pp)
    for i in range(N):  # + K diag(r) K^T, upper triangle
        for j in range(i, N):
            s = K[i][0] * r[0] * K[j][0]
            for k in range(1, N):
                s = s + K[i][k] * r[k] * K[j][k]
            P[i][j] = P[j][i] = P[i][j] + s
    return P, gain


def observed_step(tape: Tape) -> dict[str, Entries]:
    """A frame with a face: `_linear_kernels._riccati_step` with mu != 0, then `_kernels._joseph` (Q, R diagonal):
    (P_t, K_t) from P_{t-1}."""
    _constants(tape)
    P, F, H = (matrix(tape, name) for name in ("P", "F", "H"))
    q, r = diagonal(tape, "Q"), diagonal(tape, "R")
    mu = tape.input("mu")
    P_out, K = _update(_predict(F, P, q), H, r, mu)
    return {"P_out": matrix_entries(P_out), "K_out": matrix_entries(K)}


def gap_step(tape: Tape) -> dict[str, Entries]:
    """A frame without a face: P_t = G sym(P_{t-1}) G^T + Q (K = 0, M = I: the Joseph form keeps P^)."""
    _constants(tape)
    P, G = matrix(tape, "P"), matrix(tape, "G")
    q = diagonal(tape, "Q")
    return {"P_out": matrix_entries(_predict(G, P, q)), "K_out": zeros()}


def _affine(A: Matrix, z: list[Value], a0: list[Value]) -> list[Value]:  # s = a0[i]; s += A[i, k] z[k]
    out = []
    for i in range(N):
        s = a0[i]
        for k in range(N):
            s = s + A[i][k] * z[k]
        out.append(s)
    return out


def ekf_observed_step(tape: Tape) -> dict[str, Entries]:
    """An EKF step with a face: `_kernels._step` then `_kernels._finish` (linear = False, Q, R diagonal): (z_t, P_t)
    from (z_{t-1}, P_{t-1}) and o_t."""
    _constants(tape)
    z, o = vector(tape, "z"), vector(tape, "o")
    P, Wf, Wh = (matrix(tape, name) for name in ("P", "Wf", "Wh"))
    q, r = diagonal(tape, "Q"), diagonal(tape, "R")
    bf, bh = vector(tape, "bf"), vector(tape, "bh")
    mu = tape.input("mu")
    zp = [tanh(a) for a in _affine(Wf, z, bf)]  # z^ = tanh(W_f z + b_f); J_f = diag(1 - z^2) W_f
    Jf = [[(ONE[0] - zp[i] * zp[i]) * Wf[i][k] for k in range(N)] for i in range(N)]
    hz = [tanh(c) for c in _affine(Wh, zp, bh)]  # h = tanh(W_h z^ + b_h); J_h = diag(1 - h^2) W_h
    Jh = [[(ONE[0] - hz[i] * hz[i]) * Wh[i][k] for k in range(N)] for i in range(N)]
    P_out, K = _update(_predict(Jf, P, q), Jh, r, mu)
    v = [o[i] - hz[i] for i in range(N)]
    z_out = []
    for i in range(N):  # z = z^ + K v
        s = zp[i]
        for k in range(N):
            s = s + K[i][k] * v[k]
        z_out.append(s)
    return {"z_out": vector_entries(z_out), "P_out": matrix_entries(P_out)}


def ekf_gap_step(tape: Tape) -> dict[str, Entries]:
    """An EKF step without a face: the gap step z_t = G z_{t-1} + c, P_t = G sym(P_{t-1}) G^T + Q."""
    _constants(tape)
    z, c = vector(tape, "z"), vector(tape, "c")
    P, G = matrix(tape, "P"), matrix(tape, "G")
    q = diagonal(tape, "Q")
    return {"z_out": vector_entries(_affine(G, z, c)), "P_out": matrix_entries(_predict(G, P, q))}


def kf_step(tape: Tape, optimal: bool = False) -> dict[str, Entries]:
    """A whole step of the linear Kalman filter, state and covariance: `observed_step`'s (P_t, K_t), then the state
    recursion's z_t = c + F z_{t-1} + K_t (o_t - HF z_{t-1}) with the operations in `_linear_kernels._state_forward3`'s
    order. With a face c = 0 (F z + K v exactly); without one F = G and K = 0 (c + G z exactly): both of the state
    recursion's steps, and `gap_step`'s covariance, bit for bit."""
    _constants(tape)
    P, F, HF, H = (matrix(tape, name) for name in ("P", "F", "HF", "H"))
    z, o, c = (vector(tape, name) for name in ("z", "o", "c"))
    q, r = diagonal(tape, "Q"), diagonal(tape, "R")
    mu = tape.input("mu")
    P_out, K = _update(_predict(F, P, q), H, r, mu, optimal)
    tape.kept["K_out"] = matrix_entries(K)
    return {"P_out": matrix_entries(P_out), "z_out": _state_update(F, HF, z, o, c, K)}


def _state_update(F: Matrix, HF: Matrix, z: list[Value], o: list[Value], c: list[Value], K: Matrix) -> Entries:
    """z_t = c + F z_{t-1} + K_t (o_t - HF z_{t-1}), the operations in `_linear_kernels._state_forward3`'s order."""
    v = []
    for i in range(N):  # v = o - HF z
        s = o[i]
        for k in range(N):
            s = s - HF[i][k] * z[k]
        v.append(s)
    z_out = []
    for i in range(N):
        s = c[i]
        for k in range(N):
            s = s + F[i][k] * z[k]
        for k in range(N):
            s = s + K[i][k] * v[k]
        z_out.append(s)
    return vector_entries(z_out)


def kf_gap_step(tape: Tape) -> dict[str, Entries]:
    """`kf_step` where no lane has a face (mu = 0 in every lane, where F reads G and c reads c): the predict step
    P_t = G sym(P_{t-1}) G^T + Q and z_t = c + G z_{t-1}, the values `kf_step` gives there (its gain is 0 and the
    Joseph form keeps P^) in a fraction of its operations, and their adjoint, which reaches no observation and no
    noise. The inputs are `kf_step`'s, in its order (the slots are shared)."""
    _constants(tape)
    P, F, _, _ = (matrix(tape, name) for name in ("P", "F", "HF", "H"))
    z, _, c = (vector(tape, name) for name in ("z", "o", "c"))
    q, _ = diagonal(tape, "Q"), diagonal(tape, "R")
    tape.input("mu")
    z_out = []
    for i in range(N):  # c + G z: `_state_update`'s sums without the gain's terms
        s = c[i]
        for k in range(N):
            s = s + F[i][k] * z[k]
        z_out.append(s)
    return {"P_out": matrix_entries(_predict(F, P, q)), "z_out": vector_entries(z_out)}


def kf_settled_step(tape: Tape) -> dict[str, Entries]:
    """`kf_step` where the covariance has settled (its last step, with a face, gave back its input bit for bit): the
    same P_t and K_t again, so only the state recursion runs, with the gain `kf_step` kept, bit for bit as
    `kf_step` computes it."""
    _constants(tape)
    F, HF, K = (matrix(tape, name) for name in ("F", "HF", "K_out"))
    z, o, c = (vector(tape, name) for name in ("z", "o", "c"))
    return {"z_out": _state_update(F, HF, z, o, c, K)}


def _forward_lines(tape: Tape) -> list[str]:
    lines = []
    for name, op, operands in tape.lines:
        a = [o.name for o in operands]
        if op == "neg":
            lines.append(f"{name} = -{a[0]}")
        elif op == "tanh":
            lines.append(f"{name} = np.tanh({a[0]})")
        elif op == "held":
            lines.append(f"{name} = {a[0]}")
        else:
            lines.append(f"{name} = {a[0]} {op} {a[1]}")
    return lines


def _adjoint_lines(tape: Tape, seeds: dict[str, list[str]], wanted: set[str]) -> tuple[list[str], set[str]]:
    """Reverse accumulation over the tape: `seeds` maps an assignment to the expressions of its adjoint from the
    outputs; returns the lines and the inputs (of `wanted`) that received an adjoint (named g<input>_<index>)."""
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
        if not terms or op == "held":  # nothing flows back through a held value
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
        elif op == "tanh":
            give(a[0], f"{g} * (1.0 - {name} * {name})")
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


def _adjoint_name(name: str) -> str:  # "F[0, 1]" -> "gF_0_1", "z[2]" -> "gz_2"
    return "g" + name.replace("[", "_").replace(", ", "_").replace("]", "")


def _indent(lines: list[str]) -> str:
    return "".join(f"    {line}\n" for line in lines)


def _step_lines(
    tape: Tape, outputs: dict[str, Entries], sets: tuple[str, ...], accumulates: tuple[str, ...]
) -> tuple[list[str], list[str], list[str], list[str]]:
    """A traced step's lines: the forward assignments, the writes of its outputs, the adjoint's reverse
    accumulation (seeded by `g<output>[index]`) and the adjoint's writes (`g<name>[index] =` for `sets`, `+=` for
    `accumulates`)."""
    forward = _forward_lines(tape)
    writes = [
        f"{out}[{index}] = {'0.0' if v is None else v.name}" for out, entries in outputs.items() for index, v in entries
    ]
    seeds: dict[str, list[str]] = {}  # a symmetric output's two entries are one assignment: their adjoints add
    for out, entries in outputs.items():
        for index, v in entries:
            if v is not None:
                seeds.setdefault(v.name, []).append(f"g{out}[{index}]")
    wanted = {f"{name}[{index}]" for name in sets + accumulates for index in tape.names[name]}
    backward, reached = _adjoint_lines(tape, seeds, wanted)
    finish = []
    for name in sets + accumulates:
        for index in tape.names[name]:
            entry = f"{name}[{index}]"
            if name in sets:
                finish.append(f"g{name}[{index}] = {_adjoint_name(entry) if entry in reached else '0.0'}")
            elif entry in reached:
                finish.append(f"g{name}[{index}] += {_adjoint_name(entry)}")
    return forward, writes, backward, finish


def _step_functions(
    kind: str, trace: object, inputs: tuple[str, ...], sets: tuple[str, ...], accumulates: tuple[str, ...], doc: str
) -> str:
    """`<kind>_step(inputs..., outputs...)` and `<kind>_step_adjoint(inputs..., g<outputs>..., g<sets>...,
    g<accumulates>...)`: the adjoint sets the adjoints of the inputs in `sets` and adds into those in
    `accumulates`, from the adjoints of the outputs."""
    tape = Tape()
    outputs: dict[str, Entries] = trace(tape)  # type: ignore[operator]
    forward, writes, backward, finish = _step_lines(tape, outputs, sets, accumulates)
    signature = ", ".join(inputs)
    source = (
        '@njit(cache=True, inline="always", error_model="numpy")\n'
        f"def {kind}_step({signature}, {', '.join(outputs)}):\n"
        f'    """{doc}"""\n' + _indent(forward + writes) + "\n\n"
    )
    seeded = [f"g{out}" for out, entries in outputs.items() if any(v is not None for _, v in entries)]
    adjoint_args = seeded + [f"g{name}" for name in sets + accumulates]
    source += (
        '@njit(cache=True, inline="always", error_model="numpy")\n'
        f"def {kind}_step_adjoint({signature}, {', '.join(adjoint_args)}):\n"
        f'    """Adjoint of `{kind}_step`: from {", ".join(seeded)}'
        f" (the adjoints of its outputs) sets {', '.join('g' + s for s in sets)}"
        + (f" and adds into {', '.join('g' + a for a in accumulates)}" if accumulates else "")
        + '."""\n'
        + _indent(forward + backward + finish)
    )
    return source


LANES = 4
"""Sequences a lane step runs side by side: its loop over them holds nothing but arithmetic on the lanes' slots, which
the compiler turns into vector instructions (4 float64 in a 256-bit register)."""


def _lane_step_functions(
    kind: str,
    trace: object,
    lanes: tuple[str, ...],
    shared: tuple[str, ...],
    switched: dict[str, tuple[str | None, str | None]],
    sets: tuple[str, ...],
    accumulates: tuple[str, ...],
    doc: str,
    adjoint_only: str = "",
    forward_only: str = "",
    layout: dict[str, int] | None = None,
) -> tuple[str, dict[str, int]]:
    """`lanes_<kind>_step(buf, shared...)` and `lanes_<kind>_step_adjoint(buf, shared...)`: the step of `trace` for
    LANES sequences at once, and the slots they use; with `adjoint_only` = suffix, only
    `lanes_<kind>_step_adjoint<suffix>`, with `forward_only` = suffix only `lanes_<kind>_step<suffix>` (variants on the
    slots of `layout`, those of the step they vary).

    Each entry of the inputs in `lanes`, of the outputs, of the adjoints and of the values the trace keeps
    (`Tape.kept`, written by the step, read by no adjoint) lives in `buf` (float64, `LANES_<KIND>_SLOTS * LANES`), lane
    l of entry e at `e * LANES + l`; each name's first slot is `LANES_<KIND>_<NAME>` (a name's entries in the order of
    their indices, a matrix's row by row). The `shared` inputs are one value for every lane, read once before the
    loop. A `switched` input reads, in each lane, the shared input named first where the lane's mu is not 0 and the
    one named second where it is (None: zeros); its adjoint is that of what the lane read. The adjoint sets the
    adjoints of `sets`, adds into those of `accumulates` (per lane: sum the lanes after the last step) and reads those
    of the outputs."""
    tape = Tape()
    outputs: dict[str, Entries] = trace(tape)  # type: ignore[operator]
    slots: dict[str, int] = {}
    offsets: list[tuple[str, int]] = []

    def place(name: str, indices: list[str]) -> None:
        offsets.append((name, len(slots)))
        for index in indices:
            slots[f"{name}[{index}]" if index else name] = len(slots)

    for name in lanes:
        place(name, tape.names.get(name, [""]))
    for out, entries in outputs.items():
        place(out, [index for index, _ in entries])
    for out, entries in outputs.items():
        place(f"g{out}", [index for index, _ in entries])
    for name in sets + accumulates:
        place(f"g{name}", tape.names[name])
    for name, entries in tape.kept.items():
        place(name, [index for index, _ in entries])
    if layout is not None:
        slots = layout

    entry = re.compile(r"\b(g?[A-Za-z]\w*)\[(\d(?:, \d)?)\]|\bmu\b")

    def local(prefix: str, name: str, index: str) -> str:
        return f"{prefix}_{name}_{index.replace(', ', '_')}"

    def in_lanes(line: str) -> str:
        def swap(match: re.Match[str]) -> str:
            key = match.group(0)
            if key in slots:
                return f"buf[{slots[key] * LANES} + l]"
            name, index = match.group(1), match.group(2)
            if name in switched:
                return local("a", name, index)
            if name in shared:
                return local("s", name, index)
            raise KeyError(key)

        return entry.sub(swap, line)

    sources = shared + tuple(dict.fromkeys(x for pair in switched.values() for x in pair if x is not None))
    hoisted = []
    for name in sources:
        indices = tape.names.get(name) or next(tape.names[k] for k, pair in switched.items() if name in pair)
        hoisted += [f"{local('s', name, i)} = {name}[{i}]" for i in indices]
    chosen = [f"on = {in_lanes('mu')} != 0.0"] if switched else []
    for name, (with_face, without) in switched.items():
        for i in tape.names[name]:
            a, b = (local("s", x, i) if x is not None else "0.0" for x in (with_face, without))
            chosen.append(f"{local('a', name, i)} = {a} if on else {b}")
    forward, writes, backward, finish = _step_lines(tape, outputs, sets, accumulates)
    writes += [f"{name}[{index}] = {v.name}" for name, entries in tape.kept.items() for index, v in entries]
    upper = kind.upper()
    constants = f"LANES_{upper}_SLOTS = {len(slots)}\n" + "".join(
        f"LANES_{upper}_{name.upper()} = {offset * LANES}\n" for name, offset in offsets
    )
    signature = ", ".join(("buf",) + sources)

    def function(name: str, body: list[str], summary: str) -> str:
        return (
            '@njit(cache=True, inline="always", error_model="numpy")\n'
            f"def {name}({signature}):\n"
            f'    """{summary}"""\n'
            + _indent(hoisted)
            + f"    for l in range({LANES}):\n"
            + "".join(f"        {line}\n" for line in chosen)
            + "".join(f"        {in_lanes(line)}\n" for line in body)
        )

    if forward_only:
        return function(f"lanes_{kind}_step{forward_only}", forward + writes, doc), slots
    effect = (
        "sets "
        + ", ".join(f"g{s}" for s in sets)
        + (" and adds into " + ", ".join(f"g{a}" for a in accumulates) if accumulates else "")
    )
    summary = (
        f"{doc} From the lanes' adjoints of its outputs it {effect}."
        if adjoint_only
        else f"Adjoint of `lanes_{kind}_step`: from the lanes' adjoints of its outputs {effect}."
    )
    adjoint = function(f"lanes_{kind}_step_adjoint{adjoint_only}", forward + backward + finish, summary)
    if adjoint_only:
        return adjoint, slots
    step = function(f"lanes_{kind}_step", forward + writes, f"{doc}")
    return constants + "\n\n" + step + "\n\n" + adjoint, slots


HEADER = '''"""Generated by `python -m affect_core.filters._step_codegen`; do not edit.

The 3-dim filter steps of the compiled kernels and their adjoints as straight-line scalar code: the linear Kalman
filter's covariance step (`_linear_kernels`: `_riccati_step` then `_joseph`) and the extended Kalman filter's step
(`_kernels`: `_step` then `_finish`), S^-1 by its adjugate, symmetric products once, Q and R diagonal. Matrices are
(3, 3), vectors (3,) float64 arrays.
"""

# ruff: noqa

import numpy as np
from numba import njit


'''


KF_LANES = (
    ("P", "z", "o", "mu", "R"),  # per lane
    ("HF", "H", "Q"),  # shared
    {"F": ("F", "G"), "c": (None, "c")},  # switched by mu: F with a face, G without; c = 0 with a face
    ("P", "z", "o", "F", "c", "R"),  # adjoints set
    ("HF", "H", "Q"),  # adjoints added into
)
"""The lane step of the linear Kalman filter (`kf_step`): its slots, shared and switched inputs and adjoints."""


def source() -> str:
    parts = [
        _step_functions(
            "observed",
            observed_step,
            ("P", "mu", "F", "H", "Q", "R"),
            ("P",),
            ("F", "H", "Q", "R"),
            "A frame with a face: P^ = sym(F P F^T + Q); S = sym(H P^ H^T + R); K = mu P^ H^T S^-1; M = I - K H;\n"
            "    P_out = sym(M P^ M^T + K R K^T); K_out = K.",
        ),
        _step_functions(
            "gap",
            gap_step,
            ("P", "G", "Q"),
            ("P",),
            ("G", "Q"),
            "A frame without a face: P_out = sym(G P G^T + Q); K_out = 0.",
        ),
        _step_functions(
            "ekf_observed",
            ekf_observed_step,
            ("z", "P", "o", "mu", "Wf", "bf", "Wh", "bh", "Q", "R"),
            ("z", "P", "o"),
            ("Wf", "bf", "Wh", "bh", "Q", "R"),
            "An EKF step with a face: z^ = tanh(W_f z + b_f); P^ = sym(J_f P J_f^T + Q); h = tanh(W_h z^ + b_h);\n"
            "    K = mu P^ J_h^T S^-1, S = sym(J_h P^ J_h^T + R); z_out = z^ + K (o - h);\n"
            "    P_out = sym(M P^ M^T + K R K^T).",
        ),
        _step_functions(
            "ekf_gap",
            ekf_gap_step,
            ("z", "P", "G", "c", "Q"),
            ("z", "P"),
            ("G", "c", "Q"),
            "An EKF step without a face: z_out = G z + c; P_out = sym(G P G^T + Q).",
        ),
        f"LANES = {LANES}\n",
    ]
    kf, slots = _lane_step_functions(
        "kf",
        kf_step,
        *KF_LANES,
        "`kf_step` for LANES sequences side by side: a frame with a face (mu != 0), or without one (mu = 0: F\n"
        "    reads G and c reads c, K = 0). Per lane: P, z, o (0 without a face), mu, R's diagonal; it keeps each\n"
        "    lane's gain K_out for `lanes_kf_step_settled`.",
    )
    at_optimum, _ = _lane_step_functions(
        "kf",
        partial(kf_step, optimal=True),
        *KF_LANES,
        "Adjoint of `lanes_kf_step` where every lane's mu is 0 or 1, on its slots: the Joseph form's derivative\n"
        "    with respect to the gain, zero there, left out (`_update`'s optimal).",
        adjoint_only="_at_optimum",
        layout=slots,
    )
    lanes, _, switched, _, _ = KF_LANES
    settled, _ = _lane_step_functions(
        "kf",
        kf_settled_step,
        lanes,
        ("HF",),
        switched,
        (),
        (),
        "`lanes_kf_step` where every lane has a face and its covariance has settled (the lane's last step, with a\n"
        "    face, gave back its P bit for bit): z_out from the gain K_out that step kept, bit for bit as\n"
        "    `lanes_kf_step` computes it (P_out is P: the caller copies it).",
        forward_only="_settled",
        layout=slots,
    )
    gap_forward, _ = _lane_step_functions(
        "kf",
        kf_gap_step,
        *KF_LANES,
        "`lanes_kf_step` where no lane has a face (every lane's mu is 0): `kf_gap_step`, the same values.",
        forward_only="_gap",
        layout=slots,
    )
    gap_adjoint, _ = _lane_step_functions(
        "kf",
        kf_gap_step,
        *KF_LANES,
        "Adjoint of `lanes_kf_step_gap` (no lane has a face), on `lanes_kf_step`'s slots.",
        adjoint_only="_gap",
        layout=slots,
    )
    parts += [kf, at_optimum, settled, gap_forward, gap_adjoint]
    return HEADER + "\n\n".join(parts)


def main() -> None:
    TARGET.write_text(source())


if __name__ == "__main__":
    main()
