#!/usr/bin/env python3
"""Independent implementation of featmux's hashing spec (docs/DESIGN.md, "Hashing").

It uses PyPI's `xxhash` package (C xxHash), not the Rust code, and writes the
golden vectors that `engine/tests/hashing_golden.rs` checks the engine against:

    pip install xxhash==3.5.0
    python3 scripts/hashing_golden.py > engine/tests/fixtures/hashing_golden.json
"""
import json
import struct

import xxhash

MASK64 = (1 << 64) - 1


def chunk_seed(table_seed, salt, chunk):
    return xxhash.xxh3_64_intdigest(struct.pack("<II", salt, chunk), seed=table_seed)


def key_bytes(value_type, value):
    if value_type == "string":
        return value.encode("utf-8")
    return struct.pack("<q", value)


def fast_range(h, rows):
    return (h * rows) >> 64


def case(table_seed, salt, chunk, value_type, value, rows, offset=None):
    seed = chunk_seed(table_seed, salt, chunk)
    h = xxhash.xxh3_64_intdigest(key_bytes(value_type, value), seed=seed)
    row = fast_range(h, rows) if offset is None else offset + fast_range(h, rows)
    out = {
        "table_seed": table_seed,
        "salt": salt,
        "chunk": chunk,
        "value_type": value_type,
        "value": value,
        "rows": rows,
        "chunk_seed": seed,
        "hash": h,
        "row": row,
    }
    if offset is not None:
        out["offset"] = offset
    return out


def main():
    strings = ["", "a", "user_42", "héllo wörld", "日本語", "🦀 emoji", "x" * 300]
    ints = [0, 1, -1, 42, -987654321, 2**63 - 1, -(2**63)]
    seeds = [0, 1, 0x9E3779B97F4A7C15, MASK64]
    salts = [0, 1, 7, 2**32 - 1]
    rows_list = [1, 2, 1_000_003, 2**40]
    cases = []
    i = 0
    for vt, values in (("string", strings), ("int64", ints)):
        for value in values:
            for chunk in range(4):
                seed = seeds[i % len(seeds)]
                salt = salts[(i // 2) % len(salts)]
                rows = rows_list[(i // 3) % len(rows_list)]
                cases.append(case(seed, salt, chunk, vt, value, rows))
                i += 1
    # Partitioned placements: a private slice [offset, offset + rows).
    cases.append(case(3, 5, 0, "string", "movie_1", 1000, offset=5000))
    cases.append(case(3, 5, 1, "int64", -5, 1_000_003, offset=2**40))
    cases.append(case(MASK64, 2**32 - 1, 3, "string", "ñ", 2, offset=7))
    print(json.dumps({"spec": "featmux hashing v1", "cases": cases}, indent=1))


if __name__ == "__main__":
    main()
