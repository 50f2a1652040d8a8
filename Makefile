# casm: the developer entry points. Every target installs what is missing
# first (scripts/deps.sh is quick when nothing is), so each works on a fresh
# Debian machine.
#
#   make build   configure and compile into $(BUILD_DIR)
#   make test    build, then run every CTest suite
#   make up      build, then run the local stack (scripts/up.sh)
#   make bench   optimised build in build-bench, then casm end to end
#                beside pgbench (bench/run.sh, docs/benchmarks.md)
#   make clean   remove $(BUILD_DIR)

BUILD_DIR ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS ?= 2
CMAKE_ARGS ?=
TEST_TIMEOUT ?= 600
# DEPS=build installs only what compiling needs (the Dockerfile does).
DEPS ?=

.DEFAULT_GOAL := build
.PHONY: deps build test up bench clean

deps:
	scripts/deps.sh $(DEPS)

build: deps
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_ARGS)
	cmake --build $(BUILD_DIR) -j$(JOBS)

test: build
	ctest --test-dir $(BUILD_DIR) --output-on-failure \
	    --timeout $(TEST_TIMEOUT) --no-tests=error

# exec: up.sh becomes the recipe's process and gets Ctrl-C and SIGTERM itself.
up: build
	exec env BUILD_DIR=$(BUILD_DIR) scripts/up.sh

bench: deps
	bench/run.sh

clean:
	rm -rf $(BUILD_DIR)
