# mailtick developer tasks. CI runs `make test` (see .ci/run).
#   make venv      - create .venv and install mailtick with its test extras (again when
#                    pyproject.toml changes; the stamp file records the last install)
#   make lint      - ruff + mypy --strict (mailtick/, tests/, bench/)
#   make test      - lint, then the whole pytest suite (needs Dovecot and PostgreSQL, see .ci/run)
#   make test-fast - lint, then the suite without the tests marked `slow` (the crash and backlog
#                    tests): for the edit-test loop. `make test` and CI run everything.
#   make demo      - the embedded demo (no mail server needed)

VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv lint test test-fast demo dovecot

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PYTHON) || { echo "==> creating $(VENV)"; python3 -m venv $(VENV); }
	@echo "==> installing mailtick[test,demo] into $(VENV)"
	@$(PYTHON) -m pip install -qq --disable-pip-version-check -e '.[test,demo]'
	@touch $@

lint: venv
	@echo "==> ruff"
	@$(VENV)/bin/ruff check .
	@echo "==> mypy"
	@$(VENV)/bin/mypy

# The tests start their own Dovecot; install the package when it is missing (Debian, as root).
dovecot:
	@command -v dovecot >/dev/null 2>&1 || test -x /usr/sbin/dovecot || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "==> apt-get install dovecot-imapd"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd openssl >/dev/null; \
	    service dovecot stop >/dev/null 2>&1 || true; \
	  else echo "make test needs Dovecot: sudo apt-get install dovecot-imapd"; exit 1; fi; }

test: lint dovecot
	@echo "==> pytest"
	@$(VENV)/bin/pytest

test-fast: lint dovecot
	@echo "==> pytest -m 'not slow'"
	@$(VENV)/bin/pytest -m "not slow"

# The embedded demo: pymap (IMAP) + aiosmtpd (SMTP) + the real daemon, in a temp dir.
demo: venv
	@$(VENV)/bin/mailtick demo
