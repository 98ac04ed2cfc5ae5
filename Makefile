# ropeserve - build, run, test.
#   make            build/ropeserve (+ the CUDA backend when nvcc is found), installing missing
#                   Debian packages first (tools/install-deps.sh)
#   make run        build, make the demo model, serve it on 127.0.0.1:8080
#   make test       build and run every test; closes with "N passed, N failed"
#   make test-cuda  kernel checkers + end-to-end parity on a GPU (skips without one)
#   make bench      throughput figures (never part of the tests)
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
LDLIBS  := -lmicrohttpd -lcjson -lsentencepiece -lopenblas -lstdc++ -lm -lpthread
B       := build

# --- CUDA: compiled whenever nvcc is found (NVCC= to disable) ---
NVCC    ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
NVCCFLAGS ?= -O3 -lineinfo -compress-mode=size -std=c++17 \
             -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90 -Xcompiler -Wall,-pthread
CU_SRC  := $(wildcard kernels/cuda/*.cu)
ifneq ($(strip $(NVCC)),)
ifneq ($(strip $(CU_SRC)),)
  CFLAGS  += -DROPESERVE_CUDA
  CU_OBJ  := $(CU_SRC:%.cu=$(B)/%.o)
  LDLIBS  += -L$(CUDA_HOME)/lib64 -L$(CUDA_HOME)/targets/x86_64-linux/lib -lcublas -lcudart -Wl,-rpath,$(CUDA_HOME)/lib64
endif
endif

LIB_C   := $(wildcard common/*.c kernels/*.c kernels/cpu/*.c models/*.c tokenizer/*.c engine/*.c server/*.c)
LIB_C   := $(filter-out server/main.c,$(LIB_C))
LIB_CC  := $(wildcard tokenizer/*.cc)
LIB_OBJ := $(LIB_C:%.c=$(B)/%.o) $(LIB_CC:%.cc=$(B)/%.o) $(CU_OBJ)
TEST_C  := $(wildcard tests/test_*.c)
TEST_BIN:= $(TEST_C:tests/%.c=$(B)/tests/%)
TOOL_C  := $(wildcard tools/*.c)
TOOL_BIN:= $(TOOL_C:tools/%.c=$(B)/tools/%)
CHECK_CU:= $(wildcard tests/kernels/check_*.cu)
CHECK_BIN:= $(if $(CU_OBJ),$(CHECK_CU:tests/kernels/%.cu=$(B)/tests/kernels/%))

DEMO    := $(B)/demo-model

# AddressSanitizer + UBSan builds of the engine tests (CPU only): leaks and bad memory
# accesses fail `make test` (tests/test_asan.sh runs them on a short workload).
ASAN_CFLAGS := $(filter-out -DROPESERVE_CUDA -O3 $(OPT),$(CFLAGS)) -O1 -fsanitize=address,undefined -fno-omit-frame-pointer
ASAN_OBJ := $(LIB_C:%.c=$(B)/asan/%.o) $(LIB_CC:%.cc=$(B)/asan/%.o)
ASAN_BIN := $(B)/asan/test_batching $(B)/asan/test_engine $(B)/asan/test_jinja
.SECONDARY: $(ASAN_OBJ)

.PHONY: all deps run test test-cuda bench clean demo
all: deps $(B)/ropeserve $(TOOL_BIN) $(TEST_BIN)

# Every compile waits for the package check (order-only: it never forces a rebuild), so a
# parallel build on a fresh machine does not race the install.
deps:
	@tools/install-deps.sh

$(B)/%.o: %.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# RoPE frequencies must follow Hugging Face's fp32 operation order bit for bit: no FMA contraction.
$(B)/models/rope.o: CFLAGS += -ffp-contract=off

$(B)/%.o: %.cc | deps
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(B)/%.o: %.cu | deps
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -DROPESERVE_CUDA -c $< -o $@

$(B)/libropeserve.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(B)/ropeserve: $(B)/server/main.o $(B)/libropeserve.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(B)/tests/%: tests/%.c $(B)/libropeserve.a tests/test.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(B)/libropeserve.a -o $@ $(LDLIBS)

$(B)/tools/%: tools/%.c $(B)/libropeserve.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(B)/libropeserve.a -o $@ $(LDLIBS)

$(B)/tests/kernels/%: tests/kernels/%.cu $(B)/libropeserve.a $(wildcard tests/kernels/*.h)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -DROPESERVE_CUDA $< $(B)/libropeserve.a -o $@ $(filter-out -pthread -Wl%,$(LDLIBS)) -Xcompiler -pthread -Xlinker -rpath,$(CUDA_HOME)/lib64

$(B)/asan/%.o: %.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(ASAN_CFLAGS) -c $< -o $@
$(B)/asan/models/rope.o: ASAN_CFLAGS += -ffp-contract=off
$(B)/asan/%.o: %.cc | deps
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -fsanitize=address,undefined -c $< -o $@
$(B)/asan/test_%: tests/test_%.c $(ASAN_OBJ) tests/test.h
	$(CC) $(ASAN_CFLAGS) $< $(ASAN_OBJ) -o $@ $(filter-out -L% -lcublas -lcudart -Wl%,$(LDLIBS))

# The demo checkpoint: deterministic, made by our own tool (tools/make_model.c), not committed.
$(DEMO)/config.json: $(B)/tools/make_model models/demo/tokenizer.model
	$(B)/tools/make_model --preset demo --out $(DEMO) --tokenizer models/demo/tokenizer.model

demo: all $(DEMO)/config.json

run: all $(DEMO)/config.json
	$(B)/ropeserve serve --model $(DEMO) --host 127.0.0.1 --port 8080

test: all $(DEMO)/config.json $(CHECK_BIN) $(ASAN_BIN)
	@tests/run.sh

test-cuda: all $(CHECK_BIN)
	@tests/run-cuda.sh

bench: all
	@tools/bench.sh

clean:
	rm -rf $(B)

-include $(shell find $(B) -name '*.d' 2>/dev/null)
