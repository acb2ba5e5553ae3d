"""Settings of the session's bench run, shared by conftest.py and the tests (a module of its own:
`from conftest import ...` picks whichever conftest pytest imported first when several test
folders are collected together)."""

THREADS = 1
PROMPT, DECODE, REPEAT = 8, 4, 2
BANDWIDTH_MB = 64  # small: the test checks plausibility, not the machine
