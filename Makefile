# The two commands of the README's quick start: `make demo` and `make test`.
.PHONY: demo test lint bench bench-consistency bench-freeze-window bench-vm bench-remote bench-lvm setup bench-setup

setup:
	./tools/bootstrap.sh

demo: setup
	./tools/demo.sh

test: setup lint
	.venv/bin/python -m pytest $(PYTEST_ARGS)

lint:
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/mypy
	.venv/bin/lint-imports

bench-setup:
	BOOTSTRAP_EXTRA_APT="restic borgbackup virtnbdbackup libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients" ./tools/bootstrap.sh

bench: bench-setup
	.venv/bin/python bench/run.py $(BENCH_ARGS)

bench-consistency: bench-setup
	.venv/bin/python bench/consistency.py $(BENCH_ARGS)

bench-freeze-window: bench-setup
	.venv/bin/python bench/freeze_window.py $(BENCH_ARGS)

bench-vm: bench-setup
	.venv/bin/python bench/vm.py $(BENCH_ARGS)

bench-remote: bench-setup
	.venv/bin/python bench/remote.py $(BENCH_ARGS)

bench-lvm: bench-setup
	.venv/bin/python bench/lvm.py $(BENCH_ARGS)
