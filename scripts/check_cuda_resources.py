#!/usr/bin/python3
"""Checks the kernels of the built CUDA library against the launch limits that only a GPU enforces.

  scripts/check_cuda_resources.py build/libmoetrain_cuda.a [--list]

Reads the cubins (sm_80, sm_90) that nvcc embeds uncompressed in the objects, and for every kernel
its registers per thread, __launch_bounds__ (EIATTR_MAX_THREADS), static shared memory and stack
frame. A kernel may be launched with up to 1024 threads unless __launch_bounds__ says fewer, so
registers x threads must fit the 64 Ki-register file (allocated per warp in units of 256): without
__launch_bounds__ that means at most 64 registers, else "too many resources requested for launch"
at run time. Static shared memory must fit 48 KiB. Exit 1 with one line per violation; --list
prints every kernel. Needs no GPU (ctest label build).
"""
import struct
import subprocess
import sys

EM_CUDA = 190
EIATTR_MAX_THREADS = 0x05
EIATTR_FRAME_SIZE = 0x11
EIATTR_REGCOUNT = 0x2F
EIFMT_SVAL = 4
REGISTER_FILE = 65536
MAX_THREADS = 1024
STATIC_SHARED_LIMIT = 48 * 1024


def cubins(data):
    """Offsets and sizes of the CUDA ELF images inside an archive / object."""
    i = 0
    while True:
        i = data.find(b"\x7fELF", i)
        if i < 0:
            return
        if data[i + 4] == 2 and struct.unpack_from("<H", data, i + 0x12)[0] == EM_CUDA:
            shoff, = struct.unpack_from("<Q", data, i + 0x28)
            shentsize, shnum = struct.unpack_from("<HH", data, i + 0x3A)
            yield i, shoff + shentsize * shnum
        i += 4


def parse_cubin(data, base):
    """(sm, {kernel: dict(regs, max_threads, shared, frame)}) of one cubin."""
    flags, = struct.unpack_from("<I", data, base + 0x30)
    sm = (flags >> 8) & 0xFF
    shoff, = struct.unpack_from("<Q", data, base + 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, base + 0x3A)
    sections = []
    for s in range(shnum):
        name, typ, _, _, off, size, link, info, _, entsize = struct.unpack_from(
            "<IIQQQQIIQQ", data, base + shoff + s * shentsize)
        sections.append(dict(name_off=name, type=typ, off=base + off, size=size, link=link, info=info,
                             entsize=entsize))

    def cstr(off):
        return data[off:data.index(b"\0", off)].decode()

    names = sections[shstrndx]
    for s in sections:
        s["name"] = cstr(names["off"] + s["name_off"])
    symtab = next(s for s in sections if s["type"] == 2)  # SHT_SYMTAB
    strtab = sections[symtab["link"]]

    def symbol(index):
        return cstr(strtab["off"] + struct.unpack_from("<I", data, symtab["off"] + index * 24)[0])

    def attributes(section):
        p, end = section["off"], section["off"] + section["size"]
        while p < end:
            fmt, attr, value = struct.unpack_from("<BBH", data, p)
            p += 4
            if fmt == EIFMT_SVAL:
                yield attr, data[p:p + value]
                p += value
            else:
                yield attr, value

    kernels = {}
    for s in sections:
        if s["name"].startswith(".nv.info."):
            k = kernels.setdefault(s["name"][len(".nv.info."):], dict(regs=None, max_threads=None, shared=0, frame=0))
            for attr, value in attributes(s):
                if attr == EIATTR_MAX_THREADS and isinstance(value, bytes):
                    x, y, z = struct.unpack_from("<III", value)
                    k["max_threads"] = x * y * z
        elif s["name"].startswith(".nv.shared.") and s["name"] != ".nv.shared.reserved.0":
            kernels.setdefault(s["name"][len(".nv.shared."):], dict(regs=None, max_threads=None, shared=0, frame=0))
            kernels[s["name"][len(".nv.shared."):]]["shared"] = s["size"]
    for s in sections:
        if s["name"] == ".nv.info":
            for attr, value in attributes(s):
                if attr in (EIATTR_REGCOUNT, EIATTR_FRAME_SIZE) and isinstance(value, bytes):
                    sym, amount = struct.unpack_from("<II", value)
                    k = kernels.get(symbol(sym))
                    if k is not None:
                        k["regs" if attr == EIATTR_REGCOUNT else "frame"] = amount
    return sm, {name: k for name, k in kernels.items() if k["regs"] is not None}


def registers_needed(regs, threads):
    per_warp = (regs * 32 + 255) // 256 * 256
    return per_warp * ((threads + 31) // 32)


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        return dict(zip(names, out.splitlines()))
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}


def main(argv):
    usage = __doc__.strip().splitlines()[2].strip()
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip() if len(argv) >= 2 else usage, file=sys.stderr)
        return 0 if len(argv) >= 2 else 2
    try:
        data = open(argv[1], "rb").read()
    except OSError as e:
        print(f"{argv[1]}: {e.strerror} (build the library first: cmake --build build --target moetrain_cuda)",
              file=sys.stderr)
        return 2
    found = {}  # (kernel, sm) -> resources
    for base, _ in cubins(data):
        sm, kernels = parse_cubin(data, base)
        for name, k in kernels.items():
            found[(name, sm)] = k
    if not found:
        print(f"{argv[1]}: no sm_80 / sm_90 cubins found (compressed fatbins?)", file=sys.stderr)
        return 2
    pretty = demangle(sorted({name for name, _ in found}))
    problems, archs = [], sorted({sm for _, sm in found})
    for (name, sm), k in sorted(found.items(), key=lambda item: (pretty[item[0][0]], item[0][1])):
        threads = k["max_threads"] or MAX_THREADS
        need = registers_needed(k["regs"], threads)
        if "--list" in argv:
            bounds = k["max_threads"] or "-"
            print(f"sm_{sm} regs {k['regs']:3d} bounds {bounds!s:>5} shared {k['shared']:6d} frame {k['frame']:4d}  "
                  f"{pretty[name]}")
        if need > REGISTER_FILE:
            hint = ("add __launch_bounds__(its largest block)" if not k["max_threads"]
                    else "lower the register count")
            problems.append(f"sm_{sm} {pretty[name]}: {k['regs']} registers x {threads} threads "
                            f"{'(no __launch_bounds__: any block up to 1024) ' if not k['max_threads'] else ''}"
                            f"need {need} > {REGISTER_FILE}: {hint}")
        if k["shared"] > STATIC_SHARED_LIMIT:
            problems.append(f"sm_{sm} {pretty[name]}: {k['shared']} bytes of static shared memory > 48 KiB")
    for p in problems:
        print(p)
    print(f"{len({n for n, _ in found})} kernels, {len(found)} cubin entries (sm_{', sm_'.join(map(str, archs))}): "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
