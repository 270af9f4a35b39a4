"""The tutorial's commands: ``python _wsgi.py`` takes label-studio-ml 1.0.9's flags, and
``label-studio-ml start <checkout>`` serves this backend.

``label-studio-ml`` 1.0.9's ``start`` only runs ``python <dir>/_wsgi.py`` with
the flags it was given, with whatever ``python`` is first on ``PATH``. It is
installed into its own virtual environment, ``<repo>/.venv-label-studio-ml``
(once; it pins Flask 1.1.2, which would clash with the backend's), with
``redis`` and ``rq``, which it imports at start without declaring them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import _wsgi
from harness.gunicorn_process import free_port
from helpers import EDGE_CASES, LABEL_CONFIG, REPO, tasks_for
from harness.tool_venv import InstallError, ensure_tool
from settings import Settings

LSML_VERSION = "1.0.9"
LSML_VENV = REPO / ".venv-label-studio-ml"
LSML_REQUIREMENTS = ["redis==5.0.8", "rq==1.16.2"]
TEMPLATE = "label_studio_ml/default_configs/_wsgi.py.tmpl"
# The options of label-studio-ml 1.0.9's _wsgi.py template (checked against the
# installed template in test_label_studio_ml_start_serves_this_backend).
TEMPLATE_OPTIONS = {"-p", "--port", "--host", "--kwargs", "--with", "-d", "--debug", "--log-level",
                    "--model-dir", "--check"}


def settings_for(argv, env=None) -> Settings:
    args = _wsgi.build_parser().parse_args(argv)
    return Settings.from_env(_wsgi.cli_env(args, env or {}))


# -- the flags, parsed in-process -------------------------------------------------------
def test_every_template_flag_is_accepted_and_has_help():
    parser = _wsgi.build_parser()
    ours = {option for action in parser._actions for option in action.option_strings}
    assert TEMPLATE_OPTIONS <= ours
    for action in parser._actions:
        assert action.help, action.option_strings


def test_flags_map_to_settings():
    s = settings_for(["-p", "9191", "--host", "0.0.0.0", "--model-dir", "/srv/models",
                      "--log-level", "WARNING"])
    assert (s.port, s.host, s.model_dir, s.log_level) == (9191, "0.0.0.0", "/srv/models", "WARNING")
    assert settings_for(["--port", "9192"]).port == 9192
    assert settings_for(["-d"]).log_level == "DEBUG"
    assert settings_for(["--debug", "--log-level", "ERROR"]).log_level == "ERROR"
    assert settings_for([]) == Settings()


def test_kwargs_set_any_setting_by_name_case_insensitive():
    s = settings_for(["--kwargs", "uie_model=uie-nano", "MAX_SEQ_LEN=128", "Device=cpu",
                      "basic_auth_user=ls", "basic_auth_pass=a=b"])
    assert (s.uie_model, s.max_seq_len, s.device) == ("uie-nano", 128, "cpu")
    assert (s.basic_auth_user, s.basic_auth_pass) == ("ls", "a=b")
    assert settings_for(["--with", "train_every_n=20"]).train_every_n == 20


def test_flags_override_the_environment_and_the_rest_comes_from_it():
    s = settings_for(["--port", "2222"], {"PORT": "1111", "BATCH_SIZE": "3", "HOST": "::1"})
    assert (s.port, s.batch_size, s.host) == (2222, 3, "::1")


@pytest.mark.parametrize("argv, message", [
    (["--kwargs", "hostname=http://ls"], "'hostname' is not a setting; settings are: host, port"),
    (["--kwargs", "max_seq_len=long"], "MAX_SEQ_LEN='long' is not an integer"),
    (["--kwargs", "basic_auth_user=ls"], "set both BASIC_AUTH_USER and BASIC_AUTH_PASS"),
])
def test_a_bad_setting_is_a_message_and_exit_code_2(capsys, argv, message):
    assert _wsgi.main(argv, env={}) == 2
    assert f"error: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--kwargs", "uie_model"], "'uie_model' is not KEY=VAL"),
    (["--log-level", "LOUD"], "invalid choice: 'LOUD'"),
    (["--port", "http"], "invalid int value"),
    (["--workers", "2"], "unrecognized arguments: --workers"),
])
def test_a_malformed_flag_is_a_usage_error(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        _wsgi.main(argv, env={})
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


# -- --check and start-up errors ----------------------------------------------------
def test_check_loads_the_model_and_exits(capsys, tmp_path, scratch_small):
    argv = ["--check", "--model-dir", str(tmp_path / "m"), "--kwargs", f"uie_model={scratch_small}",
            "device=cpu"]
    assert _wsgi.main(argv, env={}) == 0
    out = capsys.readouterr().out
    assert out.startswith("check ok: UIEBackend serves ") and f"(checkpoint model {scratch_small}" in out

    missing = ["--check", "--model-dir", str(tmp_path / "m"), "--kwargs",
               f"uie_model={tmp_path / 'nowhere'}", "device=cpu"]
    assert _wsgi.main(missing, env={}) == 1
    assert "check failed: UIE_MODEL=" in capsys.readouterr().err


def test_check_fails_when_the_server_would_fall_back_to_scratch(capsys, tmp_path, monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):   # downloads fail fast
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    argv = ["--check", "--model-dir", str(tmp_path / "m"), "--kwargs", "uie_model=uie-nano",
            "device=cpu"]
    assert _wsgi.main(argv, env={}) == 1
    assert "the server would serve an untrained scratch model" in capsys.readouterr().err


def test_device_gpu_without_a_gpu_is_a_clear_start_up_error(capsys, tmp_path, scratch_small):
    """DEVICE=gpu on a Paddle that sees no GPU (this CPU build): a message that says so and what
    to install, exit 1, not a CPU server that claims a GPU."""
    import paddle

    if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        pytest.skip("Paddle sees a GPU here")
    argv = ["--check", "--model-dir", str(tmp_path / "m"), "--kwargs", f"uie_model={scratch_small}", "device=gpu"]
    assert _wsgi.main(argv, env={}) == 1
    assert "DEVICE=gpu but Paddle sees no GPU (install requirements-gpu.txt)" in capsys.readouterr().err


def test_a_model_that_does_not_load_stops_the_dev_server_with_a_message(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(REPO / "_wsgi.py"), "--port", str(free_port()),
                           "--model-dir", str(tmp_path / "m"), "--kwargs",
                           f"uie_model={tmp_path / 'nowhere'}", "device=cpu"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "error: UIE_MODEL=" in proc.stderr and "no such checkpoint directory" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- label-studio-ml start, for real -----------------------------------------------------
def ensure_label_studio_ml(venv: Path = LSML_VENV) -> Path:
    """``venv/bin/label-studio-ml`` of ``LSML_VERSION`` (``harness.tool_venv``), installed with
    pip when missing (it imports ``redis`` and ``rq`` without declaring them). A failed
    install fails the test with the tail of pip's log."""
    try:
        return ensure_tool(venv, "label-studio-ml", LSML_VERSION, "label-studio-ml",
                           requirements=LSML_REQUIREMENTS, log_dir=REPO / "test-artifacts",
                           check_import="label_studio_ml.server", timeout=900)
    except InstallError as exc:
        pytest.fail(str(exc), pytrace=False)


def template_options(venv: Path) -> set[str]:
    """The option strings of the installed ``_wsgi.py`` template's argument parser."""
    template = next((venv / "lib").glob(f"python*/site-packages/{TEMPLATE}"))
    calls = re.findall(r"parser\.add_argument\((.*?)\)\n", template.read_text(), flags=re.S)
    return {option for call in calls for option in re.findall(r"'(-[-\w]+)'", call)}


def stop_group(proc: subprocess.Popen):
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            os.killpg(proc.pid, signal.SIGKILL)      # anything left in the group
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    proc.wait()


def test_label_studio_ml_start_serves_this_backend(tmp_path, scratch_small):
    exe = ensure_label_studio_ml()
    assert template_options(LSML_VENV) == TEMPLATE_OPTIONS

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT", "VIRTUAL_ENV",
                                                          "PYTHONPATH", "UIE_MODEL", "MODEL_DIR")}
    env.update(PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               MODEL_DIR=str(tmp_path / "models"), UIE_MODEL=str(scratch_small), LOG_LEVEL="INFO",
               PYTHONUNBUFFERED="1")
    log_path = tmp_path / "label-studio-ml.log"
    cmd = [str(exe), "start", str(REPO), "--port", str(port), "--kwargs", "device=cpu"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        health = None
        while time.time() < deadline and health is None:
            assert proc.poll() is None, f"label-studio-ml exited: {log_path.read_text()[-3000:]}"
            try:
                health = requests.get(url + "/health", timeout=2).json()
            except requests.RequestException:
                time.sleep(0.25)
        assert health is not None, f"no /health after 120 s: {log_path.read_text()[-3000:]}"
        assert health["status"] == "UP" and health["model"]["kind"] == "checkpoint"
        assert health["model"]["uie_model"] == str(scratch_small) and health["device"] == "cpu"
        answer = requests.post(url + "/predict", json={"tasks": tasks_for(EDGE_CASES[:2]),
                                                       "label_config": LABEL_CONFIG}, timeout=60)
        assert answer.status_code == 200 and len(answer.json()["results"]) == 2
    finally:
        stop_group(proc)
    assert (tmp_path / "models" / "annotations.sqlite3").exists()

