"""Row-major strides and the host copy's view of a strided tensor: a copy (HCOPY, HADD, ...)
takes at most 4 dimensions, so unit dimensions are dropped and neighbours contiguous in every
operand are merged first; a shape that still needs more than 4 cannot be copied in one command."""

from __future__ import annotations


def row_major_strides(shape) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return out[::-1]


def broadcast_strides(src: tuple[int, ...], out: tuple[int, ...]) -> list[int]:
    """The strides reading `src` broadcast to `out` (0 along the axes it is repeated over)."""
    st = row_major_strides(src)
    pad = len(out) - len(src)
    return [0 if i < pad or src[i - pad] == 1 else st[i - pad] for i in range(len(out))]


def merge_dims(dims, *strides) -> tuple[list[int], list[list[int]]] | None:
    """Drop unit dims and merge neighbours that are contiguous in every stride list; None beyond 4 dims."""
    keep = [i for i, d in enumerate(dims) if d != 1]
    d = [dims[i] for i in keep]
    ss = [[s[i] for i in keep] for s in strides]
    i = len(d) - 2
    while i >= 0:
        if all(s[i] == s[i + 1] * d[i + 1] for s in ss):
            d[i] *= d[i + 1]
            del d[i + 1]
            for s in ss:
                s[i] = s[i + 1]
                del s[i + 1]
        i -= 1
    if len(d) > 4:
        return None
    pad = 4 - len(d)
    return [1] * pad + d, [[0] * pad + s for s in ss]
