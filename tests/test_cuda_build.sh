#!/bin/sh
# The sm_90a attention kernel's build, checked on every build so it cannot rot without a GPU:
# the Makefile compiles kernels/cuda/attention_prefill_sm90.cu with -Xptxas -v -keep into
# build/kernels/cuda/sm90a/ (ptxas.log and the sm_90a cubin), and this script asserts, for every
# sm_90a instantiation of the kernel:
#   - ptxas: no stack frame, no spill stores or loads, at most 168 registers at entry (the cap
#     __launch_bounds__(384, 1) sets; setmaxnreg moves them to 40 / 232 per warpgroup);
#   - ptxas printed no C75xx "wgmma ... serialized" and no "setmaxnreg ignored" message;
#   - the machine code holds warpgroup MMAs (HGMMA: Q K^T from shared memory and P V with P from
#     registers), the cp.async gather (LDGSTS), setmaxnreg (USETMAXREG), and no local memory
#     (STL/LDL).
# The machine-code check uses cuobjdump -sass where it exists (the GPU machine). Without it (the
# CUDA here ships no disassembler) it reads the cubin's .text sections and counts the opcode field
# (bits 0-11) of each 128-bit sm_90 instruction; the values were found by compiling probe
# kernels with nvcc 13.0 that differ in one instruction: 0x9f0 HGMMA (A from shared memory),
# 0xdf0 HGMMA (A from registers), 0xfae LDGSTS, 0x9c8 USETMAXREG, 0x387 STL, 0x983 LDL.
# It also reads build/kernels/cuda/fa2/ptxas.log (the 128-row sm_80 prefill kernel,
# attention_prefill_fa2.cu): every instantiation for sm_80 and sm_90 without stack or spills.
# Skips when the build has no CUDA objects (no nvcc, or make NVCC=). The GPU machine runs it on
# the carried build (tools/device-check.sh), where cuobjdump exists.
cd "$(dirname "$0")/.." || exit 1
name=test_cuda_build
dir=build/kernels/cuda/sm90a
skip() { echo "$name: SKIP ($1)"; echo "$name: 0 passed, 0 failed"; exit 0; }
[ -f build/kernels/cuda/attention_prefill_sm90.o ] || skip "CUDA not built: no nvcc, or make NVCC="
cubin=$(ls "$dir"/attention_prefill_sm90*90a*.cubin 2>/dev/null | head -n 1)
CUOBJDUMP=$(command -v cuobjdump 2>/dev/null || { test -x /usr/local/cuda/bin/cuobjdump && echo /usr/local/cuda/bin/cuobjdump; })
py=/usr/bin/python3; [ -x "$py" ] || py=$(command -v python3)

"$py" - "$dir/ptxas.log" "$cubin" "$CUOBJDUMP" <<'EOF'
import collections, os, re, struct, subprocess, sys

log_path, cubin, cuobjdump = sys.argv[1], sys.argv[2], sys.argv[3]
passed = failed = 0
def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what)

KERNEL = "attn_prefill_sm90_kernel1"
EXPECTED = 16  # {bf16, f16} x {q float, q T} x {hd 64, 128} x {plain, STRING}

# --- ptxas report
try:
    log = open(log_path).read()
except OSError:
    log = ""
check(log != "", "ptxas report %s exists" % log_path)
entries = {}
cur = None
for line in log.splitlines():
    m = re.search(r"Compiling entry function '(\S+)' for '(sm_\w+)'", line)
    if m:
        cur = (m.group(1), m.group(2))
        entries[cur] = {}
        continue
    if cur is None:
        continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m:
        entries[cur]["stack"], entries[cur]["st"], entries[cur]["ld"] = map(int, m.groups())
    m = re.search(r"Used (\d+) registers", line)
    if m:
        entries[cur]["regs"] = int(m.group(1))
sm90a = {k: v for k, v in entries.items() if k[1] == "sm_90a" and KERNEL in k[0]}
check(len(sm90a) == EXPECTED, "%d sm_90a instantiations in the ptxas report (found %d)" % (EXPECTED, len(sm90a)))
for (fn, _), v in sorted(sm90a.items()):
    short = fn.replace("_Z25attn_prefill_sm90_kernel1I", "").replace("EEv11attn_params", "")
    print("  sm_90a %-32s registers %s, stack %s, spill stores %s, spill loads %s"
          % (short, v.get("regs"), v.get("stack"), v.get("st"), v.get("ld")))
    check(v.get("stack") == 0 and v.get("st") == 0 and v.get("ld") == 0, "%s: no stack, no spills" % short)
    check(v.get("regs") is not None and v["regs"] <= 168, "%s: at most 168 registers at entry" % short)
serial = [l for l in log.splitlines() if "Potential Performance Loss" in l or "C7508" in l or "setmaxnreg" in l.lower()]
for l in serial[:10]:
    print("  ptxas:", l.strip())
check(not serial, "no serialized-wgmma or ignored-setmaxnreg message from ptxas")

# --- machine code
def census_cuobjdump():
    out = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True).stdout
    res, fn = {}, None
    for line in out.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            fn = m.group(1)
            res[fn] = collections.Counter()
            continue
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m and fn:
            op = m.group(1).split(".")[0]
            res[fn][{"HGMMA": "hgmma", "LDGSTS": "ldgsts", "USETMAXREG": "setmaxnreg",
                     "STL": "stl", "LDL": "ldl"}.get(op, op)] += 1
    return res

OPC = {0x9F0: "hgmma", 0xDF0: "hgmma", 0xFAE: "ldgsts", 0x9C8: "setmaxnreg", 0x387: "stl", 0x983: "ldl"}
def census_opcodes():
    out = subprocess.run(["readelf", "-S", "-W", cubin], capture_output=True, text=True).stdout
    data = open(cubin, "rb").read()
    res = {}
    for line in out.splitlines():
        m = re.search(r"\]\s+\.text\.(\S+)\s+\S+\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)", line)
        if not m:
            continue
        fn, off, size = m.group(1), int(m.group(2), 16), int(m.group(3), 16)
        c = collections.Counter()
        for i in range(off, off + size, 16):
            lo, = struct.unpack_from("<Q", data, i)
            c[OPC.get(lo & 0xFFF, "other")] += 1
        res[fn] = c
    return res

check(bool(cubin), "the sm_90a cubin is kept in build/kernels/cuda/sm90a/")
if cubin:
    how = "cuobjdump -sass" if cuobjdump else "opcode fields of the cubin's .text sections"
    res = census_cuobjdump() if cuobjdump else census_opcodes()
    ks = {fn: c for fn, c in res.items() if KERNEL in fn}
    print("  machine code (%s):" % how)
    check(len(ks) == EXPECTED, "%d kernels in the sm_90a cubin (found %d)" % (EXPECTED, len(ks)))
    for fn, c in sorted(ks.items()):
        short = fn.replace("_Z25attn_prefill_sm90_kernel1I", "").replace("EEv11attn_params", "")
        print("  %-32s HGMMA %d, LDGSTS %d, USETMAXREG %d, STL %d, LDL %d"
              % (short, c["hgmma"], c["ldgsts"], c["setmaxnreg"], c["stl"], c["ldl"]))
        check(c["hgmma"] >= 16 and c["ldgsts"] > 0 and c["setmaxnreg"] >= 2, "%s: HGMMA, LDGSTS, setmaxnreg" % short)
        check(c["stl"] == 0 and c["ldl"] == 0, "%s: no local memory (STL/LDL)" % short)

# --- the 128-row sm_80 prefill kernel (attention_prefill_fa2.cu): ptxas report of every
# instantiation for sm_80 and sm_90, no stack frame and no spills
fa2_log = os.path.join(os.path.dirname(os.path.dirname(log_path)), "fa2", "ptxas.log")
try:
    flog = open(fa2_log).read()
except OSError:
    flog = ""
check(flog != "", "ptxas report %s exists" % fa2_log)
fent, cur = {}, None
for line in flog.splitlines():
    m = re.search(r"Compiling entry function '(\S+)' for '(sm_\w+)'", line)
    if m:
        cur = (m.group(1), m.group(2))
        fent[cur] = {}
        continue
    if cur is None:
        continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m:
        fent[cur]["stack"], fent[cur]["st"], fent[cur]["ld"] = map(int, m.groups())
    m = re.search(r"Used (\d+) registers", line)
    if m:
        fent[cur]["regs"] = int(m.group(1))
FA2_EXPECTED = 24  # {bf16, f16} x {q float, q T} x {hd 64 BN 64, hd 128 BN 64, hd 128 BN 32} x {plain, STRING}
for arch in ("sm_80", "sm_90"):
    ks = {k: v for k, v in fent.items() if k[1] == arch and "attn_prefill_fa2_kernel" in k[0]}
    check(len(ks) == FA2_EXPECTED, "%d %s instantiations of the FA2 kernel (found %d)" % (FA2_EXPECTED, arch, len(ks)))
    for (fn, _), v in sorted(ks.items()):
        short = fn.replace("_ZN3fa223attn_prefill_fa2_kernelI", "").replace("EEEv11attn_params", "")
        print("  fa2 %s %-34s registers %s, stack %s, spill stores %s, spill loads %s"
              % (arch, short, v.get("regs"), v.get("stack"), v.get("st"), v.get("ld")))
        check(v.get("stack") == 0 and v.get("st") == 0 and v.get("ld") == 0, "fa2 %s %s: no stack, no spills" % (arch, short))

print("test_cuda_build: %d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
EOF
