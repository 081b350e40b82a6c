#!/usr/bin/env python3
"""An independent reader of the .cones format, version 1.1: the spec's proof of sufficiency.

Written from spec/cones-format-v1.md and spec/vectors/ alone, by an engineer
who did not read conesfmt/ — to show that the spec is enough to implement the
format, and to have a second reader the conformance kit can compare with the
reference (tests/conesfmt/test_independent_reader.py). It uses only the
standard library and zstandard. Its findings shaped spec § 6.3 (the window
and block rules) and the clarifications of § 2.4, § 7, § 8 and § 12; the
window lower bound was then added here to match. For spec 1.0.1 it gained
the reader limit on indices of § 8.2 (checked on the declared counts, before
any plane is decoded), so the decoding bomb of spec/vectors/invalid/index-bomb
is refused at once instead of after 106 s (on the 2-core development machine).

Version 1.1 (values, spec § 6.4) was added from the spec's text by the
engineer who also wrote conesfmt's values (issue 13), so for that part it is
a second implementation, not independent evidence that § 6.4 says enough.

    python spec/independent_reader.py [--max-indices N] FILE

A valid file: prints the decoded JSON (spec § 12) on stdout, exit status 0.
An invalid file, or one over the index limit: prints one line on stderr, exit
status 1. Anything else (a bug here) exits 2, so it cannot pass for a rejection.
"""

import json
import math
import struct
import sys
import zlib
from array import array
from itertools import accumulate

import zstandard

MAGIC = b"\x89CONES\r\n\x1a\n"
READER_MINOR = 1
VALUES_TAG = b"vals"  # spec § 6.4, known in files of minor >= 1
VALUE_KINDS = {1: "q4", 2: "fp16", 3: "fp32"}
VALUE_BYTES = {"fp16": 2, "fp32": 4}
KNOWN = {b"LAYR": 0, b"FPRT": 1, b"META": 2, b"CNPT": 3, b"CEND": 4}

MAX_SECTION = 2**31
MAX_LAYR = 16 * 2**20
MAX_LAYERS = 65536
MAX_NUMEL = 2**40
MAX_CONCEPTS = 65536
MAX_MAP_ENTRIES = 1024
MAX_MAP_BYTES = 2**20
MAX_WINDOW = 8 * 2**20
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BLOCK = 1 << 16  # indices decoded per step
DEFAULT_MAX_INDICES = 2**27  # reader limit of spec § 8.2: indices declared by the whole file


class FormatError(Exception):
    pass


def fail(msg):
    raise FormatError(msg)


# --------------------------------------------------------------- payload cursor
class Cursor:
    def __init__(self, buf, start, end, what):
        self.buf, self.pos, self.end, self.what = buf, start, end, what

    def take(self, n, field):
        left = self.end - self.pos
        if n > left:
            fail(f"{self.what}: {field} needs {n} bytes but only {left} remain")
        p = self.pos
        self.pos += n
        return p

    def bytes(self, n, field):
        p = self.take(n, field)
        return bytes(self.buf[p : p + n])

    def u8(self, field):
        return self.buf[self.take(1, field)]

    def u16(self, field):
        return struct.unpack_from("<H", self.buf, self.take(2, field))[0]

    def u32(self, field):
        return struct.unpack_from("<I", self.buf, self.take(4, field))[0]

    def u64(self, field):
        return struct.unpack_from("<Q", self.buf, self.take(8, field))[0]

    def string(self, lenfmt, lo, hi, field):
        n = self.u8(field) if lenfmt == 8 else self.u16(field)
        if not lo <= n <= hi:
            fail(f"{self.what}: {field} is {n} bytes, allowed {lo}..{hi}")
        raw = self.bytes(n, field)
        try:
            text = raw.decode("utf-8", "strict")
        except UnicodeDecodeError:
            fail(f"{self.what}: {field} is not valid UTF-8")
        return raw, text

    def finish(self, minor):
        if self.pos != self.end and minor <= READER_MINOR:
            fail(f"{self.what}: {self.end - self.pos} unexpected bytes after the last field")


def read_map(cur, what):
    start = cur.pos
    count = cur.u16(f"{what} map count")
    if count > MAX_MAP_ENTRIES:
        fail(f"{what}: map has {count} entries, at most {MAX_MAP_ENTRIES}")
    out, prev = {}, None
    for _ in range(count):
        kraw, k = cur.string(16, 1, 256, f"{what} map key")
        if prev is not None and kraw <= prev:
            fail(f"{what}: map key {k!r} " + ("duplicate" if kraw == prev else "out of order"))
        prev = kraw
        _, v = cur.string(16, 0, 65535, f"{what} map value")
        out[k] = v
        if cur.pos - start > MAX_MAP_BYTES:
            fail(f"{what}: map exceeds {MAX_MAP_BYTES} bytes")
    return out


# --------------------------------------------------------------- zstd framing
def check_zstd_frame(buf, start, length, expected, what):
    """Validate that buf[start:start+length] is exactly one zstd frame
    (RFC 8878) declaring content size `expected`, no dictionary, window
    <= 8 MiB.  Walks block headers to find the frame's exact end."""
    end = start + length
    if length < 4 or bytes(buf[start : start + 4]) != ZSTD_MAGIC:
        fail(f"{what}: not a zstd frame")
    p = start + 4
    if p >= end:
        fail(f"{what}: zstd frame header truncated")
    fhd = buf[p]
    p += 1
    fcs_flag = fhd >> 6
    single = (fhd >> 5) & 1
    reserved = (fhd >> 3) & 1
    checksum = (fhd >> 2) & 1
    did_flag = fhd & 3
    if reserved:
        fail(f"{what}: corrupt zstd frame (reserved header bit set)")
    window = None
    if not single:
        if p >= end:
            fail(f"{what}: zstd frame header truncated")
        wd = buf[p]
        p += 1
        wlog = 10 + (wd >> 3)
        base = 1 << wlog
        window = base + (base >> 3) * (wd & 7)
    did_size = (0, 1, 2, 4)[did_flag]
    if p + did_size > end:
        fail(f"{what}: zstd frame header truncated")
    did = int.from_bytes(buf[p : p + did_size], "little")
    p += did_size
    if did != 0:
        fail(f"{what}: zstd frame needs dictionary {did}")
    fcs_size = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if fcs_size == 0:
        fail(f"{what}: zstd frame does not declare its content size")
    if p + fcs_size > end:
        fail(f"{what}: zstd frame header truncated")
    fcs = int.from_bytes(buf[p : p + fcs_size], "little")
    if fcs_size == 2:
        fcs += 256
    p += fcs_size
    if single:
        window = fcs
    if window > MAX_WINDOW:
        fail(f"{what}: zstd frame needs a {window}-byte window, at most {MAX_WINDOW}")
    if window < min(fcs, 128 * 1024):
        fail(f"{what}: zstd window of {window} bytes is below min(content size, 128 KiB)")
    if fcs != expected:
        fail(f"{what}: zstd frame declares {fcs} bytes, plane holds {expected}")
    block_max = min(window, 128 * 1024)
    while True:
        if p + 3 > end:
            fail(f"{what}: zstd frame truncated (block header) — frame spans past its length")
        bh = int.from_bytes(buf[p : p + 3], "little")
        p += 3
        last, btype, bsize = bh & 1, (bh >> 1) & 3, bh >> 3
        if btype == 3:
            fail(f"{what}: corrupt zstd frame (reserved block type)")
        if bsize > block_max:
            fail(f"{what}: corrupt zstd frame (block of {bsize} bytes > {block_max})")
        p += 1 if btype == 1 else bsize
        if p > end:
            fail(f"{what}: zstd frame spans past its stated length")
        if last:
            break
    if checksum:
        p += 4
        if p > end:
            fail(f"{what}: zstd frame spans past its stated length (checksum)")
    if p != end:
        fail(f"{what}: zstd frame spans {p - start} bytes, stated length {length}")


class PlaneReader:
    """Streams one decompressed plane, with bounded memory.

    libzstd's streaming decoder (reads smaller than the frame) reports a block
    that decodes to more than Block_Maximum_Size as corruption, as § 6.3 asks;
    its one-shot decoder would not, so this reader never reads a frame whole.
    """

    def __init__(self, buf, start, length, size, what):
        self.what, self.left = what, size
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        self.reader = dctx.stream_reader(bytes(buf[start : start + length]), read_across_frames=False)

    def read(self, n):
        parts, got = [], 0
        try:
            while got < n:
                chunk = self.reader.read(n - got)
                if not chunk:
                    fail(f"{self.what}: corrupt zstd frame (ends early)")
                parts.append(chunk)
                got += len(chunk)
        except zstandard.ZstdError as e:
            fail(f"{self.what}: corrupt zstd frame ({e})")
        self.left -= n
        return b"".join(parts)

    def close(self):
        try:
            extra = self.reader.read(1)
        except zstandard.ZstdError as e:
            fail(f"{self.what}: corrupt zstd frame ({e})")
        if extra:
            fail(f"{self.what}: corrupt zstd frame (more data than declared)")


# --------------------------------------------------------------- sections
def width_of(numel):
    return max(1, math.ceil((numel - 1).bit_length() / 8))


def parse_layr(cur, minor):
    count = cur.u32("layer count")
    if count > MAX_LAYERS:
        fail(f"LAYR: {count} layers, at most {MAX_LAYERS}")
    layers, prev = [], None
    for i in range(count):
        kraw, key = cur.string(16, 1, 1024, f"layer {i} key")
        if prev is not None and kraw <= prev:
            fail(f"LAYR: layer key {key!r} " + ("duplicate" if kraw == prev else "out of order"))
        prev = kraw
        draw, dtype = cur.string(8, 0, 16, f"layer {i} dtype")
        if any(not (c == 0x5F or 0x30 <= c <= 0x39 or 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A) for c in draw):
            fail(f"LAYR: layer {i} dtype {dtype!r} has characters outside A-Z a-z 0-9 _")
        ndim = cur.u8(f"layer {i} ndim")
        if not 1 <= ndim <= 8:
            fail(f"LAYR: layer {i} has {ndim} dimensions, allowed 1..8")
        dims, numel = [], 1
        for _ in range(ndim):
            d = cur.u32(f"layer {i} dims")
            if d == 0:
                fail(f"LAYR: layer {i} dimensions must be >= 1")
            dims.append(d)
            numel *= d
            if numel > MAX_NUMEL:
                fail(f"LAYR: layer {i} has more than {MAX_NUMEL} entries (at most {MAX_NUMEL})")
        layers.append({"key": key, "dtype": dtype, "shape": dims, "numel": numel})
    cur.finish(minor)
    return layers


def parse_fprt(cur, minor, layers):
    s = cur.u16("samples")
    if layers and not 1 <= s <= 256:
        fail(f"FPRT: {s} samples per layer, allowed 1..256")
    if not layers and s != 0:
        fail(f"FPRT: {s} samples per layer with an empty layer table (must be 0)")
    n = s * len(layers)
    p = cur.take(4 * n, f"{n} sample values")
    vals = struct.unpack_from(f"<{n}f", cur.buf, p)
    for v in vals:
        if not math.isfinite(v):
            fail("FPRT: sample value is not finite")
    cur.finish(minor)
    return {"samples_per_layer": s, "values": [list(vals[i * s : (i + 1) * s]) for i in range(len(layers))]}


def parse_cnpt(cur, minor, layers, buf, budget):
    _, name = cur.string(16, 1, 256, "concept name")
    what = f"CNPT {name!r}"
    cur.what = what
    meta = read_map(cur, what)
    codec = cur.u8("codec")
    if codec != 1:
        fail(f"{what}: unknown codec {codec}")
    e = cur.u32("entry count")
    if e > len(layers):
        fail(f"{what}: {e} entries but the table has {len(layers)} layers")
    entries, prev = [], -1
    for _ in range(e):
        li = cur.u32("entry layer")
        if li >= len(layers):
            fail(f"{what}: entry layer {li} but the table has {len(layers)} layers")
        if li <= prev:
            fail(f"{what}: entry layers must strictly increase ({prev} then {li})")
        prev = li
        count = cur.u64("entry count")
        numel = layers[li]["numel"]
        if not 1 <= count <= numel:
            fail(f"{what}: layer {li} count {count}, allowed 1..{numel}")
        if count > budget["left"]:
            fail(
                f"{what}: layer {li} count {count} takes the file past the reader limit of "
                f"{budget['limit']} indices (--max-indices, spec § 8.2)"
            )
        budget["left"] -= count
        entries.append((li, count, width_of(numel)))
    w_max = max((w for _, _, w in entries), default=0)
    lengths = [cur.u32("frame length") for _ in range(w_max)]
    frames = []
    for j, ln in enumerate(lengths):
        frames.append((cur.take(ln, f"frame {j}"), ln))
    cur.finish(minor)
    planes = [sum(c for _, c, w in entries if w > j) for j in range(w_max)]
    for j, ((p, ln), size) in enumerate(zip(frames, planes, strict=True)):
        check_zstd_frame(buf, p, ln, size, f"{what} frame {j}")
    return {
        "name": name,
        "metadata": meta,
        "entries": entries,
        "frames": frames,
        "planes": planes,
        "what": what,
    }


def parse_vals(cur, minor, c, buf):
    """A vals section (spec § 6.4) of concept ``c``; None if its kind is of a newer minor."""
    _, name = cur.string(16, 1, 256, "vals concept name")
    if name != c["name"]:
        fail(f"vals names concept {name!r} but follows concept {c['name']!r}")
    what = f"vals {name!r}"
    cur.what = what
    code = cur.u8("value kind")
    if code not in VALUE_KINDS:
        if minor > READER_MINOR:
            return None
        fail(f"{what}: unknown value kind {code}")
    kind = VALUE_KINDS[code]
    counts = [count for _, count, _ in c["entries"]]
    codebooks = []
    if kind == "q4":
        for li, _, _ in c["entries"]:
            p = cur.take(16, "q4 codebook")
            levels = struct.unpack_from("<4f", buf, p)
            if not all(math.isfinite(v) for v in levels):
                fail(f"{what}: layer {li} codebook level is not finite")
            codebooks.append(list(levels))
        planes = [sum((n + 3) // 4 for n in counts)] if counts else []
    else:
        planes = [sum(counts)] * VALUE_BYTES[kind] if counts else []
    lengths = [cur.u32("value frame length") for _ in planes]
    frames = [(cur.take(ln, f"value frame {j}"), ln) for j, ln in enumerate(lengths)]
    cur.finish(minor)
    for j, ((p, ln), size) in enumerate(zip(frames, planes, strict=True)):
        check_zstd_frame(buf, p, ln, size, f"{what} frame {j}")
    return {"kind": kind, "codebooks": codebooks, "frames": frames, "planes": planes, "what": what}


def iter_values(c, buf):
    """Yield (entry number, list of values or q4 codes) per entry; validates as it goes."""
    v = c["values"]
    readers = [
        PlaneReader(buf, p, ln, size, f"{v['what']} frame {j}")
        for j, ((p, ln), size) in enumerate(zip(v["frames"], v["planes"], strict=True))
    ]
    for e, (li, count, _) in enumerate(c["entries"]):
        if v["kind"] == "q4":
            packed = readers[0].read((count + 3) // 4)
            if count % 4 and packed[-1] >> (2 * (count % 4)):
                fail(f"{v['what']}: layer {li} has nonzero padding bits in its last code byte")
            codes = [(packed[k // 4] >> (2 * (k % 4))) & 3 for k in range(count)]
            yield e, codes
            continue
        width = VALUE_BYTES[v["kind"]]
        cols = [readers[j].read(count) for j in range(width)]
        raw = bytearray(width * count)
        for j in range(width):
            raw[j::width] = cols[j]
        values = struct.unpack(f"<{count}{'e' if width == 2 else 'f'}", raw)
        if not all(math.isfinite(x) for x in values):
            fail(f"{v['what']}: layer {li} has a value that is not finite")
        yield e, list(values)
    for r in readers:
        if r.left != 0:
            fail(f"{v['what']}: plane not fully consumed")
        r.close()


def iter_indices(c, layers, buf):
    """Yield (layer index, array of indices) blocks; validates as it goes."""
    readers = [
        PlaneReader(buf, p, ln, size, f"{c['what']} frame {j}")
        for j, ((p, ln), size) in enumerate(zip(c["frames"], c["planes"], strict=True))
    ]
    little = sys.byteorder == "little"
    for li, count, w in c["entries"]:
        numel = layers[li]["numel"]
        last = None
        done = 0
        while done < count:
            n = min(BLOCK, count - done)
            cols = [readers[j].read(n) for j in range(w)]
            if w == 1:
                deltas = array("B", cols[0])
            else:
                raw = bytearray(8 * n)
                for j in range(w):
                    raw[j::8] = cols[j]
                deltas = array("Q")
                deltas.frombytes(raw)
                if not little:
                    deltas.byteswap()
            if (0 in deltas[1:]) if last is None else (0 in deltas):
                fail(f"{c['what']}: layer {li} indices not strictly increasing (delta 0)")
            acc = list(accumulate(deltas, initial=0 if last is None else last))
            del acc[0]  # i_0 = d_0; later blocks continue from the last index
            if acc[-1] >= numel:
                fail(f"{c['what']}: layer {li} index {acc[-1]} >= numel {numel}")
            last = acc[-1]
            done += n
            yield li, acc
    for r in readers:
        if r.left != 0:
            fail(f"{c['what']}: plane not fully consumed")
        r.close()


# --------------------------------------------------------------- file
def parse(buf, max_indices=DEFAULT_MAX_INDICES):
    n = len(buf)
    if n < 10 or bytes(buf[:10]) != MAGIC:
        head = bytes(buf[:10])
        if head.startswith(b"\x89CONES\n"):
            fail("bad magic (line endings changed by a text-mode transfer?)")
        fail("bad magic")
    if n < 12:
        fail("file shorter than the 12-byte preamble")
    major, minor = buf[10], buf[11]
    if major != 1:
        fail(f"unsupported major version {major}")
    pos = 12
    state = -1
    layers = fprt = None
    meta = {}
    concepts, names = [], set()
    budget = {"limit": max_indices, "left": max_indices}
    ended = False
    while True:
        if pos == n:
            fail("file ends without CEND (truncated?)")
        if ended:
            fail("trailing bytes after CEND")
        if n - pos < 8:
            fail("truncated section header")
        tag = bytes(buf[pos : pos + 4])
        if not all(0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A for c in tag):
            fail(f"invalid section tag {tag!r}")
        length = struct.unpack_from("<I", buf, pos + 4)[0]
        if length > MAX_SECTION:
            fail(f"section {tag.decode()} length {length} exceeds {MAX_SECTION}")
        if tag == b"LAYR" and length > MAX_LAYR:
            fail(f"LAYR payload {length} exceeds {MAX_LAYR}")
        if length + 4 > n - pos - 8:
            fail(f"section {tag.decode()} truncated: {length} payload bytes + CRC, {n - pos - 8} left")
        pstart, pend = pos + 8, pos + 8 + length
        crc = struct.unpack_from("<I", buf, pend)[0]
        if zlib.crc32(buf[pos:pend]) != crc:
            fail(f"section {tag.decode()} checksum mismatch")
        pos = pend + 4
        if tag == VALUES_TAG and minor >= 1:  # in a 1.0 file, an unknown optional section
            if not concepts:
                fail("vals before any concept")
            c = concepts[-1]
            if "values" in c:
                fail(f"a second vals section for concept {c['name']!r}")
            c["values"] = parse_vals(Cursor(buf, pstart, pend, "vals"), minor, c, buf)
            continue
        if tag not in KNOWN:
            if 0x41 <= tag[0] <= 0x5A:
                fail(f"unknown required section {tag.decode()}")
            continue  # unknown optional: skip
        order = KNOWN[tag]
        if state == -1 and order != 0:
            fail(f"{tag.decode()} before LAYR: LAYR must come first")
        if order < state or (order == state and tag != b"CNPT"):
            fail(f"section {tag.decode()} out of order or repeated")
        state = order
        cur = Cursor(buf, pstart, pend, tag.decode())
        if tag == b"LAYR":
            layers = parse_layr(cur, minor)
        elif tag == b"FPRT":
            fprt = parse_fprt(cur, minor, layers)
        elif tag == b"META":
            meta = read_map(cur, "META")
            cur.finish(minor)
        elif tag == b"CNPT":
            if len(concepts) >= MAX_CONCEPTS:
                fail(f"more than {MAX_CONCEPTS} concepts")
            c = parse_cnpt(cur, minor, layers, buf, budget)
            if c["name"] in names:
                fail(f"duplicate concept name {c['name']!r}")
            names.add(c["name"])
            concepts.append(c)
        else:  # CEND
            cur.finish(minor)
            ended = True
            if pos != n:
                fail("trailing bytes after CEND")
            break
    # Second stage: decode and validate every plane (streaming, bounded memory).
    for c in concepts:
        for _ in iter_indices(c, layers, buf):
            pass
        if c.get("values"):
            for _ in iter_values(c, buf):
                pass
    return (major, minor), layers, fprt, meta, concepts


def emit(out, buf, version, layers, fprt, meta, concepts):
    d = json.dumps
    table = [{"key": row["key"], "dtype": row["dtype"], "shape": row["shape"]} for row in layers]
    out.write(
        f'{{"version": {d(list(version))}, "layers": {d(table)}, '
        f'"fingerprint": {d(fprt)}, "metadata": {d(meta)}, "concepts": ['
    )
    for ci, c in enumerate(concepts):
        head = f'{{"name": {d(c["name"])}, "metadata": {d(c["metadata"])}, "indices": {{'
        out.write(("," if ci else "") + head)
        cur_layer = None
        for li, block in iter_indices(c, layers, buf):
            if li != cur_layer:
                if cur_layer is not None:
                    out.write("], ")
                out.write(d(layers[li]["key"]) + ": [")
                cur_layer = li
                sep = ""
            out.write(sep + ", ".join(map(str, block)))
            sep = ", "
        if cur_layer is not None:
            out.write("]")
        out.write("}")
        if c.get("values"):
            v = c["values"]
            per_layer = {}
            for e, items in iter_values(c, buf):
                key = layers[c["entries"][e][0]]["key"]
                per_layer[key] = (
                    {"codebook": v["codebooks"][e], "codes": items} if v["kind"] == "q4" else items
                )
            out.write(f', "values": {d({"kind": v["kind"], "layers": per_layer})}')
        out.write("}")
    out.write("]}\n")


def main(argv):
    args = argv[1:]
    max_indices = DEFAULT_MAX_INDICES
    if len(args) == 3 and args[0] == "--max-indices" and args[1].isdigit():
        max_indices, args = int(args[1]), args[2:]
    if len(args) != 1:
        print("usage: independent_reader.py [--max-indices N] FILE", file=sys.stderr)
        return 2
    try:
        with open(args[0], "rb") as f:
            buf = memoryview(f.read())
        parsed = parse(buf, max_indices)
    except FormatError as e:
        print(f"invalid: {e}".replace("\n", " "), file=sys.stderr)
        return 1
    except Exception:  # a bug here, not a rejection: a distinct status
        import traceback

        traceback.print_exc()
        return 2
    emit(sys.stdout, buf, *parsed)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
