"""Graph invariant checks, used when loading a file and by the tests."""

import numpy as np
from numba import njit

from shoal.kernels import KERNEL

OK = 0
BAD_DEGREE = 1
BAD_LINK = 2
SELF_LOOP = 3
DUPLICATE_LINK = 4
BAD_LEVEL = 5
BAD_OFFSET = 6

PROBLEMS = {
    BAD_DEGREE: "degree out of range",
    BAD_LINK: "link to a node that does not exist or lacks that level",
    SELF_LOOP: "self-loop",
    DUPLICATE_LINK: "duplicate link",
    BAD_LEVEL: "level out of range",
    BAD_OFFSET: "upper-level pool offset out of range",
}


@njit(**KERNEL)
def _check_row(node, row, links, degs, levels, level, count, seen, tag):
    deg = degs[row]
    if deg < 0 or deg > links.shape[1]:
        return BAD_DEGREE
    for j in range(deg):
        v = links[row, j]
        if v < 0 or v >= count or levels[v] < level:
            return BAD_LINK
        if v == node:
            return SELF_LOOP
        if seen[v] == tag:
            return DUPLICATE_LINK
        seen[v] = tag
    return OK


@njit(**KERNEL)
def check_graph(levels, links0, deg0, up_offset, links_up, deg_up, count, pool_count, top_level):
    """First broken invariant as (problem code, node), or (OK, -1).

    Checks degrees within row width, links to existing nodes present on that level, no
    self-loops, no duplicate links, levels within [0, top_level], upper-level rows that tile
    the pool without overlap.
    """
    seen = np.zeros(max(count, 1), np.int64)
    tag = 0
    pool_next = 0
    for u in range(count):
        lv = levels[u]
        if lv < 0 or lv > top_level:
            return BAD_LEVEL, u
        if lv == 0:
            if up_offset[u] != -1:
                return BAD_OFFSET, u
        elif up_offset[u] != pool_next or up_offset[u] + lv > pool_count:
            return BAD_OFFSET, u
        else:
            pool_next += lv
        tag += 1
        code = _check_row(u, u, links0, deg0, levels, 0, count, seen, tag)
        if code != OK:
            return code, u
        for level in range(1, lv + 1):
            tag += 1
            code = _check_row(u, up_offset[u] + level - 1, links_up, deg_up, levels, level,
                              count, seen, tag)
            if code != OK:
                return code, u
    if pool_next != pool_count:
        return BAD_OFFSET, -1
    return OK, -1
