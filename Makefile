# tern: a thin wrapper around CMake. The real build is CMakeLists.txt.
#
# On Debian 12, as root, `make demo` and `make test` do all the set-up: the
# shared `deps` step installs any missing Debian package first. As another
# user, `deps` prints the apt-get command to run and stops.
#
#   make demo    build build/ (RelWithDebInfo) and run build/tools/tern-demo
#   make test    build/ with -Werror + ctest + a valgrind slice, then build-asan/
#                (ASan+UBSan) + ctest, then every fuzz harness for
#                FUZZ_QUICK_SECONDS (default 60) with libFuzzer, seed FUZZ_QUICK_SEED
#   make soak    as test's first half, with TERN_SOAK=1 (1000 seeds per test)
#   make bench   build build/ in Release and run every benchmark
#   make fuzz    build build-fuzz/ with clang + libFuzzer, run each harness FUZZ_SECONDS
#   make valgrind  build build/ and run the engine, crypto and reassembly tests
#                under valgrind memcheck
#   make format  clang-format -i on the C sources
#   make clean   remove build/, build-asan/ and build-fuzz/
#
# Overridable: TERN_PKGS (package list), JOBS (build jobs, default nproc),
# CMAKE_ARGS (extra arguments for every configure), DEMO_ARGS, CC_FUZZ,
# FUZZ_SECONDS (default 60), FUZZ_TARGETS (default: every fuzz/fuzz_*.c),
# FUZZ_SEED (make fuzz's libFuzzer -seed; empty: a random one),
# VALGRIND_TESTS (make valgrind), VALGRIND_QUICK (make test's slice; empty: none),
# FUZZ_QUICK_SECONDS (make test's libFuzzer slice; empty: none), FUZZ_QUICK_SEED.

# Every Debian package the build, the tests and (later) fuzzing need.
TERN_PKGS ?= cmake pkg-config gcc make libuv1-dev libsodium-dev libcriterion-dev libjansson-dev \
	libssl-dev clang libclang-rt-14-dev valgrind

CMAKE ?= cmake
CTEST ?= ctest
CLANG_FORMAT ?= clang-format
CC_FUZZ ?= clang
CMAKE_ARGS ?=
DEMO_ARGS ?=

# Build jobs: nproc. ctest jobs: the same, but at most 2.
JOBS ?= $(shell nproc 2>/dev/null || echo 1)
JOBS := $(JOBS)
CTEST_JOBS := $(shell j='$(JOBS)'; [ "$$j" -gt 2 ] 2>/dev/null && j=2; echo "$$j")

BUILD_DIR := build
ASAN_DIR := build-asan
FUZZ_DIR := build-fuzz

# build/ is shared by demo, test, soak and bench, so every configure states
# every option it depends on: the result never depends on which target ran
# before (switching between them may rebuild, which is cheap).
BUILD_ARGS := -DTERN_ASAN=OFF -DTERN_UBSAN=OFF -DTERN_FUZZ=OFF -DTERN_TESTS=ON -DTERN_BENCH=ON
DEMO_ARGS_CMAKE := -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTERN_WERROR=OFF $(BUILD_ARGS)
TEST_ARGS_CMAKE := -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTERN_WERROR=ON $(BUILD_ARGS)
BENCH_ARGS_CMAKE := -DCMAKE_BUILD_TYPE=Release -DTERN_WERROR=OFF $(BUILD_ARGS)
ASAN_ARGS_CMAKE := -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTERN_ASAN=ON -DTERN_UBSAN=ON \
	-DTERN_WERROR=ON -DTERN_FUZZ=OFF -DTERN_TESTS=ON -DTERN_BENCH=OFF
FUZZ_ARGS_CMAKE := -DTERN_FUZZ=ON -DTERN_ASAN=ON -DTERN_UBSAN=ON -DTERN_TESTS=OFF -DTERN_BENCH=OFF

CTEST_FLAGS := --output-on-failure --no-tests=error -j$(CTEST_JOBS)
SAN_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# valgrind memcheck (tests/valgrind.sh) over tests built in build/: `make
# valgrind` runs VALGRIND_TESTS, `make test` the slice VALGRIND_QUICK (the
# engine and the packet layer: what untrusted datagrams reach), which costs
# about a minute on 2 cores. Logs go to build/valgrind/<test>/<pid>.log.
VALGRIND_TESTS ?= test_kcp test_reasm $(sort $(patsubst tests/%.c,%,$(wildcard tests/test_crypto_*.c)))
VALGRIND_QUICK ?= test_kcp test_crypto_packet test_crypto_replay test_crypto_aead_ctx
VALGRIND_DIR := $(BUILD_DIR)/valgrind

# make test ends with a bounded libFuzzer slice: every harness for this many
# seconds on its corpus (build-fuzz/, clang). Empty: off. The slice uses a
# fixed seed so that a CI run explores what the same run explored here (up to
# the machine's speed): a gate should not fail at random on a new path that
# no one has looked at; `make fuzz` keeps a random seed to find those.
FUZZ_QUICK_SECONDS ?= 60
FUZZ_QUICK_SEED ?= 1

BENCH_NAMES := $(sort $(patsubst bench/%.c,%,$(wildcard bench/bench_*.c)))
FUZZ_SECONDS ?= 60
FUZZ_SEED ?=
# One input running longer than this (seconds) is a hang: libFuzzer saves it
# and fails, instead of waiting its default 20 minutes.
FUZZ_TIMEOUT ?= 25
FUZZ_SEED_ARG = $(if $(strip $(FUZZ_SEED)),-seed=$(strip $(FUZZ_SEED)))
FUZZ_TARGETS ?= $(sort $(patsubst fuzz/fuzz_%.c,%,$(wildcard fuzz/fuzz_*.c)))
FORMAT_DIRS := $(wildcard include kcp crypto common netsim sim tests bench tools)

# The inner builds get their own -j: do not hand them this make's flags (or
# its jobserver), nor MAKELEVEL (it makes a Makefile generator's gmake print
# "Entering directory" for every step).
unexport MAKEFLAGS MFLAGS
CMAKE_BUILD := env -u MAKELEVEL $(CMAKE) --build

# One target at a time: demo, test, soak and bench all reconfigure build/.
.NOTPARALLEL:
.DEFAULT_GOAL := all
.PHONY: all deps demo test soak bench fuzz valgrind format clean help

all: deps
	$(CMAKE) -S . -B $(BUILD_DIR) $(DEMO_ARGS_CMAKE) $(CMAKE_ARGS)
	$(CMAKE_BUILD) $(BUILD_DIR) -j$(JOBS)

deps:
	@command -v dpkg-query >/dev/null 2>&1 || { \
	    echo "tern: dpkg-query not found (not Debian?); not checking packages." >&2; \
	    echo "tern: make sure these (or equivalents) are installed: $(TERN_PKGS)" >&2; \
	    exit 0; }; \
	missing=""; \
	for p in $(TERN_PKGS); do \
	    if ! dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -q ' installed$$'; then \
	        missing="$$missing $$p"; \
	    fi; \
	done; \
	missing="$${missing# }"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "tern: missing Debian packages: $$missing"; \
	if [ "$$(id -u)" -eq 0 ]; then \
	    echo "tern: installing them with apt-get"; \
	    apt-get update && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing || { \
	        echo "tern: apt-get failed; cannot install: $$missing" >&2; exit 1; }; \
	else \
	    echo "tern: not running as root, so not installing them. Run:" >&2; \
	    echo "" >&2; \
	    echo "    sudo apt-get install -y --no-install-recommends $$missing" >&2; \
	    echo "" >&2; \
	    echo "tern: (run 'sudo apt-get update' first if apt cannot find them), then re-run make." >&2; \
	    exit 1; \
	fi

demo: deps
	$(CMAKE) -S . -B $(BUILD_DIR) $(DEMO_ARGS_CMAKE) $(CMAKE_ARGS)
	$(CMAKE_BUILD) $(BUILD_DIR) -j$(JOBS) --target tern-demo
	./$(BUILD_DIR)/tools/tern-demo $(DEMO_ARGS)

# Both halves always report; the ASan half is skipped only when build/ did
# not even build (it would fail the same way). Between them, when build/
# passed, the valgrind slice (VALGRIND_QUICK) runs on its binaries. Fails if
# any part failed.
test: deps
	@plain=ok; asan=ok; vg=ok; \
	echo "==> tern: build/ (-Werror)"; \
	if ! $(CMAKE) -S . -B $(BUILD_DIR) $(TEST_ARGS_CMAKE) $(CMAKE_ARGS); then plain="configure failed"; \
	elif ! $(CMAKE_BUILD) $(BUILD_DIR) -j$(JOBS); then plain="build failed"; \
	elif ! $(CTEST) --test-dir $(BUILD_DIR) $(CTEST_FLAGS); then plain="tests failed"; \
	fi; \
	if [ "$$plain" != ok ]; then vg="skipped (build/ failed)"; \
	elif [ -z "$(strip $(VALGRIND_QUICK))" ]; then vg="off"; \
	else echo "==> tern: valgrind memcheck on build/: $(strip $(VALGRIND_QUICK))"; \
	     sh tests/valgrind.sh $(BUILD_DIR) $(VALGRIND_DIR) $(VALGRIND_QUICK) || vg="failed"; \
	fi; \
	echo "==> tern: build-asan/ (ASan+UBSan, -Werror)"; \
	case "$$plain" in \
	"configure failed"|"build failed") asan="skipped (build/ did not build)";; \
	*) if ! $(CMAKE) -S . -B $(ASAN_DIR) $(ASAN_ARGS_CMAKE) $(CMAKE_ARGS); then asan="configure failed"; \
	   elif ! $(CMAKE_BUILD) $(ASAN_DIR) -j$(JOBS); then asan="build failed"; \
	   elif ! env $(SAN_ENV) $(CTEST) --test-dir $(ASAN_DIR) $(CTEST_FLAGS); then asan="tests failed"; \
	   fi;; \
	esac; \
	fz=off; \
	if [ -n "$(strip $(FUZZ_QUICK_SECONDS))" ]; then \
	    if [ "$$plain" = ok ] && [ "$$asan" = ok ]; then \
	        echo "==> tern: libFuzzer slice, $(strip $(FUZZ_QUICK_SECONDS)) s per harness"; \
	        if $(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(strip $(FUZZ_QUICK_SECONDS)) \
	               FUZZ_SEED=$(strip $(FUZZ_QUICK_SEED)); \
	        then fz=ok; else fz=failed; fi; \
	    else fz="skipped (a build failed)"; fi; \
	fi; \
	if [ "$$plain" = ok ] && [ "$$asan" = ok ] && { [ "$$vg" = ok ] || [ "$$vg" = off ]; } && \
	   { [ "$$fz" = ok ] || [ "$$fz" = off ]; }; then \
	    echo "==> tern: make test PASSED (build/: ok; valgrind: $$vg; build-asan/ ASan+UBSan: ok;" \
	         "fuzz: $$fz)"; \
	else \
	    echo "==> tern: make test FAILED (build/: $$plain; valgrind: $$vg;" \
	         "build-asan/ ASan+UBSan: $$asan; fuzz: $$fz)" >&2; \
	    exit 1; \
	fi

soak: deps
	@st=ok; \
	if ! $(CMAKE) -S . -B $(BUILD_DIR) $(TEST_ARGS_CMAKE) $(CMAKE_ARGS); then st="configure failed"; \
	elif ! $(CMAKE_BUILD) $(BUILD_DIR) -j$(JOBS); then st="build failed"; \
	elif ! env TERN_SOAK=1 $(CTEST) --test-dir $(BUILD_DIR) $(CTEST_FLAGS); then st="tests failed"; \
	fi; \
	if [ "$$st" = ok ]; then echo "==> tern: make soak PASSED (build/, TERN_SOAK=1)"; \
	else echo "==> tern: make soak FAILED (build/, TERN_SOAK=1: $$st)" >&2; exit 1; fi

# Runs every benchmark even if one fails; each appends its JSON lines to
# build/bench-results.jsonl itself.
bench: deps
ifeq ($(BENCH_NAMES),)
	@echo "tern: no benchmarks yet (no bench/bench_*.c); nothing to run."
else
	$(CMAKE) -S . -B $(BUILD_DIR) $(BENCH_ARGS_CMAKE) $(CMAKE_ARGS)
	$(CMAKE_BUILD) $(BUILD_DIR) -j$(JOBS) --target $(BENCH_NAMES)
	@failed=""; \
	for b in $(BENCH_NAMES); do \
	    echo "==> tern: $(BUILD_DIR)/bench/$$b"; \
	    ./$(BUILD_DIR)/bench/$$b || failed="$$failed $$b"; \
	done; \
	if [ -n "$$failed" ]; then echo "==> tern: make bench FAILED:$$failed" >&2; exit 1; fi; \
	echo "==> tern: make bench done; results in $(BUILD_DIR)/bench-results.jsonl"
endif

# Builds build-fuzz/ with clang (libFuzzer, ASan, UBSan), then runs each
# harness for FUZZ_SECONDS on fuzz/corpus/<name>/. New inputs collect in
# build-fuzz/fuzz/new/<name>/ and only those that add coverage are merged
# into fuzz/corpus/<name>/ (libFuzzer -merge=1), so the committed corpus
# stays small; a crash is saved in build-fuzz/fuzz/artifacts/<name>/. Every
# harness runs even if one fails; fails if any did.
fuzz: deps
	@set -e; \
	echo "CC=$(CC_FUZZ) $(CMAKE) -S . -B $(FUZZ_DIR) $(FUZZ_ARGS_CMAKE) $(CMAKE_ARGS)"; \
	CC=$(CC_FUZZ) $(CMAKE) -S . -B $(FUZZ_DIR) $(FUZZ_ARGS_CMAKE) $(CMAKE_ARGS); \
	$(CMAKE_BUILD) $(FUZZ_DIR) -j$(JOBS) --target $(addprefix fuzz_,$(FUZZ_TARGETS)); \
	failed=""; \
	for n in $(FUZZ_TARGETS); do \
	    bin=$(FUZZ_DIR)/fuzz/fuzz_$$n; new=$(FUZZ_DIR)/fuzz/new/$$n; art=$(FUZZ_DIR)/fuzz/artifacts/$$n; \
	    mkdir -p "$$new" "$$art" "fuzz/corpus/$$n"; \
	    echo "==> tern: fuzz_$$n for $(FUZZ_SECONDS) s"; \
	    if ! env $(SAN_ENV) "$$bin" -max_total_time=$(FUZZ_SECONDS) -timeout=$(FUZZ_TIMEOUT) -print_final_stats=1 $(FUZZ_SEED_ARG) \
	            -artifact_prefix="$$art/" "$$new" "fuzz/corpus/$$n"; then \
	        echo "==> tern: fuzz_$$n FAILED; the input is in $$art/" >&2; \
	        failed="$$failed $$n"; continue; \
	    fi; \
	    env $(SAN_ENV) "$$bin" -merge=1 "fuzz/corpus/$$n" "$$new" 2>&1 | tail -n 1; \
	done; \
	if [ -n "$$failed" ]; then echo "==> tern: make fuzz FAILED:$$failed" >&2; exit 1; fi; \
	echo "==> tern: make fuzz done ($(FUZZ_SECONDS) s per harness: $(FUZZ_TARGETS))"

# Every test in VALGRIND_TESTS under memcheck, with leak checking; fails if
# any process of any test reported an error (see tests/valgrind.sh).
valgrind: deps
	@st=ok; \
	if ! $(CMAKE) -S . -B $(BUILD_DIR) $(TEST_ARGS_CMAKE) $(CMAKE_ARGS); then st="configure failed"; \
	elif ! $(CMAKE_BUILD) $(BUILD_DIR) -j$(JOBS); then st="build failed"; \
	elif ! sh tests/valgrind.sh $(BUILD_DIR) $(VALGRIND_DIR) $(VALGRIND_TESTS); then st="errors found"; \
	fi; \
	if [ "$$st" = ok ]; then echo "==> tern: make valgrind PASSED ($(words $(VALGRIND_TESTS)) programs)"; \
	else echo "==> tern: make valgrind FAILED ($$st; logs in $(VALGRIND_DIR)/)" >&2; exit 1; fi

# clang-format is not in TERN_PKGS (only developers need it), so no deps here.
format:
	@command -v $(CLANG_FORMAT) >/dev/null 2>&1 || { \
	    echo "tern: $(CLANG_FORMAT) not found; install it with: apt-get install -y clang-format" >&2; \
	    exit 1; }
	find $(FORMAT_DIRS) -type f \( -name '*.c' -o -name '*.h' \) -exec $(CLANG_FORMAT) -i {} +

clean:
	rm -rf $(BUILD_DIR) $(ASAN_DIR) $(FUZZ_DIR)

help:
	@sed -n '/^#   make /s/^#   //p' $(firstword $(MAKEFILE_LIST))
