# ropeserve - build, run, test.
#   make            build/ropeserve (+ the CUDA backend when a GPU is present), installing missing
#                   Debian packages first (tools/install-deps.sh)
#   make run        build, serve the trained demo model (models/demo-pose) on 127.0.0.1:8080
#                   (PORT=N for another port)
#   make test       build (CUDA included whenever nvcc is found) and run every test; closes with
#                   "N passed, N failed"
#   make test-cuda  kernel checkers + end-to-end parity on a GPU (skips without one)
#   make bench      throughput figures (never part of the tests)
#   make fuzz       the libFuzzer targets (tests/fuzz/) for FUZZ_SECONDS each (default 60)
#   make soak       mixed hostile traffic against the server (tools/soak.py; SOAK_ARGS="--slow 10000")
#   CUDA=1 / CUDA=0 force the CUDA backend on / off; V=1 prints whole compiler command lines.
# Sources are found by wildcard: a new file in a module folder needs no Makefile edit.

MAKEFLAGS += -j$(shell nproc 2>/dev/null || echo 2)
CC      ?= gcc
CXX     ?= g++
ARCH    ?= native
OPT     ?= -O3
CFLAGS  ?= $(OPT) -march=$(ARCH) -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -pthread -MMD -MP \
           -I/usr/include/x86_64-linux-gnu/openblas-pthread
CXXFLAGS ?= $(OPT) -march=$(ARCH) -g
CXXFLAGS += -std=c++17 -Wall -Wextra -pthread -MMD -MP
LDLIBS  := -lmicrohttpd -lcjson -lcurl -lsentencepiece -lpcre2-8 -lutf8proc -lopenblas -lstdc++ -lm -lpthread
B       := build

# --- quiet rules: "  CC      server/http.c" per file (V=1: the whole command lines) ---
ifeq ($(V),1)
  Q   :=
  say := @:
else
  Q   := @
  say := @printf '  %-7s %s\n'
endif

# --- CUDA: nvcc takes minutes, so the backend is built when it can run here (a GPU answers
# nvidia-smi -L, or /dev/nvidia0 exists) or when asked (CUDA=1); `make test` and `make test-cuda`
# build it whenever nvcc is found, so it never rots. CUDA=0 or NVCC= never builds it. ---
NVCC    ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
NVCCFLAGS ?= -O3 -lineinfo -compress-mode=size -std=c++17 \
             -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90 -Xcompiler -Wall,-pthread
CU_SRC  := $(wildcard kernels/cuda/*.cu)
GPU_HERE = $(shell { nvidia-smi -L 2>/dev/null | grep -q '^GPU' || test -e /dev/nvidia0; } && echo 1)
ifeq ($(origin CUDA),undefined)
  ifneq ($(filter test test-cuda,$(MAKECMDGOALS)),)
    CUDA := 1
  else
    CUDA := $(if $(GPU_HERE),1,0)
  endif
endif
ifeq ($(CUDA),1)
  ifeq ($(strip $(NVCC)),)
    ifneq ($(filter test test-cuda,$(MAKECMDGOALS)),)
      CUDA := 0
    else ifeq ($(origin CUDA),command line)
      $(error CUDA=1: nvcc not found (install the CUDA toolkit, or NVCC=/path/to/nvcc))
    else
      CUDA := 0
    endif
  endif
endif
ifeq ($(CUDA)$(strip $(CU_SRC)),1)
  CUDA := 0
endif
ifeq ($(CUDA),1)
  CFLAGS  += -DROPESERVE_CUDA
  CU_OBJ  := $(CU_SRC:%.cu=$(B)/%.o)
  LDLIBS  += -L$(CUDA_HOME)/lib64 -L$(CUDA_HOME)/targets/x86_64-linux/lib -lcublas -lcudart -Wl,-rpath,$(CUDA_HOME)/lib64
  OBJ     := $(B)
else
  OBJ     := $(B)/cpu
  ifneq ($(strip $(NVCC)),)
    ifeq ($(filter clean,$(MAKECMDGOALS)),)
      $(info ropeserve: building without the CUDA backend (no GPU here); make CUDA=1 builds it)
    endif
  endif
endif
# Objects of the two configurations live apart (-DROPESERVE_CUDA changes them): build/ with
# CUDA, build/cpu/ without. Each object folder's `cflags` holds the flags its objects were
# compiled with (they rebuild when the flags change: an older tree, OPT=, ARCH=), and
# build/mode the configuration the binaries were linked for (they relink when it changes).
MODE    := $(B)/mode
CFLAGS_STAMP := $(OBJ)/cflags
$(shell mkdir -p $(OBJ); m=$(if $(CU_OBJ),cuda,cpu); [ "$$(cat $(MODE) 2>/dev/null)" = "$$m" ] || echo $$m > $(MODE); \
        printf '%s\n' '$(CFLAGS) $(CXXFLAGS)' | cmp -s - $(CFLAGS_STAMP) || printf '%s\n' '$(CFLAGS) $(CXXFLAGS)' > $(CFLAGS_STAMP))

LIB_C   := $(wildcard common/*.c kernels/*.c kernels/cpu/*.c models/*.c tokenizer/*.c engine/*.c server/*.c)
LIB_C   := $(filter-out server/main.c,$(LIB_C))
LIB_CC  := $(wildcard tokenizer/*.cc)
LIB_OBJ := $(LIB_C:%.c=$(OBJ)/%.o) $(LIB_CC:%.cc=$(OBJ)/%.o) $(CU_OBJ)
LIB     := $(OBJ)/libropeserve.a
TEST_C  := $(wildcard tests/test_*.c)
TEST_BIN:= $(TEST_C:tests/%.c=$(B)/tests/%)
TOOL_C  := $(wildcard tools/*.c)
TOOL_BIN:= $(TOOL_C:tools/%.c=$(B)/tools/%)
CHECK_CU:= $(wildcard tests/kernels/check_*.cu)
CHECK_BIN:= $(if $(CU_OBJ),$(CHECK_CU:tests/kernels/%.cu=$(B)/tests/kernels/%))

DEMO    := $(B)/demo-model
# what `make run` serves: a small LLaMA trained by tools/train/train.py (PoSE + revised YaRN)
RUN_MODEL ?= models/demo-pose

# AddressSanitizer + UBSan builds of the engine tests (CPU only): leaks and bad memory
# accesses fail `make test` (tests/test_asan.sh runs them on a short workload).
ASAN_CFLAGS := $(filter-out -DROPESERVE_CUDA -O3 $(OPT),$(CFLAGS)) -O1 -fsanitize=address,undefined -fno-omit-frame-pointer
ASAN_OBJ := $(LIB_C:%.c=$(B)/asan/%.o) $(LIB_CC:%.cc=$(B)/asan/%.o)
ASAN_BIN := $(B)/asan/test_batching $(B)/asan/test_engine $(B)/asan/test_tokenizer_bpe $(B)/asan/test_arch $(B)/asan/test_jinja $(B)/asan/test_door
.SECONDARY: $(ASAN_OBJ)

# libFuzzer targets (tests/fuzz/fuzz_*.c) with ASan + UBSan, built with clang: the modules they
# reach are compiled again into build/fuzz/. `make test` runs each for a fixed number of runs
# (tests/test_fuzz.sh, FUZZ_RUNS); `make fuzz FUZZ_SECONDS=N` runs each for N seconds on a copy
# of its corpus (FUZZ_JOBS in parallel, default 1), keeping what it found in build/fuzz/corpus/.
CLANG   ?= clang
CLANGXX ?= clang++
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS := -O1 -g -std=c11 -D_GNU_SOURCE -pthread -I/usr/include/x86_64-linux-gnu/openblas-pthread \
               -fsanitize=fuzzer-no-link $(FUZZ_SAN)
# only the modules the targets reach (no kernels, no engine but its sampler defaults): a
# quicker first build; the archive lets each target link what it uses
FUZZ_C  := $(wildcard common/*.c tokenizer/*.c) models/config.c models/safetensors.c models/rope.c \
           server/openai.c server/chat.c server/jinja.c engine/sampler.c
FUZZ_OBJ := $(FUZZ_C:%.c=$(B)/fuzz/obj/%.o) $(LIB_CC:%.cc=$(B)/fuzz/obj/%.o)
FUZZ_LIB := $(B)/fuzz/libfuzzed.a
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=$(B)/fuzz/%)
FUZZ_SECONDS ?= 60
FUZZ_JOBS ?= 1
.SECONDARY: $(FUZZ_OBJ)

.PHONY: all deps run test test-cuda bench clean demo fuzz soak fuzz-build
all: deps $(B)/ropeserve $(TOOL_BIN) $(TEST_BIN)

# DEPS_ARGS=--build: only the packages that compiling needs (docker/Dockerfile).
# Every compile waits for the package check (order-only: it never forces a rebuild), so a
# parallel build on a fresh machine does not race the install.
deps:
	@tools/install-deps.sh $(DEPS_ARGS)

$(OBJ)/%.o: %.c $(CFLAGS_STAMP) | deps
	@mkdir -p $(dir $@)
	$(say) CC $<
	$(Q)$(CC) $(CFLAGS) -c $< -o $@

# RoPE frequencies must follow Hugging Face's fp32 operation order bit for bit: no FMA contraction.
$(OBJ)/models/rope.o: CFLAGS += -ffp-contract=off

$(OBJ)/%.o: %.cc $(CFLAGS_STAMP) | deps
	@mkdir -p $(dir $@)
	$(say) CXX $<
	$(Q)$(CXX) $(CXXFLAGS) -c $< -o $@

$(B)/%.o: %.cu | deps
	@mkdir -p $(dir $@)
	$(say) NVCC "$< (minutes)"
	$(Q)$(NVCC) $(NVCCFLAGS) -DROPESERVE_CUDA -c $< -o $@

# attention_prefill_sm90.cu uses wgmma and setmaxnreg, which only the arch-specific sm_90a target
# has: its own targets (sm_80 gets stubs that trap; no plain sm_90 or compute_90 image, so a
# Hopper device can only load the sm_90a one). Its sm_90a cubin and ptxas report are kept in
# $(SM90A_DIR) for tests/test_cuda_build.sh (HGMMA present, no spills, no serialized wgmma).
SM90A_DIR := $(B)/kernels/cuda/sm90a
SM90A_GENCODE ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a
$(B)/kernels/cuda/attention_prefill_sm90.o: kernels/cuda/attention_prefill_sm90.cu kernels/cuda/common.cuh | deps
	@mkdir -p $(dir $@) $(SM90A_DIR)
	$(say) NVCC "$< (sm_90a, minutes)"
	$(Q)$(NVCC) $(filter-out -gencode arch=%,$(NVCCFLAGS)) $(SM90A_GENCODE) -Xptxas -v -keep -keep-dir $(SM90A_DIR) \
		-DROPESERVE_CUDA -c $< -o $@ 2>$(SM90A_DIR)/ptxas.log || { cat $(SM90A_DIR)/ptxas.log; exit 1; }
	@grep -v -e '^ptxas info' -e '^    [0-9]* bytes stack frame' $(SM90A_DIR)/ptxas.log || true

# attention_prefill_fa2.cu (the 128-row sm_80 prefill kernel): its ptxas report (registers, spills)
# is kept in $(FA2_DIR)/ptxas.log for tests/test_cuda_build.sh (no stack frame, no spills).
FA2_DIR := $(B)/kernels/cuda/fa2
$(B)/kernels/cuda/attention_prefill_fa2.o: kernels/cuda/attention_prefill_fa2.cu kernels/cuda/common.cuh | deps
	@mkdir -p $(dir $@) $(FA2_DIR)
	$(say) NVCC "$< (minutes)"
	$(Q)$(NVCC) $(NVCCFLAGS) -Xptxas -v -DROPESERVE_CUDA -c $< -o $@ 2>$(FA2_DIR)/ptxas.log || { cat $(FA2_DIR)/ptxas.log; exit 1; }
	@grep -v -e '^ptxas info' -e '^    [0-9]* bytes stack frame' $(FA2_DIR)/ptxas.log || true

$(LIB): $(LIB_OBJ)
	@rm -f $@
	$(say) AR $@
	$(Q)ar rcs $@ $^

$(B)/ropeserve: $(OBJ)/server/main.o $(LIB) $(MODE)
	$(say) LINK $@
	$(Q)$(CC) $(CFLAGS) $(OBJ)/server/main.o $(LIB) -o $@ $(LDLIBS)

$(B)/tests/%: tests/%.c $(LIB) tests/test.h $(MODE)
	@mkdir -p $(dir $@)
	$(say) CC+LINK $@
	$(Q)$(CC) $(CFLAGS) $< $(LIB) -o $@ $(LDLIBS)

$(B)/tools/%: tools/%.c $(LIB) $(MODE)
	@mkdir -p $(dir $@)
	$(say) CC+LINK $@
	$(Q)$(CC) $(CFLAGS) $< $(LIB) -o $@ $(LDLIBS)

$(B)/tests/kernels/%: tests/kernels/%.cu $(LIB) $(wildcard tests/kernels/*.h)
	@mkdir -p $(dir $@)
	$(say) NVCC $<
	$(Q)$(NVCC) $(NVCCFLAGS) -DROPESERVE_CUDA $< $(LIB) -o $@ $(filter-out -pthread -Wl%,$(LDLIBS)) -Xcompiler -pthread -Xlinker -rpath,$(CUDA_HOME)/lib64

$(B)/asan/%.o: %.c | deps
	@mkdir -p $(dir $@)
	$(say) CC-ASAN $<
	$(Q)$(CC) $(ASAN_CFLAGS) -c $< -o $@
$(B)/asan/models/rope.o: ASAN_CFLAGS += -ffp-contract=off
$(B)/asan/%.o: %.cc | deps
	@mkdir -p $(dir $@)
	$(say) CXX-ASAN $<
	$(Q)$(CXX) $(CXXFLAGS) -fsanitize=address,undefined -c $< -o $@
$(B)/asan/test_%: tests/test_%.c $(ASAN_OBJ) tests/test.h
	$(say) LINK $@
	$(Q)$(CC) $(ASAN_CFLAGS) $< $(ASAN_OBJ) -o $@ $(filter-out -L% -lcublas -lcudart -Wl%,$(LDLIBS))

# The random demo checkpoint (tests, benchmarks): deterministic, made by tools/make_model.c.
$(DEMO)/config.json: $(B)/tools/make_model models/demo/tokenizer.model
	$(say) MODEL $(DEMO)
	$(Q)$(B)/tools/make_model --preset demo --out $(DEMO) --tokenizer models/demo/tokenizer.model

demo: all $(DEMO)/config.json

# the server and the trained demo model only: no test programs on the way to a first answer
PORT    ?= 8080
run: deps $(B)/ropeserve
	$(B)/ropeserve serve --model $(RUN_MODEL) --host 127.0.0.1 --port $(PORT)

# the fuzzers when clang is there (deps installs it: decided when the recipe runs, not at parse)
test: all $(DEMO)/config.json $(CHECK_BIN) $(ASAN_BIN)
	@if command -v $(CLANG) >/dev/null 2>&1 && command -v $(CLANGXX) >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory fuzz-build; fi
	@tests/run.sh

$(B)/fuzz/obj/%.o: %.c | deps
	@mkdir -p $(dir $@)
	$(say) CC-FUZZ $<
	$(Q)$(CLANG) $(FUZZ_CFLAGS) -c $< -o $@
$(B)/fuzz/obj/models/rope.o: FUZZ_CFLAGS += -ffp-contract=off
$(B)/fuzz/obj/%.o: %.cc | deps
	@mkdir -p $(dir $@)
	$(say) CXX-FUZZ $<
	$(Q)$(CLANGXX) -O1 -g -std=c++17 -pthread -fsanitize=fuzzer-no-link $(FUZZ_SAN) -c $< -o $@
$(FUZZ_LIB): $(FUZZ_OBJ)
	@rm -f $@
	$(say) AR $@
	$(Q)ar rcs $@ $^
$(B)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h $(FUZZ_LIB)
	$(say) LINK $@
	$(Q)$(CLANGXX) $(filter-out -std=c11,$(FUZZ_CFLAGS)) -fsanitize=fuzzer -x c -std=c11 $< -x none $(FUZZ_LIB) -o $@ \
		$(filter-out -L% -lcublas -lcudart -lopenblas -Wl%,$(LDLIBS))

fuzz-build: deps $(FUZZ_BIN)

# each target for FUZZ_SECONDS on its committed corpus plus what earlier runs found
fuzz: fuzz-build
	@tests/test_fuzz.sh --seconds $(FUZZ_SECONDS) --jobs $(FUZZ_JOBS)

# the mixed-traffic soak (tools/soak.py): SOAK_ARGS="--seconds 600 --slow 10000" etc.
SOAK_ARGS ?= --seconds 120
soak: all $(DEMO)/config.json
	@tools/soak.py $(SOAK_ARGS)

test-cuda: all $(CHECK_BIN)
	@tests/run-cuda.sh

bench: all
	@tools/bench.sh

clean:
	rm -rf $(B)

-include $(shell find $(B) -name '*.d' 2>/dev/null)
