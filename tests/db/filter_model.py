"""A plain-Python model of the filter semantics documented in shoal.db.filters (the oracle)."""

import numbers

MISSING = object()


def lookup(payload, path):
    cur = payload
    for key in path.split("."):
        if not isinstance(cur, dict) or key not in cur:
            return MISSING
        cur = cur[key]
    return cur


def kind(x):
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "bool"
    if isinstance(x, str):
        return "str"
    if isinstance(x, numbers.Real):
        return "num"
    return "other"


def scalar_cmp(x, op, v):
    if kind(x) != kind(v) or kind(v) == "other":
        return False
    if op == "$eq":
        return x == v
    if kind(v) not in ("num", "str"):
        return False
    return {"$gt": x > v, "$gte": x >= v, "$lt": x < v, "$lte": x <= v}[op]


def field_cmp(x, op, v):
    if x is MISSING:
        return False
    if isinstance(x, list):
        return scalar_cmp_list(x, op, v)
    return scalar_cmp(x, op, v)


def scalar_cmp_list(xs, op, v):
    return any(not isinstance(e, (list, dict)) and scalar_cmp(e, op, v) for e in xs)


def matches(flt, payload):
    for key, spec in flt.items():
        if key == "$and":
            ok = all(matches(f, payload) for f in spec)
        elif key == "$or":
            ok = any(matches(f, payload) for f in spec)
        elif key == "$not":
            ok = not matches(spec, payload)
        else:
            x = lookup(payload, key)
            ops = spec if isinstance(spec, dict) and any(k.startswith("$") for k in spec) else {"$eq": spec}
            ok = True
            for op, v in ops.items():
                if op in ("$eq", "$gt", "$gte", "$lt", "$lte"):
                    ok &= field_cmp(x, op, v)
                elif op == "$ne":
                    ok &= not field_cmp(x, "$eq", v)
                elif op == "$in":
                    ok &= any(field_cmp(x, "$eq", e) for e in v)
                elif op == "$nin":
                    ok &= not any(field_cmp(x, "$eq", e) for e in v)
                elif op == "$exists":
                    ok &= (x is not MISSING) == v
        if not ok:
            return False
    return True
