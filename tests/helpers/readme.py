"""The shell commands of README.md and slurm/README.md as tests/integration/test_readme_commands.py runs them:
read from the ```bash blocks (continuations joined, comments dropped, "same command plus" variants
appended), each distinct command once with the READMEs that print it, and the `--cfg job` line that composes a
command's config instead of running it."""

from __future__ import annotations

import re

from tests.helpers.config import REPO

READMES = ("README.md", "slurm/README.md")
LAUNCHERS = ("torchrun", "sbatch")  # composed as the entry point they start:
SCRIPTS = {"train.py": "train.py", "eval.py": "eval.py", "slurm/train.sbatch": "train.py"}
SCRIPTS["slurm/eval_array.sbatch"] = "eval.py"


def readme_commands(text: str) -> list[str]:
    """The commands of a README's ```bash blocks, one string each, whitespace normalised."""
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        pending, last_was_comment = "", False
        for raw in block.splitlines():
            line = _strip_comment(raw)
            if not line.strip():
                last_was_comment = last_was_comment or raw.strip().startswith("#")
                continue
            if pending:
                pending += " " + line.strip()
            elif raw[:1].isspace() and commands and last_was_comment:
                # "same command plus" under a comment: a documented variant of the command above it
                commands.append(f"{commands[-1]} {line.strip()}")
                last_was_comment = False
                continue
            else:
                pending = line.strip()
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
                continue
            commands.append(" ".join(pending.split()))
            pending, last_was_comment = "", False
    return commands


def _strip_comment(line: str) -> str:
    """line without a trailing `# comment` (a # outside quotes, at the start or after a space)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def all_commands() -> list[tuple[str, str]]:
    """(README names, command) for each distinct command: one printed in both READMEs runs once."""
    found: dict[str, list[str]] = {}
    for name in READMES:
        for cmd in readme_commands((REPO / name).read_text()):
            found.setdefault(cmd, []).append(name)
    return [(" and ".join(dict.fromkeys(names)), cmd) for cmd, names in found.items()]


def compose_line(command: str) -> str:
    """The command's entry point with its overrides and `--cfg job`, the overrides quoted as the README
    quotes them: `python train.py ...` and console scripts as printed; torchrun and sbatch lines as
    `python train.py` / `python eval.py` with the overrides after the script. A sweep (-m a=x,y) composes
    its first value; `...` ("and the rest as above") is dropped."""
    words = command.split()
    if words[0] in LAUNCHERS:
        script = next((w for w in words if w in SCRIPTS), None)
        assert script, f"README command {command!r}: no train.py, eval.py or .sbatch script to compose"
        program, rest = f"python {SCRIPTS[script]}", words[words.index(script) + 1 :]
    else:
        n = 2 if words[0] == "python" and words[1] != "-m" else 3 if words[0] == "python" else 1
        program, rest = " ".join(words[:n]), words[n:]
    if "-m" in rest:
        rest = [_first_sweep_value(arg) for arg in rest if arg != "-m"]
    rest = [arg for arg in rest if arg != "..."]
    return " ".join([program, *rest, "--cfg", "job"])


def _first_sweep_value(arg: str) -> str:
    key, sep, value = arg.partition("=")
    if not sep or value[:1] in "[{'\"":
        return arg
    return f"{key}={value.split(',')[0]}"
