# The two set-up commands of the README: `make run` and `make test`.
.PHONY: setup setup-test run test bench lab deb

setup:
	@scripts/setup.sh

setup-test:
	@scripts/setup.sh --test

run: setup
	.venv/bin/rasd

test: setup-test
	scripts/run-tests.sh

bench: setup
	.venv/bin/python bench/decode.py
	.venv/bin/python bench/daemon.py
	.venv/bin/python bench/store.py

deb:
	packaging/build-deb.sh dist

lab:
	sh tests/lab/setup-host.sh
	python3 tests/lab/run.py
