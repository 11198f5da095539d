# duplexalign — set-up and entry points. `make demo` and `make test` work on a fresh machine
# (Python 3.11, no GPU): they install what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := $(PYTHON) -m uv
endif

.PHONY: setup system-deps demo test test-fast compile bench lint clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.synced: pyproject.toml uv.lock
	@$(PYTHON) -c "import uv" 2>/dev/null || command -v uv >/dev/null || \
		$(PYTHON) -m pip install -q --disable-pip-version-check 'uv==0.13.*'
	$(UV) sync --frozen --extra test
	@touch $@

setup: $(VENV)/.synced  ## create .venv from uv.lock (torch 2.13 CPU, no CUDA, no triton)

system-deps:  ## Debian packages the tests use (PostgreSQL: consent registry, espeak-ng: fallback TTS, Redis: Feast online store)
	@command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
	@command -v espeak-ng >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; }
	@command -v redis-server >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

demo: setup  ## the whole pipeline on the embedded default, ends with one JSON line
	$(VENV)/bin/duplexalign demo

test: setup system-deps  ## the whole test suite (starts its own services)
	$(VENV)/bin/python -m pytest -q

test-fast: setup  ## unit tests only
	$(VENV)/bin/python -m pytest -q -m "not integration and not e2e"

bench: setup  ## benchmarks: transcribe (stage vs plain loop) and ingest (throughput, peak RSS)
	$(VENV)/bin/duplexalign bench transcribe
	$(VENV)/bin/duplexalign bench ingest

compile: setup  ## write pipelines/alignment.yaml
	$(VENV)/bin/duplexalign compile

clean:  ## stop services and remove local state (keeps the venv)
	-$(VENV)/bin/duplexalign services down
	rm -rf .duplexalign

# --- Container images (docs/images.md) ------------------------------------------------------------
# make images REGISTRY=registry.example.com/team TAG=0.1.1   (config pipeline.image_registry and
# pipeline.image_tag, chart values image.registry and image.tag must name the same two).
REGISTRY ?= ghcr.io/duplexalign
TAG ?= 0.1.0
DOCKER ?= docker
IMAGE_PLATFORM ?= linux/amd64
IMAGE_CPU = $(patsubst %/,%,$(REGISTRY))/duplexalign:$(TAG)
IMAGE_CUDA = $(patsubst %/,%,$(REGISTRY))/duplexalign-cuda:$(TAG)
IMAGE_REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# Extra build arguments per image, e.g. digest-pinned bases (docs/images.md):
#   CPU_BUILD_ARGS='--build-arg PYTHON_IMAGE=python:3.11.17-slim-bookworm@sha256:...'
#   CUDA_BUILD_ARGS='--build-arg CUDA_IMAGE=nvidia/cuda:12.6.3-base-ubuntu24.04@sha256:...'
CPU_BUILD_ARGS ?=
CUDA_BUILD_ARGS ?=
IMAGE_COMMON_ARGS = --platform $(IMAGE_PLATFORM) --build-arg VERSION=$(TAG) \
	--build-arg REVISION=$(IMAGE_REVISION)

.PHONY: images images-push

images:  ## build the component (CPU) and CUDA images: make images REGISTRY=... TAG=...
	$(DOCKER) build $(IMAGE_COMMON_ARGS) $(CPU_BUILD_ARGS) -f components/Dockerfile -t $(IMAGE_CPU) .
	$(DOCKER) build $(IMAGE_COMMON_ARGS) $(CUDA_BUILD_ARGS) -f serving/Dockerfile -t $(IMAGE_CUDA) .

images-push: images  ## build, then push both images: make images-push REGISTRY=... TAG=...
	$(DOCKER) push $(IMAGE_CPU)
	$(DOCKER) push $(IMAGE_CUDA)
