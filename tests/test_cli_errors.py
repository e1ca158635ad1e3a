"""`tlv_jax.cli_errors.run`, the way every command line ends: an expected failure is one `error:` line and its exit
status, its traceback only in the process's log files (and on stderr with verbose); a bug keeps its traceback and
says where the log is. (tests/test_cli_failures.py runs the commands themselves.)"""

import logging

import pytest

from tlv_jax import cli_errors
from tlv_jax.convert.safetensors_io import CheckpointError
from tlv_jax.data.bad_samples import TooManyBadSamples


def fail(error: BaseException):
    def command():
        raise error

    return command


@pytest.fixture
def log_file(tmp_path):
    """A log file on the root logger, as a training run has (`<workdir>/logs/process_<i>.log`)."""
    handler = logging.FileHandler(tmp_path / "process_0.log")
    logging.getLogger().addHandler(handler)
    yield tmp_path / "process_0.log"
    logging.getLogger().removeHandler(handler)
    handler.close()


@pytest.mark.parametrize("error, line", [
    (ValueError("train.global_batch=8 must be a multiple\n   of train.micro_batch=3"),
     "error: train.global_batch=8 must be a multiple of train.micro_batch=3"),
    (CheckpointError("model/config.json: not found"), "error: model/config.json: not found"),
    (FileNotFoundError(2, "No such file or directory", "data/a.json"),
     "error: [Errno 2] No such file or directory: 'data/a.json'"),
    (TooManyBadSamples("12 of 500 samples skipped"), "error: 12 of 500 samples skipped"),
    (OSError(), "error: OSError"),
])
def test_an_expected_failure_is_one_line_with_status_1(error, line, capsys):
    assert cli_errors.run(fail(error)) == cli_errors.FAILED
    assert capsys.readouterr().err == line + "\n"


def test_its_traceback_goes_to_the_log_files_and_to_stderr_only_when_verbose(log_file, capsys):
    assert cli_errors.run(fail(ValueError("bad value"))) == 1
    assert capsys.readouterr().err == "error: bad value\n"
    assert "error: bad value\nTraceback" in log_file.read_text()
    assert cli_errors.run(fail(ValueError("bad value")), verbose=True) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "Traceback (most recent call last):" and err[-2:] == ["ValueError: bad value", "error: bad value"]


def test_a_command_gives_some_failures_their_own_status(capsys):
    class Diverged(RuntimeError):
        pass

    assert cli_errors.run(fail(Diverged("loss is nan at step 7")), statuses={Diverged: cli_errors.DIVERGED}) == 3
    assert capsys.readouterr().err == "error: loss is nan at step 7\n"


def test_a_bug_keeps_its_traceback_and_says_where_the_log_is(log_file, capsys):
    assert cli_errors.run(fail(TypeError("unsupported operand"))) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "Traceback (most recent call last):" and err[-2] == "TypeError: unsupported operand"
    assert err[-1].startswith("error: unexpected TypeError: a bug") and err[-1].endswith(f"also in {log_file}")
    assert "TypeError: unsupported operand" in log_file.read_text()


def test_interrupts_success_and_exits_keep_their_status(capsys):
    assert cli_errors.run(fail(KeyboardInterrupt("out/ was not written"))) == cli_errors.INTERRUPTED
    assert capsys.readouterr().err == "error: interrupted: out/ was not written\n"
    assert cli_errors.run(lambda: None) == 0
    with pytest.raises(SystemExit) as exit_info:
        cli_errors.run(fail(SystemExit(cli_errors.PREEMPTED)))
    assert exit_info.value.code == 143
