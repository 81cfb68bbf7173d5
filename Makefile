# Two entry points on a fresh machine: `make demo` and `make test`. Both create .venv and install.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.medray-installed
PYTEST_ARGS ?=

.PHONY: demo test install clean browser pacs ocr sim

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of torch first, unless a torch (e.g. your CUDA build) is already there.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# Flower for federated training, without its dependencies (pyproject.toml says why).
	$(PY) -m pip install -q --no-deps "flwr>=1.42,<1.43" "pycryptodome>=3.18,<4" "iterators>=0.0.2,<0.0.3"
	# DALI's CPU backend is tested where its wheel installs (x86_64 Linux); elsewhere the torch path is.
	$(PY) -m pip install -q -e ".[dev,dali]" || echo "nvidia-dali not installable here: DALI tests will skip"
	touch $(STAMP)

demo: $(STAMP) pacs
	$(PY) -m medray demo

test: $(STAMP) browser pacs ocr
	$(PY) -m pytest $(PYTEST_ARGS)

# Headless Chromium renders the demo report in a test (Debian's package; skipped where unavailable).
browser:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the report rendering test will be skipped"; }

# Orthanc and its DICOMweb plugin (Debian) are the PACS of the integration tests and the demo (skipped where unavailable).
pacs:
	@{ command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ]; } && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb dcmtk >/dev/null) \
	  || echo "orthanc not installed: the PACS tests will be skipped"; }

# Tesseract (Debian) is Clean Pixel Data's OCR gate; its tests render text in DejaVu Sans (skipped where unavailable).
ocr:
	@{ command -v tesseract >/dev/null && [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; } || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr fonts-dejavu-core >/dev/null) \
	  || echo "tesseract not installed: the OCR gate's tests will be skipped"; }

# A hospital day at fleet scale, simulated with medray's own policy code (docs/simulation.md).
sim: $(STAMP)
	$(PY) benchmarks/sim_day.py --png medray-sim-day.png --json medray-sim-day.json

clean:
	rm -rf medray-demo .pytest_cache
