"""llama.cpp as a benchmark peer: the server command and the counting of connection resets."""

from __future__ import annotations

from pathlib import Path

from loadtests import llamacpp
from loadtests.bench import connection_resets


def test_every_adapter_goes_in_one_lora_flag_loaded_without_applying(tmp_path: Path) -> None:
    loras = [tmp_path / "lora0.gguf", tmp_path / "lora1.gguf", tmp_path / "lora2.gguf"]
    cmd = llamacpp.server_command(Path("llama-server"), tmp_path / "base.gguf", loras, 8403, slots=16)
    # several --lora flags keep only the last one: one flag, commas
    assert cmd.count("--lora") == 1
    assert cmd[cmd.index("--lora") + 1] == ",".join(str(p) for p in loras)
    assert "--lora-init-without-apply" in cmd
    assert cmd[cmd.index("-np") + 1] == "16" and cmd[cmd.index("-c") + 1] == str(16 * 512)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert "--lora" not in llamacpp.server_command(Path("llama-server"), tmp_path / "b.gguf", [], 8403, 4)


def test_connection_resets_are_counted_from_locusts_failures(tmp_path: Path) -> None:
    (tmp_path / "run_failures.csv").write_text(
        "Method,Name,Error,Occurrences\n"
        "POST,/v1/chat/completions x,\"ConnectionResetError(104, 'Connection reset by peer')\",3\n"
        "POST,/v1/chat/completions x,\"RemoteDisconnected('Remote end closed connection')\",1\n"
        "POST,/v1/chat/completions x,CatchResponseError('0: '),2\n"
        "POST,/v1/chat/completions x,500: boom,2\n"
    )
    assert connection_resets(tmp_path / "run") == 6
    assert connection_resets(tmp_path / "none") == 0
